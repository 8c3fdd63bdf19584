"""MaleniaNIGT against RennalaNIGT on the paper's heterogeneous-environment task (App. H.3), on Hopper.

Two agents train one policy: agent 0 sees Hopper's observation with a 0 appended, agent 1 sees it multiplied by
−1 with a 1 appended (:func:`sb3_nigt.envs.heterogeneous_envs`). Agent 0 is ten times faster: h = (1, 10)
seconds per gradient, κ = 0, simulated clock. The goal is J = (J_0 + J_1)/2.

- MaleniaNIGT weighs both environments equally (Algorithm 3), so it should serve both.
- RennalaNIGT takes the first M gradients, about 93% of them from agent 0, so it should favour agent 0's
  environment.

Default batch sizes give both algorithms rounds of about 30 simulated seconds: Rennala's M = 30 gives counts
(28, 2) in 28 s; Malenia's S = 10 gives counts (30, 3) in 30 s. Both get the same number of environment steps.

For each algorithm and seed the script prints and writes (``--out``, default ``runs/heterogeneous``):

- ``results.csv``: the deterministic mean return of the final policy on each agent's own environment
  (``--eval-episodes`` episodes each), and the last training return of each agent;
- ``curves.csv``: per round, the simulated time, environment steps and each agent's mean training return;
- ``returns.png``: each agent's training return against simulated time, one panel per agent.

Usage (``make heterogeneous`` runs the defaults)::

    python examples/heterogeneous_hopper.py --timesteps 2000000 --seeds 0
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Optional

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import safe_mean
from stable_baselines3.common.vec_env import VecNormalize

from sb3_nigt import MaleniaNIGT, RennalaNIGT
from sb3_nigt.envs import heterogeneous_envs
from sb3_nigt.train import evaluate, hopper_id
from sb3_nigt.workers.env_factory import AgentVecEnv

ALGORITHMS = {"MaleniaNIGT": MaleniaNIGT, "RennalaNIGT": RennalaNIGT}


class AgentReturnLogger(BaseCallback):
    """Per round: (simulated seconds, environment steps, agent 0's and agent 1's mean training return)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buffers = self.model.agent_ep_info_buffer
        means = [float(safe_mean([ep["r"] for ep in b])) if b else float("nan") for b in buffers]
        self.rows.append((float(self.model.simulated_time), int(self.model.num_timesteps), *means))


def plot(curves: dict[tuple[str, int], list[tuple]], path: Path, env_id: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"MaleniaNIGT": "tab:blue", "RennalaNIGT": "tab:orange"}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    titles = ["agent 0: observation ++ [0]  (fast, h = 1 s)", "agent 1: −observation ++ [1]  (slow, h = 10 s)"]
    for agent, ax in enumerate(axes):
        for (name, seed), rows in sorted(curves.items()):
            data = np.asarray(rows, dtype=np.float64)
            ax.plot(data[:, 0], data[:, 2 + agent], color=colors[name], linestyle=styles[seed % len(styles)], alpha=0.85,
                    label=f"{name} seed {seed}")
        ax.set_title(titles[agent], fontsize=10)
        ax.set_xlabel("simulated time (s)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean training return on the agent's own environment")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{env_id}, two agents with inverted observations (App. H.3)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=None, help="MuJoCo env id (default: Hopper-v4, or v5 if v4 is unusable)")
    parser.add_argument("--timesteps", type=int, default=2_000_000, help="environment steps per algorithm and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--malenia-batch-size", type=int, default=10, help="S of MaleniaNIGT")
    parser.add_argument("--rennala-batch-size", type=int, default=30, help="M of RennalaNIGT")
    parser.add_argument("--learning-rate", type=float, default=2**-6)
    parser.add_argument("--momentum", type=float, default=0.1)
    parser.add_argument("--gamma", type=float, default=0.995)
    parser.add_argument("--backend", default="subprocess", help="a registered backend name (inline, subprocess, ...)")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--out", default="runs/heterogeneous")
    parser.add_argument("--no-progress-bar", action="store_true")
    parser.add_argument("--replot", action="store_true", help="only redraw returns.png from the curves.csv in --out")
    args = parser.parse_args(argv)

    env_id = args.env or hopper_id()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        curves = {}
        with open(out / "curves.csv") as f:
            for row in csv.DictReader(f):
                curves.setdefault((row["algorithm"], int(row["seed"])), []).append(
                    tuple(float(row[k]) for k in ("simulated_seconds", "env_steps", "train_return_agent_0", "train_return_agent_1")))
        plot(curves, out / "returns.png", env_id)
        return
    batch_sizes = {"MaleniaNIGT": args.malenia_batch_size, "RennalaNIGT": args.rennala_batch_size}
    results, curves = [], {}
    for seed in args.seeds:
        for name in args.algorithms:
            factories = heterogeneous_envs(env_id, n_agents=2)
            env = VecNormalize(AgentVecEnv(factories), norm_reward=False)
            model = ALGORITHMS[name](
                "MlpPolicy", env, learning_rate=args.learning_rate, eta=args.momentum, round_size=batch_sizes[name],
                gamma=args.gamma, compute_times=[1.0, 10.0], communication_times=0.0, backend=args.backend, seed=seed,
            )
            logger = AgentReturnLogger()
            start = time.perf_counter()
            model.learn(args.timesteps, callback=logger, progress_bar=not args.no_progress_bar)
            wall = time.perf_counter() - start
            model.save(out / f"{name}_seed{seed}.zip")
            env.save(str(out / f"{name}_seed{seed}_vecnormalize.pkl"))
            curves[(name, seed)] = logger.rows
            evals = [evaluate(model, factory, args.eval_episodes, 10_000 + seed) for factory in factories]
            last = logger.rows[-1]
            results.append((name, seed, evals[0], evals[1], float(np.mean(evals)), last[2], last[3], model.num_timesteps, model.simulated_time, wall))
            print(
                f"{name} seed {seed}: deterministic return on agent 0's env {evals[0]:.1f}, on agent 1's env {evals[1]:.1f} "
                f"(mean {np.mean(evals):.1f}); last training return {last[2]:.1f} / {last[3]:.1f}; "
                f"{model.num_timesteps} env steps, {model.simulated_time:.0f} simulated s, {wall:.0f} wall s"
            )
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["algorithm", "seed", "eval_return_agent_0", "eval_return_agent_1", "eval_return_mean",
                         "train_return_agent_0", "train_return_agent_1", "env_steps", "simulated_seconds", "wall_seconds"])
        writer.writerows(results)
    with open(out / "curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["algorithm", "seed", "simulated_seconds", "env_steps", "train_return_agent_0", "train_return_agent_1"])
        for (name, seed), rows in curves.items():
            writer.writerows([(name, seed, *row) for row in rows])
    plot(curves, out / "returns.png", env_id)
    print(f"wrote {out}/: results.csv, curves.csv, returns.png, models and VecNormalize statistics")


if __name__ == "__main__":
    main()
