"""What the experiments cost, measured: a ledger of every run's CPU seconds, and estimates drawn from it.

Every finished run — a reported seed, a tuning trial, a calibration run — appends one line to ``costs.csv`` in the
cache: the experiment's settings digest (engine version included), the experiment, the phase, the algorithm, n,
the simulated seconds it covered and the CPU seconds it took (``time.process_time`` of its process, evaluation
included). ``--list`` estimates an experiment's CPU time from the CPU seconds per simulated second measured for
the same settings, algorithm and n (any experiment's runs with the same digest count), and prints beside it the
CPU time the experiment's own runs took. Where nothing is measured yet, ``--calibrate`` runs one short run per
algorithm and n (:data:`CALIBRATION_SHARE` of the budget, at the middle of the grids) to measure it; policies
that learn play longer episodes, so a calibration underestimates a long run (the runs' own costs replace it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from sb3_nigt.experiments.cache import read_ledger, settings_digest
from sb3_nigt.experiments.registry import Experiment

#: A calibration run covers this share of the budget.
CALIBRATION_SHARE = 0.02


def rate(rows: list[dict[str, str]], digest: str, algorithm: str, n_agents: int) -> Optional[float]:
    """CPU seconds per simulated second of ``algorithm`` at ``n_agents`` under the settings ``digest`` (all phases
    pooled: Σ CPU / Σ simulated seconds), or None if nothing is measured."""
    from sb3_nigt.experiments.tuning import study_algorithm

    names = {algorithm, study_algorithm(algorithm)}
    matching = [r for r in rows if r["digest"] == digest and r["algorithm"] in names and int(r["n_agents"]) == n_agents]
    simulated = math.fsum(float(r["simulated_seconds"]) for r in matching)
    return math.fsum(float(r["cpu_seconds"]) for r in matching) / simulated if simulated > 0 else None


def planned_seconds(experiment: Experiment, algorithm: str, n_agents: int, seeds: Optional[int] = None) -> float:
    """Simulated seconds the experiment runs for one algorithm and n: its tuning trials (their expected share of
    the budget under successive halving, and at most :data:`~sb3_nigt.experiments.tuning.FINALISTS` finalists run
    to the whole budget) and ``seeds`` reported seeds (default: the seeds first reported; the straddle rule may
    extend them to ``experiment.max_seeds``)."""
    from sb3_nigt.experiments.tuning import FINALISTS, expected_fraction, study_algorithm

    budget = experiment.seconds_for(n_agents)
    shared = algorithm != study_algorithm(algorithm) and study_algorithm(algorithm) in experiment.algorithms
    trials = experiment.trials(algorithm)
    tuning = 0.0 if shared else (trials * expected_fraction(experiment, n_agents) + min(FINALISTS, trials)) * budget
    return tuning + (len(experiment.seeds) if seeds is None else seeds) * budget


def estimate(cache: Path, experiment: Experiment,
             seeds: Optional[int] = None) -> tuple[Optional[float], list[tuple[str, int]]]:
    """(estimated CPU seconds of the whole experiment with ``seeds`` reported seeds (default: those first
    reported), or None; the (algorithm, n) pairs not measured yet)."""
    rows, digest = read_ledger(cache), settings_digest(experiment)
    total, missing = 0.0, []
    for algorithm in experiment.algorithms:
        for n in experiment.n_agents:
            measured = rate(rows, digest, algorithm, n)
            if measured is None:
                missing.append((algorithm, n))
                continue
            total += measured * planned_seconds(experiment, algorithm, n, seeds)
    return (None if missing else total), missing


def spent(cache: Path, experiment: Experiment) -> float:
    """CPU seconds the experiment's own tuning trials and reported runs took (calibration runs excluded)."""
    digest = settings_digest(experiment)
    return math.fsum(float(r["cpu_seconds"]) for r in read_ledger(cache)
                     if r["digest"] == digest and r["experiment"] == experiment.name and r["phase"] != "calibrate")


def calibrate(experiment: Experiment, cache: Path, workers: int) -> list[tuple[str, int]]:
    """Run one short calibration run per (algorithm, n) without a measured cost; return the pairs run."""
    from sb3_nigt.experiments.runner import RunSpec, execute

    _, missing = estimate(cache, experiment)
    alpha = experiment.alpha_grid[len(experiment.alpha_grid) // 2]
    specs = [RunSpec(experiment.name, "calibrate", algorithm, n, alpha, experiment.tuning_seeds[0],
                     experiment.seconds_for(n) * CALIBRATION_SHARE, experiment.round_sizes(algorithm)[0])
             for algorithm, n in missing]
    execute(experiment, specs, cache, workers)
    return missing
