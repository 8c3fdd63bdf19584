"""The delay-aware collector (docs/time.md): a rule plus θ in, an aggregate out, on a clock.

Time model (paper, Assumption 2.5 and App. H; docs/algorithms.md and docs/time.md):

- a round starts at simulated time T0 and broadcasts θ: agent i starts computing at T0 + κ_i;
- each gradient of agent i takes h_i seconds (or h_i per environment step, or h_i·H);
- an agent stops computing when the rule says so: Rennala and Malenia agents all stop when the rule is met at
  t_stop (in-flight work is abandoned); a Synchronized NIGT agent stops after its single gradient;
- each contributing agent (M_i >= 1) uploads its accumulated vector as soon as *it* stops, at stop_i, and the
  vector arrives κ_i later;
- the round ends at the last contributing upload: T_end = max_{i: M_i >= 1} (stop_i + κ_i).

On the simulated clock the round is planned by :mod:`sb3_nigt.clock.planner` (exact
:class:`~sb3_nigt.clock.exact.ExactTime`, simultaneous events in increasing agent index) and then computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from sb3_nigt.backends.contract import Backend, WorkerLost
from sb3_nigt.clock.exact import ZERO, ExactTime
from sb3_nigt.clock.planner import Counted, plan_round, upload
from sb3_nigt.clock.real import RealRound, lost_work
from sb3_nigt.clock.timing import TimeCounters, TimingModel
from sb3_nigt.clock.trace import TraceEvent
from sb3_nigt.core.aggregation import AggregationRule
from sb3_nigt.workers.rollout import CHUNK_SIZE, BatchItem, ObsMoments, ObsNorm, TrajectoryStats, UnitResult, WorkUnit, lockstep_sizes


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

    The simulated clock plans the round in exact time (:func:`~sb3_nigt.clock.planner.plan_round`), then has the
    counted trajectories computed in lockstep batches across agents (at most ``LOCKSTEP_SIZE`` each, cut in
    canonical order), each returning Σ_j w_j g_H(τ_j) with the rule's weights; the aggregate is the sum of the
    batches in order. With per-step times the planner computes each started trajectory speculatively instead, and
    the aggregate is formed from each agent's sum ḡ_i. The real clock starts one run per agent and counts small reports as
    they arrive; each contributing agent then sends one vector.

    :param backend: a started-on-demand :class:`~sb3_nigt.backends.contract.Backend`.
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

    def start(self) -> None:
        self.backend.start()
        self.epoch = 0

    def close(self) -> None:
        self.backend.close()

    # ------------------------------------------------------------------------------------------- time helpers
    def compute_unit(self, agent: int, start: Any) -> ExactTime:
        """h_i of the agent's next gradient, starting at ``start``; advances its compute counter."""
        counter = self.counters.compute[agent]
        self.counters.compute[agent] += 1
        return self.timing.compute_time(agent, start, counter)

    def transfer(self, agent: int, start: Any) -> ExactTime:
        """κ_i of the agent's next transfer (broadcast or upload) starting at ``start``; advances its counter."""
        counter = self.counters.communication[agent]
        self.counters.communication[agent] += 1
        return self.timing.communication_time(agent, start, counter)

    def unit(self, round_index: int, agent: int, first: int, count: int, **extra: Any) -> WorkUnit:
        """The work unit of ``agent``'s gradients ``first`` .. ``first + count - 1`` of this epoch."""
        return WorkUnit(round_index, agent, first, count, self.seed, self.agent_env_index[agent], self.horizon, self.gamma,
                        self.epoch, **extra)

    def next_epoch(self) -> int:
        """A new cancellation epoch: all earlier work is abandoned."""
        self.epoch += 1
        self.backend.cancel(self.epoch)
        return self.epoch

    def worker_lost(self, event: WorkerLost) -> WorkerLost:
        """Warn that a worker was lost, note its agents in ``lost_agents``, and return its work of this epoch."""
        return lost_work(self, event)

    def await_unit(self, key: tuple[int, int], results: dict[tuple[int, int], UnitResult]) -> UnitResult:
        """Wait until the unit ``key`` = (agent, first gradient index) of this epoch is in ``results``, and return it.

        Every result of this epoch that arrives meanwhile is kept in ``results``. The simulated clock's one place
        where lost work is resubmitted: a lost worker's units of this epoch that have no result yet go back to the
        backend (an AFedPG agent's slot still holds its θ)."""
        while key not in results:
            for event in self.backend.wait():
                if isinstance(event, WorkerLost):
                    for unit in self.worker_lost(event).units:
                        if (unit.agent, unit.first) not in results:
                            self.backend.submit(unit)
                elif isinstance(event, UnitResult) and event.unit.epoch == self.epoch:
                    results[(event.unit.agent, event.unit.first)] = event
        return results[key]

    # ------------------------------------------------------------------------------------------------ rounds
    def collect(
        self, params: np.ndarray, rule: AggregationRule, round_index: int, start_time: Any = ZERO, obs_norm: Optional[ObsNorm] = None,
    ) -> RoundResult:
        """Run one aggregation round at θ = ``params`` (float32, ``(d,)``) starting at ``start_time`` seconds.

        :raises WorkerError: when workers fail more than ``max_failures`` times in a row (nothing was changed).
        """
        start = ExactTime.of(start_time)
        self.next_epoch()
        self.backend.publish(params, obs_norm)
        self.lost_agents = []
        trace: list[TraceEvent] = []
        if self.clock == "simulated":
            arrivals, aggregate, stop, end, vectors = self._simulated(rule, round_index, start, trace)
        else:
            arrivals, aggregate, stop, end, vectors = self._real(rule, round_index, start, trace)
        self.next_epoch()
        ordered = sorted(arrivals, key=lambda a: (a.agent, a.index))
        moments = [a.result.obs_moments for a in ordered if a.result.obs_moments is not None]
        return RoundResult(aggregate, rule.counts.copy(), arrivals, start, ExactTime.of(stop), ExactTime.of(end),
                           moments, trace if self.record_trace else [], vectors, sorted(set(self.lost_agents)))

    def _simulated(self, rule: AggregationRule, round_index: int, start: ExactTime, trace: list[TraceEvent]):
        """Plan the round (:func:`~sb3_nigt.clock.planner.plan_round`), have the counted gradients computed (with
        per-step times they already are, speculatively), then play the uploads. Each contributing agent is modelled
        as sending one vector ḡ_i."""
        results: dict[tuple[int, int], UnitResult] = {}
        plan = plan_round(self, rule, round_index, start, trace, results)
        weights = None if self.timing.per_step else rule.weights()
        if weights is not None:
            done = self._await_all(self._submit_lockstep(round_index, plan.counted, weights), results)
            aggregate = self._add_in_order([result.gradient for result in done])
        else:
            if self.timing.per_step:
                keys = [(agent, index) for _, agent, index in sorted(plan.counted, key=lambda c: (c[1], c[2]))]
            else:
                keys = self._submit_counted(round_index, plan.counted)
            done = self._await_all(keys, results)
            aggregate = rule.aggregate(self._agent_sums(done))
        stats = {(t.agent, t.index): t for result in done for t in result.trajectories}
        arrivals = [Arrival(at, agent, index, stats[(agent, index)]) for at, agent, index in plan.counted]
        vectors = int(np.count_nonzero(rule.counts))
        return arrivals, aggregate, plan.stop, upload(self, rule, plan, round_index, trace), vectors

    def _submit_lockstep(self, round_index: int, counted: list[Counted], weights: np.ndarray) -> list[tuple[int, int]]:
        """Submit the counted trajectories in canonical (agent, index) order, cut into lockstep batches
        (:func:`~sb3_nigt.workers.rollout.lockstep_sizes`), each carrying its trajectories' weights w_i; returns
        the units' keys (first agent, first index) in order."""
        order = sorted((agent, index) for _, agent, index in counted)
        keys: list[tuple[int, int]] = []
        begin = 0
        for size in lockstep_sizes(len(order)):
            items = tuple(BatchItem(agent, index, self.agent_env_index[agent], float(weights[agent]))
                          for agent, index in order[begin:begin + size])
            self.backend.submit(self.unit(round_index, items[0].agent, items[0].index, size, items=items))
            keys.append((items[0].agent, items[0].index))
            begin += size
        return keys

    def _submit_counted(self, round_index: int, counted: list[Counted]) -> list[tuple[int, int]]:
        """Submit the planned counts: each agent's M_i gradients (consecutive indices) as units of at most
        ``CHUNK_SIZE``; returns the units' keys (agent, first index) in canonical order."""
        shares: dict[int, tuple[int, int]] = {}
        for _, agent, index in counted:
            begin, count = shares.get(agent, (index, 0))
            shares[agent] = (min(begin, index), count + 1)
        units = [self.unit(round_index, agent, begin + first, min(CHUNK_SIZE, count - first))
                 for agent, (begin, count) in sorted(shares.items()) for first in range(0, count, CHUNK_SIZE)]
        for unit in units:
            self.backend.submit(unit)
        return [(unit.agent, unit.first) for unit in units]

    def _await_all(self, keys: list[tuple[int, int]], results: dict[tuple[int, int], UnitResult]) -> list[UnitResult]:
        """The units' results in the order of ``keys``, whoever computed them and whenever they arrived."""
        return [self.await_unit(key, results) for key in keys]

    @staticmethod
    def _add_in_order(vectors: list[np.ndarray]) -> np.ndarray:
        """Σ of float64 ``(d,)`` vectors, added in the given (canonical) order."""
        total = vectors[0].copy()
        for vector in vectors[1:]:
            total += vector
        return total

    def _agent_sums(self, done: list[UnitResult]) -> dict[int, np.ndarray]:
        """Each agent's gradients added in canonical order (units by index, float64): ḡ_i."""
        sums: dict[int, np.ndarray] = {}
        for result in done:
            agent = result.unit.agent
            sums[agent] = result.gradient.copy() if agent not in sums else sums[agent] + result.gradient
        return sums

    def _real(self, rule: AggregationRule, round_index: int, start: ExactTime, trace: list[TraceEvent]):
        """True asynchrony, on every backend: :class:`~sb3_nigt.clock.real.RealRound` plays the round."""
        played = RealRound(self, rule, round_index, float(start), trace).run()
        arrivals = [Arrival(ExactTime.of(c.at), c.agent, c.index, c.stats) for c in played.counted]
        return arrivals, rule.aggregate(played.sums), played.stop, played.end, played.vectors
