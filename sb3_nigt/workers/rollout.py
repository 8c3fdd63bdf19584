"""Agent work (docs/algorithms.md, "The policy gradient"): one trajectory → one truncated policy gradient g_H.

g_H(τ, θ) = Σ_{t<H} (Σ_{h=t}^{H−1} γ^h r_h) ∇θ log π_θ(u_t | s_t)   (paper, Section 2; discounting from t = 0)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import gymnasium as gym
import numpy as np
import torch as th
from torch.nn.utils import vector_to_parameters

from sb3_nigt.core.errors import NonFiniteEnvironmentError
from sb3_nigt.policies import NIGTPolicy
from sb3_nigt.workers.env_factory import build_env


class JobCancelled(Exception):
    """Raised inside a worker when the round of the running job has ended (its work is abandoned)."""


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
    return _return_weighted_gradient(policy, observations, pre_squash_actions, discounted_returns_to_go(rewards, gamma))


def _return_weighted_gradient(policy: NIGTPolicy, observations: np.ndarray, pre_squash_actions: np.ndarray, returns: np.ndarray) -> np.ndarray:
    """∇θ Σ_t R_t log π(u_t | s_t) with one forward and one backward pass, float32 ``(d,)``."""
    log_prob = policy.log_prob(th.as_tensor(observations), th.as_tensor(pre_squash_actions))
    params = list(policy.parameters())
    grads = th.autograd.grad(th.dot(th.as_tensor(returns, dtype=th.float32), log_prob), params, allow_unused=True)
    return th.cat([(g if g is not None else th.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]).numpy()


def batched_policy_gradient(policy: NIGTPolicy, observations: np.ndarray, pre_squash_actions: np.ndarray, returns: np.ndarray) -> np.ndarray:
    """Σ_t R_t ∇θ log π(u_t | s_t) over the steps of several trajectories, with one forward and one backward pass.

    :param observations: float32 ``(ΣT, ds)``, the trajectories one after another.
    :param pre_squash_actions: float32 ``(ΣT, da)``.
    :param returns: R_t of each step within its own trajectory (discounting from each trajectory's t = 0), ``(ΣT,)``.
    :return: the sum of the trajectories' g_H, float64 ``(d,)``.
    """
    return _return_weighted_gradient(policy, observations, pre_squash_actions, returns).astype(np.float64)


#: Trajectories per batched forward/backward. A unit of work is split into chunks of this size whatever the number
#: of workers, and chunk sums are added in canonical order, so the bits never depend on who computed what.
CHUNK_SIZE = 8


@dataclass
class ObsMoments:
    """Raw-observation moments of some trajectories, merged into VecNormalize's ``RunningMeanStd`` by the main process.

    :param mean: float64 ``(ds,)``.
    :param var: float64 ``(ds,)``.
    :param count: number of observations.
    """

    mean: np.ndarray
    var: np.ndarray
    count: int


@dataclass
class ObsNorm:
    """VecNormalize's observation statistics, frozen for a round: x = clip((o − mean) / √(var + ε), ±clip).

    :param mean: float64 ``(ds,)``.
    :param var: float64 ``(ds,)``.
    :param clip: the clipping bound.
    :param epsilon: ε.
    """

    mean: np.ndarray
    var: np.ndarray
    clip: float
    epsilon: float


@dataclass
class Trajectory:
    """One sampled trajectory, kept until its gradient is taken (a few kB: its length, not the horizon, sets it).

    :param observations: s_t as the policy saw them, float32 ``(T, ds)``.
    :param actions: u_t (pre-tanh), float32 ``(T, da)``.
    :param rewards: r_t, float64 ``(T,)``.
    :param stats: the trajectory's statistics.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    stats: "TrajectoryStats"


class StepInfos(Sequence[dict[str, Any]]):
    """The environment's info dict of every step of a trajectory, stored compactly for the trip to the main process.

    When every step's dict has the same keys and each key always holds a float of one type (``float``,
    ``np.float64`` or ``np.float32``, as MuJoCo tasks report), the values travel as one array per key and each dict
    is rebuilt, equal and of the same types, when it is read; anything else travels as the list of dicts. The
    arrays pickle to a fraction of the dicts' size and many times faster (docs/benchmarks.md).

    :param infos: the dicts, one per step, in order.
    """

    _FLOATS = (float, np.float64, np.float32)

    def __init__(self, infos: list[dict[str, Any]]):
        self._n = len(infos)
        self._dicts: Optional[list[dict[str, Any]]] = infos
        self._columns: Optional[dict[str, tuple[np.ndarray, type]]] = None
        if not infos or not infos[0]:
            return
        keys = tuple(infos[0])
        columns: dict[str, tuple[np.ndarray, type]] = {}
        for key in keys:
            kind = type(infos[0][key])
            if kind not in self._FLOATS:
                return
            values = []
            for info in infos:
                if len(info) != len(keys) or type(info.get(key)) is not kind:
                    return
                values.append(info[key])
            columns[key] = (np.asarray(values, dtype=np.float32 if kind is np.float32 else np.float64), kind)
        self._columns, self._dicts = columns, None

    def __len__(self) -> int:
        return self._n

    def _one(self, step: int) -> dict[str, Any]:
        assert self._columns is not None
        return {key: (float(column[step]) if kind is float else column[step]) for key, (column, kind) in self._columns.items()}

    def __getitem__(self, step: Any) -> Any:
        if self._dicts is not None:
            return self._dicts[step]
        if isinstance(step, slice):
            return [self._one(i) for i in range(self._n)[step]]
        if not -self._n <= step < self._n:
            raise IndexError(f"step {step} out of range for {self._n} steps")
        return self._one(step % self._n)


@dataclass
class TrajectoryStats:
    """What the main process needs of one trajectory: no vector.

    :param agent: the agent.
    :param index: the agent's gradient index in the round.
    :param episode_return: undiscounted return (float).
    :param episode_length: steps (int, <= H).
    :param n_steps: environment steps consumed (= ``episode_length``).
    :param obs_moments: raw-observation moments, when VecNormalize is on, else None.
    :param rewards: r_t of every step, float64 ``(T,)`` (for the callbacks' ``rewards``); None in a bare record.
    :param infos: the environment's own info dict of every step (for the callbacks' ``infos``); None in a bare
        record.
    :param terminated: whether the environment terminated the episode at the last step (else it was truncated,
        by the environment's time limit or by H).
    :param terminal_observation: the environment's last observation, float32, the observation space's shape.
    :param new_obs: only when the worker keeps step data: the observation after every step, float32
        ``(T, *obs_shape)``.
    :param actions: only when the worker keeps step data: the action sent to the environment at every step
        (after squashing onto the Box bounds), float32 ``(T, da)``.
    """

    agent: int
    index: int
    episode_return: float
    episode_length: int
    n_steps: int
    obs_moments: Optional[ObsMoments] = None
    rewards: Optional[np.ndarray] = None
    infos: Optional[Sequence[dict[str, Any]]] = None
    terminated: bool = False
    terminal_observation: Optional[np.ndarray] = None
    new_obs: Optional[np.ndarray] = None
    actions: Optional[np.ndarray] = None


@dataclass(frozen=True)
class WorkUnit:
    """A share of an agent's work in a round: its gradients ``first`` .. ``first + count − 1``, summed.

    Gradient k is sampled with the seed (seed, round, agent, k); the sum is taken with one batched backward per
    :data:`CHUNK_SIZE` trajectories and added in order, in float64.

    :param round_index: the round (AFedPG: 0).
    :param agent: the agent.
    :param first: the first gradient index.
    :param count: how many gradients (>= 1).
    :param seed: the base seed of the job seeds.
    :param env_index: the agent's environment factory.
    :param horizon: H.
    :param gamma: γ.
    :param epoch: the collector's cancellation epoch: the unit is abandoned once the backend's live epoch is higher.
    :param slot: which published θ to use: -1 for the round's broadcast, or agent i's own slot (AFedPG).
    :param delay: real clock: seconds to sleep before computing (emulated κ_i).
    :param min_duration: real clock: the unit takes at least this many seconds (per step if ``per_step``).
    :param per_step: whether ``min_duration`` is per environment step.
    :param upload_delay: real clock: seconds to sleep after computing (emulated upload κ_i).
    """

    round_index: int
    agent: int
    first: int
    count: int
    seed: int
    env_index: int
    horizon: int
    gamma: float
    epoch: int = 0
    slot: int = -1
    delay: float = 0.0
    min_duration: float = 0.0
    per_step: bool = False
    upload_delay: float = 0.0

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.epoch, self.agent, self.first)

    @property
    def indices(self) -> range:
        return range(self.first, self.first + self.count)


@dataclass
class UnitResult:
    """The outcome of a :class:`WorkUnit`: one float64 sum and per-trajectory statistics.

    :param unit: the unit.
    :param gradient: Σ_k g_H(τ_k), float64 ``(d,)`` in ``parameters_to_vector`` order.
    :param trajectories: the statistics of each trajectory, in index order.
    :param seconds: wall-clock seconds the unit took.
    """

    unit: WorkUnit
    gradient: np.ndarray
    trajectories: list[TrajectoryStats]
    seconds: float

    @property
    def n_steps(self) -> int:
        return sum(t.n_steps for t in self.trajectories)


class GradientWorker:
    """Holds the environments and a policy copy; samples trajectories and takes their gradients. Used in-process
    and in worker processes.

    :param env_factories: callables that build each environment (never a live env).
    :param policy_class: the policy class.
    :param observation_space: the observation space.
    :param action_space: the action space.
    :param policy_kwargs: keyword arguments of the policy.
    :param step_data: also keep each step's observation and environment action in :class:`TrajectoryStats`
        (``new_obs``, ``actions``) for callbacks that ask for them; costs their size in every message.
    :param buffers: the main policy's buffers (``named_buffers``, e.g. a fixed random projection of a features
        extractor), loaded into the copy so that workers sample with the very policy ``predict`` uses; None: the
        copy's own.
    :raises ValueError: if ``buffers`` does not name exactly the copy's buffers.
    """

    def __init__(self, env_factories: list[Callable[[], gym.Env]], policy_class: type, observation_space, action_space, policy_kwargs: dict[str, Any],
                 step_data: bool = False, buffers: Optional[dict[str, th.Tensor]] = None):
        self.env_factories = env_factories
        self.step_data = bool(step_data)
        self.envs: dict[int, gym.Env] = {}
        # A policy copy whose weights are overwritten by θ: build it without advancing the global torch RNG, so
        # that the inline and subprocess backends leave the user's random state alike.
        with th.random.fork_rng(devices=[]):
            self.policy: NIGTPolicy = policy_class(observation_space, action_space, None, **policy_kwargs)
        if buffers is not None:
            names = {name for name, _ in self.policy.named_buffers()}
            if set(buffers) != names:
                raise ValueError(f"buffers: expected the policy's buffers {sorted(names)}, got {sorted(buffers)}")
            with th.no_grad():
                for name, buffer in self.policy.named_buffers():
                    buffer.copy_(buffers[name])
        self.policy.set_training_mode(False)
        self.forward = self.policy.numpy_forward()
        self.obs_norm: Optional[tuple[np.ndarray, np.ndarray, np.float32]] = None

    def set_params(self, params: np.ndarray, obs_norm: Optional[ObsNorm] = None) -> None:
        """Load θ (float32, ``(d,)``) and the frozen observation-normalization statistics of the round."""
        with th.no_grad():
            vector_to_parameters(th.as_tensor(np.asarray(params), dtype=th.float32), self.policy.parameters())
        self.forward = self.policy.numpy_forward()
        if obs_norm is not None:
            mean, var = np.asarray(obs_norm.mean), np.asarray(obs_norm.var)
            self.obs_norm = (mean.reshape(-1).astype(np.float32), np.sqrt(var + obs_norm.epsilon).reshape(-1).astype(np.float32),
                             np.float32(obs_norm.clip))
        else:
            self.obs_norm = None

    def env(self, index: int) -> gym.Env:
        if index not in self.envs:
            self.envs[index] = build_env(self.env_factories[index])
        return self.envs[index]

    def sample(self, agent: int, index: int, seed: int, env_index: int, horizon: int,
               cancelled: Callable[[], bool] = lambda: False, round_index: int = 0) -> Trajectory:
        """Sample one trajectory of at most H steps at the current θ.

        :raises ValueError: if the environment returns a NaN or infinite reward or observation.
        :raises JobCancelled: if ``cancelled()`` becomes true while it runs.
        """
        env = self.env(env_index)
        rng = np.random.default_rng(seed)
        reset_seed = int(rng.integers(0, 2**31 - 1))
        obs, _ = env.reset(seed=reset_seed)
        action_space = env.action_space
        assert isinstance(action_space, gym.spaces.Box)  # the main process checked every agent's space (check_agent_spaces)
        low, high = action_space.low.astype(np.float32), action_space.high.astype(np.float32)
        span = high - low  # once per trajectory, the same float32 values as (high - low) at every step
        da = low.shape[0]
        observations, raw_observations, actions, rewards, infos = [], [], [], [], []
        new_obs: Optional[list] = [] if self.step_data else None
        env_actions: Optional[list] = [] if self.step_data else None
        norm = self.obs_norm
        forward = self.forward
        episode_return = 0.0
        terminated = False
        noise = np.empty((0, da), dtype=np.float32)
        for t in range(horizon):
            if t % 64 == 0:  # noise in blocks of 64 steps: the same stream as one (H, da) draw, memory ∝ length
                noise = rng.standard_normal((min(64, horizon - t), da), dtype=np.float32)
            raw = np.asarray(obs, dtype=np.float32).reshape(-1)
            if not math.isfinite(float(raw.sum())) and not np.isfinite(raw).all():  # a finite sum: all finite
                raise NonFiniteEnvironmentError("observations", raw.tolist(), agent, round_index, t)
            x = np.clip((raw - norm[0]) / norm[1], -norm[2], norm[2]) if norm is not None else raw
            mean, std = forward(x)
            u = mean + std * noise[t % 64]
            action = low + (0.5 * (np.tanh(u) + 1.0)) * span
            obs, reward, terminated, truncated, info = env.step(action)
            reward = float(reward)
            if not math.isfinite(reward):
                raise NonFiniteEnvironmentError("reward", reward, agent, round_index, t)
            observations.append(x)
            if norm is not None:
                raw_observations.append(raw)
            actions.append(u)
            rewards.append(reward)
            infos.append(info)
            if new_obs is not None and env_actions is not None:
                new_obs.append(np.array(obs, dtype=np.float32))
                env_actions.append(action)
            episode_return += reward
            if terminated or truncated:
                break
            if (t & 63) == 63 and cancelled():
                raise JobCancelled()
        moments = None
        if norm is not None:
            raw_t = np.asarray(raw_observations, dtype=np.float64)
            moments = ObsMoments(raw_t.mean(axis=0), raw_t.var(axis=0), len(raw_t))
        n = len(rewards)
        reward_array = np.asarray(rewards, dtype=np.float64)
        stats = TrajectoryStats(agent, index, episode_return, n, n, moments, reward_array, StepInfos(infos), bool(terminated),
                                np.array(obs, dtype=np.float32),
                                None if new_obs is None else np.asarray(new_obs, dtype=np.float32),
                                None if env_actions is None else np.asarray(env_actions, dtype=np.float32))
        return Trajectory(np.asarray(observations, dtype=np.float32), np.asarray(actions, dtype=np.float32), reward_array, stats)

    def gradient_sum(self, trajectories: list[Trajectory], gamma: float) -> np.ndarray:
        """Σ_k g_H(τ_k) at the current θ, float64 ``(d,)``: one batched forward/backward per :data:`CHUNK_SIZE`
        trajectories, chunk sums added in order."""
        total = np.zeros(sum(p.numel() for p in self.policy.parameters()), dtype=np.float64)
        for begin in range(0, len(trajectories), CHUNK_SIZE):
            chunk = trajectories[begin:begin + CHUNK_SIZE]
            observations = np.concatenate([t.observations for t in chunk])
            actions = np.concatenate([t.actions for t in chunk])
            returns = np.concatenate([discounted_returns_to_go(t.rewards, gamma) for t in chunk])
            total += batched_policy_gradient(self.policy, observations, actions, returns)
        return total

    def run_unit(self, unit: WorkUnit, cancelled: Callable[[], bool] = lambda: False) -> UnitResult:
        """Sample the unit's trajectories at the current θ and return their summed gradient.

        :raises ValueError: on a NaN or infinite reward.
        :raises JobCancelled: if ``cancelled()`` becomes true while it runs.
        """
        start = time.perf_counter()
        if unit.delay > 0:
            _sleep(unit.delay, cancelled)
        computing = time.perf_counter()
        trajectories = [
            self.sample(unit.agent, k, job_seed(unit.seed, unit.round_index, unit.agent, k), unit.env_index, unit.horizon,
                        cancelled, unit.round_index)
            for k in unit.indices
        ]
        gradient = self.gradient_sum(trajectories, unit.gamma)
        if unit.min_duration > 0:
            n_steps = sum(t.stats.n_steps for t in trajectories)
            _sleep(unit.min_duration * (n_steps if unit.per_step else unit.count) - (time.perf_counter() - computing), cancelled)
        if unit.upload_delay > 0:
            _sleep(unit.upload_delay, cancelled)
        return UnitResult(unit, gradient, [t.stats for t in trajectories], time.perf_counter() - start)

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
