"""The delay-aware collector (docs/time.md): a rule plus θ in, an aggregate out, on a clock.

Time model (paper, Assumption 2.5 and App. H; docs/algorithms.md and docs/time.md):

- a round starts at simulated time T0 and broadcasts θ: agent i starts computing at T0 + κ_i;
- each gradient of agent i takes h_i seconds (or h_i per environment step, or h_i·H);
- an agent stops computing when the rule says so: Rennala and Malenia agents all stop when the rule is met at
  t_stop (in-flight work is abandoned); a Synchronized NIGT agent stops after its single gradient;
- each contributing agent (M_i >= 1) uploads its accumulated vector as soon as *it* stops, at stop_i, and the
  vector arrives κ_i later;
- the round ends at the last contributing upload: T_end = max_{i: M_i >= 1} (stop_i + κ_i).

On the simulated clock every time is an exact :class:`~sb3_nigt.common.exact.ExactTime`, and simultaneous events
are processed in increasing agent index.
"""

from __future__ import annotations

import heapq
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from sb3_nigt.clock.real import RealRound
from sb3_nigt.common.aggregation import AggregationRule, RennalaAggregation
from sb3_nigt.common.backends import Backend, WorkerLost
from sb3_nigt.common.estimator import CHUNK_SIZE, ObsMoments, ObsNorm, TrajectoryStats, UnitResult, WorkUnit
from sb3_nigt.common.exact import ZERO, ExactTime
from sb3_nigt.common.timing import TimeCounters, TimingModel
from sb3_nigt.common.trace import TraceEvent

# Event order at equal times on the simulated clock: an agent's start first, then finishes whose duration is
# still a lower bound (per-step times: the trajectory must be sampled to know it), then known finishes.
_DOWN, _START, _BOUND, _FINISH = -1, 0, 1, 2  # an outage that starts at t is felt before anything else at t


@dataclass
class Arrival:
    """One counted gradient: ``agent``'s gradient ``index``, arriving at ``time`` seconds on the clock (exact on the
    simulated clock). ``result`` holds its trajectory's statistics; ``gradient`` its vector where one travels alone
    (AFedPG), else None."""

    time: ExactTime
    agent: int
    index: int
    result: TrajectoryStats
    gradient: Optional[np.ndarray] = None
    version: int = 0  # AFedPG: the server version θ_k the gradient was computed at


@dataclass
class RoundResult:
    """The outcome of one aggregation round.

    :param aggregate: the rule's aggregate (float64, shape ``(d,)``).
    :param counts: M_i, gradients per agent (int64, shape ``(n,)``).
    :param arrivals: the counted gradients in arrival order.
    :param start_time: clock time at the round's start (seconds, exact).
    :param stop_time: when the rule was satisfied (seconds, exact).
    :param end_time: when the last contributing upload arrived (seconds, exact).
    :param obs_moments: raw observation moments of the counted trajectories for VecNormalize, in canonical order.
    :param trace: the round's events (broadcasts, gradients, uploads), filled when tracing is on.
    :param vectors: gradient vectors that physically reached the main process this round.
    :param lost: agents whose worker was lost during the round (their unsent gradients were recomputed or
        uncounted).
    """

    aggregate: np.ndarray
    counts: np.ndarray
    arrivals: list[Arrival]
    start_time: ExactTime
    stop_time: ExactTime
    end_time: ExactTime
    obs_moments: list[ObsMoments] = field(default_factory=list)
    trace: list[TraceEvent] = field(default_factory=list)
    vectors: int = 0
    lost: list[int] = field(default_factory=list)

    @property
    def duration(self) -> float:
        """Seconds the round took on the clock."""
        return float(self.end_time - self.start_time)

    @property
    def n_steps(self) -> int:
        """Environment steps of the counted gradients."""
        return sum(a.result.n_steps for a in self.arrivals)


class Collector:
    """Turns an aggregation rule plus θ into an aggregate, on the simulated or the real clock.

    One event loop per clock: the simulated clock plays the round in exact time (:meth:`_plan`), then has the
    counted work computed as units of at most ``CHUNK_SIZE`` gradients; with per-step times it computes each
    started trajectory speculatively instead. The real clock starts one run per agent and counts small reports as
    they arrive; each contributing agent then sends one vector.

    :param backend: a started-on-demand :class:`~sb3_nigt.common.backends.Backend`.
    :param timing: the agents' compute and communication times.
    :param clock: ``"simulated"`` (discrete-event, exact, deterministic) or ``"real"`` (physical arrival order).
    :param horizon: H, environment steps per trajectory at most.
    :param gamma: γ.
    :param seed: base seed of every job's seed (seed, round, agent, index).
    :param agent_env_index: for each agent, the index of its environment factory.
    :param time_scale: real clock only: seconds of injected sleep per second of h_i or κ_i; None disables the
        emulation.
    :param counters: the agents' work counters (the ``counter`` of time specifications); updated in place.
    :param record_trace: whether rounds return their event trace.
    """

    def __init__(
        self,
        backend: Backend,
        timing: TimingModel,
        clock: str,
        horizon: int,
        gamma: float,
        seed: int,
        agent_env_index: list[int],
        time_scale: Optional[float] = None,
        counters: Optional[TimeCounters] = None,
        record_trace: bool = False,
    ):
        self.backend = backend
        self.timing = timing
        self.clock = clock
        self.horizon = horizon
        self.gamma = gamma
        self.seed = seed
        self.agent_env_index = agent_env_index
        self.time_scale = time_scale
        self.n_agents = len(agent_env_index)
        self.counters = counters if counters is not None else TimeCounters.zeros(self.n_agents)
        self.record_trace = record_trace
        self.epoch = 0
        self.lost_agents: list[int] = []
        self._downs: list[tuple[int, ExactTime, Any]] = []  # the last planned round's outages (agent, from, until)
        self._constant: Optional[tuple] = None  # constant times for the vectorized planner, computed once

    def start(self) -> None:
        self.backend.start()
        self.epoch = 0

    def close(self) -> None:
        self.backend.close()

    # ------------------------------------------------------------------------------------------- time helpers
    def _compute_unit(self, agent: int, start: Any) -> ExactTime:
        """h_i of the agent's next gradient, starting at ``start``; advances its compute counter."""
        counter = self.counters.compute[agent]
        self.counters.compute[agent] += 1
        return self.timing.compute_time(agent, start, counter)

    def _transfer(self, agent: int, start: Any) -> ExactTime:
        """κ_i of the agent's next transfer (broadcast or upload) starting at ``start``; advances its counter."""
        counter = self.counters.communication[agent]
        self.counters.communication[agent] += 1
        return self.timing.communication_time(agent, start, counter)

    def _unit(self, round_index: int, agent: int, first: int, count: int, **extra: Any) -> WorkUnit:
        return WorkUnit(round_index, agent, first, count, self.seed, self.agent_env_index[agent], self.horizon, self.gamma,
                        self.epoch, **extra)

    def _next_epoch(self) -> int:
        """A new cancellation epoch: all earlier work is abandoned."""
        self.epoch += 1
        self.backend.cancel(self.epoch)
        return self.epoch

    def _lost(self, event: WorkerLost) -> None:
        warnings.warn(f"worker {event.worker} lost ({event.reason}); its work is resubmitted", RuntimeWarning, stacklevel=4)
        self.lost_agents.extend(sorted({u.agent for u in event.units} | {r.agent for r in event.runs}))

    # ------------------------------------------------------------------------------------------------ rounds
    def collect(
        self, params: np.ndarray, rule: AggregationRule, round_index: int, start_time: Any = ZERO, obs_norm: Optional[ObsNorm] = None,
    ) -> RoundResult:
        """Run one aggregation round at θ = ``params`` (float32, ``(d,)``) starting at ``start_time`` seconds.

        :raises WorkerError: when workers fail more than ``max_failures`` times in a row (nothing was changed).
        """
        start = ExactTime.of(start_time)
        self._next_epoch()
        self.backend.publish(params, obs_norm)
        self.lost_agents = []
        trace: list[TraceEvent] = []
        if self.clock == "simulated":
            speculative = not self.timing.known_in_advance
            planned = None if speculative else self._plan_vectorized(rule, start)
            results: dict[tuple[int, int], UnitResult] = {}
            counted, stops, stop = planned if planned is not None else self._plan(rule, round_index, start, trace, results if speculative else None)
            if speculative:
                sums, stats, vectors = self._speculative_sums(counted, results)
            else:
                sums, stats, vectors = self._compute_planned(rule, round_index, counted)
            arrivals = [Arrival(at, agent, index, stats[(agent, index)]) for at, agent, index in counted]
            end = self._uploads(rule, stops, stop, round_index, trace)
            for agent, down, up in self._downs:
                until = end if up == math.inf or up > end else up
                trace.append(TraceEvent(round_index, agent, "compute", -1, down, max(down, until), "down"))
        else:
            arrivals, sums, stop, end, vectors = self._real(rule, round_index, start, trace)
        self._next_epoch()
        ordered = sorted(arrivals, key=lambda a: (a.agent, a.index))
        moments = [a.result.obs_moments for a in ordered if a.result.obs_moments is not None]
        return RoundResult(rule.aggregate(sums), rule.counts.copy(), arrivals, start, ExactTime.of(stop), ExactTime.of(end),
                           moments, trace if self.record_trace else [], vectors, sorted(set(self.lost_agents)))

    def _uploads(self, rule: AggregationRule, stops: dict[int, Any], stop: Any, round_index: int, trace: list[TraceEvent],
                 scale: Optional[float] = None) -> Any:
        """Each contributing agent uploads when it stops (``stops[i]``, else ``stop``); returns the last arrival.

        Exact on the simulated clock (``scale`` None); on the real clock the upload lasts κ_i · ``scale`` seconds."""
        end = None
        for flat in np.flatnonzero(rule.counts):
            agent = int(flat)
            begin = stops.get(agent, stop)
            kappa = self._transfer(agent, begin)
            arrive = begin + kappa if scale is None else begin + float(kappa) * scale
            trace.append(TraceEvent(round_index, agent, "upload", -1, begin, arrive, "sent"))
            end = arrive if end is None or arrive > end else end
        return end

    def _plan(self, rule: AggregationRule, round_index: int, start: ExactTime, trace: list[TraceEvent],
              results: Optional[dict[tuple[int, int], UnitResult]] = None):
        """The simulated clock's event loop: play the round's events in exact time, and say which gradients count,
        when, and when each agent stops.

        With durations known in advance (``results`` None) nothing is computed here. With per-step times
        (``results`` a dict) each gradient is computed as soon as it starts, speculatively, because its length
        sets its finish: its finish event waits, as a lower bound, until the result is in ``results``.

        Outages (docs/time.md, "Outages"): a down agent neither computes nor communicates; the gradient it was
        computing is lost, and so are the gradients it had counted but not yet uploaded (they were held locally):
        they are uncounted and the round goes on. When it comes back it receives θ again (κ_i) and starts afresh.
        """
        timing = self.timing
        started: dict[tuple[int, int], ExactTime] = {}
        events: list[tuple[ExactTime, int, int, int]] = []  # (time, order, agent, index)
        next_index = [0] * self.n_agents
        gone: set[int] = set()
        downs: list[tuple[int, ExactTime, Any]] = []  # (agent, from, until)

        def lose_for_good(agent: int) -> None:
            gone.add(agent)
            if rule.needs_every_agent and not rule.counts[agent]:
                raise RuntimeError(
                    f"the aggregation rule can never be satisfied: agents {sorted(gone)} are down for good (outages) "
                    f"and {type(rule).__name__} needs a gradient from every agent"
                )

        def deliver(agent: int, at: ExactTime) -> None:
            """Broadcast θ to ``agent`` from ``at`` on (later if it is down); it then starts computing."""
            up = timing.down_until(agent, at)
            if up is not None:
                if up == math.inf:
                    lose_for_good(agent)
                    return
                assert isinstance(up, ExactTime)  # an outage's end is exact unless it is math.inf
                at = up
            arrive = at + self._transfer(agent, at)
            cut = timing.next_outage(agent, at, arrive)
            if cut is not None:  # the broadcast is cut by an outage: θ is sent again when the agent is back
                trace.append(TraceEvent(round_index, agent, "broadcast", -1, at, cut, "abandoned"))
                heapq.heappush(events, (cut, _DOWN, agent, -1))
                return
            trace.append(TraceEvent(round_index, agent, "broadcast", -1, at, arrive, "sent"))
            heapq.heappush(events, (arrive, _START, agent, -1))

        units: dict[tuple[int, int], ExactTime] = {}  # speculative: (agent, index) → h_i

        def schedule(agent: int, at: ExactTime) -> None:
            index = next_index[agent]
            next_index[agent] += 1
            started[(agent, index)] = at
            unit = self._compute_unit(agent, at)
            if results is not None:  # the length sets the finish: compute now, one step is a lower bound
                units[(agent, index)] = unit
                self.backend.submit(self._unit(round_index, agent, index, 1))
                heapq.heappush(events, (at + timing.duration(unit, 1), _BOUND, agent, index))
                return
            finish = at + timing.duration(unit)
            cut = timing.next_outage(agent, at, finish) if timing.outages else None
            if cut is not None:
                heapq.heappush(events, (cut, _DOWN, agent, index))
            else:
                heapq.heappush(events, (finish, _FINISH, agent, index))

        for agent in range(self.n_agents):
            deliver(agent, start)
        counted: list[tuple[ExactTime, int, int]] = []
        stops: dict[int, ExactTime] = {}  # agents that stopped and uploaded before the rule was met (Synchronized NIGT)
        stop = start
        while not rule.done():
            if not events:
                missing = sorted(gone) if gone else []
                raise RuntimeError(
                    "the aggregation rule can never be satisfied: no agent is computing"
                    + (f" (agents {missing} are down for good; {type(rule).__name__} needs them)" if missing else "")
                )
            at, order, agent, index = heapq.heappop(events)
            if order == _START:
                schedule(agent, at)
                continue
            if order == _BOUND:
                assert results is not None
                n_steps = self._fetch((agent, index), results).n_steps
                heapq.heappush(events, (started[(agent, index)] + timing.duration(units[(agent, index)], n_steps), _FINISH, agent, index))
                continue
            if order == _DOWN:
                if index >= 0:
                    trace.append(TraceEvent(round_index, agent, "compute", index, started[(agent, index)], at, "abandoned"))
                if rule.counts[agent] and agent not in stops:  # held, unsent: lost with the agent
                    rule.forget(agent)
                    for entry in [c for c in counted if c[1] == agent]:
                        counted.remove(entry)
                        trace.append(TraceEvent(round_index, agent, "compute", entry[2], started[(agent, entry[2])], entry[0], "abandoned"))
                up = timing.down_until(agent, at)
                downs.append((agent, at, up))
                if up == math.inf:
                    lose_for_good(agent)
                else:
                    assert isinstance(up, ExactTime)  # the agent is down at ``at``, the start of its outage
                    deliver(agent, up)
                continue
            rule.add(agent)
            counted.append((at, agent, index))
            stop = at
            if not rule.wants_more(agent):
                stops[agent] = at
            elif not rule.done():
                schedule(agent, at)
        stop = max((c[0] for c in counted), default=stop)
        for at, agent, index in counted:
            trace.append(TraceEvent(round_index, agent, "compute", index, started[(agent, index)], at, "counted"))
        for _at, order, agent, index in sorted(events):
            if order == _FINISH and started[(agent, index)] < stop:
                trace.append(TraceEvent(round_index, agent, "compute", index, started[(agent, index)], stop, "abandoned"))
        self._downs = downs
        return counted, stops, stop

    def _plan_vectorized(self, rule: AggregationRule, start: ExactTime):
        """The Rennala round of :meth:`_plan` with NumPy, for constant times, no outages and no trace: thousands of
        agents cost a few vectorized passes instead of one Python event each.

        Agent i's k-th finish is at T0 + κ_i + k·h_i. A float bisection finds the time of the M-th finish; every
        finish up to a hair above it is then ordered exactly (times, ties by agent index) and the first M count.
        Returns None where it does not apply (the event loop then plans the round).
        """
        if type(rule) is not RennalaAggregation or self.record_trace or self.timing.outages or self.n_agents < 64 or rule.counts.any():
            return None
        if self._constant is None:
            constant = self.timing.constant_times()
            if constant is None:
                return None
            self._constant = (*constant, np.array([float(x) for x in constant[0]]), np.array([float(x) for x in constant[1]]))
        h_exact, kappa_exact, h, kappa = self._constant
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
        self._downs = []
        # Work counters, as the event loop keeps them: one broadcast each; counted gradients plus the one in flight.
        started = (kappa + rule.counts * h) <= float(stop - start) * (1 + 1e-12)
        started[counted[-1][1]] = False  # the round ends at that agent's finish: it does not start again
        self.counters.communication[:] = (np.asarray(self.counters.communication) + 1).tolist()
        self.counters.compute[:] = (np.asarray(self.counters.compute) + rule.counts + started).tolist()
        return counted, {}, stop

    def _compute_planned(self, rule: AggregationRule, round_index: int, counted: list[tuple[ExactTime, int, int]]):
        """Compute the planned counts: each agent's M_i gradients (consecutive indices) as units of at most
        ``CHUNK_SIZE``; each agent's units are added in index order (float64), whoever computed them and whenever
        they arrived."""
        shares: dict[int, tuple[int, int]] = {}
        for _, agent, index in counted:
            begin, count = shares.get(agent, (index, 0))
            shares[agent] = (min(begin, index), count + 1)
        units = [self._unit(round_index, agent, begin + first, min(CHUNK_SIZE, count - first))
                 for agent, (begin, count) in sorted(shares.items()) for first in range(0, count, CHUNK_SIZE)]
        for unit in units:
            self.backend.submit(unit)
        wanted = {(u.agent, u.first): u for u in units}
        sums: dict[int, np.ndarray] = {}
        next_first = {agent: begin for agent, (begin, _) in shares.items()}
        waiting: dict[tuple[int, int], UnitResult] = {}
        stats: dict[tuple[int, int], TrajectoryStats] = {}
        vectors = 0
        while wanted:
            for event in self.backend.wait():
                if isinstance(event, WorkerLost):
                    self._lost(event)
                    for unit in event.units:
                        if (unit.agent, unit.first) in wanted and unit.epoch == self.epoch:
                            self.backend.submit(unit)
                    continue
                if not isinstance(event, UnitResult) or event.unit.epoch != self.epoch:
                    continue
                key = (event.unit.agent, event.unit.first)
                if wanted.pop(key, None) is None:
                    continue
                vectors += 1
                waiting[key] = event
                agent = event.unit.agent
                while (agent, next_first[agent]) in waiting:  # canonical order within the agent
                    result = waiting.pop((agent, next_first[agent]))
                    sums[agent] = result.gradient.copy() if agent not in sums else sums[agent] + result.gradient
                    for trajectory in result.trajectories:
                        stats[(agent, trajectory.index)] = trajectory
                    next_first[agent] += result.unit.count
        return sums, stats, vectors

    def _fetch(self, key: tuple[int, int], results: dict[tuple[int, int], UnitResult]) -> UnitResult:
        """Wait for the speculative unit ``key`` (agent, index) of this epoch; resubmit the units of a lost worker."""
        while key not in results:
            for event in self.backend.wait():
                if isinstance(event, WorkerLost):
                    self._lost(event)
                    for unit in event.units:
                        if unit.epoch == self.epoch and (unit.agent, unit.first) not in results:
                            self.backend.submit(unit)
                elif isinstance(event, UnitResult) and event.unit.epoch == self.epoch:
                    results[(event.unit.agent, event.unit.first)] = event
        return results[key]

    def _speculative_sums(self, counted: list[tuple[ExactTime, int, int]], results: dict[tuple[int, int], UnitResult]):
        """The counted speculative gradients: each agent's added in index order (float64), and their statistics."""
        sums: dict[int, np.ndarray] = {}
        stats: dict[tuple[int, int], TrajectoryStats] = {}
        for _, agent, index in sorted(counted, key=lambda c: (c[1], c[2])):  # canonical order
            result = self._fetch((agent, index), results)
            sums[agent] = result.gradient.copy() if agent not in sums else sums[agent] + result.gradient
            stats[(agent, index)] = result.trajectories[0]
        return sums, stats, len(counted)

    def _real(self, rule: AggregationRule, round_index: int, start: ExactTime, trace: list[TraceEvent]):
        """True asynchrony, on every backend: :class:`~sb3_nigt.clock.real.RealRound` plays the round."""
        played = RealRound(self, rule, round_index, float(start), trace).run()
        arrivals = [Arrival(ExactTime.of(c.at), c.agent, c.index, c.stats) for c in played.counted]
        return arrivals, played.sums, played.stop, played.end, played.vectors
