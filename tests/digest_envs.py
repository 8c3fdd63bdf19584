"""A tiny environment for tests/test_digests.py, importable by name in subprocess workers and Ray actors."""

from __future__ import annotations

from typing import Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ShortEpisodesEnv(gym.Env):
    """Episodes of 2..``longest`` steps (the length is drawn from the reset seed); reward = −(a − x)² per step.

    Variable lengths make per-step compute times (``compute_time_unit="step"``) order the finishes differently
    from per-gradient times.
    """

    def __init__(self, longest: int = 8):
        self.longest = int(longest)
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t, self.length, self.target = 0, 2, 0.0

    def reset(self, *, seed: Optional[int] = None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.length = int(self.np_random.integers(2, self.longest + 1))
        self.target = float(self.np_random.uniform(-1.0, 1.0))
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        return np.array([self.t / self.longest, self.target], dtype=np.float32)

    def step(self, action):
        self.t += 1
        reward = -float((float(np.asarray(action).reshape(-1)[0]) - self.target) ** 2)
        return self._obs(), reward, self.t >= self.length, False, {}
