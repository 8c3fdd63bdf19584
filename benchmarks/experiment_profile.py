"""Where an experiment's run spends its time (environment steps, policy forward, backward, planner, the rest),
and, with ``--compare-with``, how much faster this engine runs the same work than another checkout's.

One profiled run trains one experiment run in a fresh process (the inline backend, one torch thread, as the
experiment's worker processes do) for ``--seconds`` simulated seconds, with timers around:

- ``env.step``/``env.reset`` of every worker environment;
- the policy's NumPy forward (the function ``NIGTPolicy.numpy_forward`` returns), one call per rollout step
  (per lockstep step on the lockstep engine, per trajectory step before it);
- the rest of the rollout: ``GradientWorker.sample_batch`` (lockstep engine) or ``GradientWorker.sample`` (the
  engine before it) minus the two above (noise, squashing, bookkeeping, regrouping);
- the torch forward/backward of the gradients (``_return_weighted_gradient`` in ``sb3_nigt.workers.rollout``,
  which every gradient path calls);
- the round planner (``plan_round`` and ``upload`` as ``sb3_nigt.clock.rounds`` calls them).

Timers are exclusive: a timed call inside another is charged to the inner one only, so the parts add up to the
measured time and "the rest" (clock, collector, aggregation, callbacks, the NIGT update) is the wall time minus
them. The script only wraps functions both engines have, so the same file profiles either checkout.

``--compare-with PATH`` runs every profile twice per repeat, once with ``PYTHONPATH`` = this checkout and once
with ``PYTHONPATH`` = PATH (for instance a ``git worktree`` of an older commit), each in its own subprocess, the
order alternating from one repeat to the next so that both see the same machine load; it prints each run's
breakdown, both engines' summed wall times, the speed-up per run and per env step, and a bound (the old
engine's wall time over its own ``env.step`` time: what an engine costing nothing beyond ``env.step`` would gain
at the same environment speed).

Usage::

    .venv/bin/python benchmarks/experiment_profile.py                                  # both default runs, this checkout
    .venv/bin/python benchmarks/experiment_profile.py reacher-expensive-comm:rennala --seconds 60
    git worktree add /tmp/old-engine ef18067
    .venv/bin/python benchmarks/experiment_profile.py --compare-with /tmp/old-engine --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable

#: The runs the engine's speed-up target refers to: (experiment, algorithm).
DEFAULT_RUNS = ("reacher-expensive-comm:rennala", "heterogeneous-envs:malenia")
PARTS = (
    ("env", "env.step and env.reset"),
    ("forward", "policy forward (NumPy, per rollout step)"),
    ("sampling", "rest of the rollout (noise, squashing, bookkeeping)"),
    ("backward", "gradients (torch forward + backward)"),
    ("planner", "round planner (plan_round, upload)"),
    ("rest", "everything else (collector, aggregation, callbacks, update)"),
)
THIS_TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ExclusiveTimers:
    """Adds up the exclusive wall time of wrapped calls per key: a call's time minus that of the timed calls
    it makes, so nested timers never count a second twice."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.stack: list[list[float]] = []  # per open call: [start, time of its timed children]
        self.env_steps = 0  # env.step calls of the wrapped environments

    def wrap(self, key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        self.spent.setdefault(key, 0.0)

        def timed(*args: Any, **kwargs: Any) -> Any:
            frame = [time.perf_counter(), 0.0]
            self.stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - frame[0]
                self.stack.pop()
                self.spent[key] += elapsed - frame[1]
                if self.stack:
                    self.stack[-1][1] += elapsed

        return timed


def install_timers(timers: ExclusiveTimers) -> None:
    """Wraps, in the imported ``sb3_nigt`` (whichever checkout), the functions each part is charged to."""
    from sb3_nigt.clock import rounds
    from sb3_nigt.policies import NIGTPolicy
    from sb3_nigt.workers import rollout

    worker = rollout.GradientWorker
    env_of = worker.env
    wrapped: set[int] = set()

    def env(self: Any, *args: Any, **kwargs: Any) -> Any:
        made = env_of(self, *args, **kwargs)
        if id(made) not in wrapped:
            made.step, made.reset = timers.wrap("env", counted(made.step)), timers.wrap("env", made.reset)
            wrapped.add(id(made))
        return made

    def counted(step: Callable[..., Any]) -> Callable[..., Any]:
        def counting(*args: Any, **kwargs: Any) -> Any:
            timers.env_steps += 1
            return step(*args, **kwargs)

        return counting

    numpy_forward = NIGTPolicy.numpy_forward

    def timed_numpy_forward(self: Any) -> Any:
        return timers.wrap("forward", numpy_forward(self))

    worker.env = env  # type: ignore[method-assign]
    NIGTPolicy.numpy_forward = timed_numpy_forward  # type: ignore[method-assign]
    sampler = "sample_batch" if hasattr(worker, "sample_batch") else "sample"
    setattr(worker, sampler, timers.wrap("sampling", getattr(worker, sampler)))
    rollout._return_weighted_gradient = timers.wrap("backward", rollout._return_weighted_gradient)
    rounds.plan_round = timers.wrap("planner", rounds.plan_round)
    rounds.upload = timers.wrap("planner", rounds.upload)


def profile(name: str, algorithm: str, seconds: float, alpha: float) -> dict[str, Any]:
    """Trains one run of experiment ``name`` with ``algorithm`` for ``seconds`` simulated seconds under the timers;
    returns its wall seconds, environment steps, rounds, engine version and the seconds of each part."""
    import torch as th

    import sb3_nigt
    from sb3_nigt.compare import Recorder
    from sb3_nigt.experiments import EXPERIMENTS
    from sb3_nigt.experiments.runner import RunSpec, build_model

    th.set_num_threads(1)
    timers = ExclusiveTimers()
    install_timers(timers)
    experiment = EXPERIMENTS[name]
    spec = RunSpec(experiment.name, "profile", algorithm, experiment.n_agents[0], alpha, 0, seconds)
    model = build_model(experiment, spec)
    recorder = Recorder(window=100, max_seconds=seconds)
    start, cpu = time.perf_counter(), time.process_time()
    model.learn(experiment.max_steps, callback=recorder)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    parts = {key: timers.spent.get(key, 0.0) for key, _ in PARTS if key != "rest"}
    parts["rest"] = wall - sum(parts.values())
    try:
        from sb3_nigt.version import ENGINE_VERSION
        version: Any = ENGINE_VERSION
    except ImportError:
        version = "unknown"
    return dict(name=name, algorithm=algorithm, n_agents=spec.n_agents, seconds=seconds, wall=wall, cpu=cpu, steps=timers.env_steps, num_timesteps=int(model.num_timesteps),
                rounds=int(getattr(model, "n_rounds", 0)), simulated=float(model.simulated_time), engine=version,
                tree=os.path.dirname(os.path.dirname(os.path.abspath(sb3_nigt.__file__))), parts=parts)


def table(result: dict[str, Any]) -> str:
    """One run's breakdown as a Markdown table."""
    wall = result["wall"]
    lines = [f"{result['name']}, {result['algorithm']}, n = {result['n_agents']}, {result['seconds']:g} simulated s "
             f"(engine {result['engine']}, {result['tree']}): {result['steps']} env steps (num_timesteps {result['num_timesteps']}), {result['rounds']} rounds "
             f"in {wall:.1f} wall s ({result['steps'] / wall:,.0f} steps/s), {result['cpu']:.1f} CPU s of the process", "", "| part | seconds | share |", "|---|---:|---:|"]
    lines += [f"| {label} | {result['parts'][key]:.2f} | {100 * result['parts'][key] / wall:.1f}% |" for key, label in PARTS]
    return "\n".join(lines) + "\n"


def run_child(tree: str, run: str, seconds: float, alpha: float) -> dict[str, Any]:
    """One profile in a fresh process importing ``sb3_nigt`` from ``tree``; returns its result."""
    env = dict(os.environ, PYTHONPATH=tree)
    command = [sys.executable, os.path.abspath(__file__), run, "--seconds", repr(seconds), "--alpha", repr(alpha), "--json"]
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"profile {run} with PYTHONPATH={tree} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(runs: list[str], old_tree: str, seconds: float, alpha: float, repeats: int) -> None:
    """Alternates every run between this checkout and ``old_tree`` ``repeats`` times; prints each breakdown and
    the speed-up of the summed wall times."""
    trees = {"new": THIS_TREE, "old": os.path.abspath(old_tree)}
    totals: dict[tuple[str, str], list[float]] = {}  # (run, engine) → [wall s, env steps, env.step seconds, CPU s]
    for repeat in range(repeats):
        for r, run in enumerate(runs):
            order = ("old", "new") if (repeat + r) % 2 == 0 else ("new", "old")
            for which in order:
                print(f"## repeat {repeat + 1}, {which} engine, load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}\n", flush=True)
                result = run_child(trees[which], run, seconds, alpha)
                print(table(result), flush=True)
                total = totals.setdefault((run, which), [0.0, 0.0, 0.0, 0.0])
                total[0] += result["wall"]
                total[1] += result["steps"]
                total[2] += result["parts"]["env"]
                total[3] += result["cpu"]
    print("## Speed-up (the same work, alternating in this run)\n")
    print("The two engines' runs differ in their bits, so they take slightly different numbers of env steps: the "
          "speed-up is given per run and per env step. The bound is the old engine's wall time over its own env.step "
          "time: the speed-up of an engine that cost nothing beyond env.step, at the old runs' env.step speed. CPU: the "
          "process's CPU seconds (one process, one torch thread), which other work on the machine moves less than "
          "the wall time.\n")
    print("| run | old engine wall s | new engine wall s | speed-up | old steps/s | new steps/s | speed-up per env step | "
          "old CPU s | new CPU s | CPU speed-up per env step | bound |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs + ["all"]:
        keys = runs if run == "all" else [run]
        old = [sum(totals[(k, "old")][i] for k in keys) for i in range(4)]
        new = [sum(totals[(k, "new")][i] for k in keys) for i in range(4)]
        label = "**all** (target >= 1.5x)" if run == "all" else f"{run} (x{repeats})"
        print(f"| {label} | {old[0]:.1f} | {new[0]:.1f} | {old[0] / new[0]:.2f}x | {old[1] / old[0]:,.0f} | {new[1] / new[0]:,.0f} | "
              f"{(new[1] / new[0]) / (old[1] / old[0]):.2f}x | {old[3]:.1f} | {new[3]:.1f} | {(new[1] / new[3]) / (old[1] / old[3]):.2f}x | "
              f"{old[0] / old[2]:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", default=list(DEFAULT_RUNS), help=f"EXPERIMENT:ALGORITHM each (default: {' '.join(DEFAULT_RUNS)})")
    parser.add_argument("--seconds", type=float, default=600.0, help="simulated seconds of each run (default 600)")
    parser.add_argument("--alpha", type=float, default=2.0**-6, help="the step size α (default 2^-6)")
    parser.add_argument("--compare-with", default=None, metavar="PATH", help="another checkout's root, run alternately in subprocesses")
    parser.add_argument("--repeats", type=int, default=1, help="alternations per run with --compare-with (default 1)")
    parser.add_argument("--json", action="store_true", help="profile the one run in this process and print its result as JSON")
    args = parser.parse_args()
    if args.seconds <= 0 or args.repeats < 1:
        parser.error("--seconds must be > 0 and --repeats >= 1")
    runs = [run if ":" in run else f"{run}:" for run in args.runs]
    if not args.json:
        print(f"load average at start: {'/'.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    start = time.perf_counter()
    if args.compare_with:
        compare(runs, args.compare_with, args.seconds, args.alpha, args.repeats)
    else:
        for run in runs:
            name, algorithm = run.split(":", 1)
            if not algorithm:
                from sb3_nigt.experiments import EXPERIMENTS
                algorithm = EXPERIMENTS[name].algorithms[0]
            result = profile(name, algorithm, args.seconds, args.alpha)
            print(json.dumps(result) if args.json else table(result), flush=True)
    if not args.json:
        print(f"\nload average at end: {'/'.join(f'{x:.2f}' for x in os.getloadavg())}; whole script {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
