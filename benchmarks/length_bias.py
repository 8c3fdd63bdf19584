"""How per-step compute times bias the first-M rule towards short trajectories (docs/time.md).

At (almost) fixed θ_0 (α = 1e-9), RennalaNIGT collects rounds under the three readings of h_i, on the simulated
clock, and prints the mean length of the trajectories that were counted:

- ``gradient``: h_i per gradient, whatever its length (the paper's experiments);
- ``horizon``: h_i per step times H (the paper's theory, ḣ_i·H): also length-independent;
- ``step``: h_i per step of the real trajectory: short trajectories finish first and are counted first.

Usage::

    python benchmarks/length_bias.py --env Hopper-v4 --n-agents 10 --batch-size 20 --rounds 30 --compute-times equal sqrt
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from sb3_nigt import RennalaNIGT


def counted_lengths(env: str, times: str, unit: str, n_agents: int, batch_size: int, rounds: int, seed: int) -> np.ndarray:
    model = RennalaNIGT(
        "MlpPolicy", env, n_agents=n_agents, compute_times=times, compute_time_unit=unit, round_size=batch_size,
        learning_rate=1e-9, seed=seed, stats_window_size=10**9,
    )
    model.learn(1)  # the initial round: its steps tell the budget of one round
    per_round = max(1, model.num_timesteps)
    model.learn(per_round * rounds, reset_num_timesteps=False)
    return np.array([ep["l"] for ep in model.ep_info_buffer], dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Hopper-v4")
    parser.add_argument("--n-agents", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compute-times", nargs="+", default=["equal", "sqrt"], help="presets to measure")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*out of date.*")
    print(f"{args.env}, n = {args.n_agents}, M = {args.batch_size}, θ ≈ θ_0, about {args.rounds} rounds, seed {args.seed}")
    print("| compute_times | compute_time_unit | counted trajectories | mean length (steps) | std |")
    print("|---|---|---:|---:|---:|")
    for times in args.compute_times:
        for unit in ("gradient", "horizon", "step"):
            lengths = counted_lengths(args.env, times, unit, args.n_agents, args.batch_size, args.rounds, args.seed)
            print(f"| {times} | {unit} | {len(lengths)} | {lengths.mean():.2f} | {lengths.std():.2f} |", flush=True)


if __name__ == "__main__":
    main()
