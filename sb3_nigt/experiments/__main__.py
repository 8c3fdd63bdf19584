"""``python -m sb3_nigt.experiments <name>``: run one of the paper's experiments end to end (docs/reproduction.md).

Usage::

    python -m sb3_nigt.experiments --list                 # experiments, settings, runs and cost
    python -m sb3_nigt.experiments reacher-expensive-comm # tune α, run the reported seeds, write the report
    python -m sb3_nigt.experiments outage --smoke         # a tiny version (seconds), as the tests run it
    python -m sb3_nigt.experiments outage --seeds 10      # seeds 0-9 (0-4 come from the cache)
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from sb3_nigt.experiments.registry import EXPERIMENTS, LABELS, Experiment, estimated_cpu_seconds, format_alpha, with_trace_times
from sb3_nigt.experiments.report import plot, summary_line, tables, write_results
from sb3_nigt.experiments.runner import RunSpec, execute, read_run, tuning_score


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sb3_nigt.experiments",
        description="Run one of the paper's experiments (Section 6, App. H) on the simulated clock: tune α per "
                    "algorithm on separate seeds, run the reported seeds, and write results.csv, returns.png and "
                    "report.md (docs/reproduction.md).",
    )
    parser.add_argument("name", nargs="?", choices=sorted(EXPERIMENTS), help="the experiment")
    parser.add_argument("--list", action="store_true", help="list the experiments with their settings and cost")
    parser.add_argument("--out", default="runs/experiments", help="output folder (one subfolder per experiment)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="runs at once, one process each (default: the number of cores)")
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help="report seeds 0 .. N-1 instead of the experiment's own (cached seeds are reused)")
    parser.add_argument("--smoke", action="store_true", help="a tiny budget (two α, two seeds, a few rounds)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--times-from", default=None, metavar="TRACE_CSV",
                        help="run the experiment on the agents of a recorded real run: their measured h_i and κ_i "
                             "(a trace CSV of a real-clock run with record_trace=True; docs/calibration.md), the "
                             "budget scaled to about as many gradients")
    return parser


def list_experiments(out: Path) -> str:
    lines = ["| name | paper | env | times | algorithms | n | budget (simulated s) | seeds | α grid | runs | "
             "estimated CPU min | measured CPU min |", "|---|---|---|---|---|---|---:|---|---|---:|---:|---:|"]
    for experiment in EXPERIMENTS.values():
        spent = measured_cpu_seconds(out / experiment.name / "report.md")
        grid = f"{format_alpha(experiment.alpha_grid[0])} … {format_alpha(experiment.alpha_grid[-1])} ({len(experiment.alpha_grid)})"
        times = experiment.scenario if experiment.compute_times is None else f"h = {list(experiment.compute_times)}"
        lines.append(
            f"| {experiment.name} | {experiment.figure} | {experiment.env} | {times} | "
            f"{', '.join(experiment.algorithms)} | {', '.join(map(str, experiment.n_agents))} | {experiment.simulated_seconds:g} | "
            f"{len(experiment.seeds)} (+{len(experiment.tuning_seeds)} tuning) | {grid} | {experiment.runs()} | "
            f"{estimated_cpu_seconds(experiment) / 60:,.0f} | {'–' if spent is None else f'{spent / 60:,.0f}'} |"
        )
    return "\n".join(lines)


def measured_cpu_seconds(report: Path) -> Optional[float]:
    """The CPU seconds a finished experiment's report records (its runs' wall seconds, one core each), or None."""
    if not report.exists():
        return None
    for line in report.read_text().splitlines():
        if " CPU seconds in all" in line:
            return float(line.split(" CPU seconds in all")[0].rsplit(" ", 1)[-1].replace(",", ""))
    return None


class Progress:
    """A tqdm bar over the runs of one phase (or nothing with ``enabled=False``)."""

    def __init__(self, total: int, description: str, enabled: bool):
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=description, unit="run")

    def __call__(self, spec: RunSpec, cached: bool) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"{spec.algorithm} α={format_alpha(spec.alpha)} seed {spec.seed}"
                                     f"{' (cached)' if cached else ''}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def with_seeds(experiment: Experiment, seeds: int) -> Experiment:
    """The experiment with reported seeds 0 .. ``seeds`` − 1.

    :raises ValueError: if ``seeds`` < 1, or if the seeds would include a tuning seed (they are kept apart).
    """
    if seeds < 1 or seeds > min(experiment.tuning_seeds):
        raise ValueError(f"--seeds: must be in 1..{min(experiment.tuning_seeds)} (reported seeds 0 .. N-1 stay apart "
                         f"from the tuning seeds {list(experiment.tuning_seeds)}), got {seeds}")
    return dataclasses.replace(experiment, seeds=tuple(range(seeds)))


def report_header(experiment: Experiment, seeds: Optional[int], same_start: bool) -> list[str]:
    """The report's first lines, from the settings of the run reported: title, claim, command, settings, and how
    it differs from the paper; a smoke run (``experiment.is_smoke``) says first that its figures are meaningless.

    :param experiment: the experiment as run (its smoke form for ``--smoke``).
    :param seeds: the ``--seeds`` given, if any (named in the command).
    :param same_start: whether every algorithm started from the same θ_0 under each seed.
    :return: Markdown lines.
    """
    command = (f"python -m sb3_nigt.experiments {experiment.name}{' --smoke' if experiment.is_smoke else ''}"
               f"{f' --seeds {seeds}' if seeds is not None else ''}"
               f"{f' --times-from {experiment.times_from}' if experiment.times_from is not None else ''}")
    smoke = ([f"**Smoke run: its figures are meaningless.** It only checks that the pipeline runs end to end, with "
              f"{experiment.simulated_seconds:g} simulated seconds, M = {experiment.batch_size}, two α values and "
              f"seeds {list(experiment.seeds)}: a few rounds, far too few to learn or to compare the algorithms. "
              f"Run `python -m sb3_nigt.experiments {experiment.name}` for the experiment itself.", ""]
             if experiment.is_smoke else [])
    return [
        f"## {experiment.name} ({experiment.figure}){' — smoke run' if experiment.is_smoke else ''}", "", *smoke,
        f"Claim checked{' (by the full experiment)' if experiment.is_smoke else ''}: {experiment.claim}.", "",
        f"```bash\n{command}\n```", "",
        (f"{experiment.env}, times measured in a real run (`{experiment.times_from}`, replayed)"
         if experiment.times_from is not None else f"{experiment.env}, times `{experiment.scenario}`"
         + (f" with h = {list(experiment.compute_times)}" if experiment.compute_times else ""))
        + (f", outages {experiment.outages}" if experiment.outages else "")
        + f", M = {experiment.batch_size}, η = {experiment.momentum}, budget {experiment.simulated_seconds:g} simulated s, "
          f"seeds {list(experiment.seeds)}, tuning seeds {list(experiment.tuning_seeds)}. "
          f"Every algorithm started from the same θ_0 under each seed: {'yes' if same_start else 'NO'}.", "",
        (f"Smoke settings: {experiment.settings()} stand for {experiment.differences}" if experiment.is_smoke
         else f"How it differs from the paper: {experiment.differences}"), "",
    ]


def run_experiment(experiment: Experiment, out: Path, workers: int, progress: bool = True,
                   seeds: Optional[int] = None) -> dict[str, Any]:
    """Tune α, run the reported seeds, write the outputs in ``out``; return a summary (paths, α, verdicts).
    ``seeds``: the ``--seeds`` given, if any (only named in the report's command; ``experiment`` has them)."""
    out.mkdir(parents=True, exist_ok=True)
    cache = out.parent / "cache"  # shared by the experiments of one --out: identical runs are computed once
    start = time.perf_counter()
    tune_n = experiment.tune_at or experiment.n_agents[0]
    tune_seconds = experiment.seconds_for(tune_n) * experiment.tuning_fraction
    tuning = [RunSpec(experiment.name, "tune", algorithm, tune_n, alpha, seed, tune_seconds)
              for algorithm in experiment.algorithms for alpha in experiment.alpha_grid for seed in experiment.tuning_seeds]
    bar = Progress(len(tuning), f"{experiment.name}: tuning α", progress)
    paths = execute(experiment, tuning, cache, workers, bar)
    tuning_paths = paths
    bar.close()
    chosen: dict[str, float] = {}
    with open(out / "tuning.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["algorithm", "n_agents", "alpha", "seed", "score", "chosen"])
        for algorithm in experiment.algorithms:
            scores: dict[float, list[float]] = {}
            for spec in tuning:
                if spec.algorithm == algorithm:
                    scores.setdefault(spec.alpha, []).append(tuning_score(read_run(paths[spec])[1], tune_seconds))
            best = max(sorted(scores), key=lambda a: (sum(scores[a]) / len(scores[a]), -a))  # ties: the smaller α
            chosen[algorithm] = best
            for spec in tuning:
                if spec.algorithm == algorithm:
                    score = tuning_score(read_run(paths[spec])[1], tune_seconds)
                    writer.writerow([algorithm, tune_n, spec.alpha, spec.seed, score, int(spec.alpha == best)])
    reported = [RunSpec(experiment.name, "report", algorithm, n, chosen[algorithm], seed, experiment.seconds_for(n))
                for n in experiment.n_agents for algorithm in experiment.algorithms for seed in experiment.seeds]
    bar = Progress(len(reported), f"{experiment.name}: reported seeds", progress)
    paths = execute(experiment, reported, cache, workers, bar)
    bar.close()
    curves: dict[tuple[str, int], dict[int, list]] = {}
    theta0: dict[int, set[str]] = {}
    for spec in reported:
        facts, rows = read_run(paths[spec])
        curves.setdefault((spec.algorithm, spec.n_agents), {})[spec.seed] = rows
        theta0.setdefault(spec.seed * 1000 + spec.n_agents, set()).add(facts["theta0"])
    same_start = all(len(digests) == 1 for digests in theta0.values())
    alphas = {(algorithm, n): chosen[algorithm] for algorithm in experiment.algorithms for n in experiment.n_agents}
    write_results(out / "results.csv", experiment, curves, alphas)
    plot(out / "returns.png", experiment, curves)
    body, verdicts = tables(experiment, curves, alphas)
    cpu = sum(float(read_run(path)[0].get("wall_seconds", 0.0)) for path in set(paths.values()) | {tuning_paths[s] for s in tuning})
    header = report_header(experiment, seeds, same_start)
    header += [
        "α chosen: " + ", ".join(f"{LABELS.get(a, a)} {format_alpha(chosen[a])}" for a in experiment.algorithms)
        + f" (tuning.csv). {len(paths) + len(tuning)} runs, {cpu:,.0f} CPU seconds in all "
          f"({time.perf_counter() - start:,.0f} wall seconds for this command, cached runs excluded).", "",
        "![returns](returns.png)", "",
    ]
    verdict_lines = ["Verdicts (ratio of simulated times to a threshold against the reference, 90% interval; "
                     "rule in docs/reproduction.md):", ""]
    verdict_lines += [f"- n = {v['n']}, return {v['threshold']:g}, {LABELS.get(v['algorithm'], v['algorithm'])}: "
                      f"{v['verdict']}" for v in verdicts]
    (out / "report.md").write_text("\n".join(header) + body + "\n" + "\n".join(verdict_lines) + "\n")
    line = summary_line(experiment, verdicts)
    return {"alphas": chosen, "verdicts": verdicts, "summary": line, "same_start": same_start, "out": out}


def main(argv: Optional[list[str]] = None) -> Optional[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.list:
        print(list_experiments(out))
        return None
    if args.name is None:
        build_parser().error("name an experiment, or --list")
    if args.workers < 1:
        build_parser().error(f"--workers: must be >= 1, got {args.workers}")
    experiment = EXPERIMENTS[args.name]
    if args.smoke:
        experiment = experiment.smoke()
    try:
        if args.seeds is not None:
            experiment = with_seeds(experiment, args.seeds)
        if args.times_from is not None:
            experiment = with_trace_times(experiment, args.times_from)
    except ValueError as exc:
        build_parser().error(str(exc))
    folder = out / (args.name + ("-smoke" if args.smoke else "") + ("-recorded" if args.times_from is not None else ""))
    result = run_experiment(experiment, folder, args.workers, progress=not args.no_progress and sys.stderr.isatty(),
                            seeds=args.seeds)
    print((folder / "report.md").read_text())
    print(f"wrote {folder}/: results.csv, tuning.csv, returns.png, report.md, cache/")
    return result


if __name__ == "__main__":
    main()
