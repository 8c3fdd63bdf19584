"""``python -m sb3_nigt.experiments <name>``: run one of the paper's experiments end to end (docs/reproduction.md).

Usage::

    python -m sb3_nigt.experiments --list                 # experiments, settings, runs and measured cost
    python -m sb3_nigt.experiments --list --calibrate     # measure the cost of what is not measured yet
    python -m sb3_nigt.experiments outage --list --calibrate  # the same for one experiment
    python -m sb3_nigt.experiments reacher-expensive-comm # tune α and M, run the reported seeds, write the report
    python -m sb3_nigt.experiments outage --smoke         # a tiny version (seconds), as the tests run it
    python -m sb3_nigt.experiments outage --seeds 10      # seeds 0-9 (0-4 come from the cache)
    python -m sb3_nigt.experiments outage --first-seed 50 # the verdicts again on seeds 50-54, never reported
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from sb3_nigt.experiments.costs import calibrate as calibrate_costs
from sb3_nigt.experiments.costs import estimate, spent
from sb3_nigt.experiments.registry import EXPERIMENTS, LABELS, Experiment, format_alpha, with_trace_times
from sb3_nigt.experiments.report import plot, summary_line, tables, verdict_lines, write_results
from sb3_nigt.experiments.runner import RunSpec, execute, pool_map, read_run
from sb3_nigt.experiments.tuning import run_study, study_algorithm


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sb3_nigt.experiments",
        description="Run one of the paper's experiments (Section 6, App. H) on the simulated clock: tune α and the "
                    "round size per algorithm and n with Optuna on a separate seed, run the reported seeds (more "
                    "where an interval straddles its verdict's boundary), evaluate the current policy at fixed "
                    "times, and write results.csv, tuning.csv, returns.png and report.md (docs/reproduction.md).",
    )
    parser.add_argument("name", nargs="?", choices=sorted(EXPERIMENTS), help="the experiment")
    parser.add_argument("--list", action="store_true",
                        help="list the experiments (or the one named) with their settings and cost")
    parser.add_argument("--calibrate", action="store_true",
                        help="with --list: measure the cost of every (algorithm, n) not measured yet by a short run")
    parser.add_argument("--out", default="runs/experiments", help="output folder (one subfolder per experiment)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes at once: tuning studies, then reported runs (default: the number of cores)")
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help="report seeds 0 .. N-1 instead of the experiment's own (cached seeds are reused)")
    parser.add_argument("--first-seed", type=int, default=0, metavar="K",
                        help="report seeds K, K+1, ... instead (re-run the verdicts on seeds never reported; written "
                             "to <name>-seeds<K>/)")
    parser.add_argument("--no-extend", action="store_true",
                        help="do not run more seeds where an interval straddles its boundary; print the command instead")
    parser.add_argument("--smoke", action="store_true", help="a tiny budget (two α, two round sizes, two seeds)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--alpha", action="append", default=[], metavar="ALGORITHM=VALUE",
                        help="a sensitivity run: report ALGORITHM (rennala, sync, afedpg, malenia, …) with this α "
                             "(2^-7 or 0.0078125) instead of its tuned one; repeatable; written to "
                             "<name>-<algorithm>-alpha<VALUE>/")
    parser.add_argument("--times-from", default=None, metavar="TRACE_CSV",
                        help="run the experiment on the agents of a recorded real run: their measured h_i and κ_i "
                             "(a trace CSV of a real-clock run with record_trace=True; docs/calibration.md)")
    return parser


def list_experiments(out: Path, workers: int = 1, calibrate: bool = False, name: Optional[str] = None) -> str:
    """The experiments' table (or ``name``'s row): settings, runs, estimated CPU hours (from measured costs,
    :mod:`~sb3_nigt.experiments.costs`) and the CPU hours already spent; ``calibrate`` first measures what is
    missing."""
    cache = out / "cache"
    lines = ["| name | paper | env | times | algorithms | n | budget (simulated s) | seeds | grids | runs | "
             "estimated CPU h | measured CPU h |", "|---|---|---|---|---|---|---:|---|---|---:|---:|---:|"]
    for experiment in EXPERIMENTS.values() if name is None else [EXPERIMENTS[name]]:
        if calibrate:
            calibrate_costs(experiment, cache, workers)
        estimated, _ = estimate(cache, experiment)
        extended, _ = estimate(cache, experiment, experiment.max_seeds)
        spent_seconds = spent(cache, experiment)
        grid = (f"α {format_alpha(experiment.alpha_grid[0])} … {format_alpha(experiment.alpha_grid[-1])} × M/S "
                f"{list(experiment.round_size_grid)}")
        times = (experiment.scenario if experiment.compute_times is None else f"h = {list(experiment.compute_times)}")
        times = "h_i(t) decreasing during the run" if experiment.compute_schedule is not None else times
        lines.append(
            f"| {experiment.name} | {experiment.figure} | {experiment.env} | {times} | "
            f"{', '.join(experiment.algorithms)} | {', '.join(map(str, experiment.n_agents))} | {experiment.simulated_seconds:g} | "
            f"{len(experiment.seeds)} (≤ {experiment.max_seeds}; +{len(experiment.tuning_seeds)} tuning) | {grid} | "
            f"{experiment.runs()} | {_hours_range(estimated, extended)} | "
            f"{f'{spent_seconds / 3600:,.2f}' if spent_seconds else '–'} |"
        )
    lines += ["", "Estimated: CPU seconds per simulated second measured for each algorithm and n under the same settings "
              "(the cache's ledger), times the simulated seconds planned (tuning trials at their expected share under "
              "successive halving, three finalists per study at the whole budget, and the reported seeds): first "
              "with the seeds first reported, then with every (algorithm, n) extended to the most seeds by the "
              "straddle rule. "
              "'not measured': run `--list --calibrate` first."]
    return "\n".join(lines)


def _hours_range(low: Optional[float], high: Optional[float]) -> str:
    """CPU seconds as "hours–hours" (the seeds first reported – the most seeds), or 'not measured'."""
    if low is None or high is None:
        return "not measured"
    return f"{low / 3600:,.2f}" if high == low else f"{low / 3600:,.2f}–{high / 3600:,.2f}"


class Progress:
    """A tqdm bar over the jobs of one phase (or nothing with ``enabled=False``)."""

    def __init__(self, total: int, description: str, enabled: bool):
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=description, unit="job")

    def __call__(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def with_seeds(experiment: Experiment, seeds: Optional[int], first: int = 0) -> Experiment:
    """The experiment with reported seeds ``first`` .. ``first + seeds`` − 1 (``seeds`` None: as many as the
    experiment's own). A ``first`` above 0 re-runs the verdicts on seeds that were never reported (the tuned α and
    round size are reused from the cache).

    :raises ValueError: if ``seeds`` < 1, ``first`` < 0, or if the seeds, or those the straddle rule may add (up
        to ``max_seeds`` from ``first``), would include a tuning seed (they are kept apart).
    """
    count = len(experiment.seeds) if seeds is None else seeds
    if first < 0:
        raise ValueError(f"--first-seed: must be >= 0, got {first}")
    if first == 0 and (count < 1 or count > min(experiment.tuning_seeds)):
        raise ValueError(f"--seeds: must be in 1..{min(experiment.tuning_seeds)} (reported seeds 0 .. N-1 stay apart "
                         f"from the tuning seeds {list(experiment.tuning_seeds)}), got {count}")
    reach = range(first, first + max(count, experiment.max_seeds))
    if count < 1 or any(seed in reach for seed in experiment.tuning_seeds):
        raise ValueError(f"--first-seed/--seeds: the reported seeds {first} .. {first + count - 1}, and those the "
                         f"straddle rule may add up to {reach[-1]}, must be at least one and avoid the tuning seeds "
                         f"{list(experiment.tuning_seeds)}")
    return dataclasses.replace(experiment, seeds=tuple(range(first, first + count)),
                               max_seeds=max(count, experiment.max_seeds))


def parse_alphas(texts: list[str], experiment: Experiment) -> dict[str, float]:
    """``--alpha`` values (``sync=2^-7``, ``afedpg=0.0078125``) as algorithm → α.

    :raises ValueError: naming ``--alpha``, if an algorithm is not one of the experiment's, is given twice, or if
        α is not a finite number > 0.
    """
    alphas: dict[str, float] = {}
    for text in texts:
        algorithm, _, value = text.partition("=")
        if algorithm not in experiment.algorithms or algorithm in alphas:
            raise ValueError(f"--alpha: the algorithm must be one of {list(experiment.algorithms)}, once each, "
                             f"got {text!r}")
        try:
            alpha = 2.0 ** float(value[2:]) if value.startswith("2^") else float(value)
        except (ValueError, OverflowError):  # not a number, or 2^k beyond a float
            alpha = math.nan
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"--alpha: α must be a finite number > 0 (2^-7 or 0.0078125), got {text!r}")
        alphas[algorithm] = alpha
    return alphas


def command_of(experiment: Experiment, seeds: Optional[int], alphas: Optional[dict[str, float]] = None) -> str:
    """The command that reports ``experiment`` (its smoke form, its ``--seeds``, ``--first-seed`` and ``--alpha``)."""
    first = experiment.seeds[0] if experiment.seeds else 0
    return (f"python -m sb3_nigt.experiments {experiment.name}{' --smoke' if experiment.is_smoke else ''}"
            f"{f' --seeds {seeds}' if seeds is not None else ''}{f' --first-seed {first}' if first else ''}"
            + "".join(f" --alpha {a}={format_alpha(v)}" for a, v in (alphas or {}).items())
            + f"{f' --times-from {experiment.times_from}' if experiment.times_from is not None else ''}")


def report_header(experiment: Experiment, seeds: Optional[int], same_start: bool,
                  alphas: Optional[dict[str, float]] = None) -> list[str]:
    """The report's first lines, from the settings of the run reported: title, claim, command, settings, and how
    it differs from the paper; a smoke run (``experiment.is_smoke``) says first that its figures are meaningless.

    :param experiment: the experiment as run (its smoke form for ``--smoke``).
    :param seeds: the ``--seeds`` given (or reached by the straddle rule), if any (named in the command).
    :param same_start: whether every algorithm started from the same θ_0 under each seed.
    :param alphas: ``--alpha``: the algorithms whose α was set by hand (a sensitivity run, said first).
    :return: Markdown lines.
    """
    first = ([f"**Smoke run: its figures are meaningless.** It only checks that the pipeline runs end to end, with "
              f"{experiment.simulated_seconds:g} simulated seconds, round sizes {list(experiment.round_size_grid)}, two "
              f"α values and seeds {list(experiment.seeds)}: a few rounds, far too few to learn or to compare the "
              f"algorithms. Run `python -m sb3_nigt.experiments {experiment.name}` for the experiment itself.", ""]
             if experiment.is_smoke else [])
    if alphas:
        first += ["**Sensitivity run: α set by hand, not tuned**, for "
                  + ", ".join(f"{LABELS.get(a, a)} (α = {format_alpha(v)})" for a, v in alphas.items())
                  + "; the others as tuned. Its verdicts are not the experiment's.", ""]
    times = (f" with h = {list(experiment.compute_times)}" if experiment.compute_times else "") + (
        f" with h_i(t) = {experiment.compute_schedule}" if experiment.compute_schedule else "")
    return [
        f"## {experiment.name} ({experiment.figure}){' — smoke run' if experiment.is_smoke else ''}", "", *first,
        f"Claim checked{' (by the full experiment)' if experiment.is_smoke else ''}: {experiment.claim}.", "",
        f"```bash\n{command_of(experiment, seeds, alphas)}\n```", "",
        (f"{experiment.env}, times measured in a real run (`{experiment.times_from}`, replayed)"
         if experiment.times_from is not None else f"{experiment.env}, times `{experiment.scenario}`{times}")
        + (f", outages {experiment.outages}" if experiment.outages else "")
        + f", M/S grid {list(experiment.round_size_grid)}, η = {experiment.momentum}, budget "
          f"{experiment.simulated_seconds:g} simulated s, seeds {list(experiment.seeds)}, tuning seeds "
          f"{list(experiment.tuning_seeds)}, evaluation every {experiment.simulated_seconds / experiment.eval_points:g} "
          f"simulated s ({experiment.eval_episodes} episode{'' if experiment.eval_episodes == 1 else 's'} per agent environment, "
          f"{'mean action' if experiment.eval_deterministic else 'actions sampled from π_θ'}). "
          f"Every algorithm started from the same θ_0 under each seed: {'yes' if same_start else 'NO'}.", "",
        (f"Smoke settings: {experiment.settings()} stand for {experiment.differences}" if experiment.is_smoke
         else f"How it differs from the paper: {experiment.differences}"), "",
    ]


def tune(experiment: Experiment, cache: Path, workers: int, progress: bool) -> list[dict[str, Any]]:
    """Run (or resume) one Optuna study per tuned algorithm and n, ``workers`` at a time; return every trial row
    (:func:`~sb3_nigt.experiments.tuning.run_study`) with ``n_agents`` added."""
    studies = sorted({(study_algorithm(a), n) for a in experiment.algorithms for n in experiment.n_agents})
    bar = Progress(len(studies), f"{experiment.name}: tuning", progress)
    rows: list[dict[str, Any]] = []

    def done(key: tuple[str, int], found: list[dict[str, Any]]) -> None:
        rows.extend(dict(row, n_agents=key[1]) for row in found)
        bar(f"{key[0]} n={key[1]}")

    failures = pool_map({key: (run_study, (experiment, key[0], key[1], cache)) for key in studies}, workers, done)
    bar.close()
    if failures:
        raise RuntimeError(f"{len(failures)} tuning stud(ies) failed (finished trials are kept): " + "; ".join(failures))
    return sorted(rows, key=lambda r: (r["algorithm"], r["n_agents"], r["alpha"], r["round_size"]))


def chosen_configs(experiment: Experiment, rows: list[dict[str, Any]]) -> dict[tuple[str, int], tuple[float, int]]:
    """(α, round size) of every (algorithm, n): its study's chosen point.

    :raises RuntimeError: for a study without a completed trial (every trial diverged or failed).
    """
    configs = {}
    for algorithm in experiment.algorithms:
        for n in experiment.n_agents:
            chosen = [r for r in rows if r["algorithm"] == study_algorithm(algorithm) and r["n_agents"] == n and r["chosen"]]
            if not chosen:
                raise RuntimeError(f"tuning: no trial of {algorithm} at n = {n} completed (see tuning.csv)")
            configs[(algorithm, n)] = (chosen[0]["alpha"], chosen[0]["round_size"])
    return configs


def report_runs(experiment: Experiment, configs: dict[tuple[str, int], tuple[float, int]], cache: Path,
                workers: int, progress: bool) -> tuple[dict, bool]:
    """Run (or read from the cache) every reported seed; return the curves by (algorithm, n) and seed, and
    whether every algorithm started from the same θ_0 under each seed."""
    specs = [RunSpec(experiment.name, "report", a, n, configs[(a, n)][0], seed, experiment.seconds_for(n), configs[(a, n)][1])
             for n in experiment.n_agents for a in experiment.algorithms for seed in experiment.seeds]
    bar = Progress(len(specs), f"{experiment.name}: reported seeds", progress)
    paths = execute(experiment, specs, cache, workers,
                    lambda spec, cached: bar(f"{spec.algorithm} n={spec.n_agents} seed {spec.seed}{' (cached)' if cached else ''}"))
    bar.close()
    runs: dict[tuple[str, int], dict[int, Any]] = {}
    theta0: dict[tuple[int, int], set[str]] = {}
    for spec in specs:
        facts, training, evaluation = read_run(paths[spec])
        runs.setdefault((spec.algorithm, spec.n_agents), {})[spec.seed] = (training, evaluation)
        theta0.setdefault((spec.seed, spec.n_agents), set()).add(facts["theta0"])
    return runs, all(len(digests) == 1 for digests in theta0.values())


def write_tuning(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = ["algorithm", "n_agents", "alpha", "round_size", "state", "score", "seconds", "cpu_seconds", "finalist",
               "chosen"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({key: row[key] for key in columns} for row in rows)


def run_experiment(experiment: Experiment, out: Path, workers: int, progress: bool = True,
                   seeds: Optional[int] = None, extend: bool = True,
                   alphas: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """Tune, run the reported seeds, judge; where an interval straddles its verdict's boundary and fewer than
    ``experiment.max_seeds`` seeds were reported, run seeds up to ``max_seeds`` and judge again (``extend``) or
    print the command that does. Write the outputs in ``out``; return a summary (paths, configurations, verdicts,
    ``extend_command`` when seeds are still wanted). ``alphas`` (``--alpha``) replaces the tuned α of those
    algorithms, at every n, keeping their tuned round size."""
    out.mkdir(parents=True, exist_ok=True)
    cache = out.parent / "cache"  # shared by the experiments of one --out: identical runs are computed once
    start = time.perf_counter()
    rows = tune(experiment, cache, workers, progress)
    write_tuning(out / "tuning.csv", rows)
    configs = {(a, n): ((alphas or {}).get(a, alpha), size) for (a, n), (alpha, size) in
               chosen_configs(experiment, rows).items()}
    runs, same_start = report_runs(experiment, configs, cache, workers, progress)
    body, verdicts = tables(experiment, runs, configs)
    wanted = any(v["straddles"] for v in verdicts) and len(experiment.seeds) < experiment.max_seeds
    extend_command = None
    if wanted and extend:
        first = experiment.seeds[0]
        experiment = dataclasses.replace(experiment, seeds=tuple(range(first, first + experiment.max_seeds)))
        seeds = experiment.max_seeds
        runs, same_start = report_runs(experiment, configs, cache, workers, progress)
        body, verdicts = tables(experiment, runs, configs)
    elif wanted:
        extend_command = command_of(experiment, experiment.max_seeds, alphas)
    write_results(out / "results.csv", experiment, runs, configs)
    plot(out / "returns.png", experiment, runs)
    cpu = spent(cache, experiment)
    header = report_header(experiment, seeds, same_start, alphas)
    header += [
        "Tuned (tuning.csv; Optuna, successive halving over simulated seconds, then the best trials of the first rung "
        "to the whole budget): "
        + ", ".join(f"{LABELS.get(a, a)} α = {format_alpha(configs[(a, n)][0])}, M/S = {configs[(a, n)][1]} at n = {n}"
                    for n in experiment.n_agents for a in experiment.algorithms)
        + f". CPU time: {cpu / 3600:,.2f} CPU hours in all ({cpu:,.0f} CPU seconds in all: tuning trials and "
          f"reported runs, measured; {time.perf_counter() - start:,.0f} wall seconds for this command, cached work "
          "excluded).", "",
        "![returns](returns.png)", "",
    ]
    verdict_text = ["Verdicts (time to each threshold, final return and area per second together, 90% paired "
                    "bootstrap intervals; rule in docs/reproduction.md):", "", *verdict_lines(verdicts)]
    if extend_command:
        verdict_text += ["", f"An interval straddles its boundary with {len(experiment.seeds)} seeds: run "
                             f"`{extend_command}` for {experiment.max_seeds}."]
    (out / "report.md").write_text("\n".join(header) + body + "\n" + "\n".join(verdict_text) + "\n")
    return {"configs": configs, "verdicts": verdicts, "summary": summary_line(experiment, verdicts),
            "same_start": same_start, "out": out, "extend_command": extend_command, "seeds": list(experiment.seeds)}


def main(argv: Optional[list[str]] = None) -> Optional[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.workers < 1:
        build_parser().error(f"--workers: must be >= 1, got {args.workers}")
    if args.list:
        print(list_experiments(out, args.workers, args.calibrate, args.name))
        return None
    if args.name is None:
        build_parser().error("name an experiment, or --list")
    experiment = EXPERIMENTS[args.name]
    if args.smoke:
        experiment = experiment.smoke()
    try:
        if args.seeds is not None or args.first_seed:
            experiment = with_seeds(experiment, args.seeds, args.first_seed)
        if args.times_from is not None:
            experiment = with_trace_times(experiment, args.times_from)
        alphas = parse_alphas(args.alpha, experiment)
    except ValueError as exc:
        build_parser().error(str(exc))
    folder = out / (args.name + ("-smoke" if args.smoke else "") + (f"-seeds{args.first_seed}" if args.first_seed else "")
                    + ("-recorded" if args.times_from is not None else "")
                    + "".join(f"-{a}-alpha{v:g}" for a, v in alphas.items()))
    result = run_experiment(experiment, folder, args.workers, progress=not args.no_progress and sys.stderr.isatty(),
                            seeds=args.seeds, extend=not args.no_extend, alphas=alphas)
    print((folder / "report.md").read_text())
    print(f"wrote {folder}/: results.csv, tuning.csv, returns.png, report.md; cache in {out / 'cache'}/")
    if result["extend_command"]:
        print(f"an interval straddles its boundary: run `{result['extend_command']} --out {out}` for more seeds")
    return result


if __name__ == "__main__":
    main()
