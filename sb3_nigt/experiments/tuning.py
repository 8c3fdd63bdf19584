"""The paper's tuning protocol under a budget: α × round size per algorithm, per experiment and per n, with Optuna.

One Optuna study per (experiment settings, algorithm, n) tries the full grid — α ∈ 2^-10 … 2^-1 and, for Rennala
NIGT and Malenia NIGT, the round size M (S) ∈ {20, 30, 50} (App. H) — on a tuning seed that is never reported. The
budget resource is simulated seconds: a trial trains on the simulated clock and, at every evaluation time of the
experiment (:mod:`sb3_nigt.experiments.evaluation`), reports its score so far through the SB3 callback; Optuna's
:class:`~optuna.pruners.SuccessiveHalvingPruner` (reduction factor 3, first rung at a ninth of the budget) stops
the trials that trail their rung. η stays 0.1.

The score at time t is the mean evaluation return over the evaluation times in [t/2, t] (equal-weighted over the
agents' environments in App. H.3): it favours policies that are good over the second half of the time so far, and
the final score is the same quantity at the budget. Successive halving alone lets one or two trials finish, and a
survivor that falls back late would be chosen blindly; so, once the grid is done, the :data:`FINALISTS` best
trials at the first rung that were pruned are trained again to the whole budget without pruning (``finalist`` in
tuning.csv). The best completed trial wins (ties: the smaller α, then the smaller round size); diverging trials (a
non-finite gradient) fail and are never chosen.

**Deterministic and resumable.** Trials run one after the other in a fixed order (a permutation of the grid drawn
with a fixed seed), so the pruner sees the same history in every run of the study; runs on the simulated clock are
bit-identical for a seed. The study lives in a journal file under the cache (``cache/tuning/<study>.journal``): a
killed tuning resumes where it stopped, the trial it was running is run again under the same Optuna trial (its
reports, identical, are not recorded twice) and the finished ones are not.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sb3_nigt.experiments.registry import VARIANTS, Experiment

#: Successive halving's reduction factor: a third of the trials at a rung go on to the next.
REDUCTION_FACTOR = 3
#: The first rung, as a fraction of the budget: rungs at 1/9, 1/3 and the whole budget.
FIRST_RUNG = 1 / 9
#: The seed of the fixed order in which the grid's points are tried.
ORDER_SEED = 0
#: How many of the best trials at the first rung are compared at the whole budget before one is chosen.
FINALISTS = 3

#: Optuna trial states as they appear in tuning.csv.
COMPLETE, PRUNED, FAILED = "complete", "pruned", "failed"


def study_algorithm(algorithm: str) -> str:
    """The algorithm a study tunes: ``"rennala-no-outage"`` shares Rennala NIGT's study (tuning runs have every
    agent, so the two would be identical)."""
    return VARIANTS.get(algorithm, ("rennala", {}))[0]


def grid(experiment: Experiment, algorithm: str) -> list[tuple[float, int]]:
    """The (α, round size) points of a study, in the fixed order in which they are tried."""
    points = [(alpha, size) for alpha in experiment.alpha_grid for size in experiment.round_sizes(algorithm)]
    order = np.random.default_rng(ORDER_SEED).permutation(len(points))
    return [points[i] for i in order]


def study_name(experiment: Experiment, algorithm: str, n_agents: int) -> str:
    """The study's name (and journal file's stem): everything its trials depend on, including the engine version
    through :func:`~sb3_nigt.experiments.cache.settings_digest`."""
    from sb3_nigt.experiments.cache import settings_digest

    grids = repr((experiment.alpha_grid, experiment.round_sizes(algorithm), experiment.tuning_seeds[0],
                  REDUCTION_FACTOR, FIRST_RUNG, ORDER_SEED))
    return (f"tune-{study_algorithm(algorithm)}-n{n_agents}-t{experiment.seconds_for(n_agents):g}-"
            f"{settings_digest(experiment)}-{hashlib.sha256(grids.encode()).hexdigest()[:8]}")


def report_step(seconds: float) -> int:
    """The Optuna step of an evaluation at ``seconds``: whole simulated seconds, rounded up."""
    return int(math.ceil(seconds - 1e-9))


def score(values: list[tuple[float, float]], now: float) -> float:
    """The mean of the evaluation returns ``(seconds, return)`` whose time lies in [now/2, now]."""
    window = [value for seconds, value in values if now / 2 <= seconds <= now]
    return math.fsum(window) / len(window) if window else math.nan


class _Trial:
    """One trial's run: reports its score at every evaluation time and asks the pruner whether to go on."""

    def __init__(self, trial: Any, column: str, prunable: bool = True) -> None:
        self.trial, self.column, self.prunable = trial, column, prunable
        self.values: list[tuple[float, float]] = []
        self.pruned = False

    def __call__(self, index: int, seconds: float, returns: dict[str, float]) -> bool:
        self.values.append((seconds, returns[self.column]))
        if index == 0:  # θ_0: the same for every trial
            return False
        self.trial.report(score(self.values, seconds), report_step(seconds))
        self.pruned = self.prunable and bool(self.trial.should_prune())
        return self.pruned


def _open_study(path: Path, name: str, experiment: Experiment, n_agents: int) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path.parent.mkdir(parents=True, exist_ok=True)
    budget = experiment.seconds_for(n_agents)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, report_step(budget * FIRST_RUNG)),
                                                    reduction_factor=REDUCTION_FACTOR)
    return optuna.create_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path))),
                               direction="maximize", load_if_exists=True, pruner=pruner,
                               sampler=optuna.samplers.RandomSampler(seed=ORDER_SEED))


def _run_trial(experiment: Experiment, algorithm: str, n_agents: int, trial: Any, cache: Path,
               finalist: bool = False) -> None:
    """Train one trial and tell the study its outcome (complete, pruned or failed); a finalist is never pruned."""
    import optuna

    from sb3_nigt.experiments.cache import record_cost
    from sb3_nigt.experiments.evaluation import MEAN, SHARED
    from sb3_nigt.experiments.runner import RunSpec, train

    alpha = trial.suggest_categorical("alpha", list(experiment.alpha_grid))
    size = trial.suggest_categorical("round_size", list(experiment.round_sizes(algorithm)))
    spec = RunSpec(experiment.name, "tune", algorithm, n_agents, float(alpha), experiment.tuning_seeds[0],
                   experiment.seconds_for(n_agents), int(size))
    if finalist:
        trial.set_user_attr("finalist", True)
    hook = _Trial(trial, MEAN if experiment.heterogeneous_envs else SHARED, prunable=not finalist)
    start = time.process_time()
    try:
        facts = train(experiment, spec, report=hook, tuning=True)
    except ValueError as error:  # a diverging α: a non-finite gradient, reward or observation; anything else is a bug
        if "non-finite" not in str(error) and "NaN" not in str(error):
            raise
        trial.set_user_attr("error", str(error)[:200])
        trial.set_user_attr("cpu_seconds", time.process_time() - start)
        trial.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    trial.set_user_attr("cpu_seconds", facts["cpu_seconds"])
    trial.set_user_attr("simulated_seconds", facts["simulated_seconds"])
    record_cost(cache, experiment, "tune", algorithm, n_agents, facts["simulated_seconds"], facts["cpu_seconds"])
    final = score(hook.values, hook.values[-1][0]) if len(hook.values) > 1 else math.nan
    if hook.pruned:
        trial.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    elif math.isfinite(final):
        trial.study.tell(trial, final)
    else:
        trial.study.tell(trial, state=optuna.trial.TrialState.FAIL)


def _key(frozen: Any) -> Optional[tuple[float, int]]:
    """The grid point of a stored trial: its parameters, or the fixed ones it was enqueued with."""
    params = frozen.system_attrs.get("fixed_params", frozen.params)
    if set(params) != {"alpha", "round_size"}:
        return None
    return float(params["alpha"]), int(params["round_size"])


def _next_trial(study: Any, point: tuple[float, int], running: dict[tuple[float, int], int]) -> Any:
    """The Optuna trial of ``point``: the one a killed run left running (run again under the same trial), else a
    new one enqueued with the point's parameters.

    :raises RuntimeError: if the trial Optuna hands out is for another point (a journal edited by hand).
    """
    import optuna

    if point in running:
        return optuna.trial.Trial(study, running.pop(point))
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    if not any(_key(t) == point for t in waiting):
        study.enqueue_trial({"alpha": point[0], "round_size": point[1]})
    trial = study.ask()
    found = _key(study._storage.get_trial(trial._trial_id))
    if found != point:
        raise RuntimeError(f"tuning: the study {study.study_name} handed out the trial of {found} for {point}")
    return trial


def run_study(experiment: Experiment, algorithm: str, n_agents: int, cache: Path) -> list[dict[str, Any]]:
    """Run (or resume) the study of ``algorithm`` at ``n_agents`` and return one row per grid point: ``alpha``,
    ``round_size``, ``state`` (complete, pruned or failed), ``score``, ``seconds`` (simulated seconds reached),
    ``cpu_seconds``, ``finalist`` (1 where the row is a finalist's run to the whole budget, :func:`finalists`) and
    ``chosen`` (1 for the best point)."""
    from optuna.trial import TrialState

    algorithm = study_algorithm(algorithm)
    name = study_name(experiment, algorithm, n_agents)
    study = _open_study(cache / "tuning" / f"{name}.journal", name, experiment, n_agents)
    finished: set[tuple[float, int]] = set()
    running: dict[tuple[float, int], int] = {}
    for frozen in study.get_trials(deepcopy=False):
        key = _key(frozen)
        if key is not None and frozen.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            finished.add(key)
        elif key is not None and frozen.state == TrialState.RUNNING:
            running[key] = frozen._trial_id  # a killed run's trial
    for point in grid(experiment, algorithm):
        if point not in finished:
            _run_trial(experiment, algorithm, n_agents, _next_trial(study, point, running), cache)
    for point in finalists(study, experiment, n_agents):
        _run_trial(experiment, algorithm, n_agents, _next_trial(study, point, running), cache, finalist=True)
    return study_rows(study, experiment, algorithm)


def finalists(study: Any, experiment: Experiment, n_agents: int) -> list[tuple[float, int]]:
    """The grid points still to be trained to the whole budget: of the :data:`FINALISTS` best trials at the first
    rung (their score at the first evaluation at or after it; ties: the smaller α, then the smaller round size),
    those that were pruned and have no finished finalist trial yet. Failed trials are not ranked."""
    from optuna.trial import TrialState

    rung = max(1, report_step(experiment.seconds_for(n_agents) * FIRST_RUNG))
    ranked, done = [], set()
    for frozen in study.get_trials(deepcopy=False):
        key = _key(frozen)
        if key is None:
            continue
        if frozen.user_attrs.get("finalist"):
            if frozen.state != TrialState.RUNNING:
                done.add(key)  # trained to the budget: complete, or failed (diverged)
            continue
        if frozen.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        reached = [step for step in frozen.intermediate_values if step >= rung]
        if reached:
            ranked.append((frozen.intermediate_values[min(reached)], key, frozen.state))
    ranked.sort(key=lambda item: (-item[0], item[1][0], item[1][1]))
    return [key for _, key, state in ranked[:FINALISTS] if state == TrialState.PRUNED and key not in done]


def study_rows(study: Any, experiment: Experiment, algorithm: str) -> list[dict[str, Any]]:
    """One row per grid point of a finished study (the last trial of each point, a finalist's where it has one), the
    best one marked."""
    from optuna.trial import TrialState

    states = {TrialState.COMPLETE: COMPLETE, TrialState.PRUNED: PRUNED, TrialState.FAIL: FAILED}
    latest: dict[tuple[float, int], Any] = {}
    for frozen in study.get_trials(deepcopy=False):
        if frozen.state in states and len(frozen.params) == 2:
            latest[(float(frozen.params["alpha"]), int(frozen.params["round_size"]))] = frozen
    rows = []
    for (alpha, size), frozen in sorted(latest.items()):
        values = frozen.intermediate_values
        value = frozen.value if frozen.state == TrialState.COMPLETE else (values[max(values)] if values else math.nan)
        rows.append(dict(algorithm=algorithm, alpha=alpha, round_size=size, state=states[frozen.state],
                         score=float(value), seconds=float(frozen.user_attrs.get("simulated_seconds", math.nan)),
                         cpu_seconds=float(frozen.user_attrs.get("cpu_seconds", 0.0)),
                         finalist=int(bool(frozen.user_attrs.get("finalist"))), chosen=0))
    best = best_row(rows)
    if best is not None:
        best["chosen"] = 1
    return rows


def best_row(rows: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The completed row with the highest score (ties: the smaller α, then the smaller round size), or None."""
    complete = [row for row in rows if row["state"] == COMPLETE and math.isfinite(row["score"])]
    if not complete:
        return None
    return max(complete, key=lambda row: (row["score"], -row["alpha"], -row["round_size"]))


def expected_fraction(experiment: Experiment, n_agents: int) -> float:
    """The expected share of the budget a trial runs under successive halving, if a third of the trials pass each
    rung: Σ_j 3^(−j) × (the j-th stretch between the evaluation times at which rungs are decided). For
    :mod:`sb3_nigt.experiments.costs`' estimate only."""
    budget = experiment.seconds_for(n_agents)
    times = experiment.eval_times(n_agents)
    rung, stops = budget * FIRST_RUNG, []
    while rung < budget:
        stops.append(next(t for t in times if report_step(t) >= report_step(rung)))
        rung *= REDUCTION_FACTOR
    stops.append(budget)
    fraction, previous = 0.0, 0.0
    for j, stop in enumerate(stops):
        fraction += REDUCTION_FACTOR ** -j * (stop - previous) / budget
        previous = stop
    return fraction
