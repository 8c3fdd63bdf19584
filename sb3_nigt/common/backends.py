"""Backends: where the agents' work runs (docs/backends.md). One written contract, :class:`Backend`.

The collector (the clock) decides *what* is computed; a backend decides *where*. Two kinds of work travel:

- a :class:`~sb3_nigt.common.estimator.WorkUnit`: "sample gradients k .. k + c − 1 of agent i at the published
  θ and return their sum" (the simulated clock, which knows the counts before anything is computed);
- an :class:`AgentRun`: "agent i, sample trajectories until told to stop; report each finished one with a small
  message, then send the sum of the first c when flushed" (the real clock, the paper's agent-side accumulation).

This module holds the inline backend and the subprocess transport; the contract is
:mod:`sb3_nigt.backends.contract`, the registry :mod:`sb3_nigt.backends.registry`, and the main side shared with the
Ray backend :mod:`sb3_nigt.backends.remote`. θ is published once per round without blocking: the subprocess backend
writes it to shared memory and sends each worker a small notice. Every message from the main process to a worker is
small, so no send can block the main process on a busy worker.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_any
from typing import Any, Callable, Optional

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import CloudpickleWrapper

from sb3_nigt.backends.contract import (
    Backend,
    BackendHooks,
    BackendOptions,
    Event,
    WorkerError,
    WorkerLost,
    check_params,
    check_slot,
    default_start_method,
    single_threaded_torch,
)
from sb3_nigt.backends.registry import BACKENDS, LazyBackend, hooks_of, make_backend, register_backend
from sb3_nigt.backends.remote import RemoteDriver, RemoteWorker, bounded
from sb3_nigt.common.estimator import GradientWorker, ObsNorm, UnitResult, WorkUnit
from sb3_nigt.workers.loop import RunState, WorkerLoop, flush_result, serve
from sb3_nigt.workers.messages import AgentReport, AgentRun, Close

__all__ = [
    "BACKENDS", "AgentReport", "AgentRun", "Backend", "BackendHooks", "BackendOptions", "Event", "InlineBackend",
    "LazyBackend", "SubprocessBackend", "WorkerError", "WorkerLoop", "WorkerLost", "default_start_method", "hooks_of",
    "make_backend", "register_backend", "single_threaded_torch",
]


def _event_epoch(event: Event) -> int:
    return event.unit.epoch if isinstance(event, UnitResult) else event.epoch  # type: ignore[union-attr]


# ----------------------------------------------------------------------------------------------- inline
class InlineBackend(BackendHooks):
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
        self.runs: dict[int, RunState] = {}
        self.turn: deque[int] = deque()
        self.held: list[tuple[float, int, Event, Optional[RunState]]] = []  # (due, order, event, its run)
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
        check_slot(slot, self.options.agent_slots)
        self.published[slot] = (check_params(params, self.n_params), obs_norm)
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
        self.runs[run.agent] = RunState(run, time.monotonic())
        if run.agent not in self.turn:
            self.turn.append(run.agent)

    def _end_run(self, agent: int) -> Optional[RunState]:
        """Forget the agent's run and its held (unreported) trajectory."""
        state = self.runs.pop(agent, None)
        if state is not None:
            self._drop(lambda event, run: run is state)
        return state

    def _drop(self, doomed: Callable[[Event, Optional[RunState]], bool]) -> None:
        self.held = [entry for entry in self.held if not doomed(entry[2], entry[3])]
        heapq.heapify(self.held)

    def _hold(self, due: float, event: Event, state: Optional[RunState] = None) -> None:
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
            result = flush_result(self._started(), state, count)
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
                    result = flush_result(worker, state, len(state.trajectories))
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
    import torch as th

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    th.set_num_threads(1)
    parent_remote.close()
    memory: Optional[shared_memory.SharedMemory] = None

    def build() -> tuple[GradientWorker, Callable[[int, Any], np.ndarray]]:
        nonlocal memory
        memory = shared_memory.SharedMemory(name=shm_name)
        slots = np.ndarray((n_slots, n_params), dtype=np.float32, buffer=memory.buf)
        return GradientWorker(**wrapped_args.var), lambda slot, _handle: np.array(slots[slot + 1])

    def receive(timeout: Optional[float]) -> Any:
        if timeout is not None and not remote.poll(timeout):
            return None
        return remote.recv()

    try:
        serve(build, remote.send, receive, lambda: int(live.value), heartbeat)
    finally:
        if memory is not None:
            memory.close()
        remote.close()


class _Worker(RemoteWorker):
    """The main process's handle on one worker process and the work it holds."""

    def __init__(self, process: Any, remote: Connection):
        super().__init__()
        self.process = process
        self.remote = remote

    def readable(self) -> bool:
        """Whether a message (or the end of the pipe) is waiting."""
        try:
            return self.remote.poll()
        except (OSError, EOFError):
            return True

    def kill(self) -> None:
        """Kill the process (if alive) and close the pipe."""
        try:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=5)
        except (OSError, ValueError, AssertionError):
            pass
        try:
            self.remote.close()
        except OSError:
            pass


class SubprocessBackend(RemoteDriver):
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

    _RUNTIME = RemoteDriver._RUNTIME + ("shared_live", "memory", "slots", "ctx")

    def __init__(self, prefetch: int = 2) -> None:
        super().__init__(prefetch)
        self.start_method = default_start_method()

    def _reset_runtime(self) -> None:
        super()._reset_runtime()
        self.workers: list[_Worker] = []
        self.shared_live: Any = None  # the live epoch, in shared memory: workers read it while they compute
        self.memory: Optional[shared_memory.SharedMemory] = None
        self.slots: Optional[np.ndarray] = None
        self.ctx: Any = None

    def bind(self, worker_args: dict[str, Any], options: BackendOptions) -> None:
        super().bind(worker_args, options)
        self.start_method = options.start_method or default_start_method()

    # ---------------------------------------------------------------------------------------- processes
    def _spawn(self) -> _Worker:
        assert self.memory is not None and self.slots is not None
        remote, work_remote = self.ctx.Pipe()
        process = self.ctx.Process(
            target=_worker_main,
            args=(work_remote, remote, CloudpickleWrapper(self.worker_args), self.shared_live, self.memory.name,
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
            self.live, self.shared_live = 0, self.ctx.RawValue("q", 0)
            self.n_params = self._count_params()
            n_slots = 1 + self.options.agent_slots
            self.memory = shared_memory.SharedMemory(create=True, size=max(1, n_slots * self.n_params * 4))
            self.slots = np.ndarray((n_slots, self.n_params), dtype=np.float32, buffer=self.memory.buf)
            self.published, self.failures, self.broken = {}, 0, None
            for _ in range(self.n_workers):
                self.workers.append(self._spawn())
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------------------------------- transport
    def _post(self, worker: _Worker, message: Any) -> bool:
        """Send a small message; False if the worker is gone (its loss is then reported by :meth:`wait`)."""
        try:
            worker.remote.send(message)
            return True
        except (BrokenPipeError, ConnectionResetError, OSError):
            return False

    def _store(self, slot: int, params: np.ndarray) -> None:
        assert self.slots is not None
        self.slots[slot + 1] = params  # no worker reads this slot now: its live work was cancelled or answered

    def _announce(self, epoch: int) -> None:
        if self.shared_live is not None:
            self.shared_live.value = epoch

    def _stop(self, index: int, reason: Optional[str]) -> str:
        worker = self.workers[index]
        pid = worker.process.pid
        worker.kill()
        if reason is None:
            if worker.process.exitcode == _MAIN_GUARD_EXIT:
                self.broken = MAIN_GUARD_MESSAGE
                raise RuntimeError(MAIN_GUARD_MESSAGE)
            reason = f"process {pid} died (exit code {worker.process.exitcode})"
        return reason

    def _renew(self, index: int, action: str) -> None:
        self.workers[index] = self._spawn()

    def _poll(self, step: float, deadline: Optional[float]) -> list[Event]:
        """Wait on every worker's pipe and process sentinel (idle ones too: a death or an error is seen at once)."""
        handles: dict[Any, tuple[int, bool]] = {}
        for i, worker in enumerate(self.workers):
            handles[worker.remote] = (i, True)
            handles[worker.process.sentinel] = (i, False)
        events: list[Event] = []
        seen: set[int] = set()
        for handle in wait_any(list(handles), timeout=bounded(step, deadline)):
            index, pipe = handles[handle]
            if index not in seen:
                seen.add(index)
                readable = pipe or self.workers[index].readable()
                events.extend(self._receive(index) if readable else [self._lose(index)])
        return events

    def _receive(self, index: int) -> list[Event]:
        """Read what the worker sent (at most 64 messages, so that a chatty worker cannot starve the others)."""
        worker = self.workers[index]
        events: list[Event] = []
        for _ in range(64):
            try:
                message = worker.remote.recv()
            except (EOFError, OSError):
                return events + [self._lose(index)]
            events.extend(self._handle(index, [message]))
            if not worker.readable():
                break
        return events

    def close(self) -> None:
        """Stop every worker: ask politely, then terminate, then kill; unlink the shared memory. Safe to call
        more than once, and after a failure."""
        workers, self.workers = self.workers, []
        try:
            self._announce(2**62)  # running work is abandoned at once
            for worker in workers:
                self._post(worker, Close())
            for worker in workers:  # a worker blocked sending to us gets a broken pipe and exits
                try:
                    worker.remote.close()
                except OSError:
                    pass
            _join(workers, time.monotonic() + 2)
        finally:
            self.queue.clear()
            self.slots = None
            self.published = {}
            self.broken = None
            self._unlink()

    def _unlink(self) -> None:
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


def _join(workers: list[_Worker], deadline: float) -> None:
    """Wait for the processes until ``deadline``, terminate what is left, then kill it."""
    for worker in workers:
        try:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=1)
        except (OSError, ValueError, AssertionError):
            pass
        worker.kill()


register_backend("inline", InlineBackend)
register_backend("subprocess", SubprocessBackend)
