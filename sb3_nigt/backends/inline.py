"""The inline backend (``backend="inline"``, the default): every piece of work in the main process, one at a time,
as SB3's DummyVecEnv steps its environments (docs/backends.md)."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import time
from collections import deque
from typing import Any, Callable, Optional

import numpy as np

from sb3_nigt.backends.contract import (
    BackendHooks,
    BackendOptions,
    Event,
    check_params,
    check_slot,
    single_threaded_torch,
)
from sb3_nigt.workers.loop import RunState, flush_result
from sb3_nigt.workers.messages import AgentReport, AgentRun
from sb3_nigt.workers.rollout import GradientWorker, ObsNorm, UnitResult, WorkUnit


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
            self._hold(due, AgentReport(state.run.epoch, state.pending[0].stats, due - state.next_at), state)
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
