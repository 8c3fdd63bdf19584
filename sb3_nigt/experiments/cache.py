"""The cache's keys and its cost ledger (docs/reproduction.md, "Cache" and "Cost").

Every cached run and tuning study is named with :func:`settings_digest`, which holds the simulated clock's engine
version (:data:`sb3_nigt.version.ENGINE_VERSION`), so runs of two engine versions never mix. Every finished run —
a reported seed, a tuning trial, a calibration run — appends one line to ``costs.csv`` in the cache: the settings
digest, the experiment, the phase, the algorithm, n, the simulated seconds it covered and the CPU seconds it took.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import asdict
from pathlib import Path

from sb3_nigt.experiments.registry import Experiment

#: The cache files' layout; part of every cache key, with the engine version.
CACHE_FORMAT = 2
LEDGER = "costs.csv"
LEDGER_COLUMNS = ["digest", "experiment", "phase", "algorithm", "n_agents", "simulated_seconds", "cpu_seconds"]


def settings_digest(experiment: Experiment) -> str:
    """8 hex digits of everything a run's file depends on besides its :class:`RunSpec`: the experiment's settings
    (not its seeds, grids or thresholds), the evaluation protocol, the cache layout and the simulated clock's
    engine version (:data:`sb3_nigt.version.ENGINE_VERSION`), so a changed setting or a new engine never reuses an
    old run."""
    from sb3_nigt.version import ENGINE_VERSION

    relevant = {key: value for key, value in asdict(experiment).items()
                if key in ("env", "scenario", "compute_times", "heterogeneous_envs", "outages", "momentum",
                           "max_steps", "eval_points", "eval_episodes", "eval_deterministic")}
    relevant["compute_schedule"] = repr(experiment.compute_schedule)
    if experiment.times_from is not None:  # the recorded times themselves, wherever the file lies
        relevant["times_from"] = hashlib.sha256(Path(experiment.times_from).read_bytes()).hexdigest()
    relevant["engine_version"] = ENGINE_VERSION
    relevant["cache_format"] = CACHE_FORMAT
    return hashlib.sha256(repr(sorted(relevant.items())).encode()).hexdigest()[:8]


def record_cost(cache: Path, experiment: Experiment, phase: str, algorithm: str, n_agents: int,
                simulated_seconds: float, cpu_seconds: float) -> None:
    """Append one run's cost to the ledger (one ``write`` of one line in append mode, so processes may share it)."""
    path = Path(cache) / LEDGER
    path.parent.mkdir(parents=True, exist_ok=True)
    line = ",".join([settings_digest(experiment), experiment.name, phase, algorithm, str(n_agents),
                     f"{simulated_seconds:.6g}", f"{cpu_seconds:.3f}"]) + "\n"
    if not path.exists():
        line = ",".join(LEDGER_COLUMNS) + "\n" + line
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_ledger(cache: Path) -> list[dict[str, str]]:
    """The ledger's rows (none if there is no ledger)."""
    path = Path(cache) / LEDGER
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("digest") != "digest"]
