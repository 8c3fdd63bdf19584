"""Running an experiment: one cached run per (algorithm, n, α, round size, seed, budget), spread over the cores.

A run is one ``model.learn`` on the simulated clock (inline backend, one torch thread) that stops when the clock
passes the budget; its training curve (one row per round) and its evaluation curves (one row per evaluation time
and agent environment, :mod:`sb3_nigt.experiments.evaluation`) are written to the cache as soon as it ends, under
a name that holds every setting and the simulated clock's engine version
(:data:`sb3_nigt.version.ENGINE_VERSION`), so an interrupted experiment resumes where it stopped, re-running one
seed redoes only that seed, and runs of two engine versions never mix. Every finished run (and tuning trial)
appends its CPU cost to the cache's ledger (:mod:`sb3_nigt.experiments.costs`).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from sb3_nigt.experiments.cache import record_cost, settings_digest
from sb3_nigt.experiments.registry import VARIANTS, Experiment, recorded_times

__all__ = ["RunSpec", "build_model", "execute", "read_run", "run_one", "settings_digest", "train"]

#: Columns of a cached run: ``curve`` is ``train`` (mean of the last 100 training trajectories, per round) or
#: ``eval`` (evaluation of the current θ at the fixed times); ``env`` names the environment column.
RUN_COLUMNS = ["curve", "env", "simulated_seconds", "env_steps", "communications", "mean_return"]

Curve = list[tuple[float, int, int, float]]  # (simulated seconds, env steps, communications, return)


@dataclass(frozen=True)
class RunSpec:
    """One run of an experiment.

    :param experiment: the experiment's name.
    :param phase: ``"report"`` (a reported seed) or ``"calibrate"`` (a short run that measures the cost).
    :param algorithm: a label of :data:`~sb3_nigt.experiments.registry.VARIANTS` or ``"rennala-no-outage"``.
    :param n_agents: n.
    :param alpha: α.
    :param seed: the seed (the same θ_0 for every algorithm).
    :param seconds: budget in simulated seconds.
    :param round_size: M (Rennala NIGT), S (Malenia NIGT), or M_init of the others' warm-up round.
    """

    experiment: str
    phase: str
    algorithm: str
    n_agents: int
    alpha: float
    seed: int
    seconds: float
    round_size: int = 20

    def file_name(self, settings: str) -> str:
        """The cache file: every setting in the name, plus the digest of the experiment's other settings."""
        return (f"{self.phase}-{self.algorithm}-n{self.n_agents}-a{self.alpha:.6g}-m{self.round_size}-s{self.seed}-"
                f"t{self.seconds:g}-{settings}.csv")


def build_model(experiment: Experiment, spec: RunSpec, tuning: bool = False) -> Any:
    """The model of a run (not yet trained); ``tuning``: a tuning trial (every agent present, no outage)."""
    from sb3_nigt.compare import ALGORITHMS, ROUND_SIZED, scenario_times
    from sb3_nigt.envs import heterogeneous_envs

    key, extra = VARIANTS.get(spec.algorithm, ("rennala", {}))
    compute: Any
    compute, communication = scenario_times(experiment.scenario, spec.n_agents)
    if experiment.compute_times is not None:
        compute = list(experiment.compute_times)
    if experiment.compute_schedule is not None:
        compute = experiment.compute_schedule
    if experiment.times_from is not None:  # a recorded real run's agents (docs/calibration.md)
        recorded = recorded_times(experiment.times_from)
        compute, communication = recorded.compute, recorded.communication
    # The outage is the experiment's treatment, not a setting to tune for: tuning runs have every agent.
    outages = experiment.outages if spec.algorithm != "rennala-no-outage" and not tuning else None
    env: Any = heterogeneous_envs(experiment.env, spec.n_agents) if experiment.heterogeneous_envs else experiment.env
    kwargs: dict[str, Any] = dict(learning_rate=spec.alpha, eta=experiment.momentum,
                                  n_agents=spec.n_agents, compute_times=compute, communication_times=communication,
                                  seed=spec.seed)
    # M sizes Rennala's and Malenia's rounds; the others only size an observation warm-up round with it (M_init).
    kwargs["round_size" if key in ROUND_SIZED else "initial_round_size"] = spec.round_size
    if outages is not None:
        kwargs["outages"] = outages
    kwargs.update(extra)
    return ALGORITHMS[key]("MlpPolicy", env, **kwargs)


def train(experiment: Experiment, spec: RunSpec, report: Optional[Callable[[int, float, dict[str, float]], bool]] = None,
          tuning: bool = False) -> dict[str, Any]:
    """Train one run to its budget with the training recorder and the :class:`~sb3_nigt.experiments.evaluation.
    Evaluator`; return its facts: ``rows`` (``(curve, env, seconds, steps, communications, return)``), ``theta0``
    (a digest of θ_0), ``cpu_seconds`` (this process's CPU time), ``env_steps``, ``simulated_seconds``, ``stopped`` (the ``report`` hook
    stopped it) and ``warnings`` ((text, category, file name, line, module) each, for :func:`replay_warnings`).

    The training curve's return is the mean of the last 100 training trajectories; with heterogeneous environments
    it is the equal-weighted return (1/n) Σ_i (mean of agent i's last 100 trajectories).
    """
    import torch as th
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.logger import Logger

    from sb3_nigt.compare import Recorder
    from sb3_nigt.experiments.evaluation import MEAN, SHARED, Evaluator, eval_env_factories, eval_env_labels

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
        model = build_model(experiment, spec, tuning=tuning)
        # no log output: SB3's default logger would make an empty folder in the temporary directory per run
        model.set_logger(Logger(folder=None, output_formats=[]))
        theta0 = hashlib.sha256(model.get_flat_params().tobytes()).hexdigest()[:12]
        recorder = (EqualWeightRecorder if experiment.heterogeneous_envs else Recorder)(window=100, max_seconds=spec.seconds)
        # A calibration run measures training's cost: θ_0 and its end only (evaluation costs per run, not per second).
        times = ([0.0, spec.seconds] if spec.phase == "calibrate" else
                 [t * spec.seconds / experiment.seconds_for(spec.n_agents) for t in experiment.eval_times(spec.n_agents)])
        evaluator = Evaluator(times, eval_env_factories(experiment, spec.n_agents),
                              eval_env_labels(experiment, spec.n_agents), experiment.eval_episodes, spec.seed, report,
                              deterministic=experiment.eval_deterministic)
        start = time.process_time()
        model.learn(experiment.max_steps, callback=CallbackList([evaluator, recorder]))
        cpu = time.process_time() - start
        model.close()  # its workers: the next run starts its own
    train_label = MEAN if experiment.heterogeneous_envs else SHARED
    rows = [("train", train_label, *row[:4]) for row in recorder.rows]
    rows += [("eval", label, seconds, steps, comms, value) for seconds, steps, comms, label, value in evaluator.rows]
    return {"rows": rows, "theta0": theta0, "cpu_seconds": cpu, "env_steps": int(model.num_timesteps),
            "simulated_seconds": float(model.simulated_time), "stopped": evaluator.stopped,
            "warnings": [(str(w.message), w.category, w.filename, w.lineno, module_name(w.filename)) for w in caught]}


def run_one(experiment: Experiment, spec: RunSpec, path: str) -> dict[str, Any]:
    """Train one run (:func:`train`) and write its curves to ``path`` (atomically: a partial file never looks
    finished); append its cost to the ledger beside it. Returns :func:`train`'s facts without the rows."""
    facts = train(experiment, spec)
    target = Path(path)
    partial = target.with_suffix(".partial")
    with open(partial, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f"# theta0={facts['theta0']} cpu_seconds={facts['cpu_seconds']:.3f}"])
        writer.writerow(RUN_COLUMNS)
        writer.writerows(facts.pop("rows"))
    os.replace(partial, target)
    record_cost(target.parent, experiment, spec.phase, spec.algorithm, spec.n_agents, facts["simulated_seconds"],
                facts["cpu_seconds"])
    return facts


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


def read_run(path: Path) -> tuple[dict[str, str], Curve, dict[str, Curve]]:
    """A cached run: its header facts (``theta0``, ``cpu_seconds``), its training curve and its evaluation curves
    (column → rows, :func:`~sb3_nigt.experiments.evaluation.eval_env_labels` plus ``"mean"`` where several)."""
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    facts = dict(item.split("=", 1) for item in lines[0][0].lstrip("# ").split())
    training: Curve = []
    evaluation: dict[str, Curve] = {}
    for curve, env, seconds, steps, communications, value in lines[2:]:
        row = (float(seconds), int(steps), int(communications), float(value))
        (training if curve == "train" else evaluation.setdefault(env, [])).append(row)
    return facts, training, evaluation


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

    def done(spec: RunSpec, facts: dict[str, Any]) -> None:
        replay_warnings(facts)
        if progress is not None:
            progress(spec, False)

    failures = pool_map({spec: (run_one, (experiment, spec, str(paths[spec]))) for spec in todo}, workers, done)
    if failures:
        raise RuntimeError(f"{len(failures)} run(s) failed (the others are cached): " + "; ".join(failures))
    return paths


def pool_map(jobs: dict[Any, tuple[Callable[..., Any], tuple]], workers: int,
             done: Callable[[Any, Any], Any]) -> list[str]:
    """Call every job ``function(*args)``, ``workers`` at a time in fresh processes (in this one for
    ``workers`` <= 1), and ``done(key, result)`` in this process as each ends; return the failures' descriptions.

    The pool is :class:`concurrent.futures.ProcessPoolExecutor` (one job per process). A worker that dies (killed
    from outside, out of memory) breaks the pool: every job not yet finished is then reported as failed instead of
    being waited for. Ctrl-C, SIGTERM (raised as SystemExit here) or an error in ``done`` cancels the queued jobs
    and terminates the running ones: no job is left behind.
    """
    failures: list[str] = []
    if workers <= 1:
        for key, (function, args) in jobs.items():
            done(key, function(*args))
        return failures
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from sb3_nigt.algorithms.base import _terminate_like_interrupt

    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    before = set(mp.active_children())
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method), max_tasks_per_child=1)
    try:
        with _terminate_like_interrupt():
            pending = {executor.submit(function, *args): key for key, (function, args) in jobs.items()}
            while pending:
                finished, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in finished:
                    key = pending.pop(future)
                    try:
                        value = future.result()
                    except Exception as error:  # reported with the others by the caller
                        failures.append(f"{key}: {type(error).__name__}: {error}")
                        continue
                    done(key, value)
    except BaseException:
        executor.shutdown(wait=False, cancel_futures=True)
        _terminate(set(mp.active_children()) - before)
        raise
    executor.shutdown(wait=True)
    return failures


def _terminate(processes: set[Any], grace: float = 5.0) -> None:
    """SIGTERM the pool's worker processes, then SIGKILL those still alive after ``grace`` seconds."""
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(1.0)
