"""The round planner on the simulated clock (docs/time.md, and the time model in :mod:`sb3_nigt.clock.rounds`):
Rennala, Malenia and Synchronized NIGT play a round's events in exact time and learn which gradients count, when,
and when each agent stops.

Outages (docs/time.md, "Outages"): a down agent neither computes nor communicates; the gradient it was computing is
lost, and so are the gradients it had counted but not yet uploaded (held locally): they are uncounted and the round
goes on. When it comes back it receives θ again (κ_i) and starts afresh.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import numpy as np

from sb3_nigt.backends.contract import Backend
from sb3_nigt.clock.events import Event, EventEngine, Order
from sb3_nigt.clock.exact import ExactTime
from sb3_nigt.clock.timing import TimeCounters, TimingModel
from sb3_nigt.clock.trace import TraceEvent
from sb3_nigt.core.aggregation import AggregationRule, RennalaAggregation
from sb3_nigt.workers.rollout import UnitResult, WorkUnit

#: A counted gradient: (finish time in seconds, agent, index).
Counted = tuple[ExactTime, int, int]


class Agents(Protocol):
    """What the planner uses of the collector (:class:`~sb3_nigt.clock.rounds.Collector`)."""

    timing: TimingModel
    counters: TimeCounters
    backend: Backend
    n_agents: int
    record_trace: bool

    def transfer(self, agent: int, start: Any) -> ExactTime: ...
    def compute_unit(self, agent: int, start: Any) -> ExactTime: ...
    def unit(self, round_index: int, agent: int, first: int, count: int, **extra: Any) -> WorkUnit: ...
    def await_unit(self, key: tuple[int, int], results: dict[tuple[int, int], UnitResult]) -> UnitResult: ...


@dataclass
class Plan:
    """A planned round.

    :param counted: the counted gradients, in the order they were counted.
    :param stops: agents that stopped (and uploaded) before the rule was met: agent → stop time (Synchronized NIGT).
    :param stop: when the rule was met (seconds, exact).
    :param downs: outages felt during the round: (agent, from, until; ``math.inf`` for good).
    """

    counted: list[Counted]
    stops: dict[int, ExactTime]
    stop: ExactTime
    downs: list[tuple[int, ExactTime, Any]] = field(default_factory=list)


def plan_round(agents: Agents, rule: AggregationRule, round_index: int, start: ExactTime, trace: list[TraceEvent],
               results: dict[tuple[int, int], UnitResult]) -> Plan:
    """Plan one round from ``start`` (seconds); adds to ``rule``, to the work counters and to ``trace``.

    With per-step times each started gradient is submitted to the backend at once, speculatively (its length sets
    its finish), and its result lands in ``results``. Rennala rounds with constant times and many agents take the
    vectorized path (:func:`plan_vectorized`), which gives exactly what the event loop gives.

    :raises RuntimeError: when the rule can never be satisfied (agents down for good, or none computing).
    """
    agents.timing.begin_round(round_index, agents.counters)  # recorded times re-align their counters by round
    fast = plan_vectorized(agents, rule, start)
    return fast if fast is not None else RoundPlanner(agents, rule, round_index, start, trace, results).run()


class RoundPlanner:
    """One round's event loop over :class:`~sb3_nigt.clock.events.EventEngine` (see :func:`plan_round`)."""

    def __init__(self, agents: Agents, rule: AggregationRule, round_index: int, start: ExactTime, trace: list[TraceEvent],
                 results: dict[tuple[int, int], UnitResult]):
        self.agents, self.rule, self.round_index, self.start, self.trace = agents, rule, round_index, start, trace
        self.timing = agents.timing
        self.engine = EventEngine(self.timing, agents.compute_unit, lambda a, i: agents.await_unit((a, i), results).n_steps,
                                  self._finished)
        self.next_index = [0] * agents.n_agents
        self.gone: set[int] = set()
        self.plan = Plan([], {}, start)

    def run(self) -> Plan:
        for agent in range(self.agents.n_agents):
            self._deliver(agent, self.start)
        while not self.rule.done():
            event = self.engine.next_event()
            if event is None:
                missing = sorted(self.gone)
                raise RuntimeError(
                    "the aggregation rule can never be satisfied: no agent is computing"
                    + (f" (agents {missing} are down for good; {type(self.rule).__name__} needs them)" if missing else "")
                )
            if event.order == Order.START:
                self._schedule(event.agent, event.time)
            elif event.order == Order.DOWN:
                self._down(event)
            else:
                self._count(event)
        self._trace_computes()
        return self.plan

    def _record(self, agent: int, kind: str, index: int, begin: Any, end: Any, status: str) -> None:
        self.trace.append(TraceEvent(self.round_index, agent, kind, index, begin, end, status))

    def _deliver(self, agent: int, at: ExactTime) -> None:
        """Broadcast θ to ``agent`` from ``at`` on (later if it is down); it then starts computing."""
        up = self.timing.down_until(agent, at)
        if up is not None:
            if up == math.inf:
                self._lose_for_good(agent)
                return
            assert isinstance(up, ExactTime)  # an outage's end is exact unless it is math.inf
            at = up
        arrive = at + self.agents.transfer(agent, at)
        cut = self.timing.next_outage(agent, at, arrive)
        if cut is not None:  # the broadcast is cut by an outage: θ is sent again when the agent is back
            self._record(agent, "broadcast", -1, at, cut, "abandoned")
            self.engine.push(cut, Order.DOWN, agent)
            return
        self._record(agent, "broadcast", -1, at, arrive, "sent")
        self.engine.push(arrive, Order.START, agent)

    def _schedule(self, agent: int, at: ExactTime) -> None:
        """``agent`` starts its next gradient at ``at`` (with per-step times, computed now, speculatively)."""
        index = self.next_index[agent]
        self.next_index[agent] += 1
        if self.timing.per_step:
            self.agents.backend.submit(self.agents.unit(self.round_index, agent, index, 1))
        self.engine.compute(agent, index, at)

    def _finished(self, agent: int, index: int, finish: ExactTime) -> None:
        cut = self.timing.next_outage(agent, self.engine.started[(agent, index)], finish) if self.timing.outages else None
        self.engine.push(finish if cut is None else cut, Order.FINISH if cut is None else Order.DOWN, agent, index)

    def _count(self, event: Event) -> None:
        rule, plan = self.rule, self.plan
        rule.add(event.agent)
        plan.counted.append((event.time, event.agent, event.gradient))
        plan.stop = event.time
        if not rule.wants_more(event.agent):
            plan.stops[event.agent] = event.time
        elif not rule.done():
            self._schedule(event.agent, event.time)

    def _down(self, event: Event) -> None:
        """An outage starts: the agent's gradient in flight and its counted, unsent gradients are lost."""
        at, agent, started = event.time, event.agent, self.engine.started
        if event.gradient >= 0:
            self._record(agent, "compute", event.gradient, started[(agent, event.gradient)], at, "abandoned")
        if self.rule.counts[agent] and agent not in self.plan.stops:  # held, unsent: lost with the agent
            self.rule.forget(agent)
            for entry in [c for c in self.plan.counted if c[1] == agent]:
                self.plan.counted.remove(entry)
                self._record(agent, "compute", entry[2], started[(agent, entry[2])], entry[0], "abandoned")
        up = self.timing.down_until(agent, at)
        self.plan.downs.append((agent, at, up))
        if up == math.inf:
            self._lose_for_good(agent)
        else:
            assert isinstance(up, ExactTime)  # the agent is down at ``at``, the start of its outage
            self._deliver(agent, up)

    def _lose_for_good(self, agent: int) -> None:
        self.gone.add(agent)
        if self.rule.needs_every_agent and not self.rule.counts[agent]:
            raise RuntimeError(
                f"the aggregation rule can never be satisfied: agents {sorted(self.gone)} are down for good (outages) "
                f"and {type(self.rule).__name__} needs a gradient from every agent"
            )

    def _trace_computes(self) -> None:
        """The counted gradients, then those still in flight when the round stopped (abandoned at the stop)."""
        plan, started = self.plan, self.engine.started
        plan.stop = max((c[0] for c in plan.counted), default=plan.stop)
        for at, agent, index in plan.counted:
            self._record(agent, "compute", index, started[(agent, index)], at, "counted")
        for event in sorted(self.engine.queue):
            if event.order == Order.FINISH and started[(event.agent, event.gradient)] < plan.stop:
                self._record(event.agent, "compute", event.gradient, started[(event.agent, event.gradient)], plan.stop, "abandoned")


@functools.lru_cache(maxsize=8)
def _constant_times(timing: TimingModel) -> Optional[tuple[list[ExactTime], list[ExactTime], np.ndarray, np.ndarray]]:
    """Exact and float (h_i, κ_i) of every agent when both are constant, computed once per timing model."""
    constant = timing.constant_times()
    if constant is None:
        return None
    return (*constant, np.array([float(x) for x in constant[0]]), np.array([float(x) for x in constant[1]]))


def plan_vectorized(agents: Agents, rule: AggregationRule, start: ExactTime) -> Optional[Plan]:
    """The Rennala round of :class:`RoundPlanner` with NumPy, for constant times, no outages and no trace: thousands
    of agents cost a few vectorized passes instead of one Python event each.

    Agent i's k-th finish is at T0 + κ_i + k·h_i. A float bisection finds the time of the M-th finish; every finish
    up to a hair above it is then ordered exactly (times, ties by agent index) and the first M count. Returns None
    where it does not apply (the event loop then plans the round).
    """
    timing = agents.timing
    if type(rule) is not RennalaAggregation or agents.record_trace or timing.outages or agents.n_agents < 64 or rule.counts.any():
        return None
    constant = _constant_times(timing)
    if constant is None:
        return None
    h_exact, kappa_exact, h, kappa = constant
    m = rule.batch_size

    def finished(t: float) -> np.ndarray:
        return np.clip(np.floor((t - kappa) / h), 0, m)

    low, high = 0.0, float(np.min(kappa + m * h))
    for _ in range(100):  # the smallest t with at least M finishes, to float precision
        middle = 0.5 * (low + high)
        if middle <= low or middle >= high:
            break
        if finished(middle).sum() >= m:
            high = middle
        else:
            low = middle
    margin = high * (1 + 1e-9) + 1e-12  # a superset of the true first M, whatever the rounding
    counts = finished(margin).astype(np.int64)
    candidates = [(kappa_exact[i] + h_exact[i] * k, int(i), k - 1) for i in np.flatnonzero(counts) for k in range(1, int(counts[i]) + 1)]
    candidates.sort(key=lambda c: (c[0], c[1]))
    counted = [(start + at, agent, index) for at, agent, index in candidates[:m]]
    for _, agent, _ in counted:
        rule.add(agent)
    stop = counted[-1][0]
    # Work counters, as the event loop keeps them: one broadcast each; counted gradients plus the one in flight.
    started = (kappa + rule.counts * h) <= float(stop - start) * (1 + 1e-12)
    started[counted[-1][1]] = False  # the round ends at that agent's finish: it does not start again
    counters = agents.counters
    counters.communication[:] = (np.asarray(counters.communication) + 1).tolist()
    counters.compute[:] = (np.asarray(counters.compute) + rule.counts + started).tolist()
    return Plan(counted, {}, stop)


def upload(agents: Agents, rule: AggregationRule, plan: Plan, round_index: int, trace: list[TraceEvent]) -> ExactTime:
    """Each contributing agent uploads when it stops (``plan.stops[i]``, else ``plan.stop``), κ_i; the outages felt
    during the round are traced up to its end. Returns the round's end, the last upload's arrival (seconds, exact)."""
    end: Optional[ExactTime] = None
    for flat in np.flatnonzero(rule.counts):
        agent = int(flat)
        begin = plan.stops.get(agent, plan.stop)
        arrive = begin + agents.transfer(agent, begin)
        trace.append(TraceEvent(round_index, agent, "upload", -1, begin, arrive, "sent"))
        end = arrive if end is None or arrive > end else end
    assert end is not None  # the rule is met: some agent contributes
    for agent, down, up in plan.downs:
        until = end if up == math.inf or up > end else up
        trace.append(TraceEvent(round_index, agent, "compute", -1, down, max(down, until), "down"))
    return end
