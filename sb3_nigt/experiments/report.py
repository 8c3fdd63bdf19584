"""An experiment's outputs: a tidy CSV, the paper-style plot, Markdown tables with bootstrap intervals, a verdict."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sb3_nigt.experiments.registry import LABELS, Experiment, format_alpha

Curve = list[tuple[float, int, int, float]]  # (simulated seconds, env steps, communications, mean return) per round
RESULT_COLUMNS = ["experiment", "algorithm", "n_agents", "alpha", "seed", "simulated_seconds", "env_steps",
                  "communications", "mean_return"]
BOOTSTRAP_SAMPLES = 2000
#: "alike" means a ratio inside these bounds.
ALIKE = (2 / 3, 3 / 2)


def first_reach(curve: Curve, threshold: float) -> float:
    """Simulated seconds of the first round whose return is >= ``threshold``; inf if never."""
    for seconds, _, _, value in curve:
        if value >= threshold:
            return seconds
    return math.inf


def area_per_second(curve: Curve, seconds: float) -> float:
    """(1/T) ∫_0^T return dt with the return held from one round's end to the next (the first round's return
    before it), T = ``seconds``: the area under the curve, per simulated second."""
    if not curve:
        return math.nan
    times = [0.0] + [r[0] for r in curve[1:]] + [seconds]
    values = [r[3] for r in curve]
    total = sum(v * max(0.0, min(b, seconds) - min(a, seconds)) for v, a, b in zip(values, times[:-1], times[1:]))
    return total / seconds


def ratio_interval(reference: Sequence[float], other: Sequence[float], rng: np.random.Generator,
                   level: float = 0.9) -> tuple[float, float, float]:
    """median(other) / median(reference) and its bootstrap interval over seeds (paired: the same seed indices are
    drawn for both, since a seed gives both the same θ_0). Times may be inf (never reached)."""
    ref, oth = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)

    def ratio(a: np.ndarray, b: np.ndarray) -> float:
        num, den = float(np.median(b)), float(np.median(a))
        if math.isinf(num) and math.isinf(den):
            return math.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            return num / den if den > 0 else math.inf

    point = ratio(ref, oth)
    draws = []
    for _ in range(BOOTSTRAP_SAMPLES):
        idx = rng.integers(0, len(ref), len(ref))
        draws.append(ratio(ref[idx], oth[idx]))
    values = np.asarray([d for d in draws if not math.isnan(d)])
    if values.size == 0:
        return point, math.nan, math.nan
    tail = (1 - level) / 2 * 100  # no interpolation between draws, so an infinite draw never meets inf − inf
    return point, float(np.percentile(values, tail, method="lower")), float(np.percentile(values, 100 - tail, method="higher"))


def verdict(expected: str, low: float, high: float) -> str:
    """agrees / disagrees / inconclusive, from the interval of time(other) / time(reference).

    ``"faster"`` (the reference should be faster): agrees if the whole interval is above 1, disagrees if it is
    below 1. ``"alike"``: agrees if it lies inside [2/3, 3/2], disagrees if it lies wholly outside."""
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if expected == "alike":
        if ALIKE[0] <= low and high <= ALIKE[1]:
            return "agrees"
        if high < ALIKE[0] or low > ALIKE[1]:
            return "disagrees"
        return "inconclusive"
    if low > 1:
        return "agrees"
    if high < 1:
        return "disagrees"
    return "inconclusive"


def format_ratio(point: float, low: float, high: float) -> str:
    def one(x: float) -> str:
        return "never" if math.isinf(x) else ("–" if math.isnan(x) else f"{x:.2f}")

    return f"{one(point)} [{one(low)}, {one(high)}]"


def format_seconds(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:,.0f}"


def write_results(path: Path, experiment: Experiment, curves: dict[tuple[str, int], dict[int, Curve]],
                  alphas: dict[tuple[str, int], float]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RESULT_COLUMNS)
        for (algorithm, n), by_seed in curves.items():
            for seed, curve in sorted(by_seed.items()):
                writer.writerows((experiment.name, algorithm, n, alphas[(algorithm, n)], seed, *row) for row in curve)


def plot(path: Path, experiment: Experiment, curves: dict[tuple[str, int], dict[int, Curve]]) -> None:
    """Return against simulated time (left) and environment steps (right): median and 20–80% band over seeds,
    one row of panels per n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = list(experiment.n_agents)
    fig, axes = plt.subplots(len(ns), 2, figsize=(12, 3.8 * len(ns)), squeeze=False)
    for row, n in enumerate(ns):
        for column, x_index in enumerate((0, 1)):
            ax = axes[row][column]
            for algorithm in experiment.algorithms:
                runs = [np.asarray(c, dtype=np.float64) for c in curves.get((algorithm, n), {}).values() if c]
                if not runs:
                    continue
                end = min(r[-1, x_index] for r in runs)
                grid = np.linspace(0.0, end, 300)
                values = []
                for r in runs:
                    idx = np.searchsorted(r[:, x_index], grid, side="right") - 1
                    values.append(np.where(idx >= 0, r[np.clip(idx, 0, None), 3], np.nan))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    median = np.nanmedian(values, axis=0)
                    low, high = np.nanpercentile(values, [20, 80], axis=0)
                line, = ax.plot(grid, median, label=f"{LABELS.get(algorithm, algorithm)} ({len(runs)} seeds)")
                ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2)
            for threshold in experiment.thresholds:
                ax.axhline(threshold, color="gray", linestyle="--", linewidth=0.8)
            if x_index == 0 and experiment.outages:
                for agent, windows in experiment.outages.items():
                    for begin, end in windows:
                        ax.axvspan(begin, end, color="red", alpha=0.08, label=f"agent {agent} away")
            ax.set_xlabel("simulated time (s)" if x_index == 0 else "environment steps")
            ax.set_ylabel("equal-weighted training return" if experiment.heterogeneous_envs else "mean training return")
            ax.set_title(f"{experiment.env}, {experiment.scenario}, n = {n}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"{experiment.name} ({experiment.figure}): median and 20–80% band", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def tables(experiment: Experiment, curves: dict[tuple[str, int], dict[int, Curve]], alphas: dict[tuple[str, int], float],
           seed: int = 0) -> tuple[str, list[dict]]:
    """The Markdown report and the verdict rows (claim, n, threshold, algorithm, ratio, interval, verdict)."""
    rng = np.random.default_rng(seed)
    reference = experiment.algorithms[0]
    lines: list[str] = []
    verdicts: list[dict] = []
    for n in experiment.n_agents:
        seconds = experiment.seconds_for(n)
        lines += [f"### n = {n}", ""]
        seeds = sorted(set.intersection(*[set(curves.get((a, n), {})) for a in experiment.algorithms]))
        if not seeds:
            lines += ["(no complete set of runs yet)", ""]
            continue
        header = "| threshold | " + " | ".join(LABELS.get(a, a) for a in experiment.algorithms) + " |"
        lines += [f"Median simulated seconds to reach each return ({len(seeds)} seeds; never = not within "
                  f"{seconds:g} s), and the ratio to {LABELS.get(reference, reference)} with its 90% bootstrap "
                  "interval over seeds:", "", header, "|---:|" + "---:|" * len(experiment.algorithms)]
        for threshold in experiment.thresholds:
            times = {a: [first_reach(curves[(a, n)][s], threshold) for s in seeds] for a in experiment.algorithms}
            cells = []
            for algorithm in experiment.algorithms:
                median = float(np.median(times[algorithm]))
                reached = sum(math.isfinite(t) for t in times[algorithm])
                if algorithm == reference:
                    cells.append(f"{format_seconds(median)} ({reached}/{len(seeds)})")
                    continue
                point, low, high = ratio_interval(times[reference], times[algorithm], rng)
                cells.append(f"{format_seconds(median)} ({reached}/{len(seeds)}); ×{format_ratio(point, low, high)}")
                expected = experiment.expected_ratio
                if expected == "outage":  # the no-outage twin should match; the rules that wait should be slower
                    expected = "alike" if algorithm == "rennala-no-outage" else "faster"
                # No verdict where the reference's own median never reached the threshold: nothing to compare.
                judged = verdict(expected, low, high) if math.isfinite(float(np.median(times[reference]))) else "inconclusive"
                verdicts.append(dict(n=n, threshold=threshold, algorithm=algorithm, ratio=point, low=low, high=high,
                                     verdict=judged, expected=expected))
            lines.append(f"| {threshold:g} | " + " | ".join(cells) + " |")
        if experiment.outages:
            lines += ["", outage_table(experiment, curves, n, seeds)]
        lines += ["", "Final return and area under the curve per simulated second (median over seeds), and α:", "",
                  "| algorithm | α | final return | area / s |", "|---|---:|---:|---:|"]
        for algorithm in experiment.algorithms:
            runs = [curves[(algorithm, n)][s] for s in seeds]
            finals = [r[-1][3] if r else math.nan for r in runs]
            areas = [area_per_second(r, seconds) for r in runs]
            lines.append(f"| {LABELS.get(algorithm, algorithm)} | {format_alpha(alphas[(algorithm, n)])} | "
                         f"{np.median(finals):.1f} | {np.median(areas):.1f} |")
        lines.append("")
    return "\n".join(lines), verdicts


def steps_at(curve: Curve, seconds: float) -> int:
    """Environment steps counted by the end of the last round that ended at or before ``seconds`` (0 before any)."""
    steps = 0
    for end, count, _, _ in curve:
        if end > seconds:
            break
        steps = count
    return steps


def outage_table(experiment: Experiment, curves: dict[tuple[str, int], dict[int, Curve]], n: int, seeds: list[int]) -> str:
    """Environment steps per simulated second before the first outage window and inside it (median over seeds):
    how much of its pace each algorithm keeps while an agent is away.

    The pace before the outage needs a round that ended before it: without one its cell and the ratio read "n/a"
    and a caveat under the table says so (a run too short to measure it, as every smoke run is), instead of a bare
    0.0 or nan. A pace of 0.0 while the agent is away is a measurement: no round ended (a rule waiting for it).
    """
    assert experiment.outages
    begin, end = min(w[0] for ws in experiment.outages.values() for w in ws), max(w[1] for ws in experiment.outages.values() for w in ws)
    end = min(end, experiment.seconds_for(n))
    rows = [f"Environment steps per simulated second (median over seeds) before the outage (0–{begin:g} s) and while "
            f"the agent is away ({begin:g}–{end:g} s), counted at round ends:", "",
            "| algorithm | before | during | during / before |", "|---|---:|---:|---:|"]
    missing = False
    for algorithm in experiment.algorithms:
        runs = [curves[(algorithm, n)][s] for s in seeds]
        before = float(np.median([steps_at(curve, begin) / begin for curve in runs]))
        during = float(np.median([(steps_at(curve, end) - steps_at(curve, begin)) / (end - begin) for curve in runs]))
        # No round before the outage: no pace to compare with. (No round during it is a measurement: 0.0.)
        cells = [f"{before:.1f}" if before > 0 else "n/a", f"{during:.1f}", f"{during / before:.2f}" if before > 0 else "n/a"]
        missing = missing or "n/a" in cells
        rows.append(f"| {LABELS.get(algorithm, algorithm)} | " + " | ".join(cells) + " |")
    if missing or experiment.is_smoke:
        rows += ["", "Caveat: " + ("n/a = no round ended before the outage in the median seed, so there is no pace to "
                                   "compare with. " if missing else "")
                 + ("This smoke run is far too short for these paces to mean anything." if experiment.is_smoke
                    else "A longer budget measures it.")]
    return "\n".join(rows) + "\n"


def summary_line(experiment: Experiment, verdicts: list[dict]) -> Optional[str]:
    """One line per experiment: the verdict at the highest threshold the reference reached in most seeds."""
    if not verdicts:
        return None
    parts = []
    for v in verdicts:
        parts.append(f"n={v['n']}, {v['threshold']:g}, {LABELS.get(v['algorithm'], v['algorithm'])}: "
                     f"×{format_ratio(v['ratio'], v['low'], v['high'])} {v['verdict']}")
    return f"{experiment.name}: " + "; ".join(parts)
