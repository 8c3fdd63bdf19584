"""Per-agent compute and communication times (paper, Assumption 2.5 and App. H).

Agent i needs h_i seconds per stochastic gradient (``compute_times``) and κ_i seconds to send one vector to or
from the server (``communication_times``). Agents are indexed from 0 in code; the paper's i = 1..n is
``agent + 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

#: The accepted forms of a time specification (see :class:`TimingModel`).
TimeSpec = Union[str, float, int, Sequence[float], np.ndarray, "RandomTimes", dict, Callable[[int, int, int], float]]

PRESETS = ("equal", "sqrt", "zero")
COMMUNICATION_PRESETS = PRESETS + ("expensive",)


@dataclass(frozen=True)
class RandomTimes:
    """Random per-gradient (or per-round, for communication) times drawn around given means.

    :param distribution: ``"exponential"`` (mean ``mean_i``) or ``"lognormal"`` (mean ``mean_i``, log-space
        standard deviation ``sigma``).
    :param mean: the means in seconds, in any deterministic form of :class:`TimingModel` (``"equal"``,
        ``"sqrt"``, a float or a list of n floats).
    :param sigma: log-space standard deviation of the lognormal draw.

    Draws are seeded from (seed, round, agent, index), so the simulated clock stays deterministic.
    """

    distribution: str = "exponential"
    mean: Any = "equal"
    sigma: float = 0.5

    def __post_init__(self) -> None:
        if self.distribution not in ("exponential", "lognormal"):
            raise ValueError(f"distribution: must be 'exponential' or 'lognormal', got {self.distribution!r}")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"sigma: must be a finite float >= 0, got {self.sigma}")


def _preset(name: str, n_agents: int, n_params: Optional[int], arg: str) -> np.ndarray:
    i = np.arange(1, n_agents + 1, dtype=np.float64)
    if name == "equal":
        return np.ones(n_agents)
    if name == "zero":
        return np.zeros(n_agents)
    if name == "sqrt":
        return np.sqrt(i)
    if name == "expensive" and arg == "communication_times":
        # The paper's expensive-communication preset: κ_i = √i · d^(1/4), d = number of policy parameters.
        d = 1 if n_params is None else n_params
        return np.sqrt(i) * d**0.25
    allowed = COMMUNICATION_PRESETS if arg == "communication_times" else PRESETS
    raise ValueError(f"{arg}: unknown preset {name!r}; accepted presets are {', '.join(allowed)}")


def _check_values(values: np.ndarray, arg: str, n_agents: int, strictly_positive: bool) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0:
        values = np.full(n_agents, float(values))
    if values.shape != (n_agents,):
        raise ValueError(f"{arg}: expected {n_agents} values (one per agent, n_agents={n_agents}), got shape {values.shape}")
    bound = "> 0" if strictly_positive else ">= 0"
    bad = ~np.isfinite(values) | ((values <= 0) if strictly_positive else (values < 0))
    if bad.any():
        raise ValueError(f"{arg}: every time must be finite and {bound} seconds, got {values.tolist()}")
    return values


class TimingModel:
    """Compute times h_i and communication times κ_i of n agents, in seconds.

    Each specification accepts:

    - a list (or array) of n floats, one per agent, or a single float for all agents;
    - ``"equal"`` (all 1 s), ``"sqrt"`` (h_i = √i, i = 1..n) or ``"zero"`` (all 0 s);
    - for ``communication_times`` only, ``"expensive"``: the paper's κ_i = √i · d^(1/4), d = number of policy
      parameters;
    - a :class:`RandomTimes` (or a dict of its fields): a random draw per gradient around given means;
    - a callable ``f(agent, round, index) -> float`` (agent from 0, index = the agent's gradient number in the
      round; for communication times ``index`` is 0).

    :param n_agents: n, the number of agents (>= 1).
    :param compute_times: h_i, seconds per gradient (or per environment step if ``compute_time_unit="step"``).
        Must be > 0.
    :param communication_times: κ_i, seconds per vector exchanged between agent i and the server. Must be >= 0.
    :param compute_time_unit: ``"gradient"`` (the paper's experiments: h_i per gradient) or ``"step"`` (the
        paper's theory: h_i per environment step, so a trajectory of T steps costs T·h_i).
    :param n_params: d, the number of policy parameters (used by ``"expensive"``).
    :param seed: seed of the random draws.
    :raises ValueError: for a wrong length, a negative, zero (compute only), NaN or infinite time, an unknown
        preset or unit.
    """

    def __init__(
        self,
        n_agents: int,
        compute_times: TimeSpec = "equal",
        communication_times: TimeSpec = 0.0,
        compute_time_unit: str = "gradient",
        n_params: Optional[int] = None,
        seed: int = 0,
    ):
        if compute_time_unit not in ("gradient", "step"):
            raise ValueError(f"compute_time_unit: must be 'gradient' or 'step', got {compute_time_unit!r}")
        self.n_agents = n_agents
        self.per_step = compute_time_unit == "step"
        self.seed = int(seed)
        self._compute = self._parse(compute_times, "compute_times", n_params, strictly_positive=True)
        self._communication = self._parse(communication_times, "communication_times", n_params, strictly_positive=False)

    def _parse(self, spec: TimeSpec, arg: str, n_params: Optional[int], strictly_positive: bool):
        if isinstance(spec, dict):
            spec = RandomTimes(**spec)
        if isinstance(spec, RandomTimes):
            means = self._parse(spec.mean, arg, n_params, strictly_positive)
            return (spec, means)
        if callable(spec):
            return spec
        if isinstance(spec, str):
            return _check_values(_preset(spec, self.n_agents, n_params, arg), arg, self.n_agents, strictly_positive)
        try:
            values = np.asarray(spec, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{arg}: expected a list of {self.n_agents} floats, a preset name, RandomTimes or a callable, got {spec!r}") from exc
        return _check_values(values, arg, self.n_agents, strictly_positive)

    def _value(self, parsed, arg: str, agent: int, round_index: int, index: int, stream: int, strictly_positive: bool) -> float:
        if isinstance(parsed, np.ndarray):
            return float(parsed[agent])
        if isinstance(parsed, tuple):
            spec, means = parsed
            rng = np.random.default_rng([self.seed, stream, round_index, agent, index])
            mean = float(means[agent])
            if spec.distribution == "exponential":
                value = rng.exponential(mean) if mean > 0 else 0.0
            else:
                value = mean * math.exp(spec.sigma * rng.standard_normal() - 0.5 * spec.sigma**2) if mean > 0 else 0.0
            if strictly_positive:
                value = max(value, 1e-12)
            return value
        value = float(parsed(agent, round_index, index))
        if not math.isfinite(value) or value < 0 or (strictly_positive and value == 0):
            raise ValueError(f"{arg}: the callable returned {value} for agent {agent}; times must be finite and {'> 0' if strictly_positive else '>= 0'} seconds")
        return value

    def compute_time(self, agent: int, round_index: int, index: int) -> float:
        """h_i for gradient ``index`` of ``agent`` in round ``round_index``: seconds per gradient, or per step."""
        return self._value(self._compute, "compute_times", agent, round_index, index, 0, True)

    def communication_time(self, agent: int, round_index: int) -> float:
        """κ_i of ``agent`` in round ``round_index``, in seconds (one vector, one direction)."""
        return self._value(self._communication, "communication_times", agent, round_index, 0, 1, False)

    def gradient_time(self, agent: int, round_index: int, index: int, n_steps: int) -> float:
        """Seconds the gradient takes: h_i, or h_i · ``n_steps`` when h_i is per environment step."""
        unit = self.compute_time(agent, round_index, index)
        return unit * n_steps if self.per_step else unit
