"""Backends: where the agents' work runs (docs/backends.md). One written contract, :class:`Backend`.

The collector (the clock) decides *what* is computed; a backend decides *where*. Two kinds of work travel:

- a :class:`~sb3_nigt.common.estimator.WorkUnit`: "sample gradients k .. k + c − 1 of agent i at the published
  θ and return their sum" (the simulated clock, which knows the counts before anything is computed);
- an :class:`AgentRun`: "agent i, sample trajectories until told to stop; report each finished one with a small
  message, then send the sum of the first c when flushed" (the real clock, the paper's agent-side accumulation).

θ is published once per round without blocking: the subprocess backend writes it to shared memory and sends
each worker a small notice. Every message from the main process to a worker is small, so no send can block the
main process on a busy worker.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_any
from typing import Any, Callable, Iterator, Optional, Protocol, Union, runtime_checkable

import numpy as np
import torch as th
from stable_baselines3.common.vec_env.base_vec_env import CloudpickleWrapper

from sb3_nigt.common.estimator import (
    GradientWorker,
    JobCancelled,
    ObsNorm,
    Trajectory,
    TrajectoryStats,
    UnitResult,
    WorkUnit,
    job_seed,
)


class WorkerError(RuntimeError):
    """Worker processes failed too many times in a row, or a worker could not be built."""


# ------------------------------------------------------------------------------------------------ messages
@dataclass(frozen=True)
class AgentRun:
    """Real clock: agent ``agent`` samples trajectories ``first``, ``first + 1``, ... at the published θ until it is
    flushed or cancelled (paper, Algorithms 2 and 3: "agent j immediately starts another trajectory").

    Emulated times: trajectory 0 starts ``delay`` seconds after the agent receives the run; trajectory k takes
    ``max(durations[k] (× its steps if per_step), its compute time)`` seconds and is reported when it ends; the
    next one starts then.

    :param epoch: the collector's cancellation epoch.
    :param round_index: the round (job seeds (seed, round, agent, k)).
    :param agent: the agent.
    :param first: the index of its first trajectory.
    :param seed: the base seed.
    :param env_index: the agent's environment factory.
    :param horizon: H.
    :param gamma: γ.
    :param delay: seconds to wait before the first trajectory (emulated broadcast κ_i).
    :param durations: emulated seconds of its successive gradients (per step if ``per_step``); the last one
        repeats. Empty: no emulation.
    :param per_step: whether ``durations`` are per environment step.
    :param max_gradients: stop after this many and send their sum at once (Synchronized NIGT: 1); None: until
        flushed.
    :param upload_delay: seconds to wait before that early upload (emulated κ_i).
    """

    epoch: int
    round_index: int
    agent: int
    first: int
    seed: int
    env_index: int
    horizon: int
    gamma: float
    delay: float = 0.0
    durations: tuple[float, ...] = ()
    per_step: bool = False
    max_gradients: Optional[int] = None
    upload_delay: float = 0.0


@dataclass
class AgentReport:
    """A small message: agent ``stats.agent`` finished trajectory ``stats.index`` (no vector travels)."""

    epoch: int
    stats: TrajectoryStats


@dataclass
class WorkerLost:
    """A worker died (killed, crashed, out of memory) or hung past the timeout, and was replaced.

    :param worker: the worker's number.
    :param reason: what happened.
    :param units: the units of live epochs it held, unanswered, in the order they were submitted: resubmit them.
    :param runs: the agent runs of live epochs it held (running, or flushed with their sum not yet received);
        their counted but unsent gradients are lost.
    """

    worker: int
    reason: str
    units: list[WorkUnit] = field(default_factory=list)
    runs: list[AgentRun] = field(default_factory=list)


Event = Union[UnitResult, AgentReport, WorkerLost]


@dataclass
class BackendOptions:
    """How a backend is built (from the algorithm's arguments).

    :param n_workers: worker processes (None: the backend's default).
    :param start_method: multiprocessing start method.
    :param pin_agents: run agent i only on worker ``i % n_workers`` (emulated times on the real clock).
    :param agent_slots: how many per-agent θ slots to publish to (AFedPG: n), besides the round's broadcast.
    :param worker_timeout: seconds without a sign of progress from a busy worker before it is declared hung;
        None: never. Workers send a heartbeat while they sleep and every 64 environment steps, so only a
        worker stuck inside one stretch of 64 steps (or one batched backward pass) that long is declared hung.
    :param max_failures: a loss that makes more than this many worker losses in a row (no result or report in
        between) raises :class:`WorkerError` instead of replacing the worker.
    """

    n_workers: Optional[int] = None
    start_method: Optional[str] = None
    pin_agents: bool = False
    agent_slots: int = 0
    worker_timeout: Optional[float] = 300.0
    max_failures: int = 3


# ------------------------------------------------------------------------------------------------ contract
@runtime_checkable
class Backend(Protocol):
    """The contract every backend implements (inline, local processes, Ray actors, torch.distributed ranks).
    ``tests/test_backend_contract.py`` checks it; a new backend joins by adding its name there.

    Life cycle: :meth:`bind` (once, before the first start), then :meth:`start` … :meth:`close` for each
    ``learn``; a closed backend can be started again (everything published or queued before is gone).

    Bits: a unit's gradient is bit-identical to :meth:`GradientWorker.run_unit` at the published θ run with one
    torch thread, and a flushed run's to :meth:`GradientWorker.gradient_sum` of its first ``count``
    trajectories, whoever computes them: workers use one torch thread and job seeds are (seed, round, agent,
    index).

    Ordering: a run's reports arrive in index order, before its sum; nothing else is ordered (the results of
    different units can arrive in any order). Callers add results in their own canonical order.

    Cancellation: :meth:`cancel` raises the live epoch. Once it returns, :meth:`wait` returns no
    :class:`UnitResult` or :class:`AgentReport` of a lower epoch, even one that was already computed or in
    transit (the backend drops it on receipt; callers may still check the epoch), and :class:`WorkerLost` lists
    no such work. Work of lower epochs is dropped if queued and abandoned if running (within 64 environment
    steps or 10 ms of an emulated wait); it may use a worker briefly but never counts as pending.

    Flush: after :meth:`flush` returns, no further report of that run is returned (a report already sent is
    dropped); its sum is the only event still to come, and only if ``count`` > 0.

    Errors: :meth:`wait` re-raises an exception raised by the user's code in a worker (e.g. ``ValueError`` for a
    NaN reward) as is; a worker that dies or hangs past ``worker_timeout`` is replaced and reported as a
    :class:`WorkerLost` event; after ``max_failures`` losses in a row :class:`WorkerError` is raised (then and
    by every later :meth:`wait`, until :meth:`close`). :meth:`wait` never blocks forever on a dead worker.
    """

    n_workers: int

    def bind(self, worker_args: dict[str, Any], options: BackendOptions) -> None:
        """Receive what workers are built from (:class:`GradientWorker` arguments) and the options."""

    def start(self) -> None:
        """Start the workers; the published θ starts empty. Starting a started backend restarts it."""

    def publish(self, params: np.ndarray, obs_norm: Optional[ObsNorm], slot: int = -1) -> None:
        """Make θ (float32 ``(d,)``) and its observation statistics the parameters of work of ``slot`` (-1: the
        round's broadcast; ``i`` in ``0 .. agent_slots − 1``: agent i's own slot) submitted from now on. Never
        blocks on a worker. Work of that slot submitted earlier and still pending may run at either θ: cancel it
        first, or wait for its result (the collector does).

        :raises ValueError: for a slot out of range or a vector of the wrong size.
        """

    def submit(self, unit: WorkUnit) -> None:
        """Queue a unit; its :class:`UnitResult` comes back from :meth:`wait`, once.

        :raises ValueError: when θ was never published to the unit's slot.
        """

    def start_run(self, run: AgentRun) -> None:
        """Start an agent run at the broadcast θ (it replaces a run of the same agent); each finished trajectory
        comes back as an :class:`AgentReport`.

        :raises ValueError: when no broadcast θ was published.
        """

    def flush(self, epoch: int, agent: int, count: int, upload_delay: float = 0.0) -> None:
        """End agent ``agent``'s run of ``epoch``: it sends the sum of its first ``count`` trajectories (at most
        the number reported), ``upload_delay`` seconds later, as a :class:`UnitResult` (whose unit has ``first``
        and ``count``), and drops the rest; with ``count`` 0 it sends nothing and the run is released at once.
        Ignored for a run that is not live (cancelled, lost, ended by ``max_gradients``, already flushed)."""

    def wait(self, timeout: Optional[float] = None) -> list[Event]:
        """Block until at least one event, or ``timeout`` seconds (then possibly none). A backend that computes
        in the caller's thread may overrun ``timeout`` by one piece of work, never by an emulated wait.

        :raises RuntimeError: when no work of a live epoch is pending (nothing submitted, or all returned).
        """

    def cancel(self, epoch: int) -> None:
        """Abandon all work of epochs below ``epoch`` (the live epoch never decreases)."""

    def close(self) -> None:
        """Stop every worker and release every resource; safe to call twice and after a failure."""


#: Backends by name (``backend="inline"``). :func:`register_backend` adds one.
BACKENDS: dict[str, Callable[[], Backend]] = {}


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Make ``backend=name`` build ``factory()`` (a class with no required arguments, bound before use)."""
    BACKENDS[name] = factory


def make_backend(spec: Union[str, Backend], worker_args: dict[str, Any], options: BackendOptions) -> Backend:
    """A bound backend from a registered name or an instance.

    :raises ValueError: for an unknown name or an object that does not implement :class:`Backend`.
    """
    if isinstance(spec, str):
        if spec not in BACKENDS:
            raise ValueError(f"backend: unknown backend {spec!r}; registered backends are {sorted(BACKENDS)}")
        backend = BACKENDS[spec]()
    elif isinstance(spec, Backend):
        backend = spec
    else:
        raise ValueError(f"backend: expected a registered name or a Backend instance, got {spec!r}")
    backend.bind(worker_args, options)
    return backend


def default_start_method() -> str:
    """forkserver where available, else spawn: SB3's SubprocVecEnv convention (fork after torch can hang)."""
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


@contextmanager
def single_threaded_torch() -> Iterator[None]:
    """Run torch with one intra-op thread (as every worker does), so inline results are bit-identical."""
    previous = th.get_num_threads()
    th.set_num_threads(1)
    try:
        yield
    finally:
        th.set_num_threads(previous)


def _check_slot(slot: int, agent_slots: int) -> None:
    if not -1 <= slot < agent_slots:
        raise ValueError(f"slot: must be -1 (the broadcast) or an agent slot in 0..{agent_slots - 1} "
                         f"(BackendOptions.agent_slots={agent_slots}), got {slot}")


# --------------------------------------------------------------------------------------------- agent runs
class _RunState:
    """An agent run where it is computed: its trajectories so far, kept until the flush (memory ∝ their lengths),
    when its next trajectory may start, and the trajectory sampled but not yet finished in emulated time."""

    def __init__(self, run: AgentRun, received: float):
        self.run = run
        self.trajectories: list[Trajectory] = []
        self.next_at = received + run.delay
        self.pending: Optional[tuple[Trajectory, float]] = None

    def emulated(self, trajectory: Trajectory) -> float:
        """Emulated seconds of the next trajectory (0 without emulation)."""
        durations = self.run.durations
        if not durations:
            return 0.0
        seconds = durations[min(len(self.trajectories), len(durations) - 1)]
        return seconds * (trajectory.stats.n_steps if self.run.per_step else 1)

    def sample(self, worker: GradientWorker, cancelled: Callable[[], bool]) -> tuple[Trajectory, float]:
        """Sample the next trajectory at the loaded θ; return it with the time its emulated duration ends."""
        run = self.run
        index = run.first + len(self.trajectories)
        trajectory = worker.sample(run.agent, index, job_seed(run.seed, run.round_index, run.agent, index),
                                   run.env_index, run.horizon, cancelled, run.round_index)
        return trajectory, max(self.next_at + self.emulated(trajectory), time.monotonic())

    def finish(self) -> TrajectoryStats:
        """The pending trajectory ends: keep it; the next one starts now (emulated)."""
        assert self.pending is not None
        trajectory, finish = self.pending
        self.trajectories.append(trajectory)
        self.next_at, self.pending = finish, None
        return trajectory.stats

    @property
    def limit_reached(self) -> bool:
        return self.run.max_gradients is not None and len(self.trajectories) >= self.run.max_gradients


def _flush_result(worker: GradientWorker, state: _RunState, count: int) -> UnitResult:
    """The sum of the run's first ``count`` trajectories, as one vector, at the loaded θ."""
    run = state.run
    if count > len(state.trajectories):
        raise ValueError(f"flush: count {count} exceeds the {len(state.trajectories)} trajectories agent {run.agent} "
                         f"finished in epoch {run.epoch}")
    kept = state.trajectories[:count]
    begin = time.perf_counter()
    gradient = worker.gradient_sum(kept, run.gamma)
    unit = WorkUnit(run.round_index, run.agent, run.first, count, run.seed, run.env_index, run.horizon, run.gamma, run.epoch)
    return UnitResult(unit, gradient, [t.stats for t in kept], time.perf_counter() - begin)


class WorkerLoop:
    """The event loop of one worker, the same wherever it runs (a process of :class:`SubprocessBackend`, a thread of
    a Ray actor): small commands, and the agent runs it holds. Emulated waits are deadlines, not sleeps, so a flush
    is handled at once and runs held by one worker wait concurrently.

    Commands: ``("unit", WorkUnit, version, handle, obs_norm)`` (compute the unit at θ of that version),
    ``("run", AgentRun, version, handle, obs_norm)`` (sample until flushed), ``("flush", epoch, agent, count,
    upload_delay)``, ``("close",)``; any other raises ``ValueError``. ``handle`` is what ``fetch`` needs to get θ
    (None for a shared-memory slot, a list holding a Ray ObjectRef). Messages sent: ``("result", UnitResult)``,
    ``("cancelled", WorkUnit)``, ``("report", epoch, TrajectoryStats)``, ``("flushed", UnitResult)`` (its
    ``seconds`` include the upload delay) and ``("alive",)``, when it has said nothing for ``heartbeat`` seconds
    while busy.

    :param worker: computes trajectories and gradient sums.
    :param send: sends one message to the main process; must not block for long.
    :param receive: the next command, waiting up to ``timeout`` seconds (None: without limit); None if none came
        in time; raises ``EOFError`` once the channel is closed (the loop then ends as on ``close``).
    :param live: the live epoch; work of lower epochs is abandoned.
    :param fetch: ``fetch(slot, handle)``: θ of a slot (-1: the broadcast), a float32 vector of shape (d,).
    :param heartbeat: seconds between heartbeats of a busy loop; None: none.
    """

    def __init__(self, worker: GradientWorker, send: Callable[[tuple], None],
                 receive: Callable[[Optional[float]], Optional[tuple]], live: Callable[[], int],
                 fetch: Callable[[int, Any], np.ndarray], heartbeat: Optional[float]) -> None:
        self.worker = worker
        self._send = send
        self.receive = receive
        self.live = live
        self.fetch = fetch
        self.heartbeat = heartbeat
        self.last_sent = time.monotonic()
        self.published: dict[int, tuple[int, Any, Optional[ObsNorm]]] = {}  # slot -> (version, handle, obs_norm)
        self.loaded: Optional[tuple[int, int]] = None  # (slot, version) of the worker's θ
        self.runs: dict[int, _RunState] = {}
        self.outbox: list[tuple[float, int, int, tuple]] = []  # (due, order, epoch, message): emulated uploads
        self.order = itertools.count()

    def send(self, message: tuple) -> None:
        self._send(message)
        self.last_sent = time.monotonic()

    def beat(self) -> None:
        if self.heartbeat is not None and time.monotonic() - self.last_sent >= self.heartbeat:
            self.send(("alive",))

    def cancelled_below(self, epoch: int) -> Callable[[], bool]:
        def cancelled() -> bool:  # called every 64 environment steps and every 10 ms of an emulated wait
            self.beat()
            return self.live() > epoch

        return cancelled

    def load(self, slot: int, epoch: int) -> None:
        """Give the worker θ of ``slot`` (once per version); JobCancelled if a newer epoch began meanwhile."""
        if slot not in self.published:
            raise RuntimeError(f"worker: no θ was published to slot {slot}")
        version, handle, obs_norm = self.published[slot]
        if self.loaded != (slot, version):
            self.worker.set_params(self.fetch(slot, handle), obs_norm)
            self.loaded = (slot, version)
        if self.live() > epoch:  # shared memory: θ may have been overwritten by a newer round while it was copied
            self.loaded = None
            raise JobCancelled()

    def upload(self, state: _RunState, count: int, delay: float) -> None:
        """Send the sum of the run's first ``count`` trajectories ``delay`` seconds from now."""
        epoch = state.run.epoch
        try:
            self.load(-1, epoch)  # θ of the run's round: a new round's θ is published only after a cancel
        except JobCancelled:
            return
        result = _flush_result(self.worker, state, count)
        result.seconds += delay
        heapq.heappush(self.outbox, (time.monotonic() + delay, next(self.order), epoch, ("flushed", result)))

    def handle(self, message: tuple) -> bool:
        """Apply one command; False for ``close``."""
        command = message[0]
        if command == "unit":
            _, unit, version, handle, obs_norm = message
            self.published[unit.slot] = (version, handle, obs_norm)
            cancelled = self.cancelled_below(unit.epoch)
            try:
                if cancelled():
                    raise JobCancelled()
                self.load(unit.slot, unit.epoch)
                result = self.worker.run_unit(unit, cancelled)
            except JobCancelled:
                self.send(("cancelled", unit))
            else:
                self.send(("result", result))
        elif command == "run":
            _, run, version, handle, obs_norm = message
            self.published[-1] = (version, handle, obs_norm)
            self.runs[run.agent] = _RunState(run, time.monotonic())
        elif command == "flush":
            _, epoch, agent, count, delay = message
            state = self.runs.get(agent)
            if state is not None and state.run.epoch == epoch:
                del self.runs[agent]  # its trajectory in progress, if any, is dropped
                if count > 0:
                    self.upload(state, count, delay)
        elif command == "close":
            return False
        else:
            raise ValueError(f"worker: unknown command {command!r}")
        return True

    def step(self, state: _RunState) -> bool:
        """Advance a run: sample its next trajectory once it may start, report it once its emulated time is over.
        Whether anything happened."""
        run = state.run
        progressed = False
        if state.pending is None:
            if time.monotonic() < state.next_at:
                return False
            try:
                self.load(-1, run.epoch)
                state.pending = state.sample(self.worker, self.cancelled_below(run.epoch))
            except JobCancelled:
                self.runs.pop(run.agent, None)
                return True
            progressed = True
        if time.monotonic() < state.pending[1]:
            return progressed
        self.send(("report", run.epoch, state.finish()))
        if state.limit_reached:  # Synchronized NIGT: the agent stops and uploads at once
            del self.runs[run.agent]
            self.upload(state, len(state.trajectories), run.upload_delay)
        return True

    def _next(self, timeout: Optional[float]) -> Optional[tuple]:
        """The next command (see ``receive``); a closed channel reads as ``close``."""
        try:
            return self.receive(timeout)
        except EOFError:
            return ("close",)

    def run(self) -> None:
        """Loop until ``close`` or a closed channel; an exception of the work propagates."""
        runs, outbox = self.runs, self.outbox
        while True:
            epoch = self.live()
            for agent in [a for a, s in runs.items() if s.run.epoch < epoch]:
                del runs[agent]  # abandoned: its memory is freed, a flush of it is ignored
            if any(entry[2] < epoch for entry in outbox):
                outbox[:] = [entry for entry in outbox if entry[2] >= epoch]
                heapq.heapify(outbox)
            if not runs and not outbox:  # idle: wait for a command
                message = self._next(None)
                if message is not None and not self.handle(message):
                    return
                continue
            while (message := self._next(0.0)) is not None:
                if not self.handle(message):
                    return
            while outbox and outbox[0][0] <= time.monotonic():
                self.send(heapq.heappop(outbox)[3])
            progressed = False
            for state in list(runs.values()):
                if runs.get(state.run.agent) is state:
                    progressed = self.step(state) or progressed
            if progressed:
                continue
            self.beat()
            due = [entry[0] for entry in outbox[:1]] + [s.pending[1] if s.pending is not None else s.next_at for s in runs.values()]
            wake = min(due) - time.monotonic() if due else 0.05
            message = self._next(min(max(wake, 0.0), 0.05))  # a command, the next deadline, or a cancellation check
            if message is not None and not self.handle(message):
                return


def _event_epoch(event: Event) -> int:
    return event.unit.epoch if isinstance(event, UnitResult) else event.epoch  # type: ignore[union-attr]


# ----------------------------------------------------------------------------------------------- inline
class InlineBackend:
    """Computes everything in the main process, one piece at a time (``backend="inline"``), like SB3's
    DummyVecEnv: a unit, or one trajectory of an agent run (runs take turns). Emulated times are kept, not
    slept: a piece computed early is held until its emulated end, so :meth:`wait` honours its timeout and the
    agents' emulated waits overlap. A hung environment cannot be detected here."""

    n_workers = 1

    def __init__(self) -> None:
        self.worker_args: dict[str, Any] = {}
        self.options = BackendOptions()
        self.worker: Optional[GradientWorker] = None
        self.n_params = 0
        self.units: deque[WorkUnit] = deque()
        self.runs: dict[int, _RunState] = {}
        self.turn: deque[int] = deque()
        self.held: list[tuple[float, int, Event, Optional[_RunState]]] = []  # (due, order, event, its run)
        self.order = itertools.count()
        self.published: dict[int, tuple[np.ndarray, Optional[ObsNorm]]] = {}
        self.loaded: Optional[tuple[int, int]] = None
        self.versions: dict[int, int] = {}
        self.live = 0

    #: What a pickled backend (a model saved with ``backend=`` an instance) leaves out: what ``bind`` and
    #: ``start`` set up again.
    _RUNTIME = ("worker_args", "worker", "n_params", "units", "runs", "turn", "held", "order", "published", "loaded",
                "versions", "live")

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key not in self._RUNTIME}

    def __setstate__(self, state: dict[str, Any]) -> None:
        InlineBackend.__init__(self)
        self.__dict__.update(state)

    def bind(self, worker_args: dict[str, Any], options: BackendOptions) -> None:
        self.worker_args = worker_args
        self.options = options

    def start(self) -> None:
        self.close()
        self.worker = GradientWorker(**self.worker_args)
        self.n_params = sum(p.numel() for p in self.worker.policy.parameters())
        self.live, self.loaded = 0, None
        self.published, self.versions = {}, {}

    def _started(self) -> GradientWorker:
        if self.worker is None:
            raise RuntimeError("the backend is not started: call start() first")
        return self.worker

    def publish(self, params: np.ndarray, obs_norm: Optional[ObsNorm], slot: int = -1) -> None:
        self._started()
        _check_slot(slot, self.options.agent_slots)
        params = np.array(params, dtype=np.float32)
        if params.shape != (self.n_params,):
            raise ValueError(f"params: expected shape ({self.n_params},), got {params.shape}")
        self.published[slot] = (params, obs_norm)
        self.versions[slot] = self.versions.get(slot, 0) + 1

    def _load(self, slot: int) -> None:
        worker = self._started()
        if self.loaded != (slot, self.versions[slot]):
            worker.set_params(*self.published[slot])
            self.loaded = (slot, self.versions[slot])

    def submit(self, unit: WorkUnit) -> None:
        self._started()
        if unit.slot not in self.published:
            raise ValueError(f"submit: θ was never published to slot {unit.slot}")
        if unit.epoch >= self.live:
            self.units.append(unit)

    def start_run(self, run: AgentRun) -> None:
        self._started()
        if -1 not in self.published:
            raise ValueError("start_run: no broadcast θ was published")
        self._end_run(run.agent)
        if run.epoch < self.live:
            return
        self.runs[run.agent] = _RunState(run, time.monotonic())
        if run.agent not in self.turn:
            self.turn.append(run.agent)

    def _end_run(self, agent: int) -> Optional[_RunState]:
        """Forget the agent's run and its held (unreported) trajectory."""
        state = self.runs.pop(agent, None)
        if state is not None:
            self._drop(lambda event, run: run is state)
        return state

    def _drop(self, doomed: Callable[[Event, Optional[_RunState]], bool]) -> None:
        self.held = [entry for entry in self.held if not doomed(entry[2], entry[3])]
        heapq.heapify(self.held)

    def _hold(self, due: float, event: Event, state: Optional[_RunState] = None) -> None:
        heapq.heappush(self.held, (due, next(self.order), event, state))

    def flush(self, epoch: int, agent: int, count: int, upload_delay: float = 0.0) -> None:
        state = self.runs.get(agent)
        if state is None or state.run.epoch != epoch or epoch < self.live:
            return
        self._end_run(agent)
        if count == 0:
            return
        self._load(-1)
        with single_threaded_torch():
            result = _flush_result(self._started(), state, count)
        result.seconds += upload_delay
        self._hold(time.monotonic() + upload_delay, result)

    def _pending(self) -> bool:
        return bool(self.units or self.held or self.runs)

    def _compute_next(self) -> bool:
        """Compute one piece of work (a unit, or one trajectory of the next run whose turn it is); False if none."""
        worker = self._started()
        if self.units:
            unit = self.units.popleft()
            self._load(unit.slot)
            begin = time.monotonic()
            with single_threaded_torch():  # emulated times are held, not slept
                result = worker.run_unit(dataclasses.replace(unit, delay=0.0, min_duration=0.0, upload_delay=0.0))
            computed = time.monotonic() - begin
            minimum = unit.min_duration * (result.n_steps if unit.per_step else unit.count)
            seconds = unit.delay + max(computed, minimum) + unit.upload_delay
            self._hold(begin + seconds, UnitResult(unit, result.gradient, result.trajectories, seconds))
            return True
        for _ in range(len(self.turn)):
            agent = self.turn[0]
            self.turn.rotate(-1)
            state = self.runs.get(agent)
            if state is None or state.pending is not None:
                continue
            self._load(-1)
            with single_threaded_torch():
                state.pending = state.sample(worker, lambda: False)
            due = state.pending[1]
            self._hold(due, AgentReport(state.run.epoch, state.pending[0].stats), state)
            if state.run.max_gradients is not None and len(state.trajectories) + 1 >= state.run.max_gradients:
                state.finish()  # its last trajectory: the run ends and sends its sum after the emulated upload
                del self.runs[agent]
                with single_threaded_torch():
                    result = _flush_result(worker, state, len(state.trajectories))
                result.seconds += state.run.upload_delay
                self._hold(due + state.run.upload_delay, result)
            return True
        return False

    def wait(self, timeout: Optional[float] = None) -> list[Event]:
        self._started()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._pending():
            raise RuntimeError("wait() called with no work pending: submit a unit or start a run first")
        computed = False
        while True:
            now = time.monotonic()
            ready: list[Event] = []
            while self.held and self.held[0][0] <= now:
                _, _, event, state = heapq.heappop(self.held)
                if state is not None and isinstance(event, AgentReport) and state.pending is not None:
                    state.finish()  # its report is out: the agent starts its next trajectory
                ready.append(event)
            if ready:
                return ready
            if computed and deadline is not None and now >= deadline:
                return []
            if self._compute_next():
                computed = True
                continue
            if not self.held or (deadline is not None and now >= deadline):
                return []
            wake = self.held[0][0] if deadline is None else min(self.held[0][0], deadline)
            time.sleep(max(0.0, wake - now))

    def cancel(self, epoch: int) -> None:
        self.live = max(self.live, epoch)
        self.units = deque(u for u in self.units if u.epoch >= self.live)
        for agent in [a for a, s in self.runs.items() if s.run.epoch < self.live]:
            self._end_run(agent)
        self._drop(lambda event, run: _event_epoch(event) < self.live)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        self.units.clear()
        self.runs.clear()
        self.turn.clear()
        self.held.clear()


# ------------------------------------------------------------------------------------------- subprocess
def _picklable(exc: BaseException) -> Optional[BaseException]:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return None


#: Exit code of a worker process that found itself re-running the user's script (no ``__main__`` guard).
_MAIN_GUARD_EXIT = 78

MAIN_GUARD_MESSAGE = (
    'backend="subprocess": the worker processes could not start, because the script that creates the model runs '
    "again in each of them (the forkserver and spawn start methods import the main module in every new process). "
    'Put the code that creates and trains the model under `if __name__ == "__main__":`, as with SB3\'s '
    "SubprocVecEnv; or use backend=\"inline\"."
)


def _refuse_if_bootstrapping() -> None:
    """In a process that multiprocessing is still bootstrapping (it is importing the user's main module because the
    script has no ``__main__`` guard), starting workers cannot work: say so and exit with a code the parent
    recognises, instead of the long traceback and the generic "worker died" that would follow."""
    if getattr(mp.current_process(), "_inheriting", False):
        import sys

        print(f"sb3_nigt: {MAIN_GUARD_MESSAGE}", file=sys.stderr, flush=True)
        os._exit(_MAIN_GUARD_EXIT)


def _worker_main(remote: Connection, parent_remote: Connection, wrapped_args: CloudpickleWrapper, live: Any,
                 shm_name: str, n_slots: int, n_params: int, heartbeat: Optional[float]) -> None:
    """Entry point of a worker process: one torch thread, SIGINT left to the main process, and a
    :class:`WorkerLoop` over the pipe, with θ read from the shared-memory slot each command names."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    th.set_num_threads(1)
    parent_remote.close()
    worker: Optional[GradientWorker] = None
    memory: Optional[shared_memory.SharedMemory] = None

    def receive(timeout: Optional[float]) -> Optional[tuple]:
        if timeout is not None and not remote.poll(timeout):
            return None
        return remote.recv()

    try:
        worker = GradientWorker(**wrapped_args.var)
        memory = shared_memory.SharedMemory(name=shm_name)
        slots = np.ndarray((n_slots, n_params), dtype=np.float32, buffer=memory.buf)
        WorkerLoop(worker, remote.send, receive, lambda: int(live.value),
                   lambda slot, _handle: np.array(slots[slot + 1]), heartbeat).run()
    except Exception as exc:  # sent to the main process, which re-raises it
        try:
            remote.send(("error", _picklable(exc), traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass
    finally:
        if worker is not None:
            worker.close()
        if memory is not None:
            memory.close()
        remote.close()


class _Worker:
    """The main process's handle on one worker process and the work it holds."""

    def __init__(self, process: Any, remote: Connection):
        self.process = process
        self.remote = remote
        self.units: list[WorkUnit] = []  # sent and not yet answered (result or cancelled), any epoch
        self.runs: dict[int, AgentRun] = {}  # live runs, until released (flush 0, their sum, cancel, loss)
        self.flushed: set[int] = set()  # agents whose run was flushed with count > 0 (sum awaited)
        self.heard = time.monotonic()

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


class SubprocessBackend:
    """Runs work in local worker processes (``backend="subprocess"``), as SB3's SubprocVecEnv does.

    θ is written once per round to shared memory; each worker gets a small notice and copies it when it next
    needs it. Each worker keeps up to ``prefetch`` units queued; agent i's runs live on worker i mod
    ``n_workers``. The main process waits for any worker with ``multiprocessing.connection.wait``, watching
    every worker's pipe and process sentinel, so a worker that dies (even an idle one) is seen at once; a busy
    worker that shows no sign of progress (no message, no heartbeat) for ``worker_timeout`` seconds is declared
    hung and killed. A lost worker is replaced and its live work reported (:class:`WorkerLost`) so that the
    collector can resubmit it. Events of cancelled epochs, and reports of flushed runs, are dropped on receipt.

    :param prefetch: units queued per worker.
    """

    def __init__(self, prefetch: int = 2) -> None:
        self.prefetch = prefetch
        self.worker_args: dict[str, Any] = {}
        self.options = BackendOptions()
        self.n_workers = 1
        self.workers: list[_Worker] = []
        self.queue: deque[WorkUnit] = deque()
        self.live: Any = None
        self.memory: Optional[shared_memory.SharedMemory] = None
        self.slots: Optional[np.ndarray] = None
        self.published: dict[int, tuple[int, None, Optional[ObsNorm]]] = {}
        self.failures = 0
        self.broken: Optional[str] = None
        self.ctx: Any = None
        self.start_method = default_start_method()

    #: What a pickled backend (a model saved with ``backend=`` an instance) leaves out: processes, shared memory
    #: and what ``bind`` and ``start`` set up again.
    _RUNTIME = ("worker_args", "workers", "queue", "live", "memory", "slots", "published", "failures", "broken", "ctx")

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key not in self._RUNTIME}

    def __setstate__(self, state: dict[str, Any]) -> None:
        SubprocessBackend.__init__(self, state.get("prefetch", 2))
        self.__dict__.update(state)

    def bind(self, worker_args: dict[str, Any], options: BackendOptions) -> None:
        self.worker_args = worker_args
        self.options = options
        self.n_workers = int(options.n_workers or os.cpu_count() or 1)
        self.start_method = options.start_method or default_start_method()

    # ---------------------------------------------------------------------------------------- processes
    def _n_params(self) -> int:
        args = self.worker_args
        with th.random.fork_rng(devices=[]):
            policy = args["policy_class"](args["observation_space"], args["action_space"], None, **args["policy_kwargs"])
        return sum(p.numel() for p in policy.parameters())

    def _heartbeat(self) -> Optional[float]:
        timeout = self.options.worker_timeout
        return None if timeout is None else min(1.0, timeout / 4)

    def _spawn(self) -> _Worker:
        assert self.memory is not None and self.slots is not None
        remote, work_remote = self.ctx.Pipe()
        process = self.ctx.Process(
            target=_worker_main,
            args=(work_remote, remote, CloudpickleWrapper(self.worker_args), self.live, self.memory.name,
                  self.slots.shape[0], self.slots.shape[1], self._heartbeat()),
            daemon=True,
        )
        try:
            process.start()
        except BaseException:
            remote.close()
            raise
        finally:
            work_remote.close()
        return _Worker(process, remote)

    def start(self) -> None:
        """Start the worker processes.

        :raises RuntimeError: naming the ``if __name__ == "__main__":`` guard, when the workers re-run a script that
            has none.
        """
        _refuse_if_bootstrapping()
        self.close()
        try:
            self.ctx = mp.get_context(self.start_method)
            if self.start_method == "forkserver":
                # Import torch and the library once in the fork server instead of once per worker (seconds each).
                self.ctx.set_forkserver_preload(["sb3_nigt.common.backends"])
            self.live = self.ctx.RawValue("q", 0)
            n_params = self._n_params()
            n_slots = 1 + self.options.agent_slots
            self.memory = shared_memory.SharedMemory(create=True, size=max(1, n_slots * n_params * 4))
            self.slots = np.ndarray((n_slots, n_params), dtype=np.float32, buffer=self.memory.buf)
            self.published, self.failures, self.broken = {}, 0, None
            for _ in range(self.n_workers):
                self.workers.append(self._spawn())
        except BaseException:
            self.close()
            raise

    def _send(self, worker: _Worker, message: tuple) -> bool:
        """Send a small message; False if the worker is gone (its loss is then reported by :meth:`wait`)."""
        try:
            worker.remote.send(message)
            return True
        except (BrokenPipeError, ConnectionResetError, OSError):
            return False

    def _started(self) -> None:
        if not self.workers or self.slots is None:
            raise RuntimeError("the backend is not started: call start() first")

    # -------------------------------------------------------------------------------------------- work
    def publish(self, params: np.ndarray, obs_norm: Optional[ObsNorm], slot: int = -1) -> None:
        self._started()
        assert self.slots is not None
        _check_slot(slot, self.options.agent_slots)
        params = np.asarray(params, dtype=np.float32)
        if params.shape != self.slots.shape[1:]:
            raise ValueError(f"params: expected shape ({self.slots.shape[1]},), got {params.shape}")
        self.slots[slot + 1] = params  # no worker reads this slot now: its live work was cancelled or answered
        version = self.published.get(slot, (0, None))[0] + 1
        self.published[slot] = (version, None, obs_norm)  # travels with the work that needs it (not to every worker)

    def _home(self, agent: int) -> Optional[int]:
        return agent % self.n_workers if self.options.pin_agents else None

    def submit(self, unit: WorkUnit) -> None:
        self._started()
        if unit.slot not in self.published:
            raise ValueError(f"submit: θ was never published to slot {unit.slot}")
        if unit.epoch >= self.live.value:
            self.queue.append(unit)
            self._dispatch()

    def _dispatch(self) -> None:
        waiting: deque[WorkUnit] = deque()
        while self.queue:
            unit = self.queue.popleft()
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
            if not worker.busy:
                worker.heard = time.monotonic()
            worker.units.append(unit)
            self._send(worker, ("unit", unit, *self.published[unit.slot]))
        self.queue = waiting

    def _run_home(self, agent: int) -> int:
        return agent % self.n_workers

    def start_run(self, run: AgentRun) -> None:
        self._started()
        if -1 not in self.published:
            raise ValueError("start_run: no broadcast θ was published")
        if run.epoch < self.live.value:
            return
        worker = self.workers[self._run_home(run.agent)]
        if not worker.busy:
            worker.heard = time.monotonic()
        worker.runs[run.agent] = run
        worker.flushed.discard(run.agent)
        self._send(worker, ("run", run, *self.published[-1]))

    def flush(self, epoch: int, agent: int, count: int, upload_delay: float = 0.0) -> None:
        if not self.workers:
            return
        worker = self.workers[self._run_home(agent)]
        run = worker.runs.get(agent)
        if run is None or run.epoch != epoch or agent in worker.flushed or epoch < self.live.value:
            return
        self._send(worker, ("flush", epoch, agent, count, upload_delay))
        if count == 0:
            del worker.runs[agent]
        else:
            worker.flushed.add(agent)

    def _pending(self) -> bool:
        live = self.live.value
        return any(u.epoch >= live for u in self.queue) or any(w.holds_live(live) for w in self.workers)

    @staticmethod
    def _kill(worker: _Worker) -> None:
        try:
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join(timeout=5)
        except (OSError, ValueError, AssertionError):
            pass
        try:
            worker.remote.close()
        except OSError:
            pass

    def _lose(self, index: int, reason: Optional[str] = None) -> WorkerLost:
        """Kill and replace worker ``index``; its live work is returned in a :class:`WorkerLost` event.

        :param reason: what happened; None: it died (its exit code is added).
        """
        worker = self.workers[index]
        pid = worker.process.pid
        self._kill(worker)
        if reason is None:
            if worker.process.exitcode == _MAIN_GUARD_EXIT:
                self.broken = MAIN_GUARD_MESSAGE
                raise RuntimeError(MAIN_GUARD_MESSAGE)
            reason = f"process {pid} died (exit code {worker.process.exitcode})"
        self.failures += 1
        live = self.live.value
        lost = WorkerLost(index, reason, [u for u in worker.units if u.epoch >= live],
                          [r for r in worker.runs.values() if r.epoch >= live])
        worker.units, worker.runs, worker.flushed = [], {}, set()
        if self.failures > self.options.max_failures:
            self.broken = (
                f"worker processes failed {self.failures} times in a row (last: worker {index}, {reason}); "
                f"training stopped with θ, d_t and the clock at their last good values (max_failures="
                f"{self.options.max_failures})"
            )
            raise WorkerError(self.broken)
        self.workers[index] = self._spawn()
        return lost

    def wait(self, timeout: Optional[float] = None) -> list[Event]:
        """Block until at least one event or ``timeout`` seconds; see :class:`Backend`.

        :raises WorkerError: after ``max_failures`` worker losses in a row.
        :raises Exception: a worker's own exception (e.g. ``ValueError`` for a NaN reward), re-raised here.
        """
        if self.broken is not None:
            raise WorkerError(self.broken)
        self._started()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._dispatch()
        if not self._pending():
            raise RuntimeError("wait() called with no work pending: submit a unit or start a run first")
        while True:
            step = 1.0
            if self.options.worker_timeout is not None:
                step = min(step, self.options.worker_timeout / 2)
            if deadline is not None:
                step = max(0.0, min(step, deadline - time.monotonic()))
            handles: dict[Any, tuple[int, str]] = {}
            for i, worker in enumerate(self.workers):  # idle ones too: a death or an error is seen at once
                handles[worker.remote] = (i, "pipe")
                handles[worker.process.sentinel] = (i, "sentinel")
            ready = wait_any(list(handles), timeout=step)
            events: list[Event] = []
            seen: set[int] = set()
            for handle in ready:
                index, kind = handles[handle]
                if index in seen:
                    continue
                seen.add(index)
                worker = self.workers[index]
                if kind == "pipe" or self._readable(worker):
                    events.extend(self._receive(index))
                else:
                    events.append(self._lose(index))
            now = time.monotonic()
            limit = self.options.worker_timeout
            for index, worker in enumerate(self.workers):
                if index not in seen and limit is not None and worker.busy and now - worker.heard > limit:
                    events.append(self._lose(index, f"no sign of progress for {limit:g} s (hung)"))
            self._dispatch()
            if events or (deadline is not None and time.monotonic() >= deadline) or not self._pending():
                return events

    @staticmethod
    def _readable(worker: _Worker) -> bool:
        try:
            return worker.remote.poll()
        except (OSError, EOFError):
            return True

    def _receive(self, index: int) -> list[Event]:
        """Read what the worker sent (at most 64 messages, so that a chatty worker cannot starve the others)."""
        worker = self.workers[index]
        events: list[Event] = []
        for _ in range(64):
            try:
                message = worker.remote.recv()
            except (EOFError, OSError):
                return events + [self._lose(index)]
            worker.heard = time.monotonic()
            live = self.live.value
            kind = message[0]
            if kind == "error":
                _, exc, text = message
                if exc is not None:
                    raise exc from WorkerError(f"in worker process {index}:\n{text}")
                raise WorkerError(f"worker process {index} failed:\n{text}")
            if kind == "result":
                result: UnitResult = message[1]
                worker.answered(result.unit)
                self.failures = 0
                if result.unit.epoch >= live:  # a unit of a cancelled epoch is dropped, even if computed
                    events.append(result)
            elif kind == "flushed":
                result = message[1]
                agent = result.unit.agent
                run = worker.runs.get(agent)
                self.failures = 0
                if run is not None and run.epoch == result.unit.epoch:
                    del worker.runs[agent]
                    worker.flushed.discard(agent)
                    if run.epoch >= live:
                        events.append(result)
            elif kind == "cancelled":
                worker.answered(message[1])
            elif kind == "report":
                _, epoch, stats = message
                run = worker.runs.get(stats.agent)
                self.failures = 0
                if run is not None and run.epoch == epoch and stats.agent not in worker.flushed and epoch >= live:
                    events.append(AgentReport(epoch, stats))
            if not self._readable(worker):
                break
        return events

    def cancel(self, epoch: int) -> None:
        if self.live is None:
            return
        self.live.value = max(self.live.value, epoch)
        live = self.live.value
        self.queue = deque(u for u in self.queue if u.epoch >= live)
        for worker in self.workers:  # units already sent answer "cancelled" (or a result, dropped on receipt)
            worker.runs = {a: r for a, r in worker.runs.items() if r.epoch >= live}
            worker.flushed &= set(worker.runs)

    def close(self) -> None:
        """Stop every worker: ask politely, then terminate, then kill; unlink the shared memory. Safe to call
        more than once, and after a failure."""
        workers, self.workers = self.workers, []
        try:
            if self.live is not None:
                self.live.value = 2**62  # running work is abandoned at once
            for worker in workers:
                self._send(worker, ("close",))
            for worker in workers:  # a worker blocked sending to us gets a broken pipe and exits
                try:
                    worker.remote.close()
                except OSError:
                    pass
            deadline = time.monotonic() + 2
            for worker in workers:
                try:
                    worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
                    if worker.process.is_alive():
                        worker.process.terminate()
                        worker.process.join(timeout=1)
                except (OSError, ValueError, AssertionError):
                    pass
                self._kill(worker)
        finally:
            self.queue.clear()
            self.slots = None
            self.published = {}
            self.broken = None
            if self.memory is not None:
                memory, self.memory = self.memory, None
                try:
                    memory.close()
                except BufferError:  # a view of it is still alive somewhere: unlinking still frees the name
                    pass
                try:
                    memory.unlink()
                except FileNotFoundError:
                    pass


register_backend("inline", InlineBackend)
register_backend("subprocess", SubprocessBackend)


def _ray_backend() -> Backend:
    """``backend="ray"``: imports ray (and the Ray backend) only when it is used (docs/ray.md)."""
    from sb3_nigt.common.ray_backend import RayBackend

    return RayBackend()


register_backend("ray", _ray_backend)
