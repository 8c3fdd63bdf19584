"""The main job (``make train``): RennalaNIGT on Hopper with ten heterogeneous agents on the simulated clock.

n = 10 agents, h_i = √i and κ_i = √i seconds (the paper's "compute = communication" scenario), observations
normalized by VecNormalize (our addition, not the paper's: docs/algorithms.md, "Where this library departs from
the paper, or reads it"). Writes, in the output folder: the trained model (``model_seed{seed}.zip``) and its
VecNormalize statistics, a CSV of (simulated seconds, environment steps, mean training return) per round, a
summary CSV with the deterministic evaluation before and after training, and a PNG of the return against
simulated time.

Usage::

    python -m sb3_nigt.train --timesteps 3000000 --seeds 0 1 2 --out runs/hopper
"""

from __future__ import annotations

import argparse
import csv
import time
import warnings
from pathlib import Path
from typing import Optional

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.utils import get_linear_fn, safe_mean
from stable_baselines3.common.vec_env import VecNormalize, sync_envs_normalization

from sb3_nigt import RennalaNIGT
from sb3_nigt.algorithms.base import NIGTAlgorithm


class ReturnLogger(BaseCallback):
    """Records (simulated seconds, environment steps, mean return of the last 100 trajectories) per round."""

    model: NIGTAlgorithm  # the callback is given to RennalaNIGT.learn only

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[float, int, float]] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buffer = self.model.ep_info_buffer
        if buffer:
            self.rows.append((float(self.model.simulated_time), int(self.model.num_timesteps), float(safe_mean([ep["r"] for ep in buffer]))))


def hopper_id() -> str:
    """Hopper-v4 where it is usable, else Hopper-v5."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gym.make("Hopper-v4").close()
        return "Hopper-v4"
    except Exception:
        return "Hopper-v5"


def write_csv(path: Path, rows: list[tuple[float, int, float]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["simulated_seconds", "env_steps", "mean_return"])
        writer.writerows(rows)


def plot(curves: dict[int, list[tuple[float, int, float]]], path: Path, title: str) -> None:
    """Return against simulated time, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for seed, rows in sorted(curves.items()):
        data = np.asarray(rows)
        ax.plot(data[:, 0], data[:, 2], label=f"seed {seed}")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("mean training return (last 100 trajectories)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate(model: RennalaNIGT, env_id: str, n_episodes: int, seed: int) -> float:
    """Mean return of the deterministic policy tanh(μθ(s)) over ``n_episodes`` full episodes."""
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed)
    train_norm = model.get_vec_normalize_env()
    if train_norm is not None:
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False, clip_obs=train_norm.clip_obs)
        sync_envs_normalization(train_norm, eval_env)
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=n_episodes, deterministic=True)
    eval_env.close()
    # A float without return_episode_rewards; SB3 annotates the union of both forms, without overloads.
    return float(mean)  # type: ignore[arg-type]


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=None, help="env id (default: Hopper-v4, or v5 if v4 is unusable)")
    parser.add_argument("--timesteps", type=int, default=3_000_000, help="environment steps per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--n-agents", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=2**-6)
    parser.add_argument("--momentum", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=30)
    parser.add_argument("--gamma", type=float, default=0.995)
    parser.add_argument("--linear-decay", action="store_true", help="decay α linearly to 0 over the run")
    parser.add_argument("--no-normalize", action="store_true", help="do not wrap the env in VecNormalize(norm_obs)")
    parser.add_argument("--backend", default="subprocess", help="a registered backend name (inline, subprocess, ...)")
    parser.add_argument("--n-workers", type=int, default=None, help="worker processes (default: one per core, at most n)")
    parser.add_argument("--out", default="runs/hopper")
    parser.add_argument("--no-progress-bar", action="store_true")
    parser.add_argument("--eval-episodes", type=int, default=10, help="deterministic evaluation episodes before and after")
    args = parser.parse_args(argv)

    env_id = args.env or hopper_id()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves = {}
    summary = []
    for seed in args.seeds:
        env = env_id if args.no_normalize else VecNormalize(make_vec_env(env_id, n_envs=1, seed=seed), norm_reward=False)
        learning_rate = get_linear_fn(args.learning_rate, 0.0, 1.0) if args.linear_decay else args.learning_rate
        model = RennalaNIGT(
            "MlpPolicy", env, learning_rate=learning_rate, gamma=args.gamma, eta=args.momentum, round_size=args.batch_size,
            n_agents=args.n_agents, compute_times="sqrt", communication_times="sqrt", backend=args.backend,
            n_workers=args.n_workers, seed=seed, verbose=0,
        )
        before = evaluate(model, env_id, args.eval_episodes, 10_000 + seed) if args.eval_episodes else float("nan")
        logger = ReturnLogger()
        start = time.perf_counter()
        model.learn(args.timesteps, callback=logger, progress_bar=not args.no_progress_bar)
        wall = time.perf_counter() - start
        model.close()  # its workers: the next seed starts its own
        model.save(out / f"model_seed{seed}.zip")
        if isinstance(env, VecNormalize):
            env.save(str(out / f"vecnormalize_seed{seed}.pkl"))
        write_csv(out / f"returns_seed{seed}.csv", logger.rows)
        curves[seed] = logger.rows
        after = evaluate(model, env_id, args.eval_episodes, 10_000 + seed) if args.eval_episodes else float("nan")
        first, last = logger.rows[0], logger.rows[-1]
        summary.append((seed, first[2], last[2], before, after, last[1], last[0], wall))
        print(
            f"{env_id} seed {seed}: mean training return {first[2]:.1f} -> {last[2]:.1f}; deterministic evaluation "
            f"{before:.1f} -> {after:.1f} ({args.eval_episodes} episodes); {last[1]} env steps, "
            f"{last[0]:.0f} simulated s, {wall:.0f} wall s"
        )
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seed", "first_mean_return", "last_mean_return", "eval_before", "eval_after", "env_steps", "simulated_seconds", "wall_seconds"])
        writer.writerows(summary)
    plot(curves, out / "returns.png", f"RennalaNIGT on {env_id}: n={args.n_agents}, h_i = κ_i = √i")
    print(f"wrote {out}/: model_seed*.zip, vecnormalize_seed*.pkl, returns_seed*.csv, summary.csv, returns.png")


if __name__ == "__main__":
    main()
