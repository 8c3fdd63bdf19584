"""Environments that fail on purpose, for the failure-injection tests (importable by worker processes).

Each one fails at most once per marker file: the process that meets the marker first deletes it, then fails, so
the replacement worker that recomputes the same work succeeds.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class FaultyEnv(gym.Env):
    """A 3-d observation, 1-d action task with episodes of ``length`` steps and reward −(a − 0.3)².

    :param mode: ``"kill"`` (SIGKILL the process), ``"hang"`` (sleep for ever) or ``"none"``.
    :param marker: the failure happens once this file exists (it is removed first); None: never.
    :param at_step: the failure happens at this step count of the process (all episodes together).
    :param always: fail every time (ignores the marker), unless in the process ``spare_pid``.
    :param spare_pid: a process that never fails (the test's own, for the inline backend).
    """

    steps_in_process = 0

    def __init__(self, mode: str = "none", marker: Optional[str] = None, at_step: int = 10, length: int = 5,
                 always: bool = False, spare_pid: int = -1):
        self.mode, self.marker, self.at_step, self.length = mode, marker, int(at_step), int(length)
        self.always, self.spare_pid = always, spare_pid
        self.observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t = 0

    def reset(self, *, seed: Optional[int] = None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.normal(size=3).astype(np.float32), {}

    def _fail(self) -> None:
        if self.mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.mode == "hang":
            while True:
                time.sleep(1000)

    def step(self, action):
        FaultyEnv.steps_in_process += 1
        if os.getpid() != self.spare_pid:
            if self.always and FaultyEnv.steps_in_process >= self.at_step:
                self._fail()
            if self.marker and FaultyEnv.steps_in_process >= self.at_step and os.path.exists(self.marker):
                try:
                    os.remove(self.marker)
                except FileNotFoundError:
                    pass
                else:
                    self._fail()
        self.t += 1
        reward = -float((np.asarray(action).reshape(-1)[0] - 0.3) ** 2)
        return self.np_random.normal(size=3).astype(np.float32), reward, self.t >= self.length, False, {}
