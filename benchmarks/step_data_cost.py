"""What the per-step data for callbacks costs in every message: a trajectory's statistics with and without it.

Samples one Hopper trajectory (no early termination, ``--steps`` steps) at θ_0 and prints the pickled size and the
pickle + unpickle time of its :class:`~sb3_nigt.workers.rollout.TrajectoryStats`: bare (no per-step data), with
the per-step rewards and the info dicts as the plain list of dicts, and as the library sends them
(:class:`~sb3_nigt.workers.rollout.StepInfos`, one array per key), next to the size of one gradient vector.

Usage::

    .venv/bin/python benchmarks/step_data_cost.py --steps 114
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=114, help="trajectory length (114: Hopper at θ after learning)")
    parser.add_argument("--repeats", type=int, default=500)
    args = parser.parse_args()
    import gymnasium as gym

    from sb3_nigt import RennalaNIGT
    from sb3_nigt.workers.rollout import GradientWorker, job_seed

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = RennalaNIGT("MlpPolicy", "Hopper-v4", seed=0)
        worker = GradientWorker([lambda: gym.make("Hopper-v4", terminate_when_unhealthy=False)], model.policy_class,
                                model.observation_space, model.action_space, model.policy_kwargs)
        stats = worker.sample(0, 0, job_seed(0, 0, 0, 0), 0, args.steps).stats
    variants = {
        "bare (no per-step data)": dataclasses.replace(stats, rewards=None, infos=None, terminal_observation=None),
        "rewards + info dicts as a list": dataclasses.replace(stats, infos=list(stats.infos or [])),
        "rewards + StepInfos (as sent)": stats,
    }
    print(f"# TrajectoryStats of one {stats.n_steps}-step Hopper-v4 trajectory; one gradient vector: {8 * model.n_params:,} bytes\n")
    print("| variant | pickled bytes | pickle + unpickle µs |\n|---|---:|---:|")
    for label, value in variants.items():
        start = time.perf_counter()
        for _ in range(args.repeats):
            pickle.loads(pickle.dumps(value))
        micro = 1e6 * (time.perf_counter() - start) / args.repeats
        print(f"| {label} | {len(pickle.dumps(value)):,} | {micro:.0f} |")


if __name__ == "__main__":
    main()
