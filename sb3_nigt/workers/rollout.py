"""Agent work (docs/algorithms.md, "The policy gradient"): one trajectory → one truncated policy gradient g_H.

g_H(τ, θ) = Σ_{t<H} (Σ_{h=t}^{H−1} γ^h r_h) ∇θ log π_θ(u_t | s_t)   (paper, Section 2; discounting from t = 0)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import gymnasium as gym
import numpy as np
import torch as th
from torch.nn.utils import vector_to_parameters

from sb3_nigt.policies import NIGTPolicy
from sb3_nigt.workers.env_factory import build_env
from sb3_nigt.workers.lockstep import JobCancelled, LockstepBatch, Rollout, trajectory_rng

__all__ = ["JobCancelled", "trajectory_rng"]  # re-exported: workers and transports use them from here


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


#: Trajectories per batched backward of one agent's unit (the per-step clock, AFedPG). A unit of work is split
#: into chunks of this size whatever the number of workers, and chunk sums are added in canonical order, so the
#: bits never depend on who computed what.
CHUNK_SIZE = 8

#: Most trajectories in one lockstep batch on the simulated clock (one batched forward per step, one weighted
#: backward per batch). A round's N counted trajectories are cut into ⌈N / LOCKSTEP_SIZE⌉ batches of near-equal
#: size, in canonical order: the cut depends on N only, never on the number of workers.
LOCKSTEP_SIZE = 16


def lockstep_sizes(n_trajectories: int) -> list[int]:
    """The sizes of the lockstep batches of a round of ``n_trajectories`` counted trajectories, in order: as equal
    as possible (the first ones one larger), none above :data:`LOCKSTEP_SIZE`."""
    n_batches = -(-n_trajectories // LOCKSTEP_SIZE)
    base, extra = divmod(n_trajectories, n_batches) if n_batches else (0, 0)
    return [base + (1 if b < extra else 0) for b in range(n_batches)]


@dataclass(frozen=True)
class BatchItem:
    """One trajectory of a lockstep batch: agent i's gradient k, its environment factory, and its weight w.

    :param agent: i.
    :param index: k, the agent's gradient index in the round (its job seed is (seed, round, i, k)).
    :param env_index: the agent's environment factory.
    :param weight: w, the gradient's weight in the round's aggregate (Rennala 1/M, Malenia 1/(n·M_i),
        Synchronized NIGT 1/n).
    """

    agent: int
    index: int
    env_index: int
    weight: float


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
        if set(map(len, infos)) != {len(keys)}:
            return
        columns: dict[str, tuple[np.ndarray, type]] = {}
        for key in keys:
            try:
                values = [info[key] for info in infos]
            except KeyError:
                return
            kinds = set(map(type, values))
            kind = kinds.pop()
            if kinds or kind not in self._FLOATS:
                return
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
    :param items: a lockstep batch (simulated clock): trajectories of any agents, stepped together, whose
        gradient is Σ_j w_j g_H(τ_j) (weights included); ``agent``, ``first`` and ``env_index`` are then its first
        item's and ``count`` its size. Empty: the unit is ``agent``'s gradients ``first`` .. ``first + count − 1``.
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
    items: tuple[BatchItem, ...] = ()

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
    :param gradient: Σ_k g_H(τ_k) (a lockstep batch: Σ_j w_j g_H(τ_j)), float64 ``(d,)`` in
        ``parameters_to_vector`` order.
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
        self.envs: dict[int, list[gym.Env]] = {}  # factory index → its instances
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

    def env(self, index: int, copy: int = 0) -> gym.Env:
        """Environment factory ``index``'s instance number ``copy`` (built on first use and kept: a lockstep batch
        steps one instance per trajectory)."""
        pool = self.envs.setdefault(index, [])
        while len(pool) <= copy:
            pool.append(build_env(self.env_factories[index]))
        return pool[copy]

    def _batch_envs(self, env_indices: Sequence[int]) -> list[gym.Env]:
        """One instance per trajectory: the k-th trajectory on factory e in the batch steps e's k-th instance."""
        used: dict[int, int] = {}
        envs = []
        for index in env_indices:
            envs.append(self.env(index, used.get(index, 0)))
            used[index] = used.get(index, 0) + 1
        return envs

    def sample_batch(self, items: Sequence[tuple[int, int, int]], seed: int, horizon: int,
                     cancelled: Callable[[], bool] = lambda: False, round_index: int = 0) -> list[Trajectory]:
        """Sample trajectories of at most H steps at the current θ, in lockstep (:mod:`sb3_nigt.workers.lockstep`).

        :param items: (agent i, gradient index k, environment factory) of each trajectory; its generator is
            :func:`trajectory_rng` (``seed``, ``round_index``, i, k), whoever samples it and with whatever others.
        :param seed: the base seed.
        :param horizon: H, environment steps per trajectory at most.
        :return: the trajectories, in the order of ``items``.
        :raises NonFiniteEnvironmentError: (a ``ValueError``) on a NaN or infinite reward or observation.
        :raises JobCancelled: if ``cancelled()`` becomes true while it runs.
        """
        rngs = [trajectory_rng(seed, round_index, agent, index) for agent, index, _ in items]
        batch = LockstepBatch(self._batch_envs([env_index for _, _, env_index in items]), [agent for agent, _, _ in items],
                              rngs, self.forward, self.obs_norm, self.step_data, round_index)
        return [self._trajectory(agent, index, rollout) for (agent, index, _), rollout in zip(items, batch.run(horizon, cancelled))]

    @staticmethod
    def _trajectory(agent: int, index: int, rollout: Rollout) -> Trajectory:
        moments = None
        if rollout.raw_observations is not None:
            raw = rollout.raw_observations.astype(np.float64)
            moments = ObsMoments(raw.mean(axis=0), raw.var(axis=0), len(raw))
        n = len(rollout.rewards)
        stats = TrajectoryStats(agent, index, float(sum(rollout.rewards.tolist())), n, n, moments, rollout.rewards,
                                StepInfos(rollout.infos), rollout.terminated, rollout.last_observation, rollout.new_obs,
                                rollout.env_actions)
        return Trajectory(rollout.observations, rollout.actions, rollout.rewards, stats)

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
        """Sample the unit's trajectories at the current θ and return their summed (a lockstep batch: weighted)
        gradient.

        :raises NonFiniteEnvironmentError: (a ``ValueError``) on a NaN or infinite reward or observation.
        :raises JobCancelled: if ``cancelled()`` becomes true while it runs.
        """
        start = time.perf_counter()
        if unit.delay > 0:
            _sleep(unit.delay, cancelled)
        computing = time.perf_counter()
        if unit.items:
            trajectories = self.sample_batch([(item.agent, item.index, item.env_index) for item in unit.items], unit.seed,
                                             unit.horizon, cancelled, unit.round_index)
            gradient = self.weighted_gradient(trajectories, [item.weight for item in unit.items], unit.gamma)
        else:
            trajectories = self.sample_batch([(unit.agent, k, unit.env_index) for k in unit.indices], unit.seed, unit.horizon,
                                             cancelled, unit.round_index)
            gradient = self.gradient_sum(trajectories, unit.gamma)
        if unit.min_duration > 0:
            n_steps = sum(t.stats.n_steps for t in trajectories)
            _sleep(unit.min_duration * (n_steps if unit.per_step else unit.count) - (time.perf_counter() - computing), cancelled)
        if unit.upload_delay > 0:
            _sleep(unit.upload_delay, cancelled)
        return UnitResult(unit, gradient, [t.stats for t in trajectories], time.perf_counter() - start)

    def weighted_gradient(self, trajectories: list[Trajectory], weights: Sequence[float], gamma: float) -> np.ndarray:
        """Σ_j w_j g_H(τ_j) at the current θ with one forward and one backward pass over every step of the batch,
        float64 ``(d,)``: the weights multiply each trajectory's returns-to-go (in float64, then float32)."""
        observations = np.concatenate([t.observations for t in trajectories])
        actions = np.concatenate([t.actions for t in trajectories])
        returns = np.concatenate([weight * discounted_returns_to_go(t.rewards, gamma) for t, weight in zip(trajectories, weights)])
        return batched_policy_gradient(self.policy, observations, actions, returns)

    def close(self) -> None:
        for pool in self.envs.values():
            for env in pool:
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
