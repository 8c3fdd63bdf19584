"""Scale benchmark: the collector's own overhead with many simulated agents.

RennalaNIGT on Pendulum-v1 (horizon H = 20), ``compute_times="sqrt"`` (h_i = √i), M = 50, ``backend="inline"``,
simulated clock, n = 10,000 agents (and 100,000 with ``--big``). Each round counts only M = 50 gradients of
20 steps, whatever n, so everything beyond computing those units is the cost of simulating n agents.

For each n it measures, in one run:

- the model's construction time (the timing model builds h_i for every agent);
- for each planner (``--planners``: the collector's default, and the general event loop with the vectorized
  planner patched to decline), ``k`` rounds of ``Collector.collect`` on a collector built and started directly
  (``model._make_collector``, as ``estimate_gradient`` does: each round starts a fresh clock at 0 with fresh
  counters), after one untimed warm-up round that builds the environment. ``GradientWorker.run_unit`` is wrapped with a timer (monkeypatched
  on the class inside this script), so each round's wall time splits into the time computing the units and the
  rest, the *overhead*: (round time − unit compute time) / round time;
- the same split per collector phase (``plan_vectorized``, ``RoundPlanner.run``, ``Collector._await_all`` less the
  units, ``upload``, the rule's ``aggregate``, θ loading);
- ``estimate_gradient(n_rounds=k)`` end to end (collector construction, start and environment build included),
  with its own unit time, as a cross-check;
- a cProfile of one more round: the top functions by own time and the library functions by cumulative time.

Every figure printed is measured in this run.

Usage::

    .venv/bin/python benchmarks/scale.py                  # n = 10,000, both planners, 5 rounds, about 20 s
    .venv/bin/python benchmarks/scale.py --big            # also n = 100,000 (about 2.5 minutes)
    .venv/bin/python benchmarks/scale.py --planners default   # the collector's own choice only
    .venv/bin/python benchmarks/scale.py --agents 1000 10000 --rounds 3 --out runs/scale.md
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

ENV_ID = "Pendulum-v1"
SETTINGS = dict(compute_times="sqrt", round_size=50, horizon=20, backend="inline", seed=0, device="cpu")


class Timers:
    """Wall seconds and calls per label, filled by :func:`instrument` wrappers (nested calls are not subtracted)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


TIMERS = Timers()


def instrument() -> list[str]:
    """Wraps the work and the collector's phases with timers (class attributes, this process only).

    Returns the labels that could be wrapped (the collector's private phases may change; missing ones are skipped).
    """
    from sb3_nigt.clock import planner
    from sb3_nigt.clock import rounds as collector
    from sb3_nigt.core import aggregation
    from sb3_nigt.workers import rollout as estimator

    targets = [
        ("run_unit", estimator.GradientWorker, "run_unit"),
        ("set_params (θ load)", estimator.GradientWorker, "set_params"),
        ("plan_vectorized", planner, "plan_vectorized"),
        ("RoundPlanner.run", planner.RoundPlanner, "run"),
        ("_await_all", collector.Collector, "_await_all"),
        ("upload", planner, "upload"),
        ("rule.aggregate", aggregation.RennalaAggregation, "aggregate"),
    ]
    wrapped = []
    for label, owner, name in targets:
        original = vars(owner).get(name)
        if original is None:
            continue

        def timed(*args, __original=original, __label=label, **kwargs):
            start = time.perf_counter()
            try:
                return __original(*args, **kwargs)
            finally:
                TIMERS.seconds[__label] += time.perf_counter() - start
                TIMERS.calls[__label] += 1

        setattr(owner, name, timed)
        wrapped.append(label)
    return wrapped


@dataclass
class RoundTiming:
    wall: float
    units: float
    n_units: int
    steps: int
    contributors: int
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def overhead(self) -> float:
        return (self.wall - self.units) / self.wall if self.wall > 0 else float("nan")


@dataclass
class ScaleResult:
    n: int
    planner: str
    build_s: float
    warmup_s: float
    rounds: list[RoundTiming]
    end_to_end_s: float
    end_to_end_units_s: float
    profile_top: str
    profile_library: str


PLANNERS = ("default", "event-loop")


def measure(n: int, k: int, profile_lines: int, planner: str) -> ScaleResult:
    """``planner``: "default" (whatever the collector chooses) or "event-loop" (``planner.plan_vectorized``
    patched to decline, so the event engine plans every round, as before the vectorized planner)."""
    from sb3_nigt.clock import planner as planner_module

    wrapped = planner_module.plan_vectorized
    if planner == "event-loop":
        planner_module.plan_vectorized = lambda *args, **kwargs: None
    try:
        return _measure(n, k, profile_lines, planner)
    finally:
        planner_module.plan_vectorized = wrapped


def _measure(n: int, k: int, profile_lines: int, planner: str) -> ScaleResult:
    import numpy as np

    from sb3_nigt import RennalaNIGT
    from sb3_nigt.clock.exact import ZERO
    from sb3_nigt.clock.timing import TimeCounters

    start = time.perf_counter()
    model = RennalaNIGT("MlpPolicy", ENV_ID, n_agents=n, **SETTINGS)
    build_s = time.perf_counter() - start
    params = model.get_flat_params()

    collector = model._make_collector(None, TimeCounters.zeros(n))
    rounds: list[RoundTiming] = []
    try:
        start = time.perf_counter()
        collector.start()
        collector.collect(params, model._make_rule(model.round_size), 0, ZERO)  # builds the environment
        warmup_s = time.perf_counter() - start
        for r in range(1, k + 1):
            collector.counters = TimeCounters.zeros(n)  # as estimate_gradient: every round a fresh clock at 0
            rule = model._make_rule(model.round_size)
            TIMERS.reset()
            start = time.perf_counter()
            result = collector.collect(params, rule, r, ZERO)
            wall = time.perf_counter() - start
            phases = dict(TIMERS.seconds)
            rounds.append(RoundTiming(wall, phases.get("run_unit", 0.0), TIMERS.calls.get("run_unit", 0), result.n_steps,
                                      int(np.count_nonzero(result.counts)), phases))
        # One more round under cProfile (its timings are not used above: the profiler slows Python code down).
        collector.counters = TimeCounters.zeros(n)
        rule = model._make_rule(model.round_size)
        profiler = cProfile.Profile()
        profiler.enable()
        collector.collect(params, rule, k + 1, ZERO)
        profiler.disable()
    finally:
        collector.close()
    profile_top = _profile(profiler, "tottime", profile_lines)
    profile_library = _profile(profiler, "cumulative", profile_lines, "sb3_nigt")

    TIMERS.reset()
    start = time.perf_counter()
    model.estimate_gradient(n_rounds=k)
    end_to_end_s = time.perf_counter() - start
    end_to_end_units_s = TIMERS.seconds.get("run_unit", 0.0)
    used = "event engine (RoundPlanner.run)" if sum(r.phases.get("RoundPlanner.run", 0.0) for r in rounds) > 0 else "vectorized (plan_vectorized)"
    return ScaleResult(n, f"{planner}: {used}", build_s, warmup_s, rounds, end_to_end_s, end_to_end_units_s, profile_top, profile_library)


def _profile(profiler: cProfile.Profile, sort: str, lines: int, restrict: str = "") -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(sort)
    if restrict:
        # strip_dirs drops the package path: keep the library's own modules by file name.
        from sb3_nigt import common

        names = {f for f in os.listdir(os.path.dirname(common.__file__)) if f.endswith(".py")}
        names |= {f for f in os.listdir(os.path.dirname(os.path.dirname(common.__file__))) if f.endswith(".py")}
        keep = "|".join(sorted(n.replace(".", r"\.") for n in names - {"__init__.py"}))
        stats.print_stats(f"^({keep}):", lines)
    else:
        stats.print_stats(lines)
    text = out.getvalue()
    # Keep the table only (from the header line on).
    head = text.find("   ncalls")
    return text[head:].rstrip() if head >= 0 else text.rstrip()


# ------------------------------------------------------------------------------------------------- report
def render(results: list[ScaleResult], wrapped: list[str], load: tuple[tuple, tuple], total_s: float, k: int) -> str:
    import gymnasium
    import numpy
    import torch

    import sb3_nigt
    from sb3_nigt.workers.rollout import CHUNK_SIZE

    lines = [
        "## Collector overhead with many simulated agents",
        "",
        f"- os.cpu_count(): {os.cpu_count()}; platform: {platform.platform()}",
        f"- python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}, "
        f"gymnasium {gymnasium.__version__}, sb3_nigt {sb3_nigt.__version__} (CHUNK_SIZE {CHUNK_SIZE})",
        f"- RennalaNIGT on {ENV_ID}: {', '.join(f'{key}={value!r}' for key, value in SETTINGS.items())}, simulated clock; "
        f"{k} timed rounds per n after one warm-up round, each from a fresh clock at 0",
        f"- instrumented: {', '.join(wrapped)}",
        f"- load average (1/5/15 min) at start: {'/'.join(f'{x:.2f}' for x in load[0])}, at end: {'/'.join(f'{x:.2f}' for x in load[1])}",
        f"- whole benchmark wall time: {total_s:.1f} s",
        "",
        "| n agents | planner | model build s | rounds | wall s / round | units s / round | **overhead** | overhead per round s | "
        "units / round | env steps / round | contributing agents | overhead per round, min–max | estimate_gradient(n_rounds) s (units s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        wall = sum(r.wall for r in res.rounds)
        units = sum(r.units for r in res.rounds)
        m = len(res.rounds)
        fractions = [r.overhead for r in res.rounds]
        lines.append(
            f"| {res.n:,} | {res.planner} | {res.build_s:.2f} | {m} | {wall / m:.3f} | {units / m:.3f} | **{100 * (wall - units) / wall:.1f}%** | "
            f"{(wall - units) / m:.3f} | {sum(r.n_units for r in res.rounds) / m:.1f} | {sum(r.steps for r in res.rounds) / m:.0f} | "
            f"{sum(r.contributors for r in res.rounds) / m:.1f} | {100 * min(fractions):.1f}–{100 * max(fractions):.1f}% | "
            f"{res.end_to_end_s:.2f} ({res.end_to_end_units_s:.2f}) |"
        )
    lines += ["", "Where a round's time goes (seconds per round, mean over the timed rounds; phases nest: `_await_all` "
              "includes `run_unit` and `set_params`, so its own share is given less those):", ""]
    labels = [label for label in ("plan_vectorized", "RoundPlanner.run", "_await_all", "run_unit", "set_params (θ load)", "upload", "rule.aggregate") if label in wrapped]
    lines.append("| n agents | planner | round wall | " + " | ".join(labels) + " | `_await_all` less units and θ load | rest of `collect` |")
    lines.append("|---:|---|" + "---:|" * (len(labels) + 3))
    for res in results:
        m = len(res.rounds)
        mean = {label: sum(r.phases.get(label, 0.0) for r in res.rounds) / m for label in labels}
        wall = sum(r.wall for r in res.rounds) / m
        own_compute = mean.get("_await_all", 0.0) - mean.get("run_unit", 0.0) - mean.get("set_params (θ load)", 0.0)
        rest = wall - sum(mean.get(label, 0.0) for label in ("plan_vectorized", "RoundPlanner.run", "_await_all", "upload", "rule.aggregate"))
        cells = " | ".join(f"{mean[label]:.4f} ({100 * mean[label] / wall:.0f}%)" for label in labels)
        lines.append(f"| {res.n:,} | {res.planner} | {wall:.4f} | {cells} | {own_compute:.4f} ({100 * own_compute / wall:.0f}%) | {rest:.4f} ({100 * rest / wall:.0f}%) |")
    for res in results:
        lines += [
            "",
            f"### cProfile of one round, n = {res.n:,}, planner {res.planner} (top functions by own time)",
            "",
            "```",
            res.profile_top,
            "```",
            "",
            f"Library functions by cumulative time (n = {res.n:,}, planner {res.planner}):",
            "",
            "```",
            res.profile_library,
            "```",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[10_000], help="numbers of agents to measure (default 10000)")
    parser.add_argument("--big", action="store_true", help="also measure n = 100,000")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per n (default 5)")
    parser.add_argument(
        "--planners", type=str, default=",".join(PLANNERS),
        help="comma list of planners to measure: 'default' (the collector's choice) and/or 'event-loop' "
        "(the vectorized planner disabled) (default: both)",
    )
    parser.add_argument("--profile-lines", type=int, default=10, help="rows of each cProfile table (default 10)")
    parser.add_argument("--out", type=str, default=None, help="also write the Markdown report to this file")
    args = parser.parse_args()
    agents = list(dict.fromkeys(args.agents + ([100_000] if args.big else [])))
    planners = [p.strip() for p in args.planners.split(",") if p.strip()]
    if args.rounds < 1 or any(n < 1 for n in agents):
        parser.error("--rounds and --agents must be >= 1")
    if not planners or any(p not in PLANNERS for p in planners):
        parser.error(f"--planners: a comma list of {', '.join(PLANNERS)}")

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    print(f"load average at start: {'/'.join(f'{x:.2f}' for x in load_start)}", flush=True)
    wrapped = instrument()
    results = []
    for n, planner in [(n, planner) for n in agents for planner in planners]:
        print(f"measuring: n = {n:,}, planner {planner} ...", flush=True)
        res = measure(n, args.rounds, args.profile_lines, planner)
        wall = sum(r.wall for r in res.rounds)
        units = sum(r.units for r in res.rounds)
        print(f"  {res.planner}; build {res.build_s:.2f} s, warm-up round {res.warmup_s:.2f} s; {len(res.rounds)} rounds: {wall / len(res.rounds):.3f} s/round, "
              f"units {units / len(res.rounds):.3f} s/round, overhead {100 * (wall - units) / wall:.1f}%", flush=True)
        results.append(res)
    report = render(results, wrapped, (load_start, os.getloadavg()), time.perf_counter() - t0, args.rounds)
    print()
    print(report, end="")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(report)
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
