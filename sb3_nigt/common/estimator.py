"""Agent work (docs/algorithms.md, "The policy gradient"): one trajectory → one truncated policy gradient g_H.

g_H(τ, θ) = Σ_{t<H} (Σ_{h=t}^{H−1} γ^h r_h) ∇θ log π_θ(u_t | s_t)   (paper, Section 2; discounting from t = 0)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import gymnasium as gym
import numpy as np
import torch as th
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from sb3_nigt.policies import NIGTPolicy


class JobCancelled(Exception):
    """Raised inside a worker when the round of the running job has ended (its work is abandoned)."""


@dataclass(frozen=True)
class Job:
    """One gradient to compute: gradient ``index`` of ``agent`` in round ``round_index``.

    :param seed: the job's seed, derived from (seed, round, agent, index).
    :param env_index: which environment factory the agent uses.
    :param horizon: H, the maximum number of environment steps.
    :param gamma: γ, the discount factor.
    :param delay: seconds to sleep before starting (real clock, emulated broadcast κ_i).
    :param min_duration: the job takes at least this many seconds (real clock, emulated h_i), or this many
        seconds per environment step when ``per_step`` is true.
    :param per_step: whether ``min_duration`` is per environment step.
    :param upload_delay: seconds to sleep after computing (real clock, emulated upload κ_i of AFedPG).
    :param params: θ for this job only (float32, ``(d,)``), or None for the round's broadcast θ (AFedPG sends
        each agent its own θ̃).
    :param obs_norm: the observation-normalization statistics that go with ``params``.
    """

    round_index: int
    agent: int
    index: int
    seed: int
    env_index: int
    horizon: int
    gamma: float
    delay: float = 0.0
    min_duration: float = 0.0
    per_step: bool = False
    upload_delay: float = 0.0
    params: Optional[np.ndarray] = field(default=None, compare=False, repr=False)
    obs_norm: Optional[tuple] = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> tuple[int, int]:
        return (self.agent, self.index)


@dataclass
class JobResult:
    """What one job returns.

    :param gradient: g_H, float32, shape ``(d,)`` in ``parameters_to_vector`` order.
    :param episode_return: undiscounted return of the trajectory (float).
    :param episode_length: its number of steps (int, <= H).
    :param n_steps: environment steps consumed (equal to ``episode_length``).
    :param obs_moments: (mean, var, count) of the raw observations seen, for VecNormalize, or None.
    :param seconds: wall-clock seconds spent.
    """

    job: Job
    gradient: np.ndarray
    episode_return: float
    episode_length: int
    n_steps: int
    obs_moments: Optional[tuple[np.ndarray, np.ndarray, int]]
    seconds: float


def job_seed(seed: int, round_index: int, agent: int, index: int) -> int:
    """A 63-bit seed derived from (seed, round, agent, index) with ``numpy.random.SeedSequence``."""
    return int(np.random.SeedSequence([seed, round_index, agent, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def discounted_returns_to_go(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """R_t = Σ_{h=t}^{T−1} γ^h r_h for t < T (float64, shape ``(T,)``); discounting counts from t = 0."""
    discounted = rewards.astype(np.float64) * gamma ** np.arange(len(rewards), dtype=np.float64)
    return np.cumsum(discounted[::-1])[::-1].copy()


def policy_gradient(policy: NIGTPolicy, observations: np.ndarray, pre_squash_actions: np.ndarray, rewards: np.ndarray, gamma: float) -> np.ndarray:
    """g_H for one trajectory with one batched forward and backward pass.

    :param policy: the policy at θ.
    :param observations: s_t as the policy saw them, float32 ``(T, ds)``.
    :param pre_squash_actions: u_t, float32 ``(T, da)``.
    :param rewards: r_t, float ``(T,)``.
    :param gamma: γ.
    :return: g_H, float32 ``(d,)`` in ``parameters_to_vector`` order (an ascent direction).
    """
    returns = th.as_tensor(discounted_returns_to_go(rewards, gamma), dtype=th.float32)
    log_prob = policy.log_prob(th.as_tensor(observations), th.as_tensor(pre_squash_actions))
    params = list(policy.parameters())
    grads = th.autograd.grad(th.dot(returns, log_prob), params, allow_unused=True)
    return th.cat([(g if g is not None else th.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]).numpy()


class GradientWorker:
    """Holds the environments and a policy copy, and computes g_H for jobs. Used in-process and in workers.

    :param env_factories: callables that build each environment (never a live env).
    :param policy_class: the policy class.
    :param observation_space: the observation space.
    :param action_space: the action space.
    :param policy_kwargs: keyword arguments of the policy.
    """

    def __init__(self, env_factories: list[Callable[[], gym.Env]], policy_class: type, observation_space, action_space, policy_kwargs: dict[str, Any]):
        self.env_factories = env_factories
        self.envs: dict[int, gym.Env] = {}
        # A policy copy whose weights are overwritten by θ: build it without advancing the global torch RNG, so
        # that the inline and subprocess backends leave the user's random state alike.
        with th.random.fork_rng(devices=[]):
            self.policy: NIGTPolicy = policy_class(observation_space, action_space, None, **policy_kwargs)
        self.policy.set_training_mode(False)
        self.forward = self.policy.numpy_forward()
        self.obs_norm: Optional[tuple[np.ndarray, np.ndarray, float, float]] = None

    def set_params(self, params: np.ndarray, obs_norm: Optional[tuple] = None) -> None:
        """Load θ (float32, ``(d,)``) and the frozen observation-normalization statistics of the round."""
        with th.no_grad():
            vector_to_parameters(th.as_tensor(params, dtype=th.float32), self.policy.parameters())
        self.forward = self.policy.numpy_forward()
        if obs_norm is not None:
            mean, var, clip, eps = obs_norm
            self.obs_norm = (mean.reshape(-1).astype(np.float32), np.sqrt(var + eps).reshape(-1).astype(np.float32), np.float32(clip), eps)
        else:
            self.obs_norm = None

    def env(self, index: int) -> gym.Env:
        if index not in self.envs:
            self.envs[index] = self.env_factories[index]()
        return self.envs[index]

    def run(self, job: Job, cancelled: Callable[[], bool] = lambda: False) -> JobResult:
        """Sample one trajectory of at most H steps at the current θ and return g_H.

        :raises ValueError: if the environment returns a NaN or infinite reward.
        :raises JobCancelled: if ``cancelled()`` becomes true while the job runs.
        """
        start = time.perf_counter()
        if job.params is not None:
            self.set_params(job.params, job.obs_norm)
        if job.delay > 0:
            _sleep(job.delay, cancelled)
        env = self.env(job.env_index)
        rng = np.random.default_rng(job.seed)
        reset_seed = int(rng.integers(0, 2**31 - 1))
        obs, _ = env.reset(seed=reset_seed)
        action_space = env.action_space
        low, high = action_space.low.astype(np.float32), action_space.high.astype(np.float32)
        da = low.shape[0]
        noise = rng.standard_normal((job.horizon, da), dtype=np.float32)
        observations, raw_observations, actions, rewards = [], [], [], []
        norm = self.obs_norm
        forward = self.forward
        episode_return = 0.0
        for t in range(job.horizon):
            raw = np.asarray(obs, dtype=np.float32).reshape(-1)
            x = np.clip((raw - norm[0]) / norm[1], -norm[2], norm[2]) if norm is not None else raw
            mean, std = forward(x)
            u = mean + std * noise[t]
            action = low + (0.5 * (np.tanh(u) + 1.0)) * (high - low)
            obs, reward, terminated, truncated, _ = env.step(action)
            reward = float(reward)
            if not math.isfinite(reward):
                raise ValueError(
                    f"reward: the environment returned a non-finite reward {reward} (agent {job.agent}, round {job.round_index}, step {t}); "
                    "training stopped before the update so θ is unchanged"
                )
            observations.append(x)
            if norm is not None:
                raw_observations.append(raw)
            actions.append(u)
            rewards.append(reward)
            episode_return += reward
            if terminated or truncated:
                break
            if (t & 63) == 63 and cancelled():
                raise JobCancelled()
        obs_t = np.asarray(observations, dtype=np.float32)
        grad = policy_gradient(self.policy, obs_t, np.asarray(actions, dtype=np.float32), np.asarray(rewards), job.gamma)
        moments = None
        if norm is not None:
            raw_t = np.asarray(raw_observations, dtype=np.float64)
            moments = (raw_t.mean(axis=0), raw_t.var(axis=0), len(raw_t))
        n = len(rewards)
        if job.min_duration > 0:
            emulated = job.min_duration * (n if job.per_step else 1)
            _sleep(emulated - (time.perf_counter() - start - job.delay), cancelled)
        if job.upload_delay > 0:
            _sleep(job.upload_delay, cancelled)
        return JobResult(job, grad, episode_return, n, n, moments, time.perf_counter() - start)

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
        self.envs.clear()


def _sleep(seconds: float, cancelled: Callable[[], bool]) -> None:
    deadline = time.perf_counter() + seconds
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return
        if cancelled():
            raise JobCancelled()
        time.sleep(min(left, 0.01))
