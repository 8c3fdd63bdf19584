"""An experiment's outputs: a tidy CSV, the paper-style plot, Markdown tables with bootstrap intervals, verdicts.

Curves and verdicts use the evaluation of the current θ at fixed simulated times
(:mod:`sb3_nigt.experiments.evaluation`); the training curve is kept beside it in the CSV. A verdict compares each
algorithm with the reference (the experiment's first) on three measures together, each with a paired bootstrap
interval over the reported seeds: the time to each threshold (ratio other / reference), the final return and the
area under the evaluation curve per simulated second (differences reference − other, in return units).
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from sb3_nigt.experiments.registry import LABELS, Experiment, format_alpha

Curve = list[tuple[float, int, int, float]]  # (simulated seconds, env steps, communications, return)
#: One run's curves: (training curve, evaluation curves by column).
RunCurves = tuple[Curve, dict[str, Curve]]
RESULT_COLUMNS = ["experiment", "algorithm", "n_agents", "alpha", "round_size", "seed", "curve", "env",
                  "simulated_seconds", "env_steps", "communications", "mean_return"]
BOOTSTRAP_SAMPLES = 2000
#: "alike" means a time ratio inside these bounds.
ALIKE = (2 / 3, 3 / 2)


def first_reach(curve: Curve, threshold: float) -> float:
    """Simulated seconds of the first point whose return is >= ``threshold``; inf if never."""
    for seconds, _, _, value in curve:
        if value >= threshold:
            return seconds
    return math.inf


def area_per_second(curve: Curve, seconds: float) -> float:
    """(1/T) ∫_0^T return dt with the return held from one point to the next (the first point's return before
    it), T = ``seconds``: the area under the curve, per simulated second."""
    if not curve:
        return math.nan
    times = [0.0] + [r[0] for r in curve[1:]] + [seconds]
    values = [r[3] for r in curve]
    total = sum(v * max(0.0, min(b, seconds) - min(a, seconds)) for v, a, b in zip(values, times[:-1], times[1:]))
    return total / seconds


def final_return(curve: Curve) -> float:
    """The return of the curve's last point (the evaluation at the budget); NaN for an empty curve."""
    return curve[-1][3] if curve else math.nan


def _median_ratio(a: np.ndarray, b: np.ndarray) -> float:
    num, den = float(np.median(b)), float(np.median(a))
    if math.isinf(num) and math.isinf(den):
        return math.nan
    if den == 0:  # the reference's median seed was there at θ_0 (t = 0)
        return 1.0 if num == 0 else math.inf
    return num / den


def _median_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.median(a)) - float(np.median(b))


def paired_interval(reference: Sequence[float], other: Sequence[float], statistic: Callable[[np.ndarray, np.ndarray], float],
                    rng: np.random.Generator, level: float = 0.9) -> tuple[float, float, float]:
    """``statistic(reference, other)`` and its percentile bootstrap interval over seeds, paired: the same seed
    indices are drawn for both, since a seed gives both the same θ_0. Values may be inf (never reached)."""
    ref, oth = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    point = statistic(ref, oth)
    draws = []
    for _ in range(BOOTSTRAP_SAMPLES):
        idx = rng.integers(0, len(ref), len(ref))
        draws.append(statistic(ref[idx], oth[idx]))
    values = np.asarray([d for d in draws if not math.isnan(d)])
    if values.size == 0:
        return point, math.nan, math.nan
    tail = (1 - level) / 2 * 100  # no interpolation between draws, so an infinite draw never meets inf − inf
    return point, float(np.percentile(values, tail, method="lower")), float(np.percentile(values, 100 - tail, method="higher"))


def ratio_interval(reference: Sequence[float], other: Sequence[float], rng: np.random.Generator,
                   level: float = 0.9) -> tuple[float, float, float]:
    """median(other) / median(reference) and its paired bootstrap interval (times to a threshold)."""
    return paired_interval(reference, other, _median_ratio, rng, level)


def difference_interval(reference: Sequence[float], other: Sequence[float], rng: np.random.Generator,
                        level: float = 0.9) -> tuple[float, float, float]:
    """median(reference) − median(other) and its paired bootstrap interval (returns: > 0 favours the reference)."""
    return paired_interval(reference, other, _median_difference, rng, level)


def verdict(expected: str, low: float, high: float) -> str:
    """agrees / disagrees / inconclusive, from the interval of time(other) / time(reference) alone.

    ``"faster"`` (the reference should be faster): agrees if the whole interval is above 1, disagrees if it is
    below 1. ``"alike"``: agrees if it lies inside [2/3, 3/2], disagrees if it lies wholly outside."""
    return judge(expected, [dict(kind="time", low=low, high=high)], 0.0)[0]


def _bounds(kind: str, expected: str, margin: float) -> tuple[float, float]:
    """The boundaries of a measure's verdict: (lower, upper); for "faster" both are the no-difference point."""
    if expected == "alike":
        return ALIKE if kind == "time" else (-margin, margin)
    return (1.0, 1.0) if kind == "time" else (0.0, 0.0)


def judge(expected: str, measures: list[dict], margin: float) -> tuple[str, bool]:
    """One verdict from several measures together, and whether an interval straddles its boundary.

    :param expected: ``"faster"`` (the reference better) or ``"alike"``.
    :param measures: dicts with ``kind`` (``"time"``: a ratio other / reference, > 1 favours the reference;
        ``"return"``: a difference reference − other, > 0 favours the reference), ``low`` and ``high`` (the
        interval; NaN: no information, skipped).
    :param margin: the "alike" tolerance on returns, in return units.
    :return: ``"faster"``: *agrees* if some interval lies wholly on the reference's side of its boundary and none
        on the other side, *disagrees* for the converse, else *inconclusive*. ``"alike"``: *agrees* if every
        interval lies inside its band ([2/3, 3/2] for times, [−margin, margin] for returns), *disagrees* if one
        lies wholly outside, else *inconclusive* (no measure: inconclusive). ``straddles``: some interval
        contains a boundary.
    """
    known = [m for m in measures if not (math.isnan(m["low"]) or math.isnan(m["high"]))]
    straddles = False
    better = worse = inside = outside = 0
    for m in known:
        lower, upper = _bounds(m["kind"], expected, margin)
        low, high = m["low"], m["high"]
        straddles = straddles or any(low <= bound <= high and low < high for bound in {lower, upper})
        better += low > upper
        worse += high < lower
        inside += lower <= low and high <= upper
        outside += high < lower or low > upper
    if not known:
        return "inconclusive", False
    if expected == "alike":
        return ("agrees" if inside == len(known) else "disagrees" if outside else "inconclusive"), straddles
    return ("agrees" if better and not worse else "disagrees" if worse and not better else "inconclusive"), straddles


def format_ratio(point: float, low: float, high: float) -> str:
    def one(x: float) -> str:
        return "never" if math.isinf(x) else ("–" if math.isnan(x) else f"{x:.2f}")

    return f"{one(point)} [{one(low)}, {one(high)}]"


def format_difference(point: float, low: float, high: float) -> str:
    def one(x: float) -> str:
        return "–" if math.isnan(x) else f"{x:+.1f}"

    return f"{one(point)} [{one(low)}, {one(high)}]"


def format_seconds(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:,.0f}"


def write_results(path: Path, experiment: Experiment, runs: dict[tuple[str, int], dict[int, RunCurves]],
                  configs: dict[tuple[str, int], tuple[float, int]]) -> None:
    """The tidy CSV: one row per point of every reported run's training curve (``curve`` = ``train``) and of each
    of its evaluation columns (``eval``; ``env`` = ``all``, ``agent0``, …, ``mean``)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RESULT_COLUMNS)
        for (algorithm, n), by_seed in runs.items():
            alpha, size = configs[(algorithm, n)]
            for seed, (training, evaluation) in sorted(by_seed.items()):
                head = (experiment.name, algorithm, n, alpha, size, seed)
                label = "mean" if experiment.heterogeneous_envs else "all"
                writer.writerows((*head, "train", label, *row) for row in training)
                for env, curve in evaluation.items():
                    writer.writerows((*head, "eval", env, *row) for row in curve)


def _band(ax: object, runs: list[np.ndarray], x_index: int, label: str, style: str = "-", color: Optional[str] = None) -> str:
    """Median and 20–80% band of ``runs`` (arrays of curve rows) against column ``x_index``; returns the colour."""
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
    line, = ax.plot(grid, median, style, label=label, color=color)  # type: ignore[attr-defined]
    ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.15)  # type: ignore[attr-defined]
    return line.get_color()


def plot(path: Path, experiment: Experiment, runs: dict[tuple[str, int], dict[int, RunCurves]]) -> None:
    """Evaluation return against simulated time and against environment steps (median and 20–80% band over
    seeds), one row of panels per n; with heterogeneous environments a third panel per row shows each agent's
    environment (solid: agent 0, dashed: agent 1, …)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = list(experiment.n_agents)
    main = "mean" if experiment.heterogeneous_envs else "all"
    columns = 3 if experiment.heterogeneous_envs else 2
    fig, axes = plt.subplots(len(ns), columns, figsize=(6 * columns, 3.8 * len(ns)), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for row, n in enumerate(ns):
        for column in range(columns):
            ax = axes[row][column]
            x_index = 1 if column == 1 else 0
            for algorithm in experiment.algorithms:
                by_seed = runs.get((algorithm, n), {})
                label = LABELS.get(algorithm, algorithm)
                if column < 2:
                    curves = [np.asarray(c[1][main], dtype=np.float64) for c in by_seed.values() if c[1].get(main)]
                    if curves:
                        _band(ax, curves, x_index, f"{label} ({len(curves)} seeds)")
                    continue
                color = None
                for i in range(n):
                    curves = [np.asarray(c[1][f"agent{i}"], dtype=np.float64) for c in by_seed.values() if c[1].get(f"agent{i}")]
                    if curves:
                        color = _band(ax, curves, 0, f"{label}, agent {i}'s env", styles[i % len(styles)], color)
            for threshold in experiment.thresholds:
                ax.axhline(threshold, color="gray", linestyle="--", linewidth=0.8)
            if x_index == 0 and experiment.outages:
                for agent, windows in experiment.outages.items():
                    for begin, end in windows:
                        ax.axvspan(begin, end, color="red", alpha=0.08, label=f"agent {agent} away")
            ax.set_xlabel("environment steps" if column == 1 else "simulated time (s)")
            ax.set_ylabel("evaluation return, per agent env" if column == 2 else
                          "equal-weighted evaluation return" if experiment.heterogeneous_envs else "evaluation return")
            ax.set_title(f"{experiment.env}, {experiment.scenario}, n = {n}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    kind = "deterministic evaluation" if experiment.eval_deterministic else "evaluation (actions sampled from π_θ)"
    fig.suptitle(f"{experiment.name} ({experiment.figure}): {kind} of the current θ, median and 20–80% band",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _main_curves(experiment: Experiment, runs: dict[tuple[str, int], dict[int, RunCurves]], n: int,
                 seeds: list[int]) -> dict[str, list[Curve]]:
    main = "mean" if experiment.heterogeneous_envs else "all"
    return {a: [runs[(a, n)][s][1].get(main, []) for s in seeds] for a in experiment.algorithms}


def _expected_for(experiment: Experiment, algorithm: str) -> str:
    if experiment.expected_ratio == "outage":  # the no-outage twin should match; the rules that wait should be worse
        return "alike" if algorithm == "rennala-no-outage" else "faster"
    return experiment.expected_ratio


def _time_table(experiment: Experiment, curves: dict[str, list[Curve]], n: int, rng: np.random.Generator,
                measures: dict[str, list[dict]]) -> list[str]:
    """Median time to each threshold with the ratio to the reference; appends each time measure to ``measures``."""
    reference = experiment.algorithms[0]
    seeds = len(curves[reference])
    lines = [f"Median simulated seconds for the evaluation return to reach each threshold ({seeds} seeds; never = "
             f"not within {experiment.seconds_for(n):g} s), and the ratio to {LABELS.get(reference, reference)} "
             "with its 90% paired bootstrap interval:", "",
             "| threshold | " + " | ".join(LABELS.get(a, a) for a in experiment.algorithms) + " |",
             "|---:|" + "---:|" * len(experiment.algorithms)]
    any_unreached = False
    for threshold in experiment.thresholds:
        times = {a: [first_reach(c, threshold) for c in curves[a]] for a in experiment.algorithms}
        reference_reached = math.isfinite(float(np.median(times[reference])))
        cells = []
        for algorithm in experiment.algorithms:
            median = float(np.median(times[algorithm]))
            reached = f"{format_seconds(median)} ({sum(math.isfinite(t) for t in times[algorithm])}/{seeds})"
            if algorithm == reference:
                cells.append(reached)
                continue
            # drawn even when unused, so that every later interval of the report keeps its bootstrap draws
            point, low, high = ratio_interval(times[reference], times[algorithm], rng)
            if not reference_reached:  # no ratio to a median that never came, so no time measure either
                cells.append(f"{reached}; ×–")
                continue
            cells.append(f"{reached}; ×{format_ratio(point, low, high)}")
            measures[algorithm].append(dict(kind="time", name=f"time to {threshold:g}", point=point, low=low, high=high,
                                            text=f"×{format_ratio(point, low, high)}"))
        lines.append(f"| {threshold:g} | " + " | ".join(cells) + " |")
        any_unreached = any_unreached or not reference_reached
    if any_unreached:
        lines += ["", f"×–: {LABELS.get(reference, reference)}'s median seed never reached the threshold, so there is no "
                      "ratio and the threshold counts in no verdict."]
    return lines + [""]


def _return_table(experiment: Experiment, curves: dict[str, list[Curve]], n: int, rng: np.random.Generator,
                  measures: dict[str, list[dict]], configs: dict[tuple[str, int], tuple[float, int]]) -> list[str]:
    """Final return and area per second (medians) with the differences to the reference; appends the measures."""
    reference = experiment.algorithms[0]
    seconds = experiment.seconds_for(n)
    finals = {a: [final_return(c) for c in curves[a]] for a in experiment.algorithms}
    areas = {a: [area_per_second(c, seconds) for c in curves[a]] for a in experiment.algorithms}
    lines = ["Final evaluation return and area under the evaluation curve per simulated second (medians over seeds), "
             "and reference − algorithm with its 90% paired bootstrap interval; α and round size as tuned:", "",
             "| algorithm | α | M/S | final return | area / s | Δ final | Δ area |", "|---|---:|---:|---:|---:|---:|---:|"]
    for algorithm in experiment.algorithms:
        alpha, size = configs[(algorithm, n)]
        cells = [LABELS.get(algorithm, algorithm), format_alpha(alpha), str(size),
                 f"{np.median(finals[algorithm]):.1f}", f"{np.median(areas[algorithm]):.1f}"]
        if algorithm == reference:
            cells += ["", ""]
        else:
            for name, values in (("final return", finals), ("area / s", areas)):
                point, low, high = difference_interval(values[reference], values[algorithm], rng)
                measures[algorithm].append(dict(kind="return", name=name, point=point, low=low, high=high,
                                                text=format_difference(point, low, high)))
                cells.append(format_difference(point, low, high))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _agent_table(experiment: Experiment, runs: dict[tuple[str, int], dict[int, RunCurves]], n: int, seeds: list[int]) -> list[str]:
    """Final evaluation return on each agent's environment (median over seeds): the heterogeneous task's mechanism."""
    lines = ["Final evaluation return on each agent's environment (median over seeds):", "",
             "| algorithm | " + " | ".join(f"agent {i}'s env" for i in range(n)) + " |", "|---|" + "---:|" * n]
    for algorithm in experiment.algorithms:
        cells = [f"{np.median([final_return(runs[(algorithm, n)][s][1].get(f'agent{i}', [])) for s in seeds]):.1f}"
                 for i in range(n)]
        lines.append(f"| {LABELS.get(algorithm, algorithm)} | " + " | ".join(cells) + " |")
    return lines + [""]


def tables(experiment: Experiment, runs: dict[tuple[str, int], dict[int, RunCurves]],
           configs: dict[tuple[str, int], tuple[float, int]], seed: int = 0) -> tuple[str, list[dict]]:
    """The Markdown report and one verdict per (n, algorithm other than the reference): ``n``, ``algorithm``,
    ``expected``, ``verdict``, ``straddles`` and ``measures`` (each with its interval)."""
    rng = np.random.default_rng(seed)
    lines: list[str] = []
    verdicts: list[dict] = []
    for n in experiment.n_agents:
        lines += [f"### n = {n}", ""]
        seeds = sorted(set.intersection(*[set(runs.get((a, n), {})) for a in experiment.algorithms]))
        if not seeds:
            lines += ["(no complete set of runs yet)", ""]
            continue
        curves = _main_curves(experiment, runs, n, seeds)
        measures: dict[str, list[dict]] = {a: [] for a in experiment.algorithms[1:]}
        lines += _time_table(experiment, curves, n, rng, measures)
        lines += _return_table(experiment, curves, n, rng, measures, configs)
        if experiment.heterogeneous_envs:
            lines += _agent_table(experiment, runs, n, seeds)
        if experiment.outages:
            lines += [outage_table(experiment, {k: {s: r[0] for s, r in v.items()} for k, v in runs.items()}, n, seeds)]
        for algorithm, found in measures.items():
            expected = _expected_for(experiment, algorithm)
            judged, straddles = judge(expected, found, experiment.margin())
            verdicts.append(dict(n=n, algorithm=algorithm, expected=expected, verdict=judged, straddles=straddles,
                                 measures=found, seeds=len(seeds)))
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
    """One line per experiment: each algorithm's verdict against the reference at every n."""
    if not verdicts:
        return None
    parts = [f"n={v['n']}, {LABELS.get(v['algorithm'], v['algorithm'])}: {v['verdict']}" for v in verdicts]
    return f"{experiment.name}: " + "; ".join(parts)


def verdict_lines(verdicts: list[dict]) -> list[str]:
    """The report's verdict list: one line per (n, algorithm) with every measure's interval."""
    lines = []
    for v in verdicts:
        measures = "; ".join(f"{m['name']} {m['text']}" for m in v["measures"]) or "no measure"
        lines.append(f"- n = {v['n']}, {LABELS.get(v['algorithm'], v['algorithm'])} ({v['expected']}, {v['seeds']} seeds): "
                     f"**{v['verdict']}**{' (an interval straddles its boundary)' if v['straddles'] else ''} — {measures}")
    return lines
