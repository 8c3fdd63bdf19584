"""Does the simulated clock predict a real run? Each algorithm runs on the real clock (subprocess backend) with
``record_trace=True``; its trace becomes ``TraceTimes`` (mode "replay") and the same model (same seed, same
settings) runs on the simulated clock with those times. Printed per algorithm:

- ``round err``: the median over rounds of |simulated − real| / real duration of a round, in %
  (AFedPG, which has no rounds: of a sweep of n consecutive server updates);
- ``counts eq``: the % of rounds where M_i of every agent is the same in both runs (AFedPG: the number of updates
  of every agent in the sweep);
- ``total err``: |simulated − real| / real of the clock's time at the end of training, in %;
- ``learn s`` and ``outside s``: the real ``learn()`` call in wall seconds, and the part of it the clock does
  not count (the main process's own work between rounds: the update, logging, publishing θ; and start-up).

Two settings:

- ``emulated``: n = 4 agents with lognormal per-gradient times of means 25–160 ms (draws from about 10 to 300 ms)
  and communication times of 10–100 ms, emulated by sleeping (``time_scale=1``);
- ``natural``: no emulated time at all: MuJoCo Hopper agents with different physics substeps per step
  (``frame_skip`` 2, 8, 24, 8) and agent 3 pinned to CPU 1 beside a busy process spinning there. (A
  ``time_scale`` of 1e-9 s per second only keeps agent i on worker i, so that agent 3's pin holds.)

Targets (2-core machine): median round error <= 5 %, total within 5 %, counts equal in >= 90 % of rounds with
emulated times. Run it from the checkout (about three minutes; ``--quick`` a smoke test of a few seconds per
run)::

    python benchmarks/sim_vs_real.py [--quick] [--settings emulated natural] [--plot docs/img/calibration.png]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any, Optional

ALGORITHMS = ("rennala", "malenia", "sync", "afedpg")
N_AGENTS = 4
EMULATED_COMPUTE = dict(distribution="lognormal", mean=[0.025, 0.05, 0.1, 0.16], sigma=0.3)  # seconds per gradient
EMULATED_COMMUNICATION = [0.01, 0.03, 0.06, 0.1]  # seconds per transfer
FRAME_SKIPS = (2, 8, 24, 8)
BUSY_AGENT, BUSY_CPU = 3, 1
#: M (Rennala) and S (Malenia): Rennala's M is large enough that the slowest agent counts now and then, so that
#: the trace holds a measured gradient of every agent.
ROUND_SIZE = {"rennala": 24, "malenia": 8}


class PinnedHopper:
    """Agent environment of the natural setting: Hopper with ``frame_skip`` physics substeps per step, full-length
    episodes; in a worker process (not the main one) with ``cpu`` set, the process is pinned to that CPU."""

    def __init__(self, frame_skip: int, cpu: Optional[int] = None):
        self.frame_skip, self.cpu = frame_skip, cpu

    def __call__(self) -> Any:
        import gymnasium as gym

        if self.cpu is not None and multiprocessing.parent_process() is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {self.cpu % (os.cpu_count() or 1)})
        return gym.make("Hopper-v5", frame_skip=self.frame_skip, terminate_when_unhealthy=False)


def settings(name: str, rounds: int) -> tuple[Any, dict, int, int]:
    """(env, the algorithms' shared keyword arguments, horizon, rounds) of a setting."""
    if name == "emulated":
        from sb3_nigt import RandomTimes

        return "Pendulum-v1", dict(compute_times=RandomTimes(**EMULATED_COMPUTE), communication_times=EMULATED_COMMUNICATION,
                                   time_scale=1.0), 50, rounds
    envs = [PinnedHopper(skip, BUSY_CPU if agent == BUSY_AGENT else None) for agent, skip in enumerate(FRAME_SKIPS)]
    return envs, dict(time_scale=1e-9), 100, rounds


def build(name: str, env: Any, horizon: int, seed: int, **kwargs: Any) -> Any:
    from sb3_nigt.compare import ALGORITHMS as CLASSES

    extra = {"round_size": ROUND_SIZE[name]} if name in ROUND_SIZE else {"initial_round_size": 8}
    return CLASSES[name]("MlpPolicy", env, n_agents=N_AGENTS, horizon=horizon, seed=seed, learning_rate=2**-6, eta=0.1,
                         record_trace=True, **extra, **kwargs)


def budget(name: str, horizon: int, rounds: int) -> int:
    """Environment steps for about ``rounds`` rounds (AFedPG: ``rounds`` sweeps of n updates)."""
    per_round = ROUND_SIZE.get(name, N_AGENTS)
    return rounds * per_round * horizon


def rounds_of(trace: list, name: str) -> list[tuple[float, float, dict[int, int]]]:
    """(start, end, {agent: M_i}) of every round; AFedPG: of every sweep of n consecutive updates."""
    if name == "afedpg":
        arrivals = sorted((float(e.end), e.agent) for e in trace if e.kind == "upload")
        out, begin = [], 0.0
        for first in range(0, len(arrivals) - N_AGENTS + 1, N_AGENTS):
            sweep = arrivals[first:first + N_AGENTS]
            counts: dict[int, int] = defaultdict(int)
            for _, agent in sweep:
                counts[agent] += 1
            out.append((begin, sweep[-1][0], dict(counts)))
            begin = sweep[-1][0]
        return out
    by_round: dict[int, list] = defaultdict(list)
    for event in trace:
        by_round[event.round].append(event)
    out = []
    for _, events in sorted(by_round.items()):
        counts = defaultdict(int)
        for e in events:
            if e.kind == "compute" and e.status == "counted":
                counts[e.agent] += 1
        out.append((min(float(e.start) for e in events), max(float(e.end) for e in events if e.kind == "upload"), dict(counts)))
    return out


def compare_runs(real: list, sim: list, name: str) -> tuple[int, float, float]:
    """(rounds compared, median |round error| %, counts equal %) over the rounds both runs have."""
    a, b = rounds_of(real, name), rounds_of(sim, name)
    n = min(len(a), len(b))
    errors = [abs((b[k][1] - b[k][0]) - (a[k][1] - a[k][0])) / (a[k][1] - a[k][0]) * 100 for k in range(n)]
    equal = [a[k][2] == b[k][2] for k in range(n)]
    return n, statistics.median(errors), 100.0 * sum(equal) / n


def real_run(name: str, setting: str, rounds: int, seed: int) -> tuple[Any, float]:
    """A trained real-clock model of the setting, and its ``learn()`` in wall seconds."""
    env, times, horizon, rounds = settings(setting, rounds)
    real = build(name, env, horizon, seed, clock="real", backend="subprocess", n_workers=N_AGENTS, **times)
    begin = time.perf_counter()
    real.learn(budget(name, horizon, rounds))
    learn_seconds = time.perf_counter() - begin
    real.close()
    return real, learn_seconds


def run_pair(name: str, setting: str, rounds: int, seed: int) -> dict:
    """The real run, its replay, and the measures."""
    from sb3_nigt import TraceTimes

    env, _, horizon, rounds = settings(setting, rounds)
    steps = budget(name, horizon, rounds)
    real, learn_seconds = real_run(name, setting, rounds, seed)
    recorded = TraceTimes.from_trace(real.trace)
    sim = build(name, env, horizon, seed, compute_times=recorded.compute, communication_times=recorded.communication)
    sim.learn(steps)
    compared, round_error, counts_equal = compare_runs(real.trace, sim.trace, name)
    total_real, total_sim = real.simulated_time, sim.simulated_time
    return {"setting": setting, "algorithm": name, "rounds": compared, "round_err": round_error, "counts_eq": counts_equal,
            "real_s": total_real, "sim_s": total_sim, "total_err": abs(total_sim - total_real) / total_real * 100,
            "learn_s": learn_seconds, "outside_s": learn_seconds - total_real, "real": real.trace, "sim": sim.trace}


def next_run(row: dict, rounds: int, seed: int) -> dict:
    """A prediction rather than a replay: a second real run (seed + 1: other trajectories and, emulated, other
    draws) against the simulated clock with the first run's times in mode "resample" (seed + 1). Rounds are not
    paired: compared are the mean round duration and the total."""
    from sb3_nigt import TraceTimes

    name, setting = row["algorithm"], row["setting"]
    env, _, horizon, rounds = settings(setting, rounds)
    real, _ = real_run(name, setting, rounds, seed + 1)
    drawn = TraceTimes.from_trace(row["real"], mode="resample", seed=seed + 1)
    sim = build(name, env, horizon, seed + 1, compute_times=drawn.compute, communication_times=drawn.communication)
    sim.learn(budget(name, horizon, rounds))
    mean = [statistics.fmean(b - a for a, b, _ in rounds_of(t.trace, name)) for t in (real, sim)]
    return {**row, "next_round_err": abs(mean[1] - mean[0]) / mean[0] * 100, "next_real_s": real.simulated_time,
            "next_sim_s": sim.simulated_time,
            "next_total_err": abs(sim.simulated_time - real.simulated_time) / real.simulated_time * 100}


def busy_process() -> subprocess.Popen:
    """A process spinning on CPU ``BUSY_CPU`` (the natural setting's shared core)."""
    code = f"import os\nos.sched_setaffinity(0, {{{BUSY_CPU}}})\nwhile True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def print_table(rows: list[dict]) -> None:
    print(f"{'setting':9} {'algorithm':9} {'rounds':>6} {'round err %':>11} {'counts eq %':>11} {'real s':>7} "
          f"{'sim s':>7} {'total err %':>11} {'learn s':>7} {'outside s':>9}")
    for r in rows:
        print(f"{r['setting']:9} {r['algorithm']:9} {r['rounds']:6d} {r['round_err']:11.3f} {r['counts_eq']:11.1f} "
              f"{r['real_s']:7.2f} {r['sim_s']:7.2f} {r['total_err']:11.3f} {r['learn_s']:7.2f} {r['outside_s']:9.2f}")


def print_next(rows: list[dict]) -> None:
    print(f"{'setting':9} {'algorithm':9} {'mean round err %':>16} {'real s':>7} {'predicted s':>11} {'total err %':>11}")
    for r in rows:
        print(f"{r['setting']:9} {r['algorithm']:9} {r['next_round_err']:16.2f} {r['next_real_s']:7.2f} "
              f"{r['next_sim_s']:11.2f} {r['next_total_err']:11.2f}")


def plot(row: dict, path: str, rounds: int = 3) -> None:
    """The real and the replayed timeline of the same first rounds, one above the other, on one time axis."""
    from sb3_nigt.timeline import plot_timelines

    plot_timelines({f"real ({row['algorithm']}, {row['setting']})": row["real"], "replayed on the simulated clock": row["sim"]},
                   path, rounds=(0, rounds - 1), sharex=True)
    print(f"timeline: {path}")


def main(argv: Optional[list[str]] = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds per run (a smoke test)")
    parser.add_argument("--rounds", type=int, default=12, help="rounds per run (AFedPG: sweeps of n updates)")
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--settings", nargs="+", default=["emulated", "natural"], choices=["emulated", "natural"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, metavar="PNG", help="save the first setting's Rennala real vs replayed timeline")
    parser.add_argument("--next-run", action="store_true",
                        help="also predict a second real run (seed + 1) from the first one's times (mode resample)")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    rows = []
    for setting in args.settings:
        busy = busy_process() if setting == "natural" else None
        try:
            for name in args.algorithms:
                row = run_pair(name, setting, rounds, args.seed)
                rows.append(next_run(row, rounds, args.seed) if args.next_run else row)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    print(f"{os.cpu_count()} CPUs, {N_AGENTS} agents, subprocess backend, seed {args.seed}, {rounds} rounds per run")
    print_table(rows)
    if args.next_run:
        print("\nthe next run (seed + 1) predicted from this run's times (resample):")
        print_next(rows)
    if args.plot:
        plot(rows[0], args.plot)
    return rows


if __name__ == "__main__":
    main()
