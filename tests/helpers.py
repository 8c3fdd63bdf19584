"""Small environments and reference computations shared by the tests.

Kept in an importable module (not in a test file) so that the environment classes pickle by reference into
subprocess workers (forkserver), which import this module by name.
"""

from __future__ import annotations

import functools
import math
import multiprocessing as mp
from fractions import Fraction
from typing import Any, Callable, Optional, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback


class ConstantBandit(gym.Env):
    """A continuous bandit: the observation is always ``obs_value``; only the first action is rewarded.

    The reward of step 0 is ``reward_fn(a_0)``; later steps give 0; the episode terminates after ``length`` steps.
    With R_t = Σ_{h≥t} γ^h r_h this makes g_H = r(a_0) ∇θ log N(u_0; μ, σ) exactly, for any ``length`` >= 1
    (the later steps have R_t = 0).

    :param reward_fn: maps the environment action ``a`` (float, inside the Box bounds) to the reward.
    :param obs_value: the constant observation.
    :param bound: the action Box is ``[-bound, bound]``.
    :param length: steps per episode.
    """

    def __init__(self, reward_fn: Callable[[float], float], obs_value: float = 1.0, bound: float = 1.0, length: int = 2):
        self.reward_fn = reward_fn
        self.obs_value = float(obs_value)
        self.length = int(length)
        self.observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = spaces.Box(-bound, bound, (1,), np.float32)
        self.t = 0

    def reset(self, *, seed: Optional[int] = None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([self.obs_value], dtype=np.float32), {}

    def step(self, action):
        reward = float(self.reward_fn(float(np.asarray(action).reshape(-1)[0]))) if self.t == 0 else 0.0
        self.t += 1
        return np.array([self.obs_value], dtype=np.float32), reward, self.t >= self.length, False, {}


def quadratic_reward(a: float) -> float:
    """r(a) = −(a − 0.5)²: its expectation has a clear, non-zero gradient at a fresh policy."""
    return -((a - 0.5) ** 2)


def identity_reward(a: float) -> float:
    """r(a) = a."""
    return a


class FixedLengthEnv(gym.Env):
    """Observation = the step counter; reward 1 per step; terminates after exactly ``length`` steps."""

    def __init__(self, length: int = 5):
        self.length = int(length)
        self.observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t = 0

    def reset(self, *, seed: Optional[int] = None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([float(self.t)], dtype=np.float32), 1.0, self.t >= self.length, False, {}


class RandomLengthEnv(gym.Env):
    """An episode length drawn in 2..``max_length`` from the reset seed; reward = the action per step.

    (Length 1 is avoided: see the length-1 bug documented in ``test_policy_gradient.py``.)
    """

    def __init__(self, max_length: int = 10):
        self.max_length = int(max_length)
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t = 0
        self.length = 1

    def reset(self, *, seed: Optional[int] = None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.length = int(self.np_random.integers(2, self.max_length + 1))
        return self._obs(), {}

    def _obs(self):
        return np.array([self.t / self.max_length, 1.0], dtype=np.float32)

    def step(self, action):
        self.t += 1
        return self._obs(), float(np.asarray(action).reshape(-1)[0]), self.t >= self.length, False, {}


# --------------------------------------------------------------------------------------------------------------
# Reference implementation of the documented round rule (docs/time.md), in exact rational arithmetic: it shares
# no code with the clock. Floats are read as the decimals they print as (0.1 is 1/10), as the library documents.
# --------------------------------------------------------------------------------------------------------------
def exact(value) -> Fraction:
    """An int, a Fraction, or a float read as its decimal (``repr``)."""
    if isinstance(value, (int, Fraction)):
        return Fraction(value)
    return Fraction(repr(float(value)))


def _finishes(gradient_seconds: Callable[[int, int], float], communication: Sequence[float], start_time, per_agent: int):
    """Every agent's first ``per_agent`` finish times (agent i starts at T0 + κ_i), sorted by time then agent."""
    finishes = []
    for agent in range(len(communication)):
        t = exact(start_time) + exact(communication[agent])
        for k in range(per_agent):
            t = t + exact(gradient_seconds(agent, k))
            finishes.append((t, agent, k))
    return sorted(finishes, key=lambda x: (x[0], x[1]))


def reference_round(
    gradient_seconds: Callable[[int, int], float],
    communication: Sequence[float],
    batch_size: int,
    start_time=0,
    upload: Optional[Sequence[float]] = None,
):
    """Brute-force Rennala round: agent i starts at T0 + κ_i, its k-th gradient takes ``gradient_seconds(i, k)``.

    The first ``batch_size`` finishes (sorted by time, ties by agent index) are counted; every agent stops at
    t_stop, and the round ends at max over contributing agents of (t_stop + κ_i) (``upload`` gives the upload
    times if they differ from the broadcast's).

    :return: (counts, arrivals as [(time, agent, index)], stop time, end time), times as Fractions.
    """
    n = len(communication)
    upload = communication if upload is None else upload
    finishes = _finishes(gradient_seconds, communication, start_time, batch_size)  # no agent can exceed M
    counted = finishes[:batch_size]
    counts = np.zeros(n, dtype=np.int64)
    for _, agent, _ in counted:
        counts[agent] += 1
    stop = counted[-1][0]
    end = max(stop + exact(upload[i]) for i in range(n) if counts[i] > 0)
    return counts, counted, stop, end


def reference_sync_round(compute: Sequence[float], communication: Sequence[float], start_time=0):
    """Brute-force Synchronized NIGT round: agent i computes one gradient from T0 + κ_i, stops at
    stop_i = T0 + κ_i + h_i and its vector arrives κ_i later; the round ends at max_i (stop_i + κ_i).

    :return: (arrivals as [(time, agent, 0)] sorted by time then agent, end time), as Fractions.
    """
    stops = [(exact(start_time) + exact(k) + exact(h), i, 0) for i, (h, k) in enumerate(zip(compute, communication))]
    end = max(t + exact(communication[i]) for t, i, _ in stops)
    return sorted(stops), end


def reference_malenia_round(
    gradient_seconds: Callable[[int, int], float],
    communication: Sequence[float],
    batch_size: int,
    start_time=0,
    max_per_agent: int = 2000,
):
    """Brute-force Malenia round (paper, Algorithm 3), in exact rational arithmetic.

    Agent i starts at T0 + κ_i and its k-th gradient takes ``gradient_seconds(i, k)``; finishes are processed in
    time order, ties by agent index, until all M_i >= 1 and ((1/n) Σ 1/M_i)^(−1) >= S/n. Every agent stops at
    t_stop; the round ends at max over contributing agents of (t_stop + κ_i).

    :return: (counts, arrivals as [(time, agent, index)], stop time, end time).
    """
    n = len(communication)
    finishes = _finishes(gradient_seconds, communication, start_time, max_per_agent)
    counts = np.zeros(n, dtype=np.int64)
    counted = []
    for finish in finishes:
        counts[finish[1]] += 1
        counted.append(finish)
        if counts.min() >= 1 and Fraction(1, n) * sum(Fraction(1, int(c)) for c in counts) <= Fraction(n, batch_size):
            break
    else:
        raise AssertionError("max_per_agent too small for this case")
    stop = counted[-1][0]
    end = max(stop + exact(communication[i]) for i in range(n) if counts[i] > 0)
    return counts, counted, stop, end


def constant_reward(value: float) -> Callable[[float], float]:
    """r(a) = ``value`` whatever the action (picklable)."""
    return functools.partial(_constant, value)


def _constant(value: float, a: float) -> float:
    return value


def scaled_identity_reward(scale: float, a: float) -> float:
    """r(a) = ``scale`` · a."""
    return scale * a


def expected_tanh_gradient(theta: np.ndarray, min_std: float, nodes: int = 201, eps: float = 1e-5) -> np.ndarray:
    """∇θ E_{u~N(μ,σ)}[tanh u] for the linear bandit policy (``net_arch=[]``, x = 1), by Gauss–Hermite quadrature
    and central differences; parameters in ``parameters_to_vector`` order (W_m, b_m, W_s, b_s)."""
    xs, ws = np.polynomial.hermite_e.hermegauss(nodes)

    def value(t: np.ndarray) -> float:
        mu, sigma = t[0] + t[1], np.log1p(np.exp(t[2] + t[3])) + min_std
        return float(np.tanh(mu + sigma * xs) @ ws / np.sqrt(2 * np.pi))

    theta = np.asarray(theta, dtype=np.float64)
    return np.array([(value(theta + eps * e) - value(theta - eps * e)) / (2 * eps) for e in np.eye(len(theta))])


def logpdf_grad_reference(x, u, w_mean, b_mean, w_std, b_std, min_std, returns):
    """Hand-computed g = Σ_t R_t ∇θ log N(u_t; μ_t, σ_t) for the linear policy (``net_arch=[]``), in float64.

    μ = W_m x + b_m; σ = softplus(W_s x + b_s) + min_std;
    ∂ log N/∂μ = (u − μ)/σ², ∂ log N/∂σ = ((u − μ)² − σ²)/σ³, ∂σ/∂z = sigmoid(z).

    :return: the gradient in ``parameters_to_vector`` order: W_m (row-major), b_m, W_s, b_s.
    """
    x = np.asarray(x, np.float64)
    u = np.asarray(u, np.float64)
    mu = x @ w_mean.T + b_mean
    z = x @ w_std.T + b_std
    sigma = np.log1p(np.exp(z)) + min_std
    d_mu = (u - mu) / sigma**2  # (T, da)
    d_sigma = ((u - mu) ** 2 - sigma**2) / sigma**3
    d_z = d_sigma / (1.0 + np.exp(-z))
    R = np.asarray(returns, np.float64)[:, None]
    g_w_mean = (R * d_mu).T @ x
    g_b_mean = (R * d_mu).sum(axis=0)
    g_w_std = (R * d_z).T @ x
    g_b_std = (R * d_z).sum(axis=0)
    return np.concatenate([g_w_mean.ravel(), g_b_mean, g_w_std.ravel(), g_b_std])


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


def assert_no_worker_alive(started: list) -> None:
    """Every recorded worker has exited and no child process of this one is alive."""
    assert started, "the spy recorded no worker process: the test did not exercise the subprocess backend"
    for process in started:
        assert not process.is_alive(), f"worker pid {process.pid} is still alive"
        assert process.exitcode is not None
    assert mp.active_children() == []


class FailsOutsideProcess:
    """An env factory that builds Pendulum-v1 in the process that created it and raises in any other process."""

    def __init__(self) -> None:
        import os

        self.pid = os.getpid()

    def __call__(self) -> gym.Env:
        import os

        if os.getpid() != self.pid:
            raise RuntimeError("env factory failure inside a worker")
        return gym.make("Pendulum-v1")


def zero_reward(a: float) -> float:
    """r(a) = 0: every g_H is exactly zero."""
    return 0.0


class RoundRecorder(BaseCallback):
    """Records, at the end of every aggregation round: the model's ``round_stats``, its clock (``clock``), the
    per-agent counts M_i (``counts``) and the mean undiscounted return of the round's trajectories
    (``mean_return``)."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds: list[dict] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        stats = self.model.round_stats
        batch = list(self.model.ep_info_buffer)[-stats["gradients_per_round"]:]
        self.rounds.append(
            dict(stats, clock=self.model.simulated_time, counts=self.model.last_counts.copy(), mean_return=float(np.mean([ep["r"] for ep in batch])))
        )


class SaveAndStop(BaseCallback):
    """Saves the model at the ``at``-th environment step (inside a round's callbacks), then stops training (on
    several ranks every rank decides alike: they see the same data)."""

    def __init__(self, at: int, path: Any):
        super().__init__()
        self.at, self.path = at, path

    def _on_step(self) -> bool:
        if self.n_calls == self.at:
            self.model.save(self.path)
            return False
        return True


def processes_marked(marker: str) -> list[int]:
    """Process ids whose environment holds ``marker`` (Linux ``/proc``): the processes a test started with it."""
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found
