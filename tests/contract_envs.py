"""Environments for the backend contract tests (tests/test_backend_contract.py).

Kept in an importable module (not in a test file) so that the classes pickle by reference into subprocess
workers (forkserver), which import this module by name.
"""

from __future__ import annotations

import time
from typing import Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class SleepyEnv(gym.Env):
    """Pendulum-v1's spaces, but ``step`` never returns: a worker that meets it hangs for ever."""

    def __init__(self) -> None:
        high = np.array([1.0, 1.0, 8.0], dtype=np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.action_space = spaces.Box(-2.0, 2.0, (1,), np.float32)

    def reset(self, *, seed: Optional[int] = None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, dtype=np.float32), {}

    def step(self, action):
        while True:
            time.sleep(1000)
