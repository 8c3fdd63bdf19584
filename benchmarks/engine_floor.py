"""The engine's own cost per trajectory-step, with an environment that costs almost nothing.

``GradientWorker.run_unit`` on a lockstep batch of 16 trajectories of a no-op environment (10-dimensional
observations, 2-dimensional actions, 50 steps, a reward and a two-key info dict per step, as Reacher returns),
beside the two pieces of the policy's arithmetic timed alone on the same batch: the batched NumPy forward of
every step and the one weighted torch backward. What is left is the engine's Python work per trajectory-step
(the loop over the live trajectories, storing each observation, reward and info, the noise, the squashing, the
checks and the regrouping), plus the no-op environment's own call. Prints a Markdown table; every figure is
measured in the run that prints it.

Usage::

    .venv/bin/python benchmarks/engine_floor.py
    .venv/bin/python benchmarks/engine_floor.py --repeats 500
"""

from __future__ import annotations

import argparse
import timeit

import gymnasium as gym
import numpy as np

from sb3_nigt.backends.contract import single_threaded_torch
from sb3_nigt.policies import NIGTPolicy
from sb3_nigt.workers.rollout import BatchItem, GradientWorker, WorkUnit

BATCH = 16
HORIZON = 50


class NoOpEnv(gym.Env):
    """Returns the same observation, reward −1 and a two-key info dict; truncates after ``HORIZON`` steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (10,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self) -> None:
        self.t = 0
        self.observation = np.zeros(10)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation, {}

    def step(self, action):
        self.t += 1
        return self.observation, -1.0, False, self.t >= HORIZON, {"reward_dist": -1.0, "reward_ctrl": 0.0}


def per_step(fn, repeats: int, steps: int) -> float:
    """Median over 5 batches of ``repeats`` calls of ``fn`` (``timeit.repeat``), in µs per trajectory-step."""
    fn()
    return 1e6 * sorted(timeit.repeat(fn, number=repeats, repeat=5))[2] / repeats / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200, help="calls per timed batch (default 200)")
    args = parser.parse_args()
    worker = GradientWorker([NoOpEnv], NIGTPolicy, NoOpEnv.observation_space, NoOpEnv.action_space, {})
    items = tuple(BatchItem(0, k, 0, 1.0 / BATCH) for k in range(BATCH))
    unit = WorkUnit(0, 0, 0, BATCH, 0, 0, HORIZON, 0.99, items=items)
    steps = BATCH * HORIZON
    with single_threaded_torch():
        trajectories = worker.sample_batch([(0, k, 0) for k in range(BATCH)], 0, HORIZON)
        frame = np.zeros((BATCH, 10), dtype=np.float32)
        whole = per_step(lambda: worker.run_unit(unit), args.repeats, steps)
        backward = per_step(lambda: worker.weighted_gradient(trajectories, [1.0 / BATCH] * BATCH, 0.99), args.repeats, steps)
        forward = per_step(lambda: [worker.forward(frame) for _ in range(HORIZON)], args.repeats, steps)
    worker.close()
    print(f"## Engine floor: a lockstep batch of {BATCH} no-op trajectories of {HORIZON} steps\n")
    print("| per trajectory-step | µs |\n|---|---:|")
    print(f"| `run_unit`, whole | {whole:.2f} |")
    print(f"| the weighted torch backward (one per batch) | {backward:.2f} |")
    print(f"| the batched NumPy forward (one per step) | {forward:.2f} |")
    print(f"| **the rest: the engine's Python work and the no-op environment's call** | {whole - backward - forward:.2f} |")


if __name__ == "__main__":
    main()
