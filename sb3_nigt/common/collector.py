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
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from sb3_nigt.common.aggregation import AggregationRule
from sb3_nigt.common.estimator import Job, JobResult, job_seed
from sb3_nigt.common.exact import ZERO, ExactTime
from sb3_nigt.common.timing import TimeCounters, TimingModel
from sb3_nigt.common.trace import TraceEvent

# Event order at equal times on the simulated clock: an agent's start first, then finishes whose duration is
# still a lower bound (per-step times: the trajectory must be sampled to know it), then known finishes.
_START, _BOUND, _FINISH = 0, 1, 2


@dataclass
class Arrival:
    """One counted gradient: ``agent``'s gradient ``index``, arriving at ``time`` seconds on the clock (exact)."""

    time: ExactTime
    agent: int
    index: int
    result: JobResult


@dataclass
class RoundResult:
    """The outcome of one aggregation round.

    :param aggregate: the rule's aggregate (float64, shape ``(d,)``).
    :param counts: M_i, gradients per agent (int64, shape ``(n,)``).
    :param arrivals: the counted gradients in arrival order.
    :param start_time: clock time at the round's start (seconds, exact).
    :param stop_time: when the rule was satisfied (seconds, exact).
    :param end_time: when the last contributing upload arrived (seconds, exact).
    :param obs_moments: per-gradient raw observation moments for VecNormalize, in canonical order.
    :param trace: the round's events (broadcasts, gradients, uploads), filled when tracing is on.
    """

    aggregate: np.ndarray
    counts: np.ndarray
    arrivals: list[Arrival]
    start_time: ExactTime
    stop_time: ExactTime
    end_time: ExactTime
    obs_moments: list[tuple] = field(default_factory=list)
    trace: list[TraceEvent] = field(default_factory=list)

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

    :param backend: an :class:`~sb3_nigt.common.backends.InlineBackend` or ``SubprocessBackend``.
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
        backend: Any,
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

    def start(self) -> None:
        self.backend.start()

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

    def _job(self, round_index: int, agent: int, index: int, delay: float = 0.0, unit: Optional[ExactTime] = None, **extra: Any) -> Job:
        """The job of ``agent``'s gradient ``index``; on the real clock ``unit`` (h_i) sets the emulated duration."""
        min_duration, per_step = 0.0, False
        if unit is not None and self.time_scale:
            per_step = self.timing.per_step
            min_duration = float(unit if per_step else self.timing.duration(unit)) * self.time_scale
        return Job(
            round_index, agent, index, job_seed(self.seed, round_index, agent, index), self.agent_env_index[agent],
            self.horizon, self.gamma, delay, min_duration, per_step, **extra,
        )

    # ------------------------------------------------------------------------------------------------ rounds
    def collect(
        self, params: np.ndarray, rule: AggregationRule, round_index: int, start_time: Any = ZERO, obs_norm: Optional[tuple] = None,
    ) -> RoundResult:
        """Run one aggregation round at θ = ``params`` (float32, ``(d,)``) starting at ``start_time`` seconds."""
        start = ExactTime.of(start_time)
        self.backend.set_params(params, obs_norm)
        trace: list[TraceEvent] = []
        if self.clock == "simulated":
            arrivals, stop, end = self._simulated(rule, round_index, start, trace)
        else:
            arrivals, stop, end = self._real(rule, round_index, start, trace)
        self.backend.cancel(round_index + 1)
        # Canonical order: per agent, gradients by index; then agents by index (the rule's aggregate).
        ordered = sorted(arrivals, key=lambda a: (a.agent, a.index))
        sums = np.zeros((self.n_agents, ordered[0].result.gradient.shape[0]), dtype=np.float64)
        for arrival in ordered:
            sums[arrival.agent] += arrival.result.gradient
        moments = [a.result.obs_moments for a in ordered if a.result.obs_moments is not None]
        return RoundResult(rule.aggregate(sums), rule.counts.copy(), arrivals, start, stop, end, moments,
                           trace if self.record_trace else [])

    def _uploads(self, rule: AggregationRule, stops: dict[int, Any], stop: Any, round_index: int, trace: list[TraceEvent],
                 scale: Optional[float] = None) -> Any:
        """Each contributing agent uploads when it stops (``stops[i]``, else ``stop``); returns the last arrival.

        Exact on the simulated clock (``scale`` None); on the real clock the upload lasts κ_i · ``scale`` seconds."""
        end = None
        for agent in np.flatnonzero(rule.counts):
            agent = int(agent)
            begin = stops.get(agent, stop)
            kappa = self._transfer(agent, begin)
            arrive = begin + kappa if scale is None else begin + float(kappa) * scale
            trace.append(TraceEvent(round_index, agent, "upload", -1, begin, arrive, "sent"))
            end = arrive if end is None or arrive > end else end
        return end

    def _simulated(self, rule: AggregationRule, round_index: int, start: ExactTime, trace: list[TraceEvent]):
        """Discrete-event simulation in exact time. With durations known in advance only counted gradients are
        computed; with per-step times each agent's current trajectory is computed speculatively."""
        timing = self.timing
        known = timing.known_in_advance
        results: dict[tuple[int, int], JobResult] = {}
        started: dict[tuple[int, int], tuple[ExactTime, ExactTime]] = {}  # (agent, index) → (start, h_i)
        events: list[tuple[ExactTime, int, int, int]] = []  # (time, order, agent, index)

        def schedule(agent: int, index: int, at: ExactTime) -> None:
            unit = self._compute_unit(agent, at)
            started[(agent, index)] = (at, unit)
            if known:
                heapq.heappush(events, (at + timing.duration(unit), _FINISH, agent, index))
            else:  # the duration depends on the trajectory's length: compute now; one step is a lower bound
                self.backend.submit(self._job(round_index, agent, index))
                heapq.heappush(events, (at + timing.duration(unit, 1), _BOUND, agent, index))

        def fetch(key: tuple[int, int]) -> JobResult:
            while key not in results:
                for result in self.backend.wait(key):
                    if result.job.round_index == round_index:
                        results[result.job.key] = result
            return results[key]

        for agent in range(self.n_agents):
            arrive = start + self._transfer(agent, start)
            trace.append(TraceEvent(round_index, agent, "broadcast", -1, start, arrive, "sent"))
            heapq.heappush(events, (arrive, _START, agent, 0))
        counted: list[tuple[ExactTime, int, int]] = []
        stops: dict[int, ExactTime] = {}  # agents that stopped before the rule was met (Synchronized NIGT)
        stop = start
        while not rule.done():
            if not events:
                raise RuntimeError("the aggregation rule can never be satisfied: no agent is computing")
            at, order, agent, index = heapq.heappop(events)
            if order == _START:
                schedule(agent, index, at)
                continue
            if order == _BOUND:
                begun, unit = started[(agent, index)]
                finish = begun + timing.duration(unit, fetch((agent, index)).n_steps)
                heapq.heappush(events, (finish, _FINISH, agent, index))
                continue
            rule.add(agent)
            counted.append((at, agent, index))
            stop = at
            trace.append(TraceEvent(round_index, agent, "compute", index, started[(agent, index)][0], at, "counted"))
            if known:
                self.backend.submit(self._job(round_index, agent, index))
            if not rule.wants_more(agent):
                stops[agent] = at
            elif not rule.done():
                schedule(agent, index + 1, at)
        for at, order, agent, index in sorted(events):
            if order != _START and started[(agent, index)][0] < stop:
                trace.append(TraceEvent(round_index, agent, "compute", index, started[(agent, index)][0], stop, "abandoned"))
        arrivals = [Arrival(at, agent, index, fetch((agent, index))) for at, agent, index in counted]
        end = self._uploads(rule, stops, stop, round_index, trace)
        return arrivals, stop, end

    def _real(self, rule: AggregationRule, round_index: int, start: ExactTime, trace: list[TraceEvent]):
        """True asynchrony: gradients count in the physical order in which they arrive; ``time_scale`` emulates
        h_i and κ_i with sleeps (each agent then has a worker process of its own)."""
        scale = self.time_scale or 0.0
        wall_start = time.perf_counter()
        base = float(start)

        def now() -> float:
            return base + (time.perf_counter() - wall_start)

        next_index = [0] * self.n_agents

        def begin(agent: int, delay: float) -> None:
            unit = self._compute_unit(agent, now() + delay)
            self.backend.submit(self._job(round_index, agent, next_index[agent], delay, unit))
            next_index[agent] += 1

        for agent in range(self.n_agents):
            kappa = float(self._transfer(agent, base)) * scale
            trace.append(TraceEvent(round_index, agent, "broadcast", -1, base, base + kappa, "sent"))
            begin(agent, kappa)
        arrivals: list[Arrival] = []
        stops: dict[int, float] = {}
        stop = base
        while not rule.done():
            for result in self.backend.wait():
                if result.job.round_index != round_index or rule.done():
                    continue
                agent = result.job.agent
                stop = now()
                rule.add(agent)
                arrivals.append(Arrival(ExactTime.of(stop), agent, result.job.index, result))
                computed = max(0.0, result.seconds - result.job.delay)
                trace.append(TraceEvent(round_index, agent, "compute", result.job.index, stop - computed, stop, "counted"))
                if not rule.wants_more(agent):
                    stops[agent] = stop
                elif not rule.done():
                    begin(agent, 0.0)
        last_upload = self._uploads(rule, stops, stop, round_index, trace, scale)
        if scale > 0:
            left = last_upload - now()
            if left > 0:
                time.sleep(left)
        end = max(now(), last_upload)
        return arrivals, ExactTime.of(stop), ExactTime.of(end)

    # ------------------------------------------------------------------------------ asynchronous server (AFedPG)
    def serve(
        self,
        params: np.ndarray,
        obs_norm: Optional[tuple],
        start_time: Any,
        first_index: list[int],
        on_arrival: Callable[[Arrival], Optional[tuple[np.ndarray, Optional[tuple]]]],
        first_version: int = 0,
        trace: Optional[list[TraceEvent]] = None,
    ) -> None:
        """A server that updates on every arrival (AFedPG; docs/algorithms.md), on the simulated or real clock.

        Agent i downloads θ (κ_i seconds), computes one gradient (h_i), uploads it (κ_i), each transfer with its
        own draw. At the server the arrivals are handed to ``on_arrival`` one at a time, in time order (ties by
        increasing agent index) on the simulated clock, in physical order on the real one. ``on_arrival`` returns
        the (θ, obs_norm) that the server sends back to that agent for its next gradient, or None to stop;
        in-flight work is then abandoned.

        :param params: θ that every agent downloads at ``start_time`` (float32, ``(d,)``).
        :param obs_norm: the observation-normalization statistics that go with it, or None.
        :param start_time: clock time at the start (seconds).
        :param first_index: for each agent, the index of its next gradient (job seeds use (seed, 0, agent, index)).
        :param on_arrival: the server's update, called with each :class:`Arrival`.
        :param first_version: the server's update counter k at the start (the trace's ``round``: the θ_k version
            an agent downloaded).
        :param trace: a list to append the events to, or None.
        """
        params = np.ascontiguousarray(params, dtype=np.float32)  # every job carries its own θ: no broadcast
        events = trace if trace is not None else []
        if self.clock == "simulated":
            self._serve_simulated(params, obs_norm, ExactTime.of(start_time), first_index, on_arrival, first_version, events)
        else:
            self._serve_real(params, obs_norm, float(start_time), first_index, on_arrival, first_version, events)
        self.backend.cancel(1)

    def _serve_simulated(self, params, obs_norm, start: ExactTime, first_index, on_arrival, version: int, trace) -> None:
        timing = self.timing
        known = timing.known_in_advance
        results: dict[tuple[int, int], JobResult] = {}
        jobs: dict[tuple[int, int], list] = {}  # (agent, index) → [download start, compute start, h_i, version, finish]
        events: list[tuple[ExactTime, int, int, int]] = []  # (arrival time or its lower bound, order, agent, index)

        def begin(agent: int, index: int, at: ExactTime, theta: np.ndarray, norm: Optional[tuple], k: int) -> None:
            computing = at + self._transfer(agent, at)
            unit = self._compute_unit(agent, computing)
            self.backend.submit(self._job(0, agent, index, params=theta, obs_norm=norm))
            jobs[(agent, index)] = [at, computing, unit, k, None]
            if known:
                arrive(agent, index, computing + timing.duration(unit))
            else:
                heapq.heappush(events, (computing + timing.duration(unit, 1), _BOUND, agent, index))

        def arrive(agent: int, index: int, finish: ExactTime) -> None:
            jobs[(agent, index)][4] = finish
            heapq.heappush(events, (finish + self._transfer(agent, finish), _FINISH, agent, index))

        def fetch(key: tuple[int, int]) -> JobResult:
            while key not in results:
                for result in self.backend.wait(key):
                    results[result.job.key] = result
            return results[key]

        for agent in range(self.n_agents):
            begin(agent, first_index[agent], start, params, obs_norm, version)
        while True:
            at, order, agent, index = heapq.heappop(events)
            if order == _BOUND:  # per-step times: the finish depends on the trajectory's length
                computing, unit = jobs[(agent, index)][1:3]
                arrive(agent, index, computing + timing.duration(unit, fetch((agent, index)).n_steps))
                continue
            download, computing, _, k, finish = jobs.pop((agent, index))
            trace.append(TraceEvent(k, agent, "broadcast", -1, download, computing, "sent"))
            trace.append(TraceEvent(k, agent, "compute", index, computing, finish, "counted"))
            trace.append(TraceEvent(k, agent, "upload", -1, finish, at, "sent"))
            reply = on_arrival(Arrival(at, agent, index, fetch((agent, index))))
            results.pop((agent, index), None)
            if reply is None:
                for (other, other_index), (download, computing, _, k, _) in sorted(jobs.items()):
                    trace.append(TraceEvent(k, other, "broadcast", -1, download, min(computing, at), "sent"))
                    if computing < at:
                        trace.append(TraceEvent(k, other, "compute", other_index, computing, at, "abandoned"))
                return
            version += 1
            begin(agent, index + 1, at, *reply, version)

    def _serve_real(self, params, obs_norm, base: float, first_index, on_arrival, version: int, trace) -> None:
        scale = self.time_scale or 0.0
        wall_start = time.perf_counter()
        downloaded: dict[tuple[int, int], tuple[float, int]] = {}

        def now() -> float:
            return base + (time.perf_counter() - wall_start)

        def begin(agent: int, index: int, theta: np.ndarray, norm: Optional[tuple], k: int) -> None:
            at = now()
            kappa = float(self._transfer(agent, at)) * scale
            unit = self._compute_unit(agent, at + kappa)
            upload = float(self._transfer(agent, at + kappa)) * scale  # drawn ahead: the worker sleeps it
            downloaded[(agent, index)] = (at, k)
            self.backend.submit(self._job(0, agent, index, kappa, unit, upload_delay=upload, params=theta, obs_norm=norm))

        for agent in range(self.n_agents):
            begin(agent, first_index[agent], params, obs_norm, version)
        while True:
            for result in self.backend.wait():
                at = now()
                job = result.job
                if job.key not in downloaded:  # a stale result from before the server started
                    continue
                download, k = downloaded.pop(job.key)
                computed = max(0.0, result.seconds - job.delay - job.upload_delay)
                trace.append(TraceEvent(k, job.agent, "broadcast", -1, download, download + job.delay, "sent"))
                trace.append(TraceEvent(k, job.agent, "compute", job.index, at - job.upload_delay - computed, at - job.upload_delay, "counted"))
                trace.append(TraceEvent(k, job.agent, "upload", -1, at - job.upload_delay, at, "sent"))
                reply = on_arrival(Arrival(ExactTime.of(at), job.agent, job.index, result))
                if reply is None:
                    return
                version += 1
                begin(job.agent, job.index + 1, *reply, version)
