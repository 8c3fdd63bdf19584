"""The event loop of one worker, the same wherever it runs (a process of the subprocess backend, a thread of a Ray
actor), and the state of an agent run where it is computed (also used by the inline backend)."""

from __future__ import annotations

import heapq
import itertools
import time
import traceback
from typing import Any, Callable, Optional

import numpy as np

from sb3_nigt.workers.messages import (
    AgentRun,
    Alive,
    Close,
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
    picklable,
)
from sb3_nigt.workers.rollout import GradientWorker, JobCancelled, Trajectory, TrajectoryStats, UnitResult, WorkUnit


class RunState:
    """An agent run where it is computed: its trajectories so far, kept until the flush (memory ∝ their lengths),
    when its next trajectory may start, and the trajectory sampled but not yet finished in emulated time."""

    def __init__(self, run: AgentRun, received: float):
        self.run = run
        self.trajectories: list[Trajectory] = []
        self.next_at = received + run.delay
        self.pending: Optional[tuple[Trajectory, float]] = None
        self.seconds = 0.0  # wall seconds of the last finished trajectory, from when it could start to its end

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
        trajectory = worker.sample_batch([(run.agent, index, run.env_index)], run.seed, run.horizon, cancelled, run.round_index)[0]
        return trajectory, max(self.next_at + self.emulated(trajectory), time.monotonic())

    def finish(self) -> TrajectoryStats:
        """The pending trajectory ends: keep it, and its duration in ``seconds``; the next one starts now (emulated)."""
        assert self.pending is not None
        trajectory, finish = self.pending
        self.trajectories.append(trajectory)
        self.seconds = finish - self.next_at
        self.next_at, self.pending = finish, None
        return trajectory.stats

    @property
    def limit_reached(self) -> bool:
        return self.run.max_gradients is not None and len(self.trajectories) >= self.run.max_gradients

    @property
    def due(self) -> float:
        """When this run next needs the loop: its pending trajectory's emulated end, or its next start."""
        return self.pending[1] if self.pending is not None else self.next_at


def flush_result(worker: GradientWorker, state: RunState, count: int) -> UnitResult:
    """The sum of the run's first ``count`` trajectories, float64 ``(d,)``, at the loaded θ, as a unit's result.

    :raises ValueError: when ``count`` exceeds the trajectories the run finished.
    """
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
    """The event loop of one worker: small commands (:mod:`sb3_nigt.workers.messages`), and the agent runs it
    holds. Emulated waits are deadlines, not sleeps, so a flush is handled at once and runs held by one worker wait
    concurrently.

    Commands: :class:`ComputeUnit`, :class:`StartRun`, :class:`Flush`, :class:`Close`; any other raises
    ``ValueError``. Messages sent: :class:`UnitDone`, :class:`UnitCancelled`, :class:`TrajectoryDone`,
    :class:`RunFlushed` (its ``seconds`` include the upload delay) and :class:`Alive`, when it has said nothing for
    ``heartbeat`` seconds while busy.

    :param worker: computes trajectories and gradient sums.
    :param send: sends one message to the main process; must not block for long.
    :param receive: the next command, waiting up to ``timeout`` seconds (None: without limit); None if none came
        in time; raises ``EOFError`` once the channel is closed (the loop then ends as on :class:`Close`).
    :param live: the live epoch; work of lower epochs is abandoned.
    :param fetch: ``fetch(slot, handle)``: θ of a slot (-1: the broadcast), a float32 vector of shape (d,).
    :param heartbeat: seconds between heartbeats of a busy loop; None: none.
    """

    def __init__(self, worker: GradientWorker, send: Callable[[Any], None], receive: Callable[[Optional[float]], Any],
                 live: Callable[[], int], fetch: Callable[[int, Any], np.ndarray], heartbeat: Optional[float]) -> None:
        self.worker = worker
        self._send = send
        self.receive = receive
        self.live = live
        self.fetch = fetch
        self.heartbeat = heartbeat
        self.last_sent = time.monotonic()
        self.published: dict[int, Theta] = {}
        self.loaded: Optional[tuple[int, int]] = None  # (slot, version) of the worker's θ
        self.runs: dict[int, RunState] = {}
        self.outbox: list[tuple[float, int, int, RunFlushed]] = []  # (due, order, epoch, message): emulated uploads
        self.order = itertools.count()
        self.handlers: dict[type, Callable[[Any], bool]] = {
            ComputeUnit: self.compute_unit, StartRun: self.start_run, Flush: self.flush, Close: lambda _: False,
        }

    def send(self, message: Any) -> None:
        self._send(message)
        self.last_sent = time.monotonic()

    def beat(self) -> None:
        if self.heartbeat is not None and time.monotonic() - self.last_sent >= self.heartbeat:
            self.send(Alive())

    def cancelled_below(self, epoch: int) -> Callable[[], bool]:
        def cancelled() -> bool:  # called every 64 environment steps and every 10 ms of an emulated wait
            self.beat()
            return self.live() > epoch

        return cancelled

    def load(self, slot: int, epoch: int) -> None:
        """Give the worker θ of ``slot`` (once per version); JobCancelled if a newer epoch began meanwhile."""
        if slot not in self.published:
            raise RuntimeError(f"worker: no θ was published to slot {slot}")
        theta = self.published[slot]
        if self.loaded != (slot, theta.version):
            self.worker.set_params(self.fetch(slot, theta.handle), theta.obs_norm)
            self.loaded = (slot, theta.version)
        if self.live() > epoch:  # shared memory: θ may have been overwritten by a newer round while it was copied
            self.loaded = None
            raise JobCancelled()

    def upload(self, state: RunState, count: int, delay: float) -> None:
        """Send the sum of the run's first ``count`` trajectories ``delay`` seconds from now."""
        epoch = state.run.epoch
        try:
            self.load(-1, epoch)  # θ of the run's round: a new round's θ is published only after a cancel
        except JobCancelled:
            return
        result = flush_result(self.worker, state, count)
        result.seconds += delay
        heapq.heappush(self.outbox, (time.monotonic() + delay, next(self.order), epoch, RunFlushed(result)))

    # ------------------------------------------------------------------------------------ commands
    def handle(self, message: Any) -> bool:
        """Apply one command; False for :class:`Close`. :raises ValueError: for an unknown command."""
        return dispatch(message, self.handlers, "worker")

    def compute_unit(self, message: ComputeUnit) -> bool:
        unit = message.unit
        self.published[unit.slot] = message.theta
        cancelled = self.cancelled_below(unit.epoch)
        try:
            if cancelled():
                raise JobCancelled()
            self.load(unit.slot, unit.epoch)
            result = self.worker.run_unit(unit, cancelled)
        except JobCancelled:
            self.send(UnitCancelled(unit))
        else:
            self.send(UnitDone(result))
        return True

    def start_run(self, message: StartRun) -> bool:
        self.published[-1] = message.theta
        self.runs[message.run.agent] = RunState(message.run, time.monotonic())
        return True

    def flush(self, message: Flush) -> bool:
        state = self.runs.get(message.agent)
        if state is not None and state.run.epoch == message.epoch:
            del self.runs[message.agent]  # its trajectory in progress, if any, is dropped
            if message.count > 0:
                self.upload(state, message.count, message.upload_delay)
        return True

    # ---------------------------------------------------------------------------------------- runs
    def step(self, state: RunState) -> bool:
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
        stats = state.finish()
        self.send(TrajectoryDone(run.epoch, stats, state.seconds))
        if state.limit_reached:  # Synchronized NIGT: the agent stops and uploads at once
            del self.runs[run.agent]
            self.upload(state, len(state.trajectories), run.upload_delay)
        return True

    def _next(self, timeout: Optional[float]) -> Any:
        """The next command (see ``receive``); a closed channel reads as :class:`Close`."""
        try:
            return self.receive(timeout)
        except EOFError:
            return Close()

    def _drop_cancelled(self) -> None:
        """Forget runs and uploads of epochs below the live one (their memory is freed, a flush of them ignored)."""
        epoch = self.live()
        for agent in [a for a, s in self.runs.items() if s.run.epoch < epoch]:
            del self.runs[agent]
        if any(entry[2] < epoch for entry in self.outbox):
            self.outbox[:] = [entry for entry in self.outbox if entry[2] >= epoch]
            heapq.heapify(self.outbox)

    def _advance(self) -> bool:
        """Send the uploads that are due and advance every run; whether anything happened."""
        while self.outbox and self.outbox[0][0] <= time.monotonic():
            self.send(heapq.heappop(self.outbox)[3])
        progressed = False
        for state in list(self.runs.values()):
            if self.runs.get(state.run.agent) is state:
                progressed = self.step(state) or progressed
        return progressed

    def _idle_timeout(self) -> Optional[float]:
        """How long to wait for a command: without limit when idle, else until the next deadline (at most 50 ms, a
        cancellation check)."""
        if not self.runs and not self.outbox:
            return None
        due = [entry[0] for entry in self.outbox[:1]] + [s.due for s in self.runs.values()]
        return min(max(min(due) - time.monotonic(), 0.0), 0.05)

    def _commands(self) -> bool:
        """Apply the commands already waiting; False once one was :class:`Close`."""
        while (message := self._next(0.0)) is not None:
            if not self.handle(message):
                return False
        return True

    def run(self) -> None:
        """Loop until :class:`Close` or a closed channel; an exception of the work propagates."""
        while True:
            self._drop_cancelled()
            if self.runs or self.outbox:
                if not self._commands():
                    return
                if self._advance():
                    continue
                self.beat()
            message = self._next(self._idle_timeout())
            if message is not None and not self.handle(message):
                return


def serve(build: Callable[[], tuple[GradientWorker, Callable[[int, Any], np.ndarray]]], send: Callable[[Any], None],
          receive: Callable[[Optional[float]], Any], live: Callable[[], int], heartbeat: Optional[float]) -> str:
    """Build a worker and its ``fetch`` with ``build()``, run a :class:`WorkerLoop` over them (the other arguments
    are the loop's) until it ends, then close the worker. An exception (of the build or the work) is sent to the
    main process as :class:`Failed`, which re-raises it there, instead of propagating.

    :return: why the loop ended: ``"closed"``, or the exception.
    """
    worker: Optional[GradientWorker] = None
    try:
        worker, fetch = build()
        WorkerLoop(worker, send, receive, live, fetch, heartbeat).run()
        return "closed"
    except Exception as exc:
        try:
            send(Failed(picklable(exc), traceback.format_exc()))
        except (BrokenPipeError, OSError):  # the main process closed the channel
            pass
        return f"its loop stopped: {type(exc).__name__}: {exc}"
    finally:
        if worker is not None:
            worker.close()
