"""Environments whose steps can be recognised from the callbacks (importable by subprocess workers)."""

from __future__ import annotations

from typing import Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class InfoEnv(gym.Env):
    """Step t (0-based) observes [t + 1], rewards t + 1 and returns the info dict {"t": t, "source": "InfoEnv"};
    the last step of the ``length``-step episode adds ``is_success`` (True for even lengths).

    :param length: steps per episode (terminates after them).
    :param nan_at: the step after which the observation is NaN (None: never).
    """

    def __init__(self, length: int = 3, nan_at: Optional[int] = None):
        self.length = int(length)
        self.nan_at = nan_at
        self.observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t = 0

    def reset(self, *, seed: Optional[int] = None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        t = self.t
        self.t += 1
        info = {"t": t, "source": "InfoEnv"}
        done = self.t >= self.length
        if done:
            info["is_success"] = self.length % 2 == 0
        obs = np.array([np.nan if self.nan_at is not None and t >= self.nan_at else t + 1.0], dtype=np.float32)
        return obs, float(t + 1), done, False, info
