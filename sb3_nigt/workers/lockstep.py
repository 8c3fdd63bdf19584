"""Lockstep rollouts (docs/time.md, "Lockstep rollouts"): a batch of trajectories stepped together.

Every live trajectory of the batch takes its step t at once: one batched policy forward over the live
observations, then one ``env.step`` per live trajectory on its own environment instance. Each trajectory keeps
what makes it the trajectory it would be alone: its reset seed and its noise stream (both from its own job seed),
its own environment instance, and it leaves the batch when its episode ends or reaches H (no auto-reset). Only the
floating-point rounding of the batched forward differs from stepping it alone.

The steps are stored step-major (every live trajectory's row of step 0, then of step 1, …) and regrouped per
trajectory once, at the end, with one stable sort.

A plain loop over the environments serves better here than gymnasium's vector API: its ``SyncVectorEnv`` steps every
sub-environment at every call, so a trajectory that has ended would keep consuming environment steps (or need a
reset) until the longest one ends; here an ended trajectory simply leaves the loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import gymnasium as gym
import numpy as np

from sb3_nigt.core.errors import NonFiniteEnvironmentError

#: Noise is drawn per trajectory in blocks of this many steps: the same stream as one ``(H, da)`` draw, with
#: memory proportional to the block, not to H.
NOISE_BLOCK = 64


def trajectory_rng(seed: int, round_index: int, agent: int, index: int) -> np.random.Generator:
    """Trajectory τ_{i,k}'s own generator, from (seed, round, agent i, index k) through one
    ``numpy.random.SeedSequence``: its first draw is the environment's reset seed, the rest its action noise."""
    return np.random.default_rng([seed, round_index, agent, index])


class JobCancelled(Exception):
    """Raised inside a worker when the round of the running job has ended (its work is abandoned)."""


@dataclass
class Rollout:
    """One trajectory of a lockstep batch, regrouped.

    :param observations: s_t as the policy saw them (normalized when VecNormalize is on), float32 ``(T, ds)``.
    :param actions: u_t (pre-tanh), float32 ``(T, da)``.
    :param rewards: r_t, float64 ``(T,)``.
    :param infos: the environment's info dict of every step.
    :param terminated: whether the environment terminated the episode at its last step.
    :param last_observation: the environment's last observation, float32.
    :param raw_observations: the observations before normalization, float32 ``(T, ds)``, when VecNormalize is on.
    :param new_obs: the observation after every step, float32 ``(T, ds)``, when step data is kept.
    :param env_actions: the action sent to the environment at every step, float32 ``(T, da)``, when step data is kept.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    infos: list[dict[str, Any]]
    terminated: bool
    last_observation: np.ndarray
    raw_observations: Optional[np.ndarray] = None
    new_obs: Optional[np.ndarray] = None
    env_actions: Optional[np.ndarray] = None


@dataclass
class Lane:
    """What one trajectory of the batch keeps while it runs: its environment, its generator, its rewards and infos."""

    agent: int
    env: gym.Env
    rng: np.random.Generator
    rewards: list[Any]
    infos: list[dict[str, Any]]
    terminated: bool = False


class LockstepBatch:
    """Steps B trajectories together at one θ.

    :param envs: one environment instance per trajectory (never shared within the batch).
    :param agents: the agent of each trajectory (for error messages).
    :param rngs: each trajectory's own generator (:func:`trajectory_rng`): its reset seed, then its noise.
    :param forward: the policy's batched forward, float32 ``(B, ds)`` → (mean, std) float32 ``(B, da)`` each.
    :param obs_norm: VecNormalize's frozen statistics (mean, √(var + ε), clip) as float32, or None.
    :param keep_step_data: also keep every step's new observation and environment action.
    :param round_index: the round, for error messages.
    """

    def __init__(self, envs: Sequence[gym.Env], agents: Sequence[int], rngs: Sequence[np.random.Generator],
                 forward: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                 obs_norm: Optional[tuple[np.ndarray, np.ndarray, np.float32]], keep_step_data: bool, round_index: int):
        self.forward = forward
        self.norm = obs_norm
        self.keep_step_data = keep_step_data
        self.round_index = round_index
        self.lanes = [Lane(agent, env, rng, [], []) for env, agent, rng in zip(envs, agents, rngs)]
        self.obs = np.stack([np.asarray(lane.env.reset(seed=int(lane.rng.integers(0, 2**31 - 1)))[0], dtype=np.float32).reshape(-1)
                             for lane in self.lanes])  # float32 (B, ds): each trajectory's current observation
        spaces = [env.action_space for env in envs]
        assert all(isinstance(space, gym.spaces.Box) for space in spaces)  # checked by the main process
        self.low = np.stack([np.asarray(space.low, dtype=np.float32) for space in spaces])  # type: ignore[attr-defined]
        # (tanh(u) + 1) · (span / 2): the same float32 values as 0.5 · (tanh(u) + 1) · span (halving is exact)
        self.half_span = 0.5 * (np.stack([np.asarray(space.high, dtype=np.float32) for space in spaces]) - self.low)  # type: ignore[attr-defined]
        self.noise = np.empty((len(envs), NOISE_BLOCK, self.low.shape[1]), dtype=np.float32)
        self.steps: list[tuple[np.ndarray, ...]] = []  # per step: (live ids, x, u[, raw][, new_obs, env action])

    def run(self, horizon: int, cancelled: Callable[[], bool] = lambda: False) -> list[Rollout]:
        """Step every trajectory until it ends or reaches ``horizon`` (H) steps; returns them in batch order.

        :raises NonFiniteEnvironmentError: on a NaN or infinite reward or observation.
        :raises JobCancelled: if ``cancelled()`` becomes true (checked every :data:`NOISE_BLOCK` steps).
        """
        live = np.arange(len(self.lanes))
        for t in range(horizon):
            if t % NOISE_BLOCK == 0:
                self._draw_noise(live, min(NOISE_BLOCK, horizon - t))
            live = self._step(t, live)
            if live.size == 0:
                break
            if t % NOISE_BLOCK == NOISE_BLOCK - 1 and cancelled():
                raise JobCancelled()
        self._check_rewards()
        return self._regroup()

    def _draw_noise(self, live: np.ndarray, rows: int) -> None:
        for j in live.tolist():
            self.noise[j, :rows] = self.lanes[j].rng.standard_normal((rows, self.noise.shape[2]), dtype=np.float32)

    def _observe(self, t: int, live: np.ndarray, full: bool) -> tuple[np.ndarray, np.ndarray]:
        """The live trajectories' raw (a copy) and normalized observations, float32 ``(B_live, ds)`` each."""
        raw = self.obs.copy() if full else self.obs[live]
        if not math.isfinite(float(raw.sum())) and not np.isfinite(raw).all():  # a finite sum: all finite
            row = int(np.flatnonzero(~np.isfinite(raw).all(axis=1))[0])
            raise NonFiniteEnvironmentError("observations", raw[row].tolist(), self.lanes[int(live[row])].agent, self.round_index, t)
        if self.norm is None:
            return raw, raw
        mean, scale, clip = self.norm
        return raw, np.clip((raw - mean) / scale, -clip, clip)

    def _step(self, t: int, live: np.ndarray) -> np.ndarray:
        """Step t of every live trajectory; returns the trajectories still live after it."""
        full = live.size == len(self.lanes)
        raw, x = self._observe(t, live, full)
        mean, std = self.forward(x)
        if full:
            u = mean + std * self.noise[:, t % NOISE_BLOCK]
            action = self.low + (np.tanh(u) + 1.0) * self.half_span
        else:
            u = mean + std * self.noise[live, t % NOISE_BLOCK]
            action = self.low[live] + (np.tanh(u) + 1.0) * self.half_span[live]
        record: tuple[np.ndarray, ...] = (live, x, u) + ((raw,) if self.norm is not None else ())
        ended = []
        obs, lanes = self.obs, self.lanes
        for k, j in enumerate(live.tolist()):
            lane = lanes[j]
            observation, reward, terminated, truncated, info = lane.env.step(action[k])
            obs[j] = observation
            lane.rewards.append(reward)
            lane.infos.append(info)
            if terminated or truncated:
                lane.terminated = bool(terminated)
                ended.append(k)
        if self.keep_step_data:
            record += (obs.copy() if full else obs[live], action)
        self.steps.append(record)
        return np.delete(live, ended) if ended else live

    def _check_rewards(self) -> None:
        """Every reward as a float64, checked finite (the error names the first bad step's agent and t)."""
        for lane in self.lanes:
            rewards = np.asarray(lane.rewards, dtype=np.float64).reshape(-1)  # floats, or one-element arrays
            if rewards.size != len(lane.rewards):
                raise ValueError(f"reward: the environment of agent {lane.agent} returned a reward that is not one number "
                                 f"(got {lane.rewards[0]!r}); gymnasium's step returns a float")
            if not np.isfinite(rewards).all():
                t = int(np.flatnonzero(~np.isfinite(rewards))[0])
                raise NonFiniteEnvironmentError("reward", float(rewards[t]), lane.agent, self.round_index, t)
            lane.rewards = rewards  # type: ignore[assignment]

    def _regroup(self) -> list[Rollout]:
        """Each trajectory's rows, in step order, from the step-major records (one stable sort)."""
        ids = np.concatenate([step[0] for step in self.steps])
        order = np.argsort(ids, kind="stable")
        bounds = np.cumsum([len(lane.rewards) for lane in self.lanes])[:-1]

        def split(column: int) -> list[np.ndarray]:
            return np.split(np.concatenate([step[column] for step in self.steps])[order], bounds)

        xs, us = split(1), split(2)
        raws = split(3) if self.norm is not None else [None] * len(self.lanes)
        extra = 4 if self.norm is not None else 3
        new_obs = split(extra) if self.keep_step_data else [None] * len(self.lanes)
        env_actions = split(extra + 1) if self.keep_step_data else [None] * len(self.lanes)
        return [Rollout(xs[j], us[j], np.asarray(lane.rewards), lane.infos, lane.terminated,
                        self.obs[j].copy(), raws[j], new_obs[j], env_actions[j])
                for j, lane in enumerate(self.lanes)]
