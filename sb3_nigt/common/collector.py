"""The delay-aware collector (DESIGN.md, layer 3): a rule plus θ in, an aggregate out, on a clock.

Time model (paper, Assumption 2.5 and App. H; PAPER.md "Time model"):

- a round starts at simulated time T0 and broadcasts θ: agent i starts computing at T0 + κ_i;
- each gradient of agent i takes h_i seconds (or h_i per environment step);
- when the rule is satisfied at time t_stop every agent stops; in-flight work is abandoned;
- each contributing agent (M_i >= 1) uploads its accumulated vector, which arrives κ_i later;
- the round ends at the last contributing upload: T_end = t_stop + max_{i: M_i >= 1} κ_i.

Simultaneous finishes are processed in increasing agent index.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from sb3_nigt.common.aggregation import AggregationRule
from sb3_nigt.common.estimator import Job, JobResult, job_seed
from sb3_nigt.common.timing import TimingModel


@dataclass
class Arrival:
    """One counted gradient: ``agent``'s gradient ``index``, arriving at ``time`` seconds on the clock."""

    time: float
    agent: int
    index: int
    result: JobResult


@dataclass
class RoundResult:
    """The outcome of one aggregation round.

    :param aggregate: the rule's aggregate (float64, shape ``(d,)``).
    :param counts: M_i, gradients per agent (int64, shape ``(n,)``).
    :param arrivals: the counted gradients in arrival order.
    :param start_time: clock time at the round's start (seconds).
    :param stop_time: when the rule was satisfied (seconds).
    :param end_time: when the last contributing upload arrived (seconds).
    :param obs_moments: per-gradient raw observation moments for VecNormalize, in canonical order.
    """

    aggregate: np.ndarray
    counts: np.ndarray
    arrivals: list[Arrival]
    start_time: float
    stop_time: float
    end_time: float
    obs_moments: list[tuple] = field(default_factory=list)

    @property
    def duration(self) -> float:
        """Seconds the round took on the clock."""
        return self.end_time - self.start_time

    @property
    def n_steps(self) -> int:
        """Environment steps of the counted gradients."""
        return sum(a.result.n_steps for a in self.arrivals)


class Collector:
    """Turns an aggregation rule plus θ into an aggregate, on the simulated or the real clock.

    :param backend: an :class:`~sb3_nigt.common.backends.InlineBackend` or ``SubprocessBackend``.
    :param timing: the agents' compute and communication times.
    :param clock: ``"simulated"`` (discrete-event, deterministic) or ``"real"`` (physical arrival order).
    :param horizon: H, environment steps per trajectory at most.
    :param gamma: γ.
    :param seed: base seed of every job's seed (seed, round, agent, index).
    :param agent_env_index: for each agent, the index of its environment factory.
    :param time_scale: real clock only: seconds of injected sleep per second of h_i or κ_i; None disables the
        emulation.
    """

    def __init__(
        self,
        backend: Any,
        timing: TimingModel,
        clock: str,
        horizon: int,
        gamma: float,
        seed: int,
        agent_env_index: list[int],
        time_scale: Optional[float] = None,
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

    def start(self) -> None:
        self.backend.start()

    def close(self) -> None:
        self.backend.close()

    def _job(self, round_index: int, agent: int, index: int, delay: float = 0.0, min_duration: float = 0.0, **extra: Any) -> Job:
        return Job(
            round_index, agent, index, job_seed(self.seed, round_index, agent, index), self.agent_env_index[agent],
            self.horizon, self.gamma, delay, min_duration, self.timing.per_step, **extra,
        )

    def collect(self, params: np.ndarray, rule: AggregationRule, round_index: int, start_time: float, obs_norm: Optional[tuple] = None) -> RoundResult:
        """Run one aggregation round at θ = ``params`` (float32, ``(d,)``) starting at ``start_time`` seconds."""
        self.backend.set_params(params, obs_norm)
        if self.clock == "simulated":
            arrivals, stop = self._simulated(rule, round_index, start_time)
        else:
            arrivals, stop = self._real(rule, round_index, start_time)
        self.backend.cancel(round_index + 1)
        contributors = np.flatnonzero(rule.counts)
        upload = max((self.timing.communication_time(int(i), round_index) for i in contributors), default=0.0)
        if self.clock == "real" and self.time_scale:
            time.sleep(upload * self.time_scale)
            end = start_time + (time.perf_counter() - self._wall_start)
        else:
            end = stop + upload
        # Canonical order: per agent, gradients by index; then agents by index (the rule's aggregate).
        ordered = sorted(arrivals, key=lambda a: (a.agent, a.index))
        sums = np.zeros((self.n_agents, ordered[0].result.gradient.shape[0]), dtype=np.float64)
        for arrival in ordered:
            sums[arrival.agent] += arrival.result.gradient
        moments = [a.result.obs_moments for a in ordered if a.result.obs_moments is not None]
        return RoundResult(rule.aggregate(sums), rule.counts.copy(), arrivals, start_time, stop, end, moments)

    def _simulated(self, rule: AggregationRule, round_index: int, start_time: float) -> tuple[list[Arrival], float]:
        """Discrete-event simulation; jobs are computed only when counted, or, with per-step times, speculatively."""
        timing, per_step = self.timing, self.timing.per_step
        results: dict[tuple[int, int], JobResult] = {}
        started: dict[tuple[int, int], float] = {}
        events: list[tuple[float, int, int, bool]] = []  # (finish time or its lower bound, agent, index, known)

        def begin(agent: int, index: int, at: float) -> None:
            started[(agent, index)] = at
            unit = timing.compute_time(agent, round_index, index)
            if per_step:  # the duration depends on the trajectory's length: compute now, 1 step is a lower bound
                self.backend.submit(self._job(round_index, agent, index))
            heapq.heappush(events, (at + unit, agent, index, not per_step))

        def fetch(needed: Optional[tuple[int, int]] = None) -> None:
            for result in self.backend.wait(needed):
                if result.job.round_index == round_index:
                    results[result.job.key] = result

        for agent in range(self.n_agents):
            begin(agent, 0, start_time + timing.communication_time(agent, round_index))
        counted: list[tuple[float, int, int]] = []
        stop = start_time
        while not rule.done():
            if not events:
                raise RuntimeError("the aggregation rule can never be satisfied: no agent is computing")
            at, agent, index, known = heapq.heappop(events)
            if not known:
                while (agent, index) not in results:
                    fetch((agent, index))
                finish = started[(agent, index)] + timing.gradient_time(agent, round_index, index, results[(agent, index)].n_steps)
                heapq.heappush(events, (finish, agent, index, True))
                continue
            rule.add(agent)
            counted.append((at, agent, index))
            stop = at
            if not per_step:
                self.backend.submit(self._job(round_index, agent, index))
            if not rule.done() and rule.wants_more(agent):
                begin(agent, index + 1, at)
        for _, agent, index in counted:
            while (agent, index) not in results:
                fetch((agent, index))
        return [Arrival(at, agent, index, results[(agent, index)]) for at, agent, index in counted], stop

    def _real(self, rule: AggregationRule, round_index: int, start_time: float) -> tuple[list[Arrival], float]:
        """True asynchrony: gradients count in the physical order in which they arrive."""
        scale = self.time_scale or 0.0
        self._wall_start = time.perf_counter()
        next_index = [0] * self.n_agents

        def begin(agent: int, delay: float) -> None:
            h = self.timing.compute_time(agent, round_index, next_index[agent]) * scale
            self.backend.submit(self._job(round_index, agent, next_index[agent], delay, h))
            next_index[agent] += 1

        for agent in range(self.n_agents):
            begin(agent, self.timing.communication_time(agent, round_index) * scale)
        arrivals: list[Arrival] = []
        now = start_time
        while not rule.done():
            for result in self.backend.wait():
                if result.job.round_index != round_index or rule.done():
                    continue
                agent = result.job.agent
                now = start_time + (time.perf_counter() - self._wall_start)
                rule.add(agent)
                arrivals.append(Arrival(now, agent, result.job.index, result))
                if not rule.done() and rule.wants_more(agent):
                    begin(agent, 0.0)
        return arrivals, now

    # ------------------------------------------------------------------------------ asynchronous server (AFedPG)
    def serve(
        self,
        params: np.ndarray,
        obs_norm: Optional[tuple],
        start_time: float,
        first_index: list[int],
        on_arrival: Callable[[Arrival], Optional[tuple[np.ndarray, Optional[tuple]]]],
    ) -> None:
        """A server that updates on every arrival (AFedPG; PAPER.md "Baselines"), on the simulated or real clock.

        Agent i downloads θ (κ_i seconds), computes one gradient (h_i), uploads it (κ_i). At the server the
        arrivals are handed to ``on_arrival`` one at a time, in time order (ties by increasing agent index) on the
        simulated clock, in physical order on the real one. ``on_arrival`` returns the (θ, obs_norm) that the
        server sends back to that agent for its next gradient, or None to stop; in-flight work is then abandoned.

        :param params: θ that every agent downloads at ``start_time`` (float32, ``(d,)``).
        :param obs_norm: the observation-normalization statistics that go with it, or None.
        :param start_time: clock time at the start (seconds).
        :param first_index: for each agent, the index of its next gradient (job seeds use (seed, 0, agent, index)).
        :param on_arrival: the server's update, called with each :class:`Arrival`.
        """
        params = np.ascontiguousarray(params, dtype=np.float32)  # every job carries its own θ: no broadcast
        if self.clock == "simulated":
            self._serve_simulated(params, obs_norm, start_time, first_index, on_arrival)
        else:
            self._serve_real(params, obs_norm, start_time, first_index, on_arrival)
        self.backend.cancel(1)

    def _serve_simulated(self, params, obs_norm, start_time, first_index, on_arrival) -> None:
        timing = self.timing
        results: dict[tuple[int, int], JobResult] = {}
        started: dict[tuple[int, int], float] = {}
        events: list[tuple[float, int, int, bool]] = []  # (arrival time or its lower bound, agent, index, known)

        def begin(agent: int, index: int, at: float, theta: np.ndarray, norm: Optional[tuple]) -> None:
            started[(agent, index)] = at
            self.backend.submit(self._job(0, agent, index, params=theta, obs_norm=norm))
            unit = timing.compute_time(agent, 0, index)
            upload = timing.communication_time(agent, index)
            heapq.heappush(events, (at + unit + upload, agent, index, not timing.per_step))

        def fetch(needed: tuple[int, int]) -> JobResult:
            while needed not in results:
                for result in self.backend.wait(needed):
                    results[result.job.key] = result
            return results.pop(needed)

        for agent in range(self.n_agents):
            begin(agent, first_index[agent], start_time + timing.communication_time(agent, first_index[agent]), params, obs_norm)
        while True:
            at, agent, index, known = heapq.heappop(events)
            if not known:  # per-step times: the arrival time depends on the trajectory's length
                result = fetch((agent, index))
                results[(agent, index)] = result
                finish = started[(agent, index)] + timing.gradient_time(agent, 0, index, result.n_steps)
                heapq.heappush(events, (finish + timing.communication_time(agent, index), agent, index, True))
                continue
            reply = on_arrival(Arrival(at, agent, index, fetch((agent, index))))
            if reply is None:
                return
            begin(agent, index + 1, at + timing.communication_time(agent, index + 1), *reply)

    def _serve_real(self, params, obs_norm, start_time, first_index, on_arrival) -> None:
        scale = self.time_scale or 0.0
        wall_start = time.perf_counter()

        def begin(agent: int, index: int, theta: np.ndarray, norm: Optional[tuple]) -> None:
            kappa = self.timing.communication_time(agent, index) * scale
            h = self.timing.compute_time(agent, 0, index) * scale
            self.backend.submit(self._job(0, agent, index, kappa, h, upload_delay=kappa, params=theta, obs_norm=norm))

        for agent in range(self.n_agents):
            begin(agent, first_index[agent], params, obs_norm)
        while True:
            for result in self.backend.wait():
                now = start_time + (time.perf_counter() - wall_start)
                job = result.job
                reply = on_arrival(Arrival(now, job.agent, job.index, result))
                if reply is None:
                    return
                begin(job.agent, job.index + 1, *reply)
