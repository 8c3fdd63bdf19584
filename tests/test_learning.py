"""A short run that learns: InvertedPendulum-v5, where a fresh Gaussian policy falls within a few steps.

Setting chosen by a small sweep (α ∈ {0.01, 0.02, 0.03}, M ∈ {10, 20}): with α = 0.01, M = 20 and 20 000 steps,
both assertions below held on every one of seeds 0–5 (deterministic evaluation return 5–18 before, 54–130 after;
mean training return of the first five rounds 5–8, of the last five 29–41), in a few seconds per seed.
"""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_nigt import RennalaNIGT

from helpers import RoundRecorder

ENV = "InvertedPendulum-v5"


def evaluate(model: RennalaNIGT) -> float:
    env = make_vec_env(ENV, n_envs=1, seed=0)  # same initial states before and after training
    mean, _ = evaluate_policy(model, env, n_eval_episodes=5, deterministic=True, warn=False)
    env.close()
    return mean


def test_rennala_nigt_improves_on_inverted_pendulum():
    model = RennalaNIGT(
        "MlpPolicy", ENV, learning_rate=0.01, eta=0.1, round_size=20, horizon=1000, n_agents=2,
        compute_times="sqrt", seed=0,
    )
    before = evaluate(model)
    rounds = RoundRecorder()
    model.learn(20_000, callback=rounds)
    after = evaluate(model)

    assert after > 2 * before + 30, (before, after)
    returns = [r["mean_return"] for r in rounds.rounds]
    first, last = np.mean(returns[:5]), np.mean(returns[-5:])
    assert last > 2 * first + 10, (first, last)
