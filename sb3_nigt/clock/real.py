"""The real clock (docs/time.md): one round driver for every backend (paper, Algorithms 2 and 3).

Every agent i samples trajectories at the broadcast θ̃_t until the rule is met, in the order they physically
finish, accumulates its M_i gradients locally and sends its sum ḡ_i once. :class:`RealRound` launches every
agent's run (θ delayed by κ_i), counts the finished trajectories as an :class:`ArrivalCounter` says, flushes the
running agents when the rule is met, and collects each contributing agent's one vector. An agent whose worker is
lost before its vector arrived loses its counted gradients: they are uncounted and it starts again (here only).

A backend supplies only how arrivals are counted: in the main process (inline, subprocess, Ray: reports come
through ``backend.wait()``) :class:`LocalCounter` asks the rule; torch.distributed ranks count through torch's
``TCPStore`` with the counter of their backend's ``arrival_counter(rule, round_index, epoch, time_scale)``.
``time_scale`` emulates h_i and κ_i with sleeps (:class:`WallClock`, also used by AFedPG's real-clock server).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Protocol

import numpy as np

from sb3_nigt.backends.contract import Backend, Event, WorkerLost
from sb3_nigt.backends.registry import hooks_of
from sb3_nigt.clock.trace import TraceEvent
from sb3_nigt.core.aggregation import AggregationRule
from sb3_nigt.workers.messages import AgentReport, AgentRun
from sb3_nigt.workers.rollout import TrajectoryStats, UnitResult


class WallClock:
    """Seconds on the model's clock during a real-clock run, and the timing model's draws turned into sleeps.

    :param collector: reads ``timing`` (the :class:`~sb3_nigt.clock.timing.TimingModel`), ``counters`` (the
        agents' :class:`~sb3_nigt.clock.timing.TimeCounters`, advanced by every draw) and ``time_scale``
        (seconds of sleep per second of h_i or κ_i; None or 0: no emulation, draws still advance the counters).
    :param base: the clock's time at the start (seconds).
    """

    def __init__(self, collector: Any, base: float):
        self.timing, self.counters = collector.timing, collector.counters
        self.scale = float(collector.time_scale or 0.0)
        self.base, self.wall = base, time.perf_counter()

    def now(self) -> float:
        """``base`` plus the wall seconds elapsed since the clock was made."""
        return self.base + (time.perf_counter() - self.wall)

    def transfer(self, agent: int, at: float) -> float:
        """Seconds of sleep for agent ``agent``'s next transfer (κ_i · scale) starting at ``at``."""
        counter = self.counters.communication[agent]
        self.counters.communication[agent] += 1
        return float(self.timing.communication_time(agent, at, counter)) * self.scale

    def computes(self, agent: int, at: float, count: int) -> tuple[float, ...]:
        """Seconds of sleep for the agent's next ``count`` gradients (h_i · scale; per environment step with
        per-step times), the first starting at ``at``."""
        first, timing = self.counters.compute[agent], self.timing
        self.counters.compute[agent] += count
        units = [timing.compute_time(agent, at, first + k) for k in range(count)]
        return tuple(float(u if timing.per_step else timing.duration(u)) * self.scale for u in units)


def lost_work(collector: Any, event: WorkerLost) -> WorkerLost:
    """A worker was lost: warn, record its agents (``collector.lost_agents``, the round's ``lost``), and return
    its runs and units of the current cancellation epoch (``collector.epoch``), which the caller starts again."""
    warnings.warn(f"worker {event.worker} lost ({event.reason}); its work is resubmitted", RuntimeWarning, stacklevel=4)
    collector.lost_agents.extend(sorted({u.agent for u in event.units} | {r.agent for r in event.runs}))
    epoch = collector.epoch
    return WorkerLost(event.worker, event.reason, [u for u in event.units if u.epoch == epoch],
                      [r for r in event.runs if r.epoch == epoch])


@dataclass
class Counted:
    """One counted gradient: ``agent``'s trajectory ``index``, the ``order``-th to arrive (over every rank), at
    ``at`` seconds on the clock; ``seconds``: its duration measured on its worker (None: not measured)."""

    order: int
    at: float
    agent: int
    index: int
    stats: TrajectoryStats
    seconds: Optional[float] = None


@dataclass
class Tally:
    """What a process saw of a round: every agent's on one process, its own agents' on a torch.distributed rank.

    :param counted: agent → its counted gradients, in arrival order.
    :param sums: agent → ḡ_i, the sum of its counted gradients (float64, ``(d,)``), once it arrived.
    :param uploaded: agent → when its sum arrived (seconds).
    :param stops: agent → when it stopped of itself (the rule wanted no more from it; seconds).
    :param stop: when the rule was met and the running agents were flushed (seconds).
    :param vectors: gradient vectors that reached this process.
    """

    counted: dict[int, list[Counted]]
    sums: dict[int, np.ndarray] = field(default_factory=dict)
    uploaded: dict[int, float] = field(default_factory=dict)
    stops: dict[int, float] = field(default_factory=dict)
    stop: float = 0.0
    vectors: int = 0

    @staticmethod
    def merged(tallies: list["Tally"]) -> "Tally":
        """The round as a whole, from tallies of disjoint agents: the latest stop, every vector."""
        whole = Tally({}, stop=max(t.stop for t in tallies), vectors=sum(t.vectors for t in tallies))
        for tally in tallies:
            for agent, counted in tally.counted.items():
                whole.counted[agent] = whole.counted.get(agent, []) + counted
            whole.sums.update(tally.sums)
            whole.uploaded.update(tally.uploaded)
            whole.stops.update(tally.stops)
        return whole


class ArrivalCounter(Protocol):
    """How a real-clock round counts arrivals. ``backend`` runs this process's agents; ``poll``: seconds a ``wait``
    may block before :meth:`done` is asked again."""

    backend: Backend
    poll: float

    def owns(self, agent: int) -> bool:
        """Whether ``agent`` runs in this process."""

    def arrive(self, agent: int) -> Optional[int]:
        """Count the agent's finished trajectory on the rule (``rule.add``) and return its place in the round's
        arrival order (from 1); None: it does not count (the round is over)."""

    def done(self) -> bool:
        """Whether the round is over (the rule is met, here or on another rank)."""

    def forget(self, agent: int) -> None:
        """Uncount the agent's gradients (its worker was lost). :raises RuntimeError: where they cannot be."""

    def combine(self, tally: Tally, error: Optional[BaseException]) -> Tally:
        """The whole round from this process's ``tally``; the rule then holds every agent's count.
        :raises BaseException: ``error``, or another rank's."""


class LocalCounter:
    """Arrivals counted in the main process, in the order ``backend.wait()`` returns them: the rule decides."""

    poll = 1.0

    def __init__(self, rule: AggregationRule, backend: Backend):
        self.rule, self.backend = rule, backend
        self.arrived = 0

    def owns(self, agent: int) -> bool:
        return True

    def arrive(self, agent: int) -> Optional[int]:
        if self.rule.done():
            return None
        self.rule.add(agent)
        self.arrived += 1
        return self.arrived

    def done(self) -> bool:
        return self.rule.done()

    def forget(self, agent: int) -> None:
        self.rule.forget(agent)

    def combine(self, tally: Tally, error: Optional[BaseException]) -> Tally:
        if error is not None:
            raise error
        return tally


@dataclass
class RealRoundResult:
    """The counted gradients in arrival order, ḡ_i by contributing agent, stop and end (seconds), vectors."""

    counted: list[Counted]
    sums: dict[int, np.ndarray]
    stop: float
    end: float
    vectors: int


class RealRound:
    """One aggregation round on the real clock (the steps are in the module docstring).

    :param collector: reads ``backend``, ``timing``, ``counters``, ``time_scale``, ``epoch``, ``n_agents``, ``seed``,
        ``agent_env_index``, ``horizon``, ``gamma`` and ``lost_agents`` (appended to).
    :param rule: the round's aggregation rule (fresh); it holds M_i of every agent at the end.
    :param round_index: the round (job seeds (seed, round, agent, index)).
    :param start: the clock's time at the round's start (seconds).
    :param trace: the list the round's events are appended to.
    """

    def __init__(self, collector: Any, rule: AggregationRule, round_index: int, start: float, trace: list[TraceEvent]):
        hook = hooks_of(collector.backend).arrival_counter  # torch.distributed: counted through a TCPStore
        self.counter: ArrivalCounter = (hook(rule, round_index, collector.epoch, collector.time_scale) if hook is not None
                                        else LocalCounter(rule, collector.backend))
        self.collector, self.rule, self.round_index, self.trace = collector, rule, round_index, trace
        self.clock = WallClock(collector, start)
        self.first = [0] * collector.n_agents  # each restart of an agent starts past its earlier trajectories
        self.tally = Tally({agent: [] for agent in range(collector.n_agents)})
        self.running: set[int] = set()
        self.broadcasts: dict[int, int] = {}  # agent → the position of its latest broadcast in ``trace``
        self.late: list[Counted] = []  # trajectories of this process's agents that finished after the rule was met

    def run(self) -> RealRoundResult:
        """Play the round.

        :raises WorkerError: when the backend's workers fail too often.
        :raises RuntimeError: torch.distributed: a lost local worker, a rank that failed or a round over its timeout.
        """
        for agent in range(self.collector.n_agents):
            self._launch(agent, self.clock.base)
        error: Optional[BaseException] = None
        try:
            while True:
                while not self.counter.done():
                    self._step()
                self._flush()
                while self._owed() and not self.running:
                    self._step()
                if not self.running:  # else an agent was started again: count until the rule is met anew
                    break
        except Exception as exc:  # torch.distributed: every rank hears of it in the collective
            error = exc
        return self._finish(self.counter.combine(self.tally, error))

    # ----------------------------------------------------------------------------------------------- agents
    def _launch(self, agent: int, at: float) -> None:
        """Broadcast θ to ``agent`` (κ_i) and start its run where it lives; every process draws every agent's times
        alike, so that the counters agree."""
        collector, clock, limit = self.collector, self.clock, self.rule.max_per_agent
        delay = clock.transfer(agent, at)
        self.broadcasts[agent] = len(self.trace)
        self.trace.append(TraceEvent(self.round_index, agent, "broadcast", -1, at, at + delay, "sent"))
        durations = clock.computes(agent, at + delay, 2 * self.rule.batch_size + 8) if clock.scale > 0 else ()
        upload = clock.transfer(agent, at) if limit is not None else 0.0  # drawn ahead: the agent sends at once
        if self.counter.owns(agent):
            self.counter.backend.start_run(AgentRun(
                collector.epoch, self.round_index, agent, self.first[agent], collector.seed, collector.agent_env_index[agent],
                collector.horizon, collector.gamma, delay, durations, clock.timing.per_step, limit, upload))
            self.running.add(agent)

    def _restart(self, agent: int) -> None:
        """The agent's worker was lost: its counted gradients never reached the server. Uncount them and start the
        agent again, past every trajectory it may have begun."""
        self.counter.forget(agent)
        tally = self.tally
        self.first[agent] = max([self.first[agent]] + [c.index + 2 for c in tally.counted[agent]])
        tally.counted[agent] = []
        for book in (tally.sums, tally.uploaded, tally.stops):
            book.pop(agent, None)
        self._launch(agent, self.clock.now())

    def _owes(self, agent: int) -> bool:
        """Whether work of ``agent`` is still due: it runs, or its counted gradients' sum has not arrived."""
        return agent in self.running or (bool(self.tally.counted[agent]) and agent not in self.tally.sums)

    def _owed(self) -> bool:
        return any(self._owes(agent) for agent in self.tally.counted)

    def _flush(self) -> None:
        """The rule is met: each running agent sends the sum of its counted gradients (after κ_i, emulated)."""
        stop = self.tally.stop = self.clock.now()
        for agent in sorted(self.running):
            count = len(self.tally.counted[agent])
            self.counter.backend.flush(self.collector.epoch, agent, count, self.clock.transfer(agent, stop) if count else 0.0)
        self.running.clear()

    # ----------------------------------------------------------------------------------------------- events
    def _step(self) -> None:
        """Wait for the backend's next events (or idle: this rank's agents are done) and handle them."""
        if not self._owed():  # the round goes on on other ranks
            time.sleep(0.005)
            return
        for event in self.counter.backend.wait(timeout=self.counter.poll):
            self._handle(event)

    def _handle(self, event: Event) -> None:
        epoch, tally = self.collector.epoch, self.tally
        if isinstance(event, WorkerLost):
            for run in lost_work(self.collector, event).runs:
                if self._owes(run.agent):
                    self._restart(run.agent)
        elif isinstance(event, AgentReport):
            if event.epoch == epoch and event.stats.agent in self.running:
                self._report(event.stats, event.seconds)
        elif isinstance(event, UnitResult) and event.unit.epoch == epoch and self._owes(event.unit.agent):
            agent = event.unit.agent  # a flushed sum, or an early one (Synchronized NIGT: one gradient, sent at once)
            tally.sums[agent], tally.uploaded[agent] = event.gradient, self.clock.now()
            tally.vectors += 1

    def _report(self, stats: TrajectoryStats, seconds: Optional[float] = None) -> None:
        """A running agent finished a trajectory (``seconds`` long, measured on its worker): count it if the counter
        says so."""
        order = self.counter.arrive(stats.agent)
        at = self.clock.now()
        if order is None:  # too late to count: kept for the trace (its measured duration)
            self.late.append(Counted(0, at, stats.agent, stats.index, stats, seconds))
            return
        self.tally.counted[stats.agent].append(Counted(order, at, stats.agent, stats.index, stats, seconds))
        if not self.rule.wants_more(stats.agent):
            self.tally.stops[stats.agent] = at
            self.running.discard(stats.agent)

    # ----------------------------------------------------------------------------------------------- the end
    def _measure_broadcasts(self, tally: Tally) -> None:
        """Each broadcast's measured seconds, as the main process sees them: from the agent's launch to the arrival
        of its first gradient of the round, less that gradient's duration measured on its worker (so θ's travel,
        the worker's start and the report's way back, emulated κ_i included). Agents without a counted, measured
        gradient keep the modelled broadcast (``measured`` None)."""
        for agent, position in self.broadcasts.items():
            measured = [c for c in tally.counted.get(agent, []) if c.seconds is not None]
            if not measured or position >= len(self.trace):
                continue
            first = min(measured, key=lambda c: c.index)
            event, duration = self.trace[position], float(first.seconds or 0.0)
            seconds = max(0.0, first.at - duration - float(event.start))
            self.trace[position] = replace(event, end=max(float(event.end), float(event.start) + seconds), measured=seconds)

    def _finish(self, tally: Tally) -> RealRoundResult:
        """The round's arrivals, sums, stop and end from the whole ``tally``; the trace's gradients and uploads; the
        counters of the draws made elsewhere (another rank's agents' uploads; without emulation, h_i per gradient
        plus the one in flight)."""
        stop, clock = tally.stop, self.clock
        for agent, counted in tally.counted.items():
            if counted and agent not in tally.stops and not self.counter.owns(agent):
                clock.transfer(agent, stop)  # the upload its own rank drew at the flush
            if clock.scale == 0:
                clock.counters.compute[agent] += len(counted) + 1
        counted = sorted((c for agent in tally.counted.values() for c in agent), key=lambda c: c.order)
        self._measure_broadcasts(tally)
        for c in counted:
            begin = c.at if c.seconds is None else max(self.clock.base, c.at - c.seconds)
            self.trace.append(TraceEvent(self.round_index, c.agent, "compute", c.index, begin, c.at, "counted", c.seconds))
        for c in self.late:
            if c.index not in {k.index for k in tally.counted.get(c.agent, [])}:
                begin = c.at if c.seconds is None else max(self.clock.base, c.at - c.seconds)
                self.trace.append(TraceEvent(self.round_index, c.agent, "compute", c.index, begin, c.at, "abandoned", c.seconds))
        end = max([stop] + list(tally.uploaded.values()))
        for agent in sorted(tally.uploaded):
            begin = tally.stops.get(agent, stop)
            arrived = max(begin, tally.uploaded[agent])
            self.trace.append(TraceEvent(self.round_index, agent, "upload", -1, begin, arrived, "sent", arrived - begin))
        sums = {agent: tally.sums[agent] for agent in sorted(tally.sums) if self.rule.counts[agent] > 0}
        return RealRoundResult(counted, sums, stop, end, tally.vectors)
