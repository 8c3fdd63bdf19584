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

import multiprocessing as mp
import os
import signal
import time
import traceback
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from multiprocessing.connection import Connection, wait as wait_any
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
    _sleep,
    job_seed,
)


class WorkerError(RuntimeError):
    """Worker processes failed too many times in a row, or a worker could not be built."""


# ------------------------------------------------------------------------------------------------ messages
@dataclass(frozen=True)
class AgentRun:
    """Real clock: agent ``agent`` samples trajectories ``first``, ``first + 1``, ... at the published θ until it is
    flushed or cancelled (paper, Algorithms 2 and 3: "agent j immediately starts another trajectory").

    :param epoch: the collector's cancellation epoch.
    :param round_index: the round (job seeds (seed, round, agent, k)).
    :param agent: the agent.
    :param first: the index of its first trajectory.
    :param seed: the base seed.
    :param env_index: the agent's environment factory.
    :param horizon: H.
    :param gamma: γ.
    :param delay: seconds to sleep before the first trajectory (emulated broadcast κ_i).
    :param durations: emulated seconds of its successive gradients (per step if ``per_step``); the last one
        repeats. Empty: no emulation.
    :param per_step: whether ``durations`` are per environment step.
    :param max_gradients: stop after this many and send their sum at once (Synchronized NIGT: 1); None: until
        flushed.
    :param upload_delay: seconds to sleep before that early upload (emulated κ_i).
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
    :param units: the units it held, to resubmit.
    :param runs: the agent runs it held; their counted but unsent gradients are lost.
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
    :param worker_timeout: seconds without a word from a busy worker before it is declared hung; None: never.
    :param max_failures: consecutive worker losses after which :class:`WorkerError` is raised.
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
    """The contract every backend implements (inline, local processes; next Ray actors and torch.distributed).

    Life cycle: :meth:`bind` (once, before the first start), then :meth:`start` … :meth:`close` for each
    ``learn``; a closed backend can be started again.

    Ordering guarantees: the results of one worker arrive in the order it finished them; nothing else is
    ordered. Callers must add results in their own canonical order.

    Cancellation: :meth:`cancel` raises the live epoch; work of a lower epoch is dropped if queued and abandoned
    if running (within 64 environment steps), and produces no event.

    Errors: :meth:`wait` re-raises an exception raised by the user's code in a worker (e.g. ``ValueError`` for a
    NaN reward) as is; a worker that dies or hangs past ``worker_timeout`` is replaced and reported as a
    :class:`WorkerLost` event; after ``max_failures`` losses in a row :class:`WorkerError` is raised.
    """

    n_workers: int

    def bind(self, worker_args: dict[str, Any], options: BackendOptions) -> None:
        """Receive what workers are built from (:class:`GradientWorker` arguments) and the options."""

    def start(self) -> None:
        """Start the workers; the published θ starts empty."""

    def publish(self, params: np.ndarray, obs_norm: Optional[ObsNorm], slot: int = -1) -> None:
        """Make θ (float32 ``(d,)``) and its observation statistics the parameters of later work of ``slot``
        (-1: the round's broadcast; ``i``: agent i's own slot). Never blocks on a worker."""

    def submit(self, unit: WorkUnit) -> None:
        """Queue a unit; its :class:`UnitResult` comes back from :meth:`wait`."""

    def start_run(self, run: AgentRun) -> None:
        """Start an agent run; each finished trajectory comes back as an :class:`AgentReport`."""

    def flush(self, epoch: int, agent: int, count: int, upload_delay: float = 0.0) -> None:
        """End agent ``agent``'s run of ``epoch``: it sends the sum of its first ``count`` trajectories (after
        sleeping ``upload_delay``) as a :class:`UnitResult` and drops the rest; with ``count`` 0 it sends
        nothing. Every run must be flushed once (or lost with its worker)."""

    def wait(self, timeout: Optional[float] = None) -> list[Event]:
        """Block until at least one event, or ``timeout`` seconds (then possibly none)."""

    def cancel(self, epoch: int) -> None:
        """Abandon all work of epochs below ``epoch``."""

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


# --------------------------------------------------------------------------------------------- agent runs
class _RunState:
    """An agent run inside a worker: its trajectories so far, kept until the flush (memory ∝ their lengths)."""

    def __init__(self, run: AgentRun):
        self.run = run
        self.trajectories: list[Trajectory] = []
        self.active = True
        self.started: Optional[float] = None

    def duration(self, k: int) -> float:
        durations = self.run.durations
        return durations[min(k, len(durations) - 1)] if durations else 0.0


def _run_one(worker: GradientWorker, state: _RunState, cancelled: Callable[[], bool]) -> Trajectory:
    """Sample the run's next trajectory, emulating its broadcast and compute times."""
    run = state.run
    k = len(state.trajectories)
    if k == 0 and run.delay > 0:
        _sleep(run.delay, cancelled)
    begin = time.perf_counter()
    index = run.first + k
    trajectory = worker.sample(run.agent, index, job_seed(run.seed, run.round_index, run.agent, index), run.env_index,
                               run.horizon, cancelled, run.round_index)
    emulated = state.duration(k) * (trajectory.stats.n_steps if run.per_step else 1)
    if emulated > 0:
        _sleep(emulated - (time.perf_counter() - begin), cancelled)
    state.trajectories.append(trajectory)
    return trajectory


def _flush_result(worker: GradientWorker, state: _RunState, count: int, cancelled: Callable[[], bool], upload_delay: float) -> UnitResult:
    """The sum of the run's first ``count`` trajectories, as one vector (after the emulated upload)."""
    run = state.run
    kept = state.trajectories[:count]
    begin = time.perf_counter()
    gradient = worker.gradient_sum(kept, run.gamma)
    if upload_delay > 0:
        _sleep(upload_delay, lambda: False)
    unit = WorkUnit(run.round_index, run.agent, run.first, count, run.seed, run.env_index, run.horizon, run.gamma, run.epoch)
    return UnitResult(unit, gradient, [t.stats for t in kept], time.perf_counter() - begin)


# ----------------------------------------------------------------------------------------------- inline
class InlineBackend:
    """Computes everything in the main process, one piece at a time (``backend="inline"``), like SB3's
    DummyVecEnv. Agent runs take turns, one trajectory each. A hung environment cannot be detected here."""

    n_workers = 1

    def __init__(self) -> None:
        self.worker_args: dict[str, Any] = {}
        self.worker: Optional[GradientWorker] = None
        self.units: deque[WorkUnit] = deque()
        self.runs: dict[int, _RunState] = {}
        self.turn: deque[int] = deque()
        self.events: list[Event] = []
        self.published: dict[int, tuple[np.ndarray, Optional[ObsNorm]]] = {}
        self.loaded: Optional[tuple[int, int]] = None
        self.versions: dict[int, int] = {}
        self.live = 0

    def bind(self, worker_args: dict[str, Any], options: BackendOptions) -> None:
        self.worker_args = worker_args

    def start(self) -> None:
        self.worker = GradientWorker(**self.worker_args)
        self.live, self.loaded = 0, None

    def publish(self, params: np.ndarray, obs_norm: Optional[ObsNorm], slot: int = -1) -> None:
        self.published[slot] = (np.array(params, dtype=np.float32), obs_norm)
        self.versions[slot] = self.versions.get(slot, 0) + 1

    def _load(self, slot: int) -> None:
        assert self.worker is not None
        if self.loaded != (slot, self.versions[slot]):
            self.worker.set_params(*self.published[slot])
            self.loaded = (slot, self.versions[slot])

    def submit(self, unit: WorkUnit) -> None:
        self.units.append(unit)

    def start_run(self, run: AgentRun) -> None:
        self.runs[run.agent] = _RunState(run)
        if run.agent not in self.turn:
            self.turn.append(run.agent)

    def flush(self, epoch: int, agent: int, count: int, upload_delay: float = 0.0) -> None:
        state = self.runs.get(agent)
        if state is None or state.run.epoch != epoch:
            return
        del self.runs[agent]
        if count == 0:
            return
        assert self.worker is not None
        self._load(-1)
        with single_threaded_torch():
            self.events.append(_flush_result(self.worker, state, count, lambda: False, 0.0))

    def wait(self, timeout: Optional[float] = None) -> list[Event]:
        assert self.worker is not None
        if self.events:
            events, self.events = self.events, []
            return events
        while self.units:
            unit = self.units.popleft()
            if unit.epoch < self.live:
                continue
            self._load(unit.slot)
            with single_threaded_torch():
                return [self.worker.run_unit(unit)]
        while self.turn:
            agent = self.turn.popleft()
            state = self.runs.get(agent)
            if state is None or not state.active or state.run.epoch < self.live:
                continue
            self._load(-1)
            with single_threaded_torch():
                trajectory = _run_one(self.worker, state, lambda: False)
            self.turn.append(agent)
            events: list[Event] = [AgentReport(state.run.epoch, trajectory.stats)]
            limit = state.run.max_gradients
            if limit is not None and len(state.trajectories) >= limit:
                state.active = False
                with single_threaded_torch():
                    events.append(_flush_result(self.worker, state, limit, lambda: False, 0.0))
                del self.runs[agent]
            return events
        raise RuntimeError("wait() called with no work submitted")

    def cancel(self, epoch: int) -> None:
        self.live = max(self.live, epoch)
        self.units = deque(u for u in self.units if u.epoch >= epoch)
        for state in self.runs.values():
            if state.run.epoch < epoch:
                state.active = False

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        self.units.clear()
        self.runs.clear()
        self.turn.clear()
        self.events.clear()


# ------------------------------------------------------------------------------------------- subprocess
def _picklable(exc: BaseException) -> Optional[BaseException]:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return None


def _worker_main(remote: Connection, parent_remote: Connection, wrapped_args: CloudpickleWrapper, live: Any,
                 shm_name: Optional[str], n_slots: int, n_params: int) -> None:
    """Entry point of a worker process: one torch thread, SIGINT left to the main process, and a loop over small
    commands: ``publish``, ``unit``, ``run``, ``flush``, ``close``. Any other command is rejected."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    th.set_num_threads(1)
    parent_remote.close()
    worker = None
    memory = None
    try:
        worker = GradientWorker(**wrapped_args.var)
        memory = shared_memory.SharedMemory(name=shm_name) if shm_name else None
        slots = np.ndarray((n_slots, n_params), dtype=np.float32, buffer=memory.buf) if memory is not None else None
        published: dict[int, tuple[int, Optional[ObsNorm]]] = {}
        loaded: list[Optional[tuple[int, int]]] = [None]
        runs: dict[int, _RunState] = {}
        turn: deque[int] = deque()

        def load(slot: int, epoch: int) -> None:
            version, obs_norm = published[slot]
            if loaded[0] != (slot, version):
                assert slots is not None
                worker.set_params(np.array(slots[slot + 1]), obs_norm)
                loaded[0] = (slot, version)
            if live.value > epoch:  # θ may have been overwritten by a newer round while it was copied
                loaded[0] = None
                raise JobCancelled()

        def handle(message: tuple) -> bool:
            command = message[0]
            if command == "publish":
                _, slot, version, obs_norm = message
                published[slot] = (version, obs_norm)
            elif command == "unit":
                unit: WorkUnit = message[1]
                cancelled = lambda: live.value > unit.epoch  # noqa: E731
                try:
                    if cancelled():
                        raise JobCancelled()
                    load(unit.slot, unit.epoch)
                    remote.send(("result", worker.run_unit(unit, cancelled)))
                except JobCancelled:
                    remote.send(("cancelled", unit))
            elif command == "run":
                run: AgentRun = message[1]
                runs[run.agent] = _RunState(run)
                if run.agent not in turn:
                    turn.append(run.agent)
            elif command == "flush":
                _, epoch, agent, count, upload_delay = message
                state = runs.pop(agent, None)
                if state is not None and state.run.epoch == epoch and count > 0:
                    # θ of the run's round: the main process publishes the next one only after every flush.
                    version, obs_norm = published[-1]
                    if loaded[0] != (-1, version):
                        worker.set_params(np.array(slots[0]), obs_norm)
                        loaded[0] = (-1, version)
                    remote.send(("result", _flush_result(worker, state, count, lambda: False, upload_delay)))
            elif command == "close":
                return False
            else:
                raise ValueError(f"worker: unknown command {command!r}")
            return True

        while True:
            active = [a for a in turn if a in runs and runs[a].active and runs[a].run.epoch >= live.value]
            if not active:
                try:
                    message = remote.recv()
                except (EOFError, KeyboardInterrupt):
                    break
                if not handle(message):
                    break
                continue
            while remote.poll():
                if not handle(remote.recv()):
                    return
            agent = turn[0]
            turn.rotate(-1)
            state = runs.get(agent)
            if state is None or not state.active or state.run.epoch < live.value:
                continue
            cancelled = lambda: live.value > state.run.epoch  # noqa: E731
            try:
                load(-1, state.run.epoch)
                trajectory = _run_one(worker, state, cancelled)
            except JobCancelled:
                state.active = False
                continue
            remote.send(("report", state.run.epoch, trajectory.stats))
            limit = state.run.max_gradients
            if limit is not None and len(state.trajectories) >= limit:
                state.active = False
                remote.send(("result", _flush_result(worker, state, limit, lambda: False, state.run.upload_delay)))
                del runs[agent]
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
    """The main process's handle on one worker process."""

    def __init__(self, process: Any, remote: Connection):
        self.process = process
        self.remote = remote
        self.units: dict[tuple[int, int, int], WorkUnit] = {}
        self.runs: dict[int, AgentRun] = {}
        self.heard = time.monotonic()

    @property
    def busy(self) -> bool:
        return bool(self.units) or bool(self.runs)


class SubprocessBackend:
    """Runs work in local worker processes (``backend="subprocess"``), as SB3's SubprocVecEnv does.

    θ is written once per round to shared memory; each worker gets a small notice and copies it when it next
    needs it. Each worker keeps up to ``prefetch`` units queued; the main process waits for any worker with
    ``multiprocessing.connection.wait``, also watching each process's sentinel, so a worker that dies is seen at
    once; a busy worker silent for ``worker_timeout`` seconds is declared hung and killed. A lost worker is
    replaced and its work reported (:class:`WorkerLost`) so that the collector can resubmit it.

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
        self.published: dict[int, tuple[int, Optional[ObsNorm]]] = {}
        self.failures = 0
        self.ctx: Any = None
        self.start_method = default_start_method()

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

    def _spawn(self) -> _Worker:
        remote, work_remote = self.ctx.Pipe()
        memory_name = self.memory.name if self.memory is not None else None
        n_slots = 0 if self.slots is None else self.slots.shape[0]
        n_params = 0 if self.slots is None else self.slots.shape[1]
        process = self.ctx.Process(
            target=_worker_main,
            args=(work_remote, remote, CloudpickleWrapper(self.worker_args), self.live, memory_name, n_slots, n_params),
            daemon=True,
        )
        process.start()
        work_remote.close()
        worker = _Worker(process, remote)
        for slot, (version, obs_norm) in self.published.items():  # a replacement catches up on θ
            self._send(worker, ("publish", slot, version, obs_norm))
        return worker

    def start(self) -> None:
        self.ctx = mp.get_context(self.start_method)
        if self.start_method == "forkserver":
            # Import torch and the library once in the fork server instead of once per worker (seconds each).
            self.ctx.set_forkserver_preload(["sb3_nigt.common.backends"])
        self.live = self.ctx.RawValue("q", 0)
        n_params = self._n_params()
        n_slots = 1 + self.options.agent_slots
        self.memory = shared_memory.SharedMemory(create=True, size=max(1, n_slots * n_params * 4))
        self.slots = np.ndarray((n_slots, n_params), dtype=np.float32, buffer=self.memory.buf)
        self.published, self.failures = {}, 0
        try:
            self.workers = [self._spawn() for _ in range(self.n_workers)]
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

    # -------------------------------------------------------------------------------------------- work
    def publish(self, params: np.ndarray, obs_norm: Optional[ObsNorm], slot: int = -1) -> None:
        assert self.slots is not None
        self.slots[slot + 1] = np.asarray(params, dtype=np.float32)
        version = self.published.get(slot, (0, None))[0] + 1
        self.published[slot] = (version, obs_norm)
        for worker in self.workers:
            self._send(worker, ("publish", slot, version, obs_norm))

    def _home(self, agent: int) -> Optional[int]:
        return agent % self.n_workers if self.options.pin_agents else None

    def submit(self, unit: WorkUnit) -> None:
        self.queue.append(unit)
        self._dispatch()

    def _dispatch(self) -> None:
        waiting: deque[WorkUnit] = deque()
        while self.queue:
            unit = self.queue.popleft()
            home = self._home(unit.agent)
            if home is None:
                home = min(range(self.n_workers), key=lambda w: len(self.workers[w].units) + len(self.workers[w].runs))
            worker = self.workers[home]
            if len(worker.units) >= self.prefetch:
                waiting.append(unit)
                if not self.options.pin_agents:
                    waiting.extend(self.queue)
                    self.queue.clear()
                continue
            if not worker.busy:
                worker.heard = time.monotonic()
            worker.units[unit.key] = unit
            self._send(worker, ("unit", unit))
        self.queue = waiting

    def _run_home(self, agent: int) -> int:
        return agent % self.n_workers

    def start_run(self, run: AgentRun) -> None:
        worker = self.workers[self._run_home(run.agent)]
        if not worker.busy:
            worker.heard = time.monotonic()
        worker.runs[run.agent] = run
        self._send(worker, ("run", run))

    def flush(self, epoch: int, agent: int, count: int, upload_delay: float = 0.0) -> None:
        worker = self.workers[self._run_home(agent)]
        run = worker.runs.get(agent)
        if run is None or run.epoch != epoch:
            return
        self._send(worker, ("flush", epoch, agent, count, upload_delay))
        if count == 0:
            del worker.runs[agent]

    def _lose(self, index: int, reason: str) -> WorkerLost:
        worker = self.workers[index]
        try:
            if worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGKILL)
            worker.process.join(timeout=5)
        except (OSError, ValueError):
            pass
        worker.remote.close()
        self.failures += 1
        if self.failures > self.options.max_failures:
            raise WorkerError(
                f"worker processes failed {self.failures} times in a row (last: worker {index}, {reason}); "
                f"training stopped with θ, d_t and the clock at their last good values (max_failures="
                f"{self.options.max_failures})"
            )
        live = self.live.value
        lost = WorkerLost(index, reason, [u for u in worker.units.values() if u.epoch >= live],
                          [r for r in worker.runs.values() if r.epoch >= live])
        self.workers[index] = self._spawn()
        return lost

    def wait(self, timeout: Optional[float] = None) -> list[Event]:
        """Block until at least one event or ``timeout`` seconds; see :class:`Backend`.

        :raises WorkerError: after ``max_failures`` worker losses in a row.
        :raises Exception: a worker's own exception (e.g. ``ValueError`` for a NaN reward), re-raised here.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._dispatch()
        while True:
            busy = [i for i, w in enumerate(self.workers) if w.busy]
            if not busy and not self.queue:
                raise RuntimeError("wait() called with no work submitted")
            step = 1.0
            if self.options.worker_timeout is not None:
                step = min(step, self.options.worker_timeout)
            if deadline is not None:
                step = max(0.0, min(step, deadline - time.monotonic()))
            handles: dict[Any, tuple[int, str]] = {}
            for i in busy:
                handles[self.workers[i].remote] = (i, "pipe")
                handles[self.workers[i].process.sentinel] = (i, "sentinel")
            ready = wait_any(list(handles), timeout=step)
            events: list[Event] = []
            seen: set[int] = set()
            for handle in ready:
                index, kind = handles[handle]
                if index in seen:
                    continue
                worker = self.workers[index]
                if kind == "pipe" or worker.remote.poll():
                    events.extend(self._receive(index))
                else:
                    events.append(self._lose(index, f"process {worker.process.pid} died (exit code {worker.process.exitcode})"))
                seen.add(index)
            now = time.monotonic()
            limit = self.options.worker_timeout
            for index, worker in enumerate(self.workers):
                if index not in seen and limit is not None and worker.busy and now - worker.heard > limit:
                    events.append(self._lose(index, f"no answer for {limit:g} s (hung)"))
            self._dispatch()
            if events or (deadline is not None and time.monotonic() >= deadline):
                return events

    def _receive(self, index: int) -> list[Event]:
        worker = self.workers[index]
        events: list[Event] = []
        while True:
            try:
                message = worker.remote.recv()
            except (EOFError, ConnectionResetError, OSError):
                return events + [self._lose(index, f"process {worker.process.pid} died")]
            worker.heard = time.monotonic()
            kind = message[0]
            if kind == "error":
                _, exc, text = message
                if exc is not None:
                    raise exc from WorkerError(f"in worker process {index}:\n{text}")
                raise WorkerError(f"worker process {index} failed:\n{text}")
            if kind == "result":
                result: UnitResult = message[1]
                unit = result.unit
                worker.units.pop(unit.key, None)
                run = worker.runs.get(unit.agent)
                if run is not None and run.epoch == unit.epoch:
                    del worker.runs[unit.agent]
                self.failures = 0
                events.append(result)  # the collector keeps what it asked for
            elif kind == "cancelled":
                worker.units.pop(message[1].key, None)
            elif kind == "report":
                self.failures = 0
                events.append(AgentReport(message[1], message[2]))
            if not worker.remote.poll():
                return events

    def cancel(self, epoch: int) -> None:
        if self.live is not None:
            self.live.value = max(self.live.value, epoch)
        self.queue = deque(u for u in self.queue if u.epoch >= epoch)
        # Units already sent answer "cancelled"; runs of ended epochs wait for their flush.

    def close(self) -> None:
        """Stop every worker: ask politely, then terminate, then kill. Safe to call more than once."""
        if self.live is not None:
            self.live.value = 2**62  # running work is abandoned at once
        for worker in self.workers:
            self._send(worker, ("close",))
        deadline = time.monotonic() + 2
        for worker in self.workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=2)
            if worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGKILL)
                worker.process.join()
            worker.remote.close()
        self.workers = []
        self.queue.clear()
        self.slots = None
        if self.memory is not None:
            self.memory.close()
            try:
                self.memory.unlink()
            except FileNotFoundError:
                pass
            self.memory = None


register_backend("inline", InlineBackend)
register_backend("subprocess", SubprocessBackend)

