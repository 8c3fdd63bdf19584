"""Environments of tests/test_worker_lifetime.py, in a module of their own so that worker processes import them by
name."""

from __future__ import annotations

import os
import time
from typing import Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class StallsOnSignalEnv(gym.Env):
    """Pendulum-v1's spaces and a constant reward; once the file named by ``$SB3_NIGT_STALL`` exists, ``step``
    never returns (a worker that meets it hangs for ever)."""

    def __init__(self) -> None:
        high = np.array([1.0, 1.0, 8.0], dtype=np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.action_space = spaces.Box(-2.0, 2.0, (1,), np.float32)

    def reset(self, *, seed: Optional[int] = None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, dtype=np.float32), {}

    def step(self, action):
        flag = os.environ.get("SB3_NIGT_STALL")
        while flag and os.path.exists(flag):
            time.sleep(1000)
        return np.zeros(3, dtype=np.float32), -float(np.sum(np.square(action))), False, False, {}


class CountedEnv(gym.Env):
    """Pendulum-v1's spaces; every instance built in this process is counted in ``CountedEnv.built``, and
    ``episodes`` counts this instance's resets (state that runs across episodes, as a curriculum's)."""

    built = 0

    def __init__(self) -> None:
        CountedEnv.built += 1
        high = np.array([1.0, 1.0, 8.0], dtype=np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.action_space = spaces.Box(-2.0, 2.0, (1,), np.float32)
        self.episodes = 0

    def reset(self, *, seed: Optional[int] = None, options=None):
        super().reset(seed=seed)
        self.episodes += 1
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):
        obs = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        return obs, -float(np.sum(np.square(action))) + float(obs[0]), False, False, {}
