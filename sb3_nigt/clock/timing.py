"""Per-agent compute and communication times (paper, Assumption 2.5 and App. H).

Agent i needs h_i seconds per stochastic gradient (``compute_times``) and κ_i seconds to send one vector to or
from the server (``communication_times``). Agents are indexed from 0 in code; the paper's i = 1..n is
``agent + 1``. Every time is an exact number (:class:`~sb3_nigt.clock.exact.ExactTime`): a float is read as the
decimal it prints as, ``"sqrt"`` gives the exact √i, so the simulated clock compares times exactly
(docs/time.md, "Exact time").

**One contract for time-varying specifications**, in every algorithm: a time is a function of (agent, the
simulated time in seconds at which the work starts, the agent's counter of that kind of work). The compute
counter counts the gradients the agent has started since the model was created (abandoned ones included); the
communication counter counts its transfers (each broadcast θ received and each vector uploaded), so a broadcast
and the upload that follows get independent draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from sb3_nigt.clock.exact import ExactTime, decimal_fraction

#: Outages: agent → the simulated time T from which it is gone for good, or a list of (start, end) intervals in
#: seconds (``end`` may be ``math.inf``).
OutageSpec = dict[int, Union[float, Sequence[tuple[float, float]]]]

#: The accepted forms of a time specification (see :class:`TimingModel`).
TimeSpec = Union[str, float, int, Sequence[float], np.ndarray, "RandomTimes", dict, Callable[[int, float, int], float]]

COMPUTE_PRESETS = ("equal", "sqrt")
COMMUNICATION_PRESETS = ("zero", "equal", "sqrt", "expensive")
#: ``compute_time_unit`` values: h_i per gradient (the paper's experiments), per environment step of the real
#: trajectory (realistic; biases the first-M rule towards short trajectories), or per step times the horizon H
#: (the paper's theory: a gradient costs ḣ_i·H whatever its length).
UNITS = ("gradient", "step", "horizon")

_COMPUTE, _COMMUNICATION = 0, 1  # random streams


@dataclass(frozen=True)
class RandomTimes:
    """Random times drawn around given means, a fresh draw per gradient (compute) or per transfer (communication).

    :param distribution: ``"exponential"`` (mean ``mean_i``) or ``"lognormal"`` (mean ``mean_i``, log-space
        standard deviation ``sigma``).
    :param mean: the means in seconds, in any deterministic form of :class:`TimingModel` (a preset, a float or a
        list of n floats).
    :param sigma: log-space standard deviation of the lognormal draw.

    Draw k of agent i is seeded from (seed, compute or communication, i, k), so the simulated clock stays
    deterministic and the draws are the same in every algorithm.

    :raises ValueError: starting ``distribution:`` for another distribution, or ``sigma:`` for a ``sigma`` that is
        not a finite number >= 0.
    """

    distribution: str = "exponential"
    mean: Any = "equal"
    sigma: float = 0.5

    def __post_init__(self) -> None:
        if self.distribution not in ("exponential", "lognormal"):
            raise ValueError(f"distribution: must be 'exponential' or 'lognormal', got {self.distribution!r}")
        sigma = self.sigma
        if isinstance(sigma, (bool, np.bool_)) or not isinstance(sigma, (int, float, np.integer, np.floating)) or not (
            math.isfinite(sigma) and sigma >= 0
        ):
            raise ValueError(f"sigma: must be a finite float >= 0, got {sigma!r}")


def expensive_factor(n_params: int) -> Fraction:
    """D = d^(1/4) of the paper's expensive-communication preset κ_i = √i · d^(1/4), as the rational that the
    float ``d ** 0.25`` prints as (exact when d is a fourth power; otherwise within 1e-16 relative of the root)."""
    root = math.isqrt(math.isqrt(n_params))
    if root**4 == n_params:
        return Fraction(root)
    return decimal_fraction(n_params**0.25)


def _preset(name: str, n_agents: int, n_params: Optional[int], arg: str) -> list[ExactTime]:
    allowed = COMMUNICATION_PRESETS if arg == "communication_times" else COMPUTE_PRESETS
    if name not in allowed:
        raise ValueError(f"{arg}: unknown preset {name!r}; accepted presets are {', '.join(allowed)}")
    if name == "equal":
        return [ExactTime.of(1)] * n_agents
    if name == "zero":
        return [ExactTime.of(0)] * n_agents
    if name == "sqrt":
        return [ExactTime.sqrt(i) for i in range(1, n_agents + 1)]
    # expensive: κ_i = √i · d^(1/4), d = number of policy parameters
    factor = expensive_factor(1 if n_params is None else int(n_params))
    return [ExactTime.sqrt(i, factor) for i in range(1, n_agents + 1)]


def _bound(strictly_positive: bool) -> str:
    return "> 0" if strictly_positive else ">= 0"


def _check_float(value: Any, arg: str, strictly_positive: bool, where: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{arg}: {where} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(value) or value < 0 or (strictly_positive and value == 0) or value > 1e15:
        raise ValueError(f"{arg}: {where} must be finite, {_bound(strictly_positive)} and at most 1e15 seconds, got {value}")
    return value


def _check_values(values: Any, arg: str, n_agents: int, strictly_positive: bool) -> list[ExactTime]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(n_agents, float(array))
    if array.shape != (n_agents,):
        raise ValueError(f"{arg}: expected {n_agents} values (one per agent, n_agents={n_agents}), got shape {array.shape}")
    bad = ~np.isfinite(array) | ((array <= 0) if strictly_positive else (array < 0)) | (array > 1e15)
    if bad.any():
        raise ValueError(f"{arg}: every time must be finite, {_bound(strictly_positive)} and at most 1e15 seconds, got {array.tolist()}")
    exact = {value: ExactTime.of(value) for value in set(array.tolist())}  # one parse per distinct value
    return [exact[value] for value in array.tolist()]


@dataclass
class TimeCounters:
    """Per-agent counters of started gradients and of transfers, the ``counter`` argument of a time specification.

    Part of the model's saved state, so a resumed run draws the same times.

    :param compute: gradients each agent has started (int, one per agent).
    :param communication: transfers (broadcasts received and uploads sent) of each agent.
    """

    compute: list[int] = field(default_factory=list)
    communication: list[int] = field(default_factory=list)

    @classmethod
    def zeros(cls, n_agents: int) -> "TimeCounters":
        return cls([0] * n_agents, [0] * n_agents)

    def copy(self) -> "TimeCounters":
        return TimeCounters(list(self.compute), list(self.communication))


class TimingModel:
    """Compute times h_i and communication times κ_i of n agents, in seconds, as exact numbers.

    Each specification accepts:

    - a list (or array) of n floats, one per agent, or a single float for all agents; each float is read as the
      decimal it prints as (``0.1`` is exactly 1/10);
    - compute presets ``"equal"`` (all 1 s) and ``"sqrt"`` (h_i = √i, i = 1..n, exact);
    - communication presets ``"zero"``, ``"equal"``, ``"sqrt"`` and ``"expensive"``: the paper's
      κ_i = √i · d^(1/4), d = number of policy parameters (d^(1/4) taken as the decimal of its float,
      :func:`expensive_factor`);
    - a :class:`RandomTimes` (or a dict of its fields): a random draw per gradient or per transfer;
    - a callable ``f(agent, start_seconds, counter) -> seconds``: agent from 0, the simulated time (float seconds)
      at which the work starts, and the agent's counter of that kind of work (:class:`TimeCounters`); if it has a
      method ``check_timing(n_agents, compute_time_unit, arg)``, it is called here and may raise ``ValueError``
      (times measured in a real run, :class:`~sb3_nigt.clock.calibration.TraceTimes`, check their agents so).

    :param n_agents: n, the number of agents (>= 1).
    :param compute_times: h_i, seconds per gradient (or per environment step, see ``compute_time_unit``). > 0.
    :param communication_times: κ_i, seconds per vector exchanged between agent i and the server. >= 0.
    :param compute_time_unit: ``"gradient"`` (h_i per gradient, the paper's experiments), ``"step"`` (h_i per
        environment step of the sampled trajectory: T steps cost T·h_i) or ``"horizon"`` (h_i per step times the
        horizon H, whatever the trajectory's length: the paper's theory, ḣ_i·H).
    :param n_params: d, the number of policy parameters (used by ``"expensive"``).
    :param horizon: H (used by ``"horizon"``).
    :param seed: seed of the random draws.
    :param outages: agents taken away on the simulated clock: ``{agent: T}`` (gone from T seconds on) or
        ``{agent: [(start, end), ...]}`` (down during each interval; ``end`` may be ``math.inf``). While down an
        agent neither computes nor communicates and loses what it held (docs/time.md, "Outages").
    :raises ValueError: for a wrong length, a negative, zero (compute only), NaN, infinite or > 1e15 time (the
        accepted range is [0, 1e15] seconds, (0, 1e15] for compute times), an unknown preset or unit, a dict with
        keys other than RandomTimes' fields (or bad field values), or a bad outage; the message starts with the
        argument (``compute_times:``, ``communication_times:``, ``compute_time_unit:``, ``outages:``).
    """

    def __init__(
        self,
        n_agents: int,
        compute_times: TimeSpec = "equal",
        communication_times: TimeSpec = 0.0,
        compute_time_unit: str = "gradient",
        n_params: Optional[int] = None,
        seed: int = 0,
        horizon: Optional[int] = None,
        outages: Optional[OutageSpec] = None,
    ):
        if compute_time_unit not in UNITS:
            raise ValueError(f"compute_time_unit: must be one of {', '.join(map(repr, UNITS))}, got {compute_time_unit!r}")
        self.n_agents = n_agents
        self.unit = compute_time_unit
        self.per_step = compute_time_unit == "step"
        self.horizon = 1 if horizon is None else int(horizon)
        self.seed = int(seed)
        self._compute = self._parse(compute_times, "compute_times", n_params, strictly_positive=True)
        self._communication = self._parse(communication_times, "communication_times", n_params, strictly_positive=False)
        self.outages = parse_outages(outages, n_agents)

    def _parse(self, spec: TimeSpec, arg: str, n_params: Optional[int], strictly_positive: bool):
        if isinstance(spec, dict):
            fields = ("distribution", "mean", "sigma")
            unknown = sorted(map(str, set(spec) - set(fields)))
            if unknown:
                raise ValueError(
                    f"{arg}: a dict is read as RandomTimes(distribution=..., mean=..., sigma=...); accepted keys are "
                    f"{', '.join(fields)}, got unknown {', '.join(map(repr, unknown))}"
                )
            try:
                spec = RandomTimes(**spec)
            except ValueError as exc:
                raise ValueError(f"{arg}: {exc}") from None
        if isinstance(spec, RandomTimes):
            means = self._parse(spec.mean, arg, n_params, strictly_positive)
            if not isinstance(means, list):
                raise ValueError(f"{arg}: RandomTimes.mean must be a preset, a float or a list of {self.n_agents} floats")
            return (spec, [float(m) for m in means])
        if callable(spec):
            check = getattr(spec, "check_timing", None)  # e.g. recorded times (clock/calibration.py): enough agents?
            if callable(check):
                check(self.n_agents, self.unit, arg)
            return spec
        if isinstance(spec, str):
            return _preset(spec, self.n_agents, n_params, arg)
        try:
            np.asarray(spec, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{arg}: expected a list of {self.n_agents} floats, a preset name, RandomTimes or a callable, got {spec!r}") from exc
        return _check_values(spec, arg, self.n_agents, strictly_positive)

    def _value(self, parsed, arg: str, agent: int, start: Union[ExactTime, float], counter: int, stream: int, strictly_positive: bool) -> ExactTime:
        if isinstance(parsed, list):
            return parsed[agent]
        if isinstance(parsed, tuple):
            spec, means = parsed
            mean = means[agent]
            if mean <= 0:
                return ExactTime.of(0)
            rng = np.random.default_rng([self.seed, stream, agent, counter])
            if spec.distribution == "exponential":
                value = float(rng.exponential(mean))
            else:
                value = mean * math.exp(spec.sigma * float(rng.standard_normal()) - 0.5 * spec.sigma**2)
            if strictly_positive:
                value = max(value, 1e-12)
            return ExactTime.of(value)
        value = parsed(agent, float(start), int(counter))
        where = f"the callable's value for agent {agent} (start {float(start)} s, counter {counter})"
        return ExactTime.of(_check_float(value, arg, strictly_positive, where))

    def compute_time(self, agent: int, start: Union[ExactTime, float] = 0.0, counter: int = 0) -> ExactTime:
        """h_i for a gradient of ``agent`` starting at ``start`` seconds, the agent's ``counter``-th: seconds per
        gradient, or per environment step (``"step"``, ``"horizon"``)."""
        return self._value(self._compute, "compute_times", agent, start, counter, _COMPUTE, True)

    def communication_time(self, agent: int, start: Union[ExactTime, float] = 0.0, counter: int = 0) -> ExactTime:
        """κ_i of a transfer (one vector, one direction) of ``agent`` starting at ``start``, its ``counter``-th."""
        return self._value(self._communication, "communication_times", agent, start, counter, _COMMUNICATION, False)

    def begin_round(self, round_index: int, counters: TimeCounters) -> None:
        """A round of the simulated clock starts: a specification with a method ``align_round(round_index,
        counters)`` (times recorded round by round, :class:`~sb3_nigt.clock.calibration.TraceTimes`) may set the
        agents' counters of its kind (a list of ints, one per agent) to where the recording of that round starts.
        Every other specification is left alone."""
        for parsed, values in ((self._compute, counters.compute), (self._communication, counters.communication)):
            align = getattr(parsed, "align_round", None)
            if callable(align):
                align(round_index, values)

    def constant_times(self) -> Optional[tuple[list[ExactTime], list[ExactTime]]]:
        """(per-gradient durations, communication times) of every agent when both are constant (lists or presets)
        and durations do not depend on the trajectory; else None. Lets the clock plan a round with vectorized
        arithmetic."""
        if not (isinstance(self._compute, list) and isinstance(self._communication, list)) or self.per_step:
            return None
        return [self.duration(h) for h in self._compute], list(self._communication)

    def down_until(self, agent: int, at: ExactTime) -> Optional[Union[ExactTime, float]]:
        """If ``agent`` is down at time ``at``, when it comes back (``math.inf``: never); else None."""
        for start, end in self.outages.get(agent, ()):
            if start <= at and (end == math.inf or at < end):
                return end
        return None

    def next_outage(self, agent: int, begin: ExactTime, end: ExactTime) -> Optional[ExactTime]:
        """The first time in [``begin``, ``end``) at which an outage of ``agent`` starts, or None."""
        starts = [start for start, _ in self.outages.get(agent, ()) if begin <= start < end]
        return min(starts) if starts else None

    def duration(self, unit: ExactTime, n_steps: int = 1) -> ExactTime:
        """Seconds a gradient takes from its h_i: h_i (``"gradient"``), h_i·T (``"step"``, T = ``n_steps``) or
        h_i·H (``"horizon"``)."""
        if self.unit == "gradient":
            return unit
        return unit * int(n_steps if self.per_step else self.horizon)


def parse_outages(outages: Optional[OutageSpec], n_agents: int) -> dict[int, list[tuple[ExactTime, Union[ExactTime, float]]]]:
    """Outages as sorted exact intervals per agent; ``math.inf`` stays a float.

    :raises ValueError: naming ``outages``, for an unknown agent, a negative or NaN time, or start >= end.
    """
    parsed: dict[int, list[tuple[ExactTime, Union[ExactTime, float]]]] = {}
    if outages is None:
        return parsed
    if not isinstance(outages, dict):
        raise ValueError(f"outages: expected a dict agent → T or agent → [(start, end), ...], got {outages!r}")
    for agent, spec in outages.items():
        if isinstance(agent, bool) or not isinstance(agent, (int, np.integer)) or not 0 <= int(agent) < n_agents:
            raise ValueError(f"outages: agents are 0..{n_agents - 1}, got {agent!r}")
        intervals = [(spec, math.inf)] if isinstance(spec, (int, float, np.floating, np.integer)) else list(spec)
        cleaned = []
        for interval in intervals:
            try:
                start, end = (float(x) for x in interval)
            except (TypeError, ValueError):
                raise ValueError(f"outages: agent {agent}: expected (start, end) pairs of seconds, got {interval!r}") from None
            if not (math.isfinite(start) and start >= 0 and (end == math.inf or (math.isfinite(end) and end > start))):
                raise ValueError(f"outages: agent {agent}: need 0 <= start < end (end may be math.inf), got ({start}, {end})")
            cleaned.append((ExactTime.of(start), math.inf if end == math.inf else ExactTime.of(end)))
        parsed[int(agent)] = sorted(cleaned, key=lambda pair: pair[0])
    return parsed
