"""Does the simulated clock predict a real run? Each algorithm runs on the real clock (subprocess backend) with
``record_trace=True``; its trace becomes ``TraceTimes`` (mode "replay") and the same model (same seed, same
settings) runs on the simulated clock with those times. Printed per algorithm:

- ``round err``: the median over rounds of |simulated − real| / real duration of a round, in %
  (AFedPG, which has no rounds: of a sweep of n consecutive server updates);
- ``counts eq``: the % of rounds where M_i of every agent is the same in both runs (AFedPG: the number of updates
  of every agent in the sweep);
- ``total err``: |simulated − real| / real of the clock's time at the end of training, in %;
- ``learn s`` and ``outside s``: the real ``learn()`` call in wall seconds, and the part of it the clock does
  not count (the main process's own work between rounds: the update, logging, publishing θ; and start-up);
- ``jitter ms``: median/max over the run of how far the main process's view of a gradient's end strays from its
  worker's (the reports' latency), which the replay does not see;
- ``arrivals: err %, eq %``: the round error and counts agreement of a second replay whose gradients last what
  the server saw (``TraceTimes.from_trace(trace, gradients="arrivals")``: report latency included);
- the rounds whose counts differ (first replay), each with how close it came to a tie, in ms (the smallest gap, in either run,
  between the gradient that ended the round and another agent's counted one; AFedPG: between two arrivals).

With ``--next-run`` it also predicts a second real run (seed + 1) from the first run's times (mode "resample").
Two settings:

- ``emulated``: n = 4 agents with lognormal per-gradient times of means 25–160 ms (draws from about 15 to 300 ms)
  and communication times of 10–100 ms, emulated by sleeping (``time_scale=1``);
- ``natural``: no emulated time at all: MuJoCo Hopper agents with different physics substeps per step
  (``frame_skip`` 2, 8, 24, 8) and agent 3 pinned to CPU 1 beside a busy process spinning there. (A
  ``time_scale`` of 1e-9 s per second only keeps agent i on worker i, so that agent 3's pin holds.)

Targets (2-core machine): median round error <= 5 %, total within 5 %, counts equal in >= 90 % of rounds with
emulated times. Run it from the checkout (about three minutes; ``--quick`` a smoke test of a few seconds per
run)::

    python benchmarks/sim_vs_real.py [--quick] [--next-run] [--settings emulated natural] [--plot docs/img/calibration_timeline.png]
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
    """Environment steps: AFedPG, ``rounds`` sweeps of n updates; the others, more than ``rounds`` rounds need (the
    callback of :func:`learn` stops them)."""
    return rounds * N_AGENTS * horizon if name == "afedpg" else 10**7


def learn(model: Any, name: str, horizon: int, rounds: int) -> None:
    """Train for ``rounds`` aggregation rounds (AFedPG: ``rounds`` sweeps of n updates), the same on both clocks."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Rounds(BaseCallback):
        def _on_step(self) -> bool:
            return name == "afedpg" or self.model.n_rounds < rounds

    model.learn(budget(name, horizon, rounds), callback=Rounds())


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


def compare_runs(real: list, sim: list, name: str) -> tuple[int, float, float, list[tuple[int, float]]]:
    """(rounds compared, median |round error| %, counts equal %, (round, tie margin) of each round whose counts
    differ) over the rounds both runs have."""
    a, b = rounds_of(real, name), rounds_of(sim, name)
    n = min(len(a), len(b))
    errors = [abs((b[k][1] - b[k][0]) - (a[k][1] - a[k][0])) / (a[k][1] - a[k][0]) * 100 for k in range(n)]
    equal = [a[k][2] == b[k][2] for k in range(n)]
    margins = [(k, tie_margin(real, sim, k, name)) for k in range(n) if not equal[k]]
    return n, statistics.median(errors), 100.0 * sum(equal) / n, margins


def report_jitter(real: list) -> tuple[float, float]:
    """(median, max) in ms over the run of |(arrival_k − arrival_{k−1}) − duration_k| for an agent's consecutive
    counted gradients: how far the main process's view of a gradient's end strays from its worker's (the reports'
    latency: pipes and scheduling). The replay sees only the worker's."""
    by_agent: dict[tuple[int, int], list] = defaultdict(list)
    for e in real:
        if e.kind == "compute" and e.status == "counted" and e.measured is not None:
            by_agent[(e.round, e.agent)].append(e)
    gaps = [abs((float(b.end) - float(a.end)) - b.measured) * 1000 for events in by_agent.values()
            for a, b in zip(sorted(events, key=lambda e: e.index), sorted(events, key=lambda e: e.index)[1:])]
    return (statistics.median(gaps), max(gaps)) if gaps else (0.0, 0.0)


def tie_margin(real: list, sim: list, round_index: int, name: str) -> float:
    """How close round ``round_index`` came to a tie, in ms: the smallest gap, in either run, between the gradient
    that ended the round and another agent's counted gradient (AFedPG: between consecutive arrivals of the sweep)."""
    if name == "afedpg":
        ends = sorted(float(e.end) for e in real if e.kind == "upload")[round_index * N_AGENTS:(round_index + 1) * N_AGENTS + 1]
        return min(b - a for a, b in zip(ends, ends[1:])) * 1000
    gaps = []
    for trace in (real, sim):
        counted = [e for e in trace if e.round == round_index and e.kind == "compute" and e.status == "counted"]
        last = max(counted, key=lambda e: float(e.end))
        gaps += [float(last.end) - float(e.end) for e in counted if e.agent != last.agent]
    return min(gaps) * 1000


def real_run(name: str, setting: str, rounds: int, seed: int) -> tuple[Any, float]:
    """A trained real-clock model of the setting, and its ``learn()`` in wall seconds."""
    env, times, horizon, rounds = settings(setting, rounds)
    real = build(name, env, horizon, seed, clock="real", backend="subprocess", n_workers=N_AGENTS, **times)
    begin = time.perf_counter()
    learn(real, name, horizon, rounds)
    learn_seconds = time.perf_counter() - begin
    real.close()
    return real, learn_seconds


def run_pair(name: str, setting: str, rounds: int, seed: int) -> dict:
    """The real run, its replay, and the measures."""
    from sb3_nigt import TraceTimes

    env, _, horizon, rounds = settings(setting, rounds)
    real, learn_seconds = real_run(name, setting, rounds, seed)
    recorded = TraceTimes.from_trace(real.trace)
    sim = build(name, env, horizon, seed, compute_times=recorded.compute, communication_times=recorded.communication)
    learn(sim, name, horizon, rounds)
    compared, round_error, counts_equal, margins = compare_runs(real.trace, sim.trace, name)
    spaced = TraceTimes.from_trace(real.trace, gradients="arrivals")  # the server's view: report latency included
    server = build(name, env, horizon, seed, compute_times=spaced.compute, communication_times=spaced.communication)
    learn(server, name, horizon, rounds)
    _, server_error, server_equal, _ = compare_runs(real.trace, server.trace, name)
    total_real, total_sim = real.simulated_time, sim.simulated_time
    return {"setting": setting, "algorithm": name, "rounds": compared, "round_err": round_error, "counts_eq": counts_equal,
            "real_s": total_real, "sim_s": total_sim, "total_err": abs(total_sim - total_real) / total_real * 100,
            "learn_s": learn_seconds, "outside_s": learn_seconds - total_real, "real": real.trace, "sim": sim.trace,
            "ties": margins, "jitter": report_jitter(real.trace), "arrivals": (server_error, server_equal)}


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
    learn(sim, name, horizon, rounds)
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
          f"{'sim s':>7} {'total err %':>11} {'learn s':>7} {'outside s':>9} {'jitter ms':>11} {'arrivals: err %, eq %':>21}"
          f"  rounds whose counts differ: tie ms")
    for r in rows:
        ties = " ".join(f"r{k}: {t:.1f}" for k, t in r["ties"]) or "-"
        print(f"{r['setting']:9} {r['algorithm']:9} {r['rounds']:6d} {r['round_err']:11.3f} {r['counts_eq']:11.1f} "
              f"{r['real_s']:7.2f} {r['sim_s']:7.2f} {r['total_err']:11.3f} {r['learn_s']:7.2f} {r['outside_s']:9.2f} "
              f"{r['jitter'][0]:5.1f}/{r['jitter'][1]:5.1f} {r['arrivals'][0]:13.3f} {r['arrivals'][1]:7.1f}  {ties}")


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
    load = os.getloadavg()
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
    print(f"{os.cpu_count()} CPUs, {N_AGENTS} agents, subprocess backend, seed {args.seed}, {rounds} rounds per run; "
          f"load average (1, 5, 15 min) {' '.join(f'{x:.1f}' for x in load)} at the start, "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")
    print_table(rows)
    if args.next_run:
        print("\nthe next run (seed + 1) predicted from this run's times (resample):")
        print_next(rows)
    if args.plot:
        plot(rows[0], args.plot)
    return rows


if __name__ == "__main__":
    main()
