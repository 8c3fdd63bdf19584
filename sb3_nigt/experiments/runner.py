"""Running an experiment: one cached run per (algorithm, n, α, seed, budget), spread over the cores.

A run is one ``model.learn`` on the simulated clock (inline backend, one torch thread) that stops when the clock
passes the budget; its curve (one row per round) is written to the cache as soon as it ends, under a name that
holds every setting, so an interrupted experiment resumes where it stopped and re-running one seed redoes only
that seed.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from sb3_nigt.experiments.registry import VARIANTS, Experiment, recorded_times

#: Columns of a cached run (one row per round; AFedPG: per n updates).
RUN_COLUMNS = ["simulated_seconds", "env_steps", "communications", "mean_return"]


@dataclass(frozen=True)
class RunSpec:
    """One run of an experiment.

    :param experiment: the experiment's name.
    :param phase: ``"tune"`` or ``"report"``.
    :param algorithm: a label of :data:`~sb3_nigt.experiments.registry.VARIANTS` or ``"rennala-no-outage"``.
    :param n_agents: n.
    :param alpha: α.
    :param seed: the seed (the same θ_0 for every algorithm).
    :param seconds: budget in simulated seconds.
    """

    experiment: str
    phase: str
    algorithm: str
    n_agents: int
    alpha: float
    seed: int
    seconds: float

    def file_name(self, settings: str) -> str:
        """The cache file: every setting in the name, plus a digest of the experiment's other settings."""
        return (f"{self.phase}-{self.algorithm}-n{self.n_agents}-a{self.alpha:.6g}-s{self.seed}-t{self.seconds:g}-"
                f"{settings}.csv")


def settings_digest(experiment: Experiment) -> str:
    """8 hex digits of the experiment's settings that a run depends on (not its seeds, grid or thresholds), so a
    changed setting never reuses an old run."""
    relevant = {key: value for key, value in asdict(experiment).items()
                if key in ("env", "scenario", "compute_times", "heterogeneous_envs", "outages", "batch_size", "momentum",
                           "max_steps")}
    if experiment.times_from is not None:  # the recorded times themselves, wherever the file lies
        relevant["times_from"] = hashlib.sha256(Path(experiment.times_from).read_bytes()).hexdigest()
    if experiment.heterogeneous_envs:  # their curve is the equal-weighted return (see run_one)
        relevant["metric"] = "equal-weight"
    return hashlib.sha256(repr(sorted(relevant.items())).encode()).hexdigest()[:8]


def build_model(experiment: Experiment, spec: RunSpec) -> Any:
    """The model of a run (not yet trained)."""
    from sb3_nigt.compare import ALGORITHMS, ROUND_SIZED, scenario_times
    from sb3_nigt.envs import heterogeneous_envs

    key, extra = VARIANTS.get(spec.algorithm, ("rennala", {}))
    compute, communication = scenario_times(experiment.scenario, spec.n_agents)
    if experiment.compute_times is not None:
        compute = list(experiment.compute_times)
    if experiment.times_from is not None:
        recorded = recorded_times(experiment.times_from)
        compute, communication = recorded.compute, recorded.communication
    # The outage is the experiment's treatment, not a setting to tune for: tuning runs have every agent.
    outages = experiment.outages if spec.algorithm != "rennala-no-outage" and spec.phase != "tune" else None
    env: Any = heterogeneous_envs(experiment.env, spec.n_agents) if experiment.heterogeneous_envs else experiment.env
    kwargs: dict[str, Any] = dict(learning_rate=spec.alpha, eta=experiment.momentum,
                  n_agents=spec.n_agents, compute_times=compute, communication_times=communication, seed=spec.seed)
    # M sizes Rennala's and Malenia's rounds; the others only size an observation warm-up round with it (M_init).
    kwargs["round_size" if key in ROUND_SIZED else "initial_round_size"] = experiment.batch_size
    if outages is not None:
        kwargs["outages"] = outages
    kwargs.update(extra)
    return ALGORITHMS[key]("MlpPolicy", env, **kwargs)


def run_one(experiment: Experiment, spec: RunSpec, path: str) -> dict[str, Any]:
    """Train one run and write its curve to ``path`` (atomically: a partial file never looks finished).

    The curve's return is the mean of the last 100 training trajectories; with heterogeneous environments it is
    the equal-weighted return (1/n) Σ_i (mean of agent i's last 100 trajectories), the paper's objective J, which
    the plain mean would bias towards the fast agents' environments.

    Returns the run's facts: wall seconds, environment steps, simulated seconds, a digest of θ_0, and the
    warnings the run raised (``warnings``: (text, category, file name, line, module) each), for
    :func:`replay_warnings`.
    """
    import torch as th

    from sb3_nigt.compare import Recorder

    class EqualWeightRecorder(Recorder):
        """Records (1/n) Σ_i mean return of agent i's last ``window`` trajectories, once every agent has one."""

        def _on_rollout_end(self) -> None:
            buffers = self.model.agent_ep_info_buffer
            if not buffers or not all(buffers):
                return
            recent = [list(buffer)[-self.window:] for buffer in buffers]
            means = [sum(ep["r"] for ep in episodes) / len(episodes) for episodes in recent]
            self.rows.append((float(self.model.simulated_time), int(self.model.num_timesteps),
                              int(self.model.n_communications), float(sum(means) / len(means)), math.nan))

    th.set_num_threads(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every warning is kept, and shown by the main process's filters
        model = build_model(experiment, spec)
        theta0 = hashlib.sha256(model.get_flat_params().tobytes()).hexdigest()[:12]
        recorder = (EqualWeightRecorder if experiment.heterogeneous_envs else Recorder)(window=100, max_seconds=spec.seconds)
        start = time.perf_counter()
        model.learn(experiment.max_steps, callback=recorder)
        wall = time.perf_counter() - start
        model.close()  # its workers: the next run starts its own
    target = Path(path)
    partial = target.with_suffix(".partial")
    with open(partial, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f"# theta0={theta0} wall_seconds={wall:.3f}"])
        writer.writerow(RUN_COLUMNS)
        writer.writerows([row[:4] for row in recorder.rows])
    os.replace(partial, target)
    return {"wall_seconds": wall, "env_steps": int(model.num_timesteps), "simulated_seconds": float(model.simulated_time),
            "theta0": theta0, "warnings": [(str(w.message), w.category, w.filename, w.lineno, module_name(w.filename)) for w in caught]}


def module_name(filename: str) -> Optional[str]:
    """The dotted module name of a source file found under ``sys.path`` (what a warning filter's module matches),
    or None."""
    path = Path(filename).with_suffix("")
    for entry in sorted((Path(e).resolve() for e in sys.path if e), key=lambda e: len(e.parts), reverse=True):
        if path.is_relative_to(entry):
            parts = path.relative_to(entry).parts
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or None
    return None


#: The registry of :func:`replay_warnings`: a warning shown once stays shown once for the whole command.
_SHOWN: dict = {}


def replay_warnings(facts: dict[str, Any]) -> None:
    """Warn, in this process, what one run warned (:func:`run_one`'s ``warnings``), through this process's filters.

    Each run of a pool works in a fresh process (``maxtasksperchild=1``), so a warning shown once per process (a
    gymnasium deprecation of Reacher-v4, say) would come back once per run; replayed here with one registry for the
    whole command, the usual "default"/"once" filters show it once.

    :param facts: a run's facts.
    """
    for text, category, filename, lineno, module in facts.get("warnings", ()):
        warnings.warn_explicit(text, category, filename, lineno, module=module, registry=_SHOWN)


def read_run(path: Path) -> tuple[dict[str, str], list[tuple[float, int, int, float]]]:
    """A cached run: its header facts (``theta0``, ``wall_seconds``) and its rows."""
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    facts = dict(item.split("=", 1) for item in lines[0][0].lstrip("# ").split())
    rows = [(float(r[0]), int(r[1]), int(r[2]), float(r[3])) for r in lines[2:]]
    return facts, rows


def execute(experiment: Experiment, specs: list[RunSpec], cache: Path, workers: int,
            progress: Optional[Callable[[RunSpec, bool], None]] = None) -> dict[RunSpec, Path]:
    """Run every spec whose cache file is missing, ``workers`` at a time in separate processes; return the cache
    path of each spec. ``progress(spec, cached)`` is called as each run is found or finishes.

    :raises RuntimeError: if a run fails (the other runs' results stay cached).
    """
    cache.mkdir(parents=True, exist_ok=True)
    digest = settings_digest(experiment)
    paths = {spec: cache / spec.file_name(digest) for spec in specs}
    todo = [spec for spec in specs if not paths[spec].exists()]
    for spec in specs:
        if spec not in todo and progress is not None:
            progress(spec, True)
    if not todo:
        return paths
    if workers <= 1:
        for spec in todo:
            replay_warnings(run_one(experiment, spec, str(paths[spec])))
            if progress is not None:
                progress(spec, False)
        return paths
    import multiprocessing as mp

    from sb3_nigt.algorithms.base import _terminate_like_interrupt

    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    failures: list[str] = []
    # Pool's __exit__ terminates the workers, so Ctrl-C, SIGTERM (raised as SystemExit here) or an error leaves no
    # run behind; the runs that had finished are already cached.
    with _terminate_like_interrupt(), mp.get_context(method).Pool(processes=workers, maxtasksperchild=1) as pool:
        pending = {spec: pool.apply_async(run_one, (experiment, spec, str(paths[spec]))) for spec in todo}
        while pending:
            finished = [spec for spec, result in pending.items() if result.ready()]
            if not finished:
                time.sleep(0.2)
                continue
            for spec in finished:
                result = pending.pop(spec)
                try:
                    replay_warnings(result.get())
                except Exception as error:  # reported with the others below
                    failures.append(f"{spec}: {type(error).__name__}: {error}")
                    continue
                if progress is not None:
                    progress(spec, False)
    if failures:
        raise RuntimeError(f"{len(failures)} run(s) failed (the others are cached): " + "; ".join(failures))
    return paths


def tuning_score(rows: list[tuple[float, int, int, float]], seconds: float) -> float:
    """Mean training return over the rounds that ended in the last quarter of the run's simulated time; the last
    round's return if none did (rounds longer than a quarter of the budget); −inf for a run without a round."""
    tail = [r[3] for r in rows if r[0] >= 0.75 * seconds and math.isfinite(r[3])]
    if tail:
        return float(sum(tail) / len(tail))
    return float(rows[-1][3]) if rows and math.isfinite(rows[-1][3]) else -math.inf
