"""Scaling benchmark: environment steps per second against the number of workers, per backend, and the overhead of
each round (docs/cluster.md).

RennalaNIGT on Hopper-v4 (``--env``), n agents with equal compute times (``--agents``, default 16), M = 2n
gradients per round, horizon H = 200, simulated clock, for each backend of ``--backends`` and each number of
workers of ``--workers``:

- one round of warm-up (start-up, environments built), then ``--rounds`` timed rounds;
- **throughput**: environment steps of the timed rounds / their wall time;
- **speedup**: throughput / the same backend's throughput with the fewest workers measured, in this run;
- **overhead per round**: the round's wall time minus the ideal parallel time Σ(unit compute seconds) / w, where
  the unit compute seconds are the ``UnitResult.seconds`` each worker measured itself and w = min(workers,
  units) (× ranks for torch_distributed, whose rank 0 receives every rank's units); in milliseconds and as a
  share of the round. It is everything that is not computing gradients in
  parallel: the collector, θ's broadcast, the results' transfer, idle workers at the end of a round
  (load imbalance), the NIGT update.

The backend is wrapped in a thin proxy that records the rounds (each broadcast ``publish``) and the units'
``seconds``; nothing else is changed. Rounds are the same work on every backend (the simulated clock and the job
seeds fix them), so the rows compare the same computation.

``torch_distributed`` runs ``w`` ranks (``torch.multiprocessing.spawn``, gloo on loopback), each rank with the
inline local backend; its figures are rank 0's.

Usage::

    .venv/bin/python benchmarks/scaling.py                                # inline, subprocess, ray; 1, 2 workers
    .venv/bin/python benchmarks/scaling.py --workers 1 2 4 8 16 --agents 32  # on a 16-core machine
    .venv/bin/python benchmarks/scaling.py --backends subprocess torch_distributed --out runs/scaling.md

Every figure printed is measured in this run. Compare ratios within one run: machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import socket
import sys
import time
import warnings
from typing import Any, Optional

import numpy as np


class Recorder:
    """A :class:`~sb3_nigt.backends.contract.Backend` proxy: delegates everything, records rounds and unit seconds."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.round_starts: list[float] = []
        self.unit_seconds: list[float] = []  # per round
        self.units: list[int] = []

    @property
    def n_workers(self) -> int:
        return self.inner.n_workers

    def bind(self, worker_args: dict, options: Any) -> None:
        self.inner.bind(worker_args, options)

    def start(self) -> None:
        self.inner.start()

    def publish(self, params: np.ndarray, obs_norm: Any, slot: int = -1) -> None:
        if slot == -1:
            self.round_starts.append(time.perf_counter())
            self.unit_seconds.append(0.0)
            self.units.append(0)
        self.inner.publish(params, obs_norm, slot)

    def submit(self, unit: Any) -> None:
        self.inner.submit(unit)

    def start_run(self, run: Any) -> None:
        self.inner.start_run(run)

    def flush(self, epoch: int, agent: int, count: int, upload_delay: float = 0.0) -> None:
        self.inner.flush(epoch, agent, count, upload_delay)

    def wait(self, timeout: Optional[float] = None) -> list:
        from sb3_nigt.workers.rollout import UnitResult

        events = self.inner.wait(timeout)
        for event in events:
            if isinstance(event, UnitResult) and self.unit_seconds:
                self.unit_seconds[-1] += event.seconds
                self.units[-1] += 1
        return events

    def cancel(self, epoch: int) -> None:
        self.inner.cancel(epoch)

    def close(self) -> None:
        self.inner.close()


def build_inner(backend: str) -> Any:
    from sb3_nigt.backends.registry import BACKENDS

    return BACKENDS[backend]()


def measure(env_id: str, backend: str, workers: int, n_agents: int, horizon: int, rounds: int, seed: int,
            inner: Any = None) -> dict[str, float]:
    """One row: learn ``rounds`` + 1 rounds and time the last ``rounds``."""
    import gymnasium as gym
    from stable_baselines3.common.callbacks import BaseCallback

    from sb3_nigt import RennalaNIGT

    class StopAfter(BaseCallback):
        def __init__(self, n: int):
            super().__init__()
            self.n, self.ends, self.steps = n, [], []

        def _on_step(self) -> bool:
            return len(self.ends) < self.n  # stops in the round after the last timed one, before its update

        def _on_rollout_end(self) -> None:
            self.ends.append(time.perf_counter())
            self.steps.append(self.model.num_timesteps)

    recorder = Recorder(inner if inner is not None else build_inner(backend))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gym.logger.min_level = 40
        model = RennalaNIGT("MlpPolicy", env_id, n_agents=n_agents, compute_times="equal", round_size=2 * n_agents,
                            horizon=horizon, backend=recorder, n_workers=workers, seed=seed, worker_timeout=600)
        callback = StopAfter(rounds + 1)
        model.learn(10**9, callback=callback)  # the callback ends it
    ends, steps, starts = callback.ends, callback.steps, recorder.round_starts
    # torch_distributed: every rank's units come back to every rank, computed by `ranks` processes at once
    ranks = int(os.environ.get("WORLD_SIZE", "1")) if backend == "torch_distributed" else 1
    timed = range(1, min(len(ends), rounds + 1))
    if not timed:
        raise RuntimeError("no timed round: raise --rounds")
    wall = ends[timed[-1]] - ends[0]
    n_steps = steps[timed[-1]] - steps[0]
    overheads = []
    for r in timed:
        round_wall = ends[r] - starts[r]
        parallel = recorder.unit_seconds[r] / max(1, min(workers * ranks, recorder.units[r]))
        overheads.append((round_wall - parallel, round_wall))
    overhead_ms = 1000 * float(np.mean([o for o, _ in overheads]))
    share = float(np.mean([o / w for o, w in overheads]))
    return dict(steps_per_second=n_steps / wall, overhead_ms=overhead_ms, overhead_share=share,
                round_ms=1000 * wall / len(timed), steps_per_round=n_steps / len(timed), rounds=len(timed))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_rank(rank: int, world: int, port: int, args: tuple, queue: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    row = measure(*args)
    if rank == 0:
        queue.put(row)


def measure_distributed(env_id: str, workers: int, n_agents: int, horizon: int, rounds: int, seed: int) -> dict:
    import torch.multiprocessing as tmp

    context = tmp.get_context("spawn")
    queue = context.SimpleQueue()
    args = (env_id, "torch_distributed", 1, n_agents, horizon, rounds, seed)
    tmp.start_processes(_distributed_rank, args=(workers, free_port(), args, queue), nprocs=workers, join=True,
                        start_method="spawn")
    row = queue.get()
    row["ranks"] = workers
    return row


def available(backend: str) -> Optional[str]:
    """None if ``backend`` can run here, else why not."""
    if backend == "ray" and importlib.util.find_spec("ray") is None:
        return 'ray is not installed (pip install "sb3-nigt[ray]")'
    from sb3_nigt.backends.registry import BACKENDS

    if backend not in BACKENDS:
        return f"not a registered backend ({sorted(BACKENDS)})"
    return None


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="Hopper-v4")
    parser.add_argument("--backends", nargs="+", default=["inline", "subprocess", "ray", "torch_distributed"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--agents", type=int, default=16)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)

    lines = [f"# scaling.py: {' '.join(sys.argv[1:]) or '(defaults)'}", "",
             f"{platform.node()}, {os.cpu_count()} CPUs, python {platform.python_version()}; {args.env}, "
             f"n = {args.agents} agents (equal times), M = {2 * args.agents}, H = {args.horizon}, "
             f"{args.rounds} timed rounds after one warm-up round, simulated clock", "",
             "| backend | workers | env steps / s | speedup | round (ms) | steps / round | overhead / round (ms) | overhead share |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for backend in args.backends:
        why = available(backend)
        if why:
            line = f"| {backend} | – | skipped: {why} | | | | | |"
            print(line, flush=True)
            lines.append(line)
            continue
        base: Optional[float] = None
        for workers in args.workers:
            if backend == "inline" and workers != 1:
                continue  # the inline backend has one worker: the main process
            if backend == "torch_distributed":
                row = measure_distributed(args.env, workers, args.agents, args.horizon, args.rounds, args.seed)
            else:
                row = measure(args.env, backend, workers, args.agents, args.horizon, args.rounds, args.seed)
            base = base or row["steps_per_second"]
            line = (f"| {backend} | {workers} | {row['steps_per_second']:.0f} | {row['steps_per_second'] / base:.2f}× | "
                    f"{row['round_ms']:.0f} | {row['steps_per_round']:.0f} | {row['overhead_ms']:.1f} | "
                    f"{100 * row['overhead_share']:.1f}% |")
            print(line, flush=True)
            lines.append(line)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
