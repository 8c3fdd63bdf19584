"""The simulated clock's discrete-event engine: event order, per-step lower bounds, and lost work resubmitted."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from sb3_nigt import TimingModel
from sb3_nigt.backends.contract import WorkerLost
from sb3_nigt.clock.events import Event, EventEngine, Order
from sb3_nigt.clock.exact import ExactTime
from sb3_nigt.clock.rounds import Collector
from sb3_nigt.workers.rollout import UnitResult


def _time(x) -> ExactTime:
    return ExactTime.of(Fraction(x))


def test_events_play_by_time_then_order_then_agent():
    engine = EventEngine(TimingModel(3), lambda a, t: _time(1), lambda a, i: 1, lambda a, i, t: None)
    pushed = [Event(_time(2), Order.START, 0), Event(_time(1), Order.FINISH, 2, 0), Event(_time(1), Order.FINISH, 1, 0),
              Event(_time(1), Order.START, 2), Event(_time(1), Order.DOWN, 2, 3)]
    for event in pushed:
        engine.push(*event)
    played = [engine.next_event() for _ in pushed]
    assert played == [pushed[4], pushed[3], pushed[2], pushed[1], pushed[0]]
    assert engine.next_event() is None


def test_known_durations_finish_at_once_and_per_step_ones_after_the_trajectory():
    finished: list[tuple[int, int, ExactTime]] = []
    known = EventEngine(TimingModel(2, [0.5, 2.0], compute_time_unit="horizon", horizon=4), lambda a, t: _time("0.5"),
                        lambda a, i: 99, lambda *f: finished.append(f))
    assert known.compute(1, 0, _time(1)) == _time("0.5")
    assert finished == [(1, 0, _time(3))] and known.next_event() is None  # h_i·H = 0.5·4 from t = 1

    finished.clear()
    asked: list[tuple[int, int]] = []
    per_step = EventEngine(TimingModel(2, [0.5, 2.0], compute_time_unit="step"), lambda a, t: _time("0.25"),
                           lambda a, i: asked.append((a, i)) or 6, lambda *f: finished.append(f))
    per_step.compute(0, 3, _time(1))
    assert finished == [] and per_step.queue == [Event(_time("1.25"), Order.BOUND, 0, 3)]  # one step: a lower bound
    assert per_step.next_event() is None  # the bound is settled on the way: 6 steps of 0.25 s from t = 1
    assert asked == [(0, 3)] and finished == [(0, 3, _time("2.5"))]


class _LosingBackend:
    """Answers the first wait with a lost worker holding two units (one already answered), then with results."""

    def __init__(self):
        self.submitted: list = []
        self.waits = 0

    def cancel(self, epoch: int) -> None:
        pass

    def submit(self, unit) -> None:
        self.submitted.append(unit)

    def wait(self, timeout=None):
        self.waits += 1
        if self.waits == 1:
            return [UnitResult(self.units[0], np.ones(2), [], 0.0), WorkerLost(0, "killed", list(self.units))]
        return [UnitResult(unit, np.full(2, 2.0), [], 0.0) for unit in self.submitted]


def test_lost_units_are_resubmitted_once_unless_answered():
    backend = _LosingBackend()
    collector = Collector(backend, TimingModel(2), "simulated", horizon=5, gamma=0.99, seed=0, agent_env_index=[0, 0])
    collector.next_epoch()
    backend.units = [collector.unit(0, 0, 0, 1), collector.unit(0, 1, 0, 1)]
    results: dict = {}
    with pytest.warns(RuntimeWarning, match="worker 0 lost"):
        result = collector.await_unit((1, 0), results)
    assert [(u.agent, u.first) for u in backend.submitted] == [(1, 0)]  # agent 0's unit was answered already
    assert result.unit.agent == 1 and sorted(results) == [(0, 0), (1, 0)]
    assert collector.lost_agents == [0, 1]
