"""The main side of every backend whose workers live elsewhere (local processes, Ray actors): one driver.

:class:`RemoteDriver` keeps the books: the queue of units, which worker holds which unit and run, the published θ
versions, the live epoch, failures in a row and hung workers; it decodes what workers send
(:mod:`sb3_nigt.workers.messages`) into the events of :class:`~sb3_nigt.backends.contract.Backend`. A transport
subclass supplies only how workers are started, stopped, messaged and polled, and where θ is published.
"""

from __future__ import annotations

import functools
import os
import time
from collections import deque
from typing import Any, Callable, Optional

import numpy as np
import torch as th

from sb3_nigt.backends.contract import BackendHooks, BackendOptions, Event, WorkerError, WorkerLost, check_params, check_slot
from sb3_nigt.workers.messages import (
    AgentReport,
    AgentRun,
    Alive,
    ComputeUnit,
    Failed,
    Flush,
    RunFlushed,
    StartRun,
    Theta,
    TrajectoryDone,
    UnitCancelled,
    UnitDone,
    dispatch,
)
from sb3_nigt.workers.rollout import ObsNorm, WorkUnit


class RemoteWorker:
    """The main process's record of one worker and the work it holds."""

    def __init__(self) -> None:
        self.units: list[WorkUnit] = []  # sent and not yet answered (result or cancelled), any epoch
        self.runs: dict[int, AgentRun] = {}  # live runs, until released (flush 0, their sum, cancel, loss)
        self.flushed: set[int] = set()  # agents whose run was flushed with count > 0 (sum awaited)
        self.heard = time.monotonic()  # the last sign of progress

    @property
    def busy(self) -> bool:
        return bool(self.units) or bool(self.runs)

    def load(self) -> int:
        return len(self.units) + len(self.runs)

    def holds_live(self, live: int) -> bool:
        return bool(self.runs) or any(u.epoch >= live for u in self.units)

    def answered(self, unit: WorkUnit) -> None:
        try:
            self.units.remove(unit)
        except ValueError:
            pass

    def release(self, live: int) -> tuple[list[WorkUnit], list[AgentRun]]:
        """Forget all the work it holds; return that of live epochs (units in submission order, runs)."""
        held = [u for u in self.units if u.epoch >= live], [r for r in self.runs.values() if r.epoch >= live]
        self.units, self.runs, self.flushed = [], {}, set()
        return held


class RemoteDriver(BackendHooks):
    """The :class:`~sb3_nigt.backends.contract.Backend` methods over remote workers; a transport subclass supplies
    :meth:`start`, :meth:`close`, :meth:`_post`, :meth:`_poll`, :meth:`_store`, :meth:`_stop`, :meth:`_renew`
    (and may refine :meth:`_theta`, :meth:`_overdue`, :meth:`_abandon`, :meth:`_announce`).

    :param prefetch: units queued per worker (>= 1).
    """

    #: How errors name one worker (``"worker process 2 failed"``), the workers, and one worker in a loss.
    NAME, PLURAL, SHORT = "worker process", "worker processes", "worker"

    #: What a pickled backend (a model saved with ``backend=`` an instance) leaves out: what ``bind`` and
    #: ``start`` set up again.
    _RUNTIME: tuple[str, ...] = ("worker_args", "workers", "queue", "live", "published", "n_params", "failures", "broken", "_handlers")

    def __init__(self, prefetch: int = 2) -> None:
        self.prefetch = prefetch
        self.worker_args: dict[str, Any] = {}
        self.options = BackendOptions()
        self.n_workers = 1
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self.workers: list[Any] = []
        self.queue: deque[WorkUnit] = deque()
        self.live = 0
        self.published: dict[int, Theta] = {}
        self.n_params = 0
        self.failures = 0
        self.broken: Optional[str] = None

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key not in self._RUNTIME}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.worker_args = {}
        self._reset_runtime()

    def bind(self, worker_args: dict[str, Any], options: BackendOptions) -> None:
        """Remember what the workers are built from; starts nothing."""
        self.worker_args = worker_args
        self.options = options
        self.n_workers = int(options.n_workers or os.cpu_count() or 1)

    def _count_params(self) -> int:
        """d, the number of policy parameters (a throw-away policy, built without touching the global RNG)."""
        args = self.worker_args
        with th.random.fork_rng(devices=[]):
            policy = args["policy_class"](args["observation_space"], args["action_space"], None, **args["policy_kwargs"])
        return sum(p.numel() for p in policy.parameters())

    def _heartbeat(self) -> Optional[float]:
        """Seconds between heartbeats of a busy worker; None without a ``worker_timeout``."""
        timeout = self.options.worker_timeout
        return None if timeout is None else min(1.0, timeout / 4)

    def _started(self) -> None:
        if not self.workers:
            raise RuntimeError("the backend is not started: call start() first")

    # ----------------------------------------------------------------------------------- transport
    def _post(self, worker: Any, message: Any) -> Any:
        """Send one small command to the worker (never blocks on it; a lost worker shows in :meth:`_poll`)."""
        raise NotImplementedError

    def _poll(self, step: float, deadline: Optional[float]) -> list[Event]:
        """Wait up to ``step`` seconds (never past ``deadline``) for the workers; the events they gave."""
        raise NotImplementedError

    def _store(self, slot: int, params: np.ndarray) -> Any:
        """Publish θ (float32 ``(d,)``) to ``slot``; the handle a worker fetches it with."""
        raise NotImplementedError

    def _stop(self, index: int, reason: Optional[str]) -> str:
        """Stop lost worker ``index`` as needed before it is replaced; the reason of the loss (None: it died)."""
        raise NotImplementedError

    def _renew(self, index: int, action: str) -> None:
        """Put a working worker at ``index`` after a loss (``action``: see :meth:`_lose`)."""
        raise NotImplementedError

    def _abandon(self, index: int) -> None:
        """Give up on lost worker ``index`` (too many failures in a row)."""

    def _announce(self, epoch: int) -> None:
        """Tell the workers the live epoch is now ``epoch`` (their running work of lower epochs stops)."""

    def _theta(self, slot: int) -> Theta:
        """What a command names θ of ``slot`` with."""
        return self.published[slot]

    # ---------------------------------------------------------------------------------------- work
    def publish(self, params: np.ndarray, obs_norm: Optional[ObsNorm], slot: int = -1) -> None:
        """θ (float32 ``(d,)``) of ``slot``, for work submitted from now on; never blocks on a worker.

        :raises ValueError: for a bad slot or a vector of the wrong shape.
        """
        self._started()
        check_slot(slot, self.options.agent_slots)
        params = check_params(params, self.n_params)
        version = self.published[slot].version + 1 if slot in self.published else 1
        self.published[slot] = Theta(version, self._store(slot, params), obs_norm)

    def _home(self, agent: int) -> Optional[int]:
        return agent % self.n_workers if self.options.pin_agents else None

    def submit(self, unit: WorkUnit) -> None:
        """Queue a unit. :raises ValueError: when θ was never published to its slot."""
        self._started()
        if unit.slot not in self.published:
            raise ValueError(f"submit: θ was never published to slot {unit.slot}")
        if unit.epoch >= self.live:
            self.queue.append(unit)
            self._dispatch()

    def _give(self, worker: RemoteWorker, message: Any) -> None:
        if not worker.busy:
            worker.heard = time.monotonic()
        self._post(worker, message)

    def _dispatch(self) -> None:
        """Send queued units to workers with room (the least loaded, or the agent's own with ``pin_agents``)."""
        waiting: deque[WorkUnit] = deque()
        while self.queue:
            unit = self.queue.popleft()
            if unit.epoch < self.live:
                continue
            home = self._home(unit.agent)
            if home is None:
                home = min(range(len(self.workers)), key=lambda w: self.workers[w].load())
            worker = self.workers[home]
            if len(worker.units) >= self.prefetch:
                waiting.append(unit)
                if not self.options.pin_agents:
                    waiting.extend(self.queue)
                    self.queue.clear()
                continue
            self._give(worker, ComputeUnit(unit, self._theta(unit.slot)))
            worker.units.append(unit)
        self.queue = waiting

    def start_run(self, run: AgentRun) -> None:
        """Start an agent run on worker ``agent % n_workers``. :raises ValueError: when no broadcast θ was published."""
        self._started()
        if -1 not in self.published:
            raise ValueError("start_run: no broadcast θ was published")
        if run.epoch < self.live:
            return
        worker = self.workers[run.agent % self.n_workers]
        self._give(worker, StartRun(run, self._theta(-1)))
        worker.runs[run.agent] = run
        worker.flushed.discard(run.agent)

    def flush(self, epoch: int, agent: int, count: int, upload_delay: float = 0.0) -> None:
        """End the agent's run (see :class:`~sb3_nigt.backends.contract.Backend`); ignored if it is not live."""
        if not self.workers:
            return
        worker = self.workers[agent % self.n_workers]
        run = worker.runs.get(agent)
        if run is None or run.epoch != epoch or agent in worker.flushed or epoch < self.live:
            return
        self._post(worker, Flush(epoch, agent, count, upload_delay))
        if count == 0:
            del worker.runs[agent]
        else:
            worker.flushed.add(agent)

    def cancel(self, epoch: int) -> None:
        """Abandon all work of epochs below ``epoch`` (the live epoch never decreases)."""
        if epoch <= self.live:
            return
        self.live = epoch
        self.queue = deque(u for u in self.queue if u.epoch >= epoch)
        for worker in self.workers:  # units already sent answer "cancelled" (or a result, dropped on receipt)
            worker.runs = {a: r for a, r in worker.runs.items() if r.epoch >= epoch}
            worker.flushed &= set(worker.runs)
        self._announce(epoch)

    def _pending(self) -> bool:
        return any(u.epoch >= self.live for u in self.queue) or any(w.holds_live(self.live) for w in self.workers)

    # ----------------------------------------------------------------------------------------- wait
    def wait(self, timeout: Optional[float] = None) -> list[Event]:
        """Block until at least one event or ``timeout`` seconds; see :class:`~sb3_nigt.backends.contract.Backend`.

        :raises RuntimeError: when no work of a live epoch is pending.
        :raises WorkerError: after more than ``max_failures`` worker losses in a row.
        :raises Exception: an exception raised by user code in a worker (e.g. ``ValueError`` for a NaN reward),
            re-raised as its own type.
        """
        if self.broken is not None:
            raise WorkerError(self.broken)
        self._started()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._dispatch()
        if not self._pending():
            raise RuntimeError("wait() called with no work pending: submit a unit or start a run first")
        limit = self.options.worker_timeout
        while True:
            events = self._poll(1.0 if limit is None else min(1.0, limit / 2), deadline)
            now = time.monotonic()
            for index, worker in enumerate(self.workers):
                overdue = self._overdue(worker, now)
                if overdue is not None:
                    events.append(self._lose(index, *overdue))
            self._dispatch()
            if events or (deadline is not None and time.monotonic() >= deadline) or not self._pending():
                return events

    def _overdue(self, worker: Any, now: float) -> Optional[tuple[str, str]]:
        """(reason, action) when the worker is to be declared lost now: busy without a sign of progress for
        ``worker_timeout`` seconds (hung); else None."""
        limit = self.options.worker_timeout
        if limit is not None and worker.busy and now - worker.heard > limit:
            return f"no sign of progress for {limit:g} s (hung)", "restart"
        return None

    def _lose(self, index: int, reason: Optional[str] = None, action: str = "none") -> WorkerLost:
        """Worker ``index`` is lost: its live work is returned in a :class:`WorkerLost` and it is replaced.

        :param reason: what happened; None: it died (the transport says how).
        :param action: how it is replaced: ``"none"`` (it restarts by itself), ``"restart"``, ``"replace"``.
        :raises WorkerError: after more than ``max_failures`` losses in a row.
        """
        reason = self._stop(index, reason)
        self.failures += 1
        lost = WorkerLost(index, reason, *self.workers[index].release(self.live))
        if self.failures > self.options.max_failures:
            self._abandon(index)
            self.broken = (
                f"{self.PLURAL} failed {self.failures} times in a row (last: {self.SHORT} {index}, {reason}); "
                f"training stopped with θ, d_t and the clock at their last good values (max_failures="
                f"{self.options.max_failures})"
            )
            raise WorkerError(self.broken)
        self._renew(index, action)
        return lost

    # ------------------------------------------------------------------------------------ messages
    def _handle(self, index: int, messages: list[Any]) -> list[Event]:
        """The events of what worker ``index`` sent (each message is a sign of progress).

        :raises Exception: a worker's own exception (:class:`~sb3_nigt.workers.messages.Failed`), re-raised here.
        """
        worker = self.workers[index]
        events: list[Event] = []
        for message in messages:
            worker.heard = time.monotonic()
            event = dispatch(message, self._handlers, "main process", index, worker)
            if event is not None:
                events.append(event)
        return events

    def _on_unit(self, message: UnitDone, index: int, worker: RemoteWorker) -> Optional[Event]:
        result = message.result
        worker.answered(result.unit)
        self.failures = 0
        return result if result.unit.epoch >= self.live else None  # a unit of a cancelled epoch is dropped

    def _on_flushed(self, message: RunFlushed, index: int, worker: RemoteWorker) -> Optional[Event]:
        result = message.result
        run = worker.runs.get(result.unit.agent)
        self.failures = 0
        if run is None or run.epoch != result.unit.epoch:
            return None
        del worker.runs[run.agent]
        worker.flushed.discard(run.agent)
        return result if run.epoch >= self.live else None

    def _on_report(self, message: TrajectoryDone, index: int, worker: RemoteWorker) -> Optional[Event]:
        epoch, agent = message.epoch, message.stats.agent
        run = worker.runs.get(agent)
        self.failures = 0
        if run is not None and run.epoch == epoch and agent not in worker.flushed and epoch >= self.live:
            return AgentReport(epoch, message.stats, message.seconds)
        return None

    def _on_cancelled(self, message: UnitCancelled, index: int, worker: RemoteWorker) -> None:
        worker.answered(message.unit)

    def _on_alive(self, message: Alive, index: int, worker: RemoteWorker) -> None:
        return None

    def _on_failed(self, message: Failed, index: int, worker: RemoteWorker) -> None:
        if message.error is not None:
            raise message.error from WorkerError(f"in {self.NAME} {index}:\n{message.text}")
        raise WorkerError(f"{self.NAME} {index} failed:\n{message.text}")

    @functools.cached_property
    def _handlers(self) -> dict[type, Callable[..., Optional[Event]]]:
        """The handler of each message a worker sends: ``handler(message, index, worker)`` -> its event or None
        (built once per driver: one message arrives per finished trajectory)."""
        return {UnitDone: self._on_unit, RunFlushed: self._on_flushed, TrajectoryDone: self._on_report,
                UnitCancelled: self._on_cancelled, Alive: self._on_alive, Failed: self._on_failed}


def bounded(step: float, deadline: Optional[float]) -> float:
    """``step`` seconds, cut short at ``deadline`` (never negative)."""
    return step if deadline is None else max(0.0, min(step, deadline - time.monotonic()))

