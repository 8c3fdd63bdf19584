"""The cost of many short ``learn()`` calls: K calls of a one-round ``learn`` (SB3's usual
``for _ in range(k): model.learn(n, reset_num_timesteps=False); evaluate(...)`` loop) on a process backend.

Since workers stay up across ``learn()`` calls (docs/backends.md, "The workers' lifetime"), only the first call
starts them; before, every call started and closed them. Run it from the checkout to measure (it works on
versions with and without ``model.close()``)::

    .venv/bin/python benchmarks/learn_calls.py --backends subprocess ray --calls 100

``--ray-init`` starts Ray before the model (as a script that calls ``ray.init`` does); without it the Ray backend
starts a runtime of its own at its start and shuts it down at its close. It prints, per backend, the first call, the later calls (mean, median, max) and the total, in wall seconds, and
the number of distinct worker process ids seen over the calls where the backend exposes them. The target: after
the first call, a one-round call costs the round itself (tens of milliseconds here), not a start-up.
"""

from __future__ import annotations

import argparse
import statistics
import time


def worker_ids(model) -> set:
    """Process ids (subprocess) or actor ids (Ray) of the model's live workers, where they can be read."""
    live = model.__dict__.get("_workers")
    backend = getattr(live, "backend", None)
    ids = set()
    for worker in getattr(backend, "workers", []):
        process = getattr(worker, "process", None)
        if process is not None:
            ids.add(process.pid)
        elif getattr(worker, "handle", None) is not None:
            ids.add(worker.handle._actor_id.hex())
    return ids


def measure(backend: str, calls: int, n_agents: int, round_size: int, horizon: int) -> dict:
    """Wall seconds of each of ``calls`` one-round ``learn`` calls on a fresh model (after its initial round)."""
    from sb3_nigt import RennalaNIGT

    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=n_agents, round_size=round_size, horizon=horizon, seed=0,
                        backend=backend, n_workers=n_agents, policy_kwargs=dict(net_arch=[16]))
    steps = round_size * horizon  # one round: M trajectories of H steps (Pendulum never terminates)
    seconds, seen = [], set()
    try:
        for _ in range(calls):
            start = time.perf_counter()
            model.learn(steps, reset_num_timesteps=False)
            seconds.append(time.perf_counter() - start)
            seen |= worker_ids(model)
    finally:
        close = getattr(model, "close", None)  # absent before workers outlived learn()
        if close is not None:
            close()
    return {"seconds": seconds, "workers": len(seen), "updates": model._n_updates}


def report(backend: str, result: dict) -> None:
    seconds = result["seconds"]
    later = seconds[1:] or [float("nan")]
    workers = result["workers"] or "n/a"
    print(f"{backend:>10}  calls {len(seconds):4d}  first {seconds[0]:7.3f} s  later: mean {statistics.mean(later):7.3f} s, "
          f"median {statistics.median(later):7.3f} s, max {max(later):7.3f} s  total {sum(seconds):8.2f} s  "
          f"distinct workers {workers}  updates {result['updates']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["subprocess", "ray"], choices=["inline", "subprocess", "ray"])
    parser.add_argument("--calls", type=int, default=100, help="learn() calls per backend (>= 1)")
    parser.add_argument("--n-agents", type=int, default=2)
    parser.add_argument("--round-size", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=20)
    parser.add_argument("--ray-init", action="store_true",
                        help="start Ray here first (as a script that calls ray.init does), so the backend does not start "
                             "and shut down a runtime of its own")
    args = parser.parse_args()
    if args.calls < 1:
        parser.error(f"--calls: must be >= 1, got {args.calls}")
    if args.ray_init:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    import sb3_nigt

    print(f"sb3_nigt from {sb3_nigt.__file__}; {args.calls} calls of learn({args.round_size * args.horizon}), "
          f"n = {args.n_agents} agents, M = {args.round_size}, H = {args.horizon}, Pendulum-v1", flush=True)
    for backend in args.backends:
        report(backend, measure(backend, args.calls, args.n_agents, args.round_size, args.horizon))


if __name__ == "__main__":
    main()
