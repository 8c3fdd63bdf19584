"""Where an experiment's run spends its time: environment steps, action sampling, gradients, and the rest.

Runs one run of an experiment in this process (the inline backend, one torch thread, as the experiment's worker
processes do) with timers around ``env.step``/``env.reset`` of every worker environment,
``GradientWorker.sample`` (the rollout: environment steps plus the library's sampling work) and
``GradientWorker.gradient_sum`` (the batched torch backward), and prints each one's share of the run's wall time.

Usage::

    .venv/bin/python benchmarks/experiment_profile.py reacher-expensive-comm --algorithm rennala --seconds 600
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    from sb3_nigt.experiments import EXPERIMENTS
    from sb3_nigt.experiments.runner import RunSpec, build_model
    from sb3_nigt.workers import rollout as estimator

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(EXPERIMENTS))
    parser.add_argument("--algorithm", default=None, help="default: the experiment's reference algorithm")
    parser.add_argument("--seconds", type=float, default=600.0, help="simulated seconds of the run")
    parser.add_argument("--alpha", type=float, default=2.0**-6)
    args = parser.parse_args()

    import torch as th

    from sb3_nigt.compare import Recorder

    th.set_num_threads(1)
    experiment = EXPERIMENTS[args.name]
    algorithm = args.algorithm or experiment.algorithms[0]
    spent = {"env": 0.0, "sample": 0.0, "gradient": 0.0}
    sample, gradient_sum, env_of = estimator.GradientWorker.sample, estimator.GradientWorker.gradient_sum, estimator.GradientWorker.env
    wrapped: set[int] = set()

    def timer(key, fn):
        def timed(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - start
        return timed

    def env(self, index):
        made = env_of(self, index)
        if id(made) not in wrapped:
            made.step, made.reset = timer("env", made.step), timer("env", made.reset)
            wrapped.add(id(made))
        return made

    estimator.GradientWorker.sample = timer("sample", sample)
    estimator.GradientWorker.gradient_sum = timer("gradient", gradient_sum)
    estimator.GradientWorker.env = env
    spec = RunSpec(experiment.name, "profile", algorithm, experiment.n_agents[0], args.alpha, 0, args.seconds)
    model = build_model(experiment, spec)
    recorder = Recorder(window=100, max_seconds=args.seconds)
    start = time.perf_counter()
    model.learn(experiment.max_steps, callback=recorder)
    wall = time.perf_counter() - start
    sampling = spent["sample"] - spent["env"]
    rest = wall - spent["sample"] - spent["gradient"]
    print(f"# {experiment.name}, {algorithm}, n = {spec.n_agents}, {args.seconds:g} simulated s: "
          f"{model.num_timesteps} env steps in {wall:.1f} wall s\n")
    print("| part | seconds | share |\n|---|---:|---:|")
    for label, value in [("env.step and env.reset", spent["env"]), ("action sampling (NumPy forward, noise, bookkeeping)", sampling),
                         ("gradients (torch forward/backward)", spent["gradient"]),
                         ("everything else (clock, collector, callbacks, update)", rest)]:
        print(f"| {label} | {value:.2f} | {100 * value / wall:.1f}% |")
    print(f"\nrollouts and gradients (the first three rows): {100 * (spent['sample'] + spent['gradient']) / wall:.1f}% of the wall time")


if __name__ == "__main__":
    main()
