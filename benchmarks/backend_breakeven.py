"""When the subprocess backend pays off against inline: wall seconds of one ``learn`` (workers' start-up included)
per backend and budget, and the start-up of a local Ray runtime.

For each environment and budget, the same model (seed, agents, rounds) is trained with ``backend="inline"`` and
``backend="subprocess"`` (``--workers`` processes), and the wall seconds of construction + ``learn`` are printed
with their ratio; both give the same bits on the simulated clock, so only the time differs. The break-even
budget is the smallest budget at which subprocess is faster. ``--ray`` also times a one-round ``learn`` on
``backend="ray"``, which is nearly all Ray's start-up (a local runtime and one actor per worker).

Usage (run it niced on an otherwise idle machine; figures depend on cores and on the environment's step cost)::

    nice -n 10 .venv/bin/python benchmarks/backend_breakeven.py --workers 2 --ray
    nice -n 10 .venv/bin/python benchmarks/backend_breakeven.py --env InvertedPendulum-v5 --budgets 5000,20000,50000
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

#: The environments measured by default and their budgets (environment steps).
DEFAULT_BUDGETS = {"Pendulum-v1": [4_000, 20_000], "InvertedPendulum-v5": [5_000, 20_000, 50_000]}


def timed_learn(env: str, budget: int, backend: str, workers: int, agents: int) -> float:
    """Wall seconds of building a RennalaNIGT model and one ``learn(budget)`` on ``backend`` (workers closed)."""
    from sb3_nigt import RennalaNIGT

    kwargs: dict[str, Any] = dict(n_agents=agents, compute_times="sqrt", seed=0)
    if backend != "inline":
        kwargs["n_workers"] = workers
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a small budget's warning is expected here
        model = RennalaNIGT("MlpPolicy", env, backend=backend, **kwargs)
        model.learn(budget)
    seconds = time.perf_counter() - start
    close = getattr(model, "close", None)
    if callable(close):  # where workers outlive learn, they are closed and not counted
        close()
    return seconds


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", action="append", help="environment id (repeatable); default Pendulum-v1 and InvertedPendulum-v5")
    parser.add_argument("--budgets", help="comma-separated budgets in environment steps, for every --env")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the subprocess backend")
    parser.add_argument("--agents", type=int, default=4, help="agents n (RennalaNIGT, compute_times='sqrt', M = 20)")
    parser.add_argument("--ray", action="store_true", help="also time a one-round learn on backend='ray'")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    envs = args.env or list(DEFAULT_BUDGETS)
    print(f"# RennalaNIGT, n_agents={args.agents}, compute_times='sqrt', M = M_init = 20, seed 0; "
          f"subprocess with n_workers={args.workers}\n")
    print("| env | budget (steps) | inline s | subprocess s | subprocess / inline |\n|---|---:|---:|---:|---:|")
    for env in envs:
        budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else DEFAULT_BUDGETS.get(env, [20_000])
        for budget in budgets:
            inline = timed_learn(env, budget, "inline", args.workers, args.agents)
            subprocess = timed_learn(env, budget, "subprocess", args.workers, args.agents)
            print(f"| {env} | {budget:,} | {inline:.1f} | {subprocess:.1f} | {subprocess / inline:.2f} |", flush=True)
    if args.ray:
        ray_seconds = timed_learn("Pendulum-v1", 1, "ray", args.workers, args.agents)
        print(f"\nRay: construction + a one-round learn (local runtime start-up, {args.workers} actors): {ray_seconds:.1f} s")


if __name__ == "__main__":
    main()
