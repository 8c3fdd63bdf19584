"""Where a step of θ_0 collection goes, and what a given throughput target leaves for the library.

Runs the setting of ``throughput.py``'s θ_0 row (RennalaNIGT on Hopper, n = 10, h_i = √i, M = 20, inline backend,
simulated clock, θ_0 for every round) with timers around the pieces of the inline worker, alternating every
round with as many random-action ``env.step`` calls on a second environment (the baseline the target refers to):

- ``env.step`` and ``env.reset`` inside collection (the worker's own environment, wrapped with timers);
- the rest of ``GradientWorker.sample`` (NumPy forward, noise, squashing, bookkeeping): the sampling library work;
- ``GradientWorker.gradient_sum`` (the batched torch forward/backward of each unit);
- everything else in ``Collector.collect`` (planning, publish, θ load, aggregation);
- in the baseline: ``env.step`` and ``Box.sample`` separately.

Then it prints the budget a target ratio r leaves: collection time per step C = E + L (E: env.step and reset, L:
library) against the random-action step E' + S (S: ``Box.sample``) gives C ≤ (E' + S) / r, so
L ≤ (E' + S) / r − E; and the part of L that one backward per contributing agent costs.

Usage::

    .venv/bin/python benchmarks/theta0_breakdown.py                # 40,000 steps each, about 1 minute
    .venv/bin/python benchmarks/theta0_breakdown.py --steps 100000 --target 0.9

Every figure is measured in the run that prints it. Timers cost about 0.1 µs per call.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import throughput as T  # noqa: E402  (the θ_0 setting and sessions of the throughput benchmark)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40_000, help="environment steps of collection (and of the baseline)")
    parser.add_argument("--target", type=float, default=0.9, help="target ratio of collection to random-action steps")
    args = parser.parse_args()

    from sb3_nigt.workers import rollout as estimator

    spent = {"sample": 0.0, "gradient": 0.0, "step": 0.0, "reset": 0.0, "raw step": 0.0, "raw sample": 0.0}
    units = [0]
    sample, gradient_sum = estimator.GradientWorker.sample, estimator.GradientWorker.gradient_sum

    def timed_sample(self, *a, **k):
        start = time.perf_counter()
        try:
            return sample(self, *a, **k)
        finally:
            spent["sample"] += time.perf_counter() - start

    def timed_gradient_sum(self, *a, **k):
        start = time.perf_counter()
        try:
            return gradient_sum(self, *a, **k)
        finally:
            spent["gradient"] += time.perf_counter() - start
            units[0] += 1

    estimator.GradientWorker.sample = timed_sample
    estimator.GradientWorker.gradient_sum = timed_gradient_sum

    env_id = T.hopper_id()
    model = T.make_nigt(env_id, "inline", None)
    session = T.CollectSession(model)  # start-up and one warm-up round, untimed
    env = session.collector.backend.worker.env(0)
    step, reset = env.step, env.reset

    def timed_step(action):
        start = time.perf_counter()
        try:
            return step(action)
        finally:
            spent["step"] += time.perf_counter() - start

    def timed_reset(**kwargs):
        start = time.perf_counter()
        try:
            return reset(**kwargs)
        finally:
            spent["reset"] += time.perf_counter() - start

    env.step, env.reset = timed_step, timed_reset
    raw_env = T.quiet_make(env_id)
    raw_env.action_space.seed(0)
    raw_env.reset(seed=0)
    collected = raw_steps = 0
    wall = 0.0
    try:
        session.run(2_000)
        for key in spent:
            spent[key] = 0.0
        units[0] = 0
        while collected < args.steps:
            done, seconds = session.run(1)
            collected += done
            wall += seconds
            draw, raw_step = raw_env.action_space.sample, raw_env.step
            for _ in range(done):
                start = time.perf_counter()
                action = draw()
                middle = time.perf_counter()
                _, _, terminated, truncated, _ = raw_step(action)
                if terminated or truncated:
                    raw_env.reset()
                end = time.perf_counter()
                spent["raw sample"] += middle - start
                spent["raw step"] += end - middle
            raw_steps += done
    finally:
        session.close()
        raw_env.close()

    us = {key: 1e6 * value / collected for key, value in spent.items()}
    sampling = us["sample"] - us["step"] - us["reset"]
    rest = 1e6 * wall / collected - us["sample"] - us["gradient"]
    env_cost = us["step"] + us["reset"]
    library = sampling + us["gradient"] + rest
    raw_total = us["raw step"] + us["raw sample"]
    budget = raw_total / args.target - env_cost
    gradients = session.rounds * T.NIGT_KWARGS["round_size"]
    print(f"# θ_0 collection: where a step goes ({env_id}, {collected} steps, {session.rounds} rounds, "
          f"{collected / gradients:.1f} steps per gradient, {units[0]} units = {units[0] / session.rounds:.1f} backwards per round)\n")
    print("| piece | µs per env step |\n|---|---:|")
    for label, value in [
        ("collection: env.step", us["step"]),
        ("collection: env.reset (share per step)", us["reset"]),
        ("collection: sampling library work (forward, noise, squashing, bookkeeping)", sampling),
        ("collection: gradient_sum (batched torch backward per unit)", us["gradient"]),
        ("collection: rest of Collector.collect (plan, publish, θ load, aggregate)", rest),
        ("**collection total**", 1e6 * wall / collected),
        ("baseline: env.step (random actions, resets included)", us["raw step"]),
        ("baseline: Box.sample", us["raw sample"]),
        ("**baseline total**", raw_total),
    ]:
        print(f"| {label} | {value:.1f} |")
    print(f"\nratio collection / random-action baseline: {100 * raw_total / (1e6 * wall / collected):.1f}%")
    print(f"library work L = {library:.1f} µs per step; a {100 * args.target:.0f}% target leaves "
          f"L ≤ (baseline) / {args.target} − (collection env.step + reset) = {budget:.1f} µs per step")
    per_backward = 1e6 * spent["gradient"] / max(units[0], 1)
    print(f"one backward costs {per_backward:.0f} µs here; one per contributing agent "
          f"({units[0] / session.rounds:.1f} per round) is {us['gradient']:.1f} µs per step, "
          f"{100 * us['gradient'] / budget:.0f}% of that budget")


if __name__ == "__main__":
    main()
