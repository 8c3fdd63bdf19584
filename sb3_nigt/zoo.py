"""RL Baselines3 Zoo (rl-zoo3) integration: train, enjoy, plot and tune every sb3-nigt algorithm with the zoo.

Usage (rl-zoo3's own arguments, unchanged; the algorithm names are ``rennala_nigt``, ``malenia_nigt``,
``synchronized_nigt`` and ``afedpg``)::

    python -m sb3_nigt.zoo train --algo rennala_nigt --env InvertedPendulum-v5 -f logs/
    python -m sb3_nigt.zoo enjoy --algo rennala_nigt --env InvertedPendulum-v5 -f logs/ --no-render
    python -m sb3_nigt.zoo train --algo rennala_nigt --env InvertedPendulum-v5 -optimize --n-trials 10 --n-jobs 1
    sb3-nigt-zoo plot_train --algo rennala_nigt --env InvertedPendulum-v5 -f logs/

:func:`register` (called by :func:`main`) adds the four algorithms to ``rl_zoo3.ALGOS``, an Optuna sampler and a
converter for each to ``rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER``/``HYPERPARAMS_CONVERTER``, and makes
``ExperimentManager`` read this package's hyperparameter files (``sb3_nigt/hyperparams/<algo>.yml``) unless
``-conf``/``--conf-file`` is given. Programs that drive rl-zoo3 themselves call ``sb3_nigt.zoo.register()``
first.

The Optuna search space is the paper's tuning grid (Tyurin, Spiridonov, Rudenko, ICLR 2026, App. H), with α on
a continuous log scale: α ∈ [2^-10, 2^-1] (log-uniform), η ∈ {0.001, 0.01, 0.1}, M = M_init ∈ {20, 30, 50}
(not for SynchronizedNIGT and AFedPG, which ignore it), and the horizon H ∈ {100, 200, 500, 1000} cut at the
environment's time limit, which is always a choice (H is not tuned when the time limit is 100 steps or less).
The delay settings (``n_agents``, ``compute_times``, ``communication_times``, ``clock``, ``backend``) are not
sampled: they describe the system being simulated and come from the hyperparameter file or ``--hyperparams``.
A trial whose training raises ``ValueError`` (a NaN or infinite reward or gradient) or whose evaluation return
is not finite is pruned, with a log line naming the trial and the reason; a study whose every trial was pruned
ends with a message (rl-zoo3 alone would raise from ``study.best_trial``).

Before training, ``train`` prints how many trajectories and environment steps the first update needs
(:func:`first_update_steps`) and, when ``-n`` may be below that, a warning (:func:`budget_message`); after a
training that made no update, a warning that the saved model is the initial policy (:func:`no_update_message`).
At verbosity 1 (the zoo's default) it prints a progress line about every tenth of the budget (:class:`ZooProgress`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import safe_mean

from sb3_nigt.afedpg import AFedPG
from sb3_nigt.algorithms.base import NIGTAlgorithm
from sb3_nigt.malenia import MaleniaNIGT
from sb3_nigt.rennala import RennalaNIGT
from sb3_nigt.synchronized import SynchronizedNIGT

#: The zoo's names of the sb3-nigt algorithms (``--algo``).
ALGOS: dict[str, type[NIGTAlgorithm]] = {
    "rennala_nigt": RennalaNIGT,
    "malenia_nigt": MaleniaNIGT,
    "synchronized_nigt": SynchronizedNIGT,
    "afedpg": AFedPG,
}

#: The algorithms whose round takes M = ``batch_size`` gradients (the others ignore ``batch_size``).
BATCHED = ("rennala_nigt", "malenia_nigt")

#: Folder of the packaged hyperparameter files, one ``<algo>.yml`` per algorithm.
HYPERPARAMS_DIR = Path(__file__).resolve().parent / "hyperparams"

#: The Optuna search space (paper, App. H): α bounds (log-uniform), η choices, M = M_init choices, H grid.
LEARNING_RATE_RANGE = (2.0**-10, 2.0**-1)
MOMENTUM_CHOICES = (0.001, 0.01, 0.1)
BATCH_SIZE_CHOICES = (20, 30, 50)
HORIZON_GRID = (100, 200, 500, 1000)

#: Optuna parameter names (kept from the studies made before the rename) → the model's argument names.
STUDY_NAMES = {"momentum": "eta", "batch_size": "round_size"}

#: Trial user attribute holding the environment's ``max_episode_steps`` (set before sampling).
TIME_LIMIT_ATTR = "max_episode_steps"

#: rl-zoo3 entry points reached through ``main``: functions ("module:function") or scripts run as __main__.
SCRIPTS = {
    "train": "rl_zoo3.train:train",
    "enjoy": "rl_zoo3.enjoy:enjoy",
    "plot_train": "rl_zoo3.plots.plot_train:plot_train",
    "plot_from_file": "rl_zoo3.plots.plot_from_file:plot_from_file",
    "all_plots": "rl_zoo3.plots.all_plots:all_plots",
    "record_video": "rl_zoo3.record_video",
    "record_training": "rl_zoo3.record_training",
    "load_from_hub": "rl_zoo3.load_from_hub",
    "push_to_hub": "rl_zoo3.push_to_hub",
}

_PATCHED = "_sb3_nigt_zoo_patched"

#: Progress lines per training run (about one every tenth of ``-n``).
PROGRESS_LINES = 10


def _round_gradients(model: NIGTAlgorithm, batch: int) -> int:
    """The fewest gradients that end a round with batch parameter ``batch`` (M or M_init), as the algorithm's own
    rule counts them (:meth:`NIGTAlgorithm._min_round_gradients`); AFedPG 1 (it updates on every gradient)."""
    if isinstance(model, AFedPG):
        return 1
    return model._min_round_gradients(model._make_rule(batch), 10**9)


def first_update_steps(model: NIGTAlgorithm) -> tuple[int, int, str]:
    """How many trajectories, and at most how many environment steps, ``model`` needs before its first update.

    The rounds before the first θ update: the observation warm-up round (M_init trajectories, only with fresh
    VecNormalize statistics), the initial round that forms d_{−1} (M_init; Algorithm 1 of the paper; not when the
    model already trained), then one round of M (:func:`_round_gradients`). Each trajectory (one gradient) takes
    between 1 and H environment steps: exactly H on an environment that never terminates early (Pendulum).

    :param model: a built sb3-nigt model (``horizon`` H resolved from the env's time limit).
    :return: ``(trajectories, steps, detail)``: the trajectories, the steps at most (trajectories × H) and a text
        listing the rounds.
    """
    initial = _round_gradients(model, int(model.initial_round_size))
    rounds = []
    if model._needs_observation_warmup():
        rounds.append(("observation warm-up", int(model.initial_round_size)))
    if model._nigt.direction is None and not isinstance(model, AFedPG):
        rounds.append(("initial round (M_init)", initial))
    rounds.append(("first update round" + ("" if isinstance(model, AFedPG) else " (M)"),
                   _round_gradients(model, int(model.round_size))))
    trajectories = sum(count for _, count in rounds)
    horizon = int(model.horizon)
    detail = " + ".join(f"{name} {count}" for name, count in rounds)
    return trajectories, trajectories * horizon, f"{detail} trajectories of up to H = {horizon} steps"


def budget_message(algo: str, env_id: str, n_timesteps: int, model: NIGTAlgorithm) -> tuple[str, bool]:
    """The line ``train`` prints before training: what the first update needs, and whether ``-n`` falls short.

    Three cases, with T trajectories and at most S = T × H steps before the first update (:func:`first_update_steps`):
    ``-n`` >= S: an information line; T <= ``-n`` < S: a note that training ends before the first update if the
    trajectories last H steps (Pendulum's always do; InvertedPendulum's end early); ``-n`` < T: a warning that
    it will end before any update (every trajectory takes at least one step).

    :param algo: the zoo's algorithm name.
    :param env_id: the environment id.
    :param n_timesteps: the budget ``-n`` (environment steps).
    :param model: the built model.
    :return: ``(message, certain)``; ``certain`` when ``-n`` < T: no update can happen.
    """
    trajectories, steps, detail = first_update_steps(model)
    needs = f"the first update of {algo} on {env_id} needs {trajectories} trajectories ({detail}), up to {steps:,} environment steps"
    if n_timesteps >= steps:
        return f"[sb3-nigt] {n_timesteps:,} environment steps; {needs}", False
    if n_timesteps >= trajectories:
        return (f"[sb3-nigt] WARNING: -n {n_timesteps:,} may be too small: {needs}. Training ends before any update "
                f"unless the trajectories average under {n_timesteps // trajectories:,} steps (episodes that end before "
                f"H); use -n {steps} to be sure.", False)
    return (f"[sb3-nigt] WARNING: -n {n_timesteps:,} is too small for one update: {needs}. Training will end before "
            f"any update and save the initial policy; use -n {steps} or more.", True)


def no_update_message(algo: str, env_id: str, steps_used: int, needs: tuple[int, int, str]) -> str:
    """The warning ``train`` prints after a training that made no update: the saved model is the initial policy.

    :param algo: the zoo's algorithm name.
    :param env_id: the environment id.
    :param steps_used: environment steps the training took.
    :param needs: :func:`first_update_steps` of the model before training.
    :return: the message, naming the steps used and what the first update needs.
    """
    trajectories, steps, detail = needs
    return (f"[sb3-nigt] WARNING: training made no update in {steps_used:,} environment steps: the saved {algo} model "
            f"is the initial policy θ_0. The first update on {env_id} needs {trajectories} trajectories ({detail}), "
            f"up to {steps:,} steps; raise -n.")


class ZooProgress(BaseCallback):
    """Print one progress line about every ``every`` environment steps, at the end of a round (AFedPG: an update).

    The line: environment steps done of the budget, updates (rounds; AFedPG: server updates), simulated seconds on
    the clock, and the mean return of the last trajectories (SB3's ``ep_info_buffer``, up to 100).

    :param total: the budget ``-n`` (environment steps).
    :param every: environment steps between lines (>= 1).
    """

    def __init__(self, total: int, every: int) -> None:
        super().__init__(verbose=0)
        self.total, self.every = int(total), max(1, int(every))
        self._next = self.every

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.num_timesteps < self._next:
            return
        self._next = (self.num_timesteps // self.every + 1) * self.every
        returns = [info["r"] for info in self.model.ep_info_buffer or []]
        mean = f"{safe_mean(returns):.1f}" if returns else "n/a"
        updates = getattr(self.model, "_n_updates", 0)
        simulated = float(getattr(self.model, "simulated_time", 0.0))
        print(f"[sb3-nigt] {self.num_timesteps:,}/{self.total:,} env steps ({100 * self.num_timesteps / max(self.total, 1):.0f}%), "
              f"{updates} updates, {simulated:.1f} simulated s, mean return {mean} (last {len(returns)} trajectories)",
              flush=True)


def hyperparams_path(algo: str) -> Path:
    """The packaged rl-zoo3 hyperparameter file of ``algo``.

    :param algo: one of :data:`ALGOS` (``"rennala_nigt"``, ``"malenia_nigt"``, ``"synchronized_nigt"``, ``"afedpg"``).
    :return: the path of ``sb3_nigt/hyperparams/<algo>.yml``.
    :raises ValueError: for an unknown ``algo``.
    """
    if algo not in ALGOS:
        raise ValueError(f"algo: must be one of {sorted(ALGOS)}, got {algo!r}")
    return HYPERPARAMS_DIR / f"{algo}.yml"


def _horizon_choices(time_limit: Optional[int]) -> list[int]:
    """H choices: the grid below the time limit plus the time limit itself (the whole grid without a limit)."""
    if not time_limit:
        return list(HORIZON_GRID)
    return [h for h in HORIZON_GRID if h < time_limit] + [int(time_limit)]


def _sample_shared(trial: Any, with_batch_size: bool) -> dict[str, Any]:
    params: dict[str, Any] = {
        "learning_rate": trial.suggest_float("learning_rate", *LEARNING_RATE_RANGE, log=True),
        "momentum": trial.suggest_categorical("momentum", list(MOMENTUM_CHOICES)),
    }
    if with_batch_size:
        params["batch_size"] = trial.suggest_categorical("batch_size", list(BATCH_SIZE_CHOICES))
    time_limit = trial.user_attrs.get(TIME_LIMIT_ATTR)
    choices = _horizon_choices(time_limit)
    if len(choices) > 1:
        params["horizon"] = trial.suggest_categorical("horizon", choices)
    return params


def sample_nigt_params(trial: Any, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """Optuna sampler of the NIGT algorithms (rl-zoo3's ``HYPERPARAMS_SAMPLER`` signature).

    Samples α (``learning_rate``, log-uniform on [2^-10, 2^-1]), η (``momentum`` ∈ {0.001, 0.01, 0.1}),
    M (``batch_size`` ∈ {20, 30, 50}; M_init follows M) and H (``horizon``, see :func:`_horizon_choices`, from
    the trial's ``max_episode_steps`` user attribute, which :func:`register`'s objective sets).

    :param trial: the Optuna trial.
    :param n_actions: action dimension (unused).
    :param n_envs: number of environments (unused).
    :param additional_args: rl-zoo3's extra arguments (unused).
    :return: the model's keyword arguments.
    """
    return convert_nigt_params(_sample_shared(trial, with_batch_size=True))


def sample_unbatched_params(trial: Any, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """Optuna sampler of the algorithms that ignore ``batch_size``: SynchronizedNIGT (its batch is one gradient
    per agent, n) and AFedPG (one step per gradient). As :func:`sample_nigt_params` without ``batch_size``.
    """
    return convert_nigt_params(_sample_shared(trial, with_batch_size=False))


def convert_nigt_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """rl-zoo3's ``HYPERPARAMS_CONVERTER``: a trial's parameters to model keyword arguments.

    The study's parameter names (``momentum`` for η, ``batch_size`` for M, as in studies made before the rename)
    become the model's arguments ``eta`` and ``round_size`` (the names of the hyperparameter files, so a trial's
    value replaces the file's without a warning); numbers are cast to the types the model checks
    (``learning_rate`` and ``eta`` float, ``round_size`` and ``horizon`` int).

    :param sampled_params: ``trial.params`` of a study (keys among learning_rate, momentum, batch_size, horizon).
    :return: a new dict of keyword arguments.
    """
    params = {STUDY_NAMES.get(key, key): value for key, value in sampled_params.items()}
    for key, cast in (("learning_rate", float), ("eta", float), ("round_size", int), ("horizon", int)):
        if key in params and params[key] is not None:
            params[key] = cast(params[key])
    return params


def _time_limit(env_id: str) -> Optional[int]:
    import gymnasium as gym

    try:
        steps = gym.spec(env_id).max_episode_steps
    except Exception:  # an id the registry does not know: rl-zoo3 reports it itself
        return None
    return int(steps) if steps else None


def _patch_learn(ExperimentManager: Any) -> None:
    """Make ``ExperimentManager.learn`` print the first update's needs (:func:`budget_message`) before training and,
    at verbosity >= 1 without ``-P``, add a :class:`ZooProgress` callback; idempotent."""
    learn = ExperimentManager.learn
    if getattr(learn, _PATCHED, False):
        return

    @functools.wraps(learn)
    def learn_wrapper(self, model: Any) -> None:
        if self.algo not in ALGOS:
            return learn(self, model)
        message, _ = budget_message(self.algo, self.env_name.gym_id, int(self.n_timesteps), model)
        print(message, file=sys.stderr if "WARNING" in message else sys.stdout, flush=True)
        if self.verbose > 0 and not self.show_progress:
            self.callbacks.append(ZooProgress(self.n_timesteps, self.n_timesteps // PROGRESS_LINES))
        updates, needs = getattr(model, "_n_updates", 0), first_update_steps(model)
        learn(self, model)  # rl-zoo3 resets num_timesteps: it counts this training's steps
        if getattr(model, "_n_updates", 0) == updates:
            print(no_update_message(self.algo, self.env_name.gym_id, model.num_timesteps, needs), file=sys.stderr, flush=True)
        return None

    setattr(learn_wrapper, _PATCHED, True)
    ExperimentManager.learn = learn_wrapper  # deliberate patch of rl-zoo3's class


def _patch_experiment_manager() -> None:
    from rl_zoo3.exp_manager import ExperimentManager

    init = ExperimentManager.__init__
    if not getattr(init, _PATCHED, False):
        signature = inspect.signature(init)

        @functools.wraps(init)
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            bound = signature.bind(self, *args, **kwargs)
            if bound.arguments.get("algo") in ALGOS and not bound.arguments.get("config"):
                # Our algorithms' hyperparameters live in this package, not in rl-zoo3's folder.
                bound.arguments["config"] = str(hyperparams_path(bound.arguments["algo"]))
            init(*bound.args, **bound.kwargs)

        setattr(__init__, _PATCHED, True)
        ExperimentManager.__init__ = __init__  # type: ignore[method-assign]  # a deliberate patch of rl-zoo3's class

    objective = ExperimentManager.objective
    if not getattr(objective, _PATCHED, False):

        @functools.wraps(objective)
        def objective_wrapper(self, trial: Any) -> float:
            if self.algo not in ALGOS:
                return objective(self, trial)
            import optuna

            time_limit = _time_limit(self.env_name.gym_id)
            if time_limit:
                trial.set_user_attr(TIME_LIMIT_ATTR, time_limit)
            try:
                value = objective(self, trial)
            except optuna.TrialPruned as pruned:
                if isinstance(pruned.__cause__, (ValueError, AssertionError)):
                    print(f"[sb3-nigt] trial {trial.number} pruned: training raised {type(pruned.__cause__).__name__}: {pruned.__cause__}")
                raise
            if value is None or not math.isfinite(float(value)):
                print(f"[sb3-nigt] trial {trial.number} pruned: the evaluation return is {value} (diverged)")
                raise optuna.TrialPruned(f"non-finite evaluation return {value}")
            return value

        setattr(objective_wrapper, _PATCHED, True)
        ExperimentManager.objective = objective_wrapper  # type: ignore[method-assign]  # a deliberate patch of rl-zoo3's class

    _patch_learn(ExperimentManager)

    optimization = ExperimentManager.hyperparameters_optimization
    if not getattr(optimization, _PATCHED, False):

        @functools.wraps(optimization)
        def optimization_wrapper(self) -> None:
            try:
                optimization(self)
            except ValueError as error:
                # rl-zoo3 reads study.best_trial after optimizing, which raises when every trial was pruned.
                if self.algo not in ALGOS or "No trials are completed yet" not in str(error):
                    raise
                print(f"[sb3-nigt] no trial completed (every trial was pruned or failed): no best hyperparameters, no report ({error})")

        setattr(optimization_wrapper, _PATCHED, True)
        ExperimentManager.hyperparameters_optimization = optimization_wrapper  # type: ignore[method-assign]  # deliberate patch


def register() -> None:
    """Make rl-zoo3 know the sb3-nigt algorithms; idempotent.

    - ``rl_zoo3.ALGOS`` (the dict that ``train``, ``exp_manager``, ``enjoy``, ``record_video``, ... imported from
      ``rl_zoo3.utils``, and any already-imported rl-zoo3 module holding another ``ALGOS`` dict) gains
      ``rennala_nigt``, ``malenia_nigt``, ``synchronized_nigt`` and ``afedpg``;
    - ``HYPERPARAMS_SAMPLER`` gains :func:`sample_nigt_params` (:func:`sample_unbatched_params` for
      ``synchronized_nigt`` and ``afedpg``, which ignore ``batch_size``) and
      ``HYPERPARAMS_CONVERTER`` :func:`convert_nigt_params`;
    - ``ExperimentManager`` reads ``sb3_nigt/hyperparams/<algo>.yml`` for these algorithms unless a config file
      is given (``-conf``), records the environment's time limit on each Optuna trial (for the H choices), and
      prunes a trial whose evaluation return is not finite (rl-zoo3 itself prunes a trial whose training
      raises ``ValueError``; a line ``[sb3-nigt] trial N pruned: ...`` says why), and ends a study whose every
      trial was pruned with a message instead of rl-zoo3's ``ValueError`` from ``study.best_trial``. Other
      algorithms are left as rl-zoo3 has them.

    :raises ImportError: if rl-zoo3 is not installed (``pip install "sb3-nigt[zoo]"``).
    """
    try:
        import rl_zoo3
        import rl_zoo3.exp_manager
        import rl_zoo3.hyperparams_opt as hyperparams_opt
        import rl_zoo3.utils
    except ImportError as error:
        raise ImportError('sb3_nigt.zoo needs rl-zoo3 and optuna: pip install "sb3-nigt[zoo]"') from error

    dicts = [rl_zoo3.utils.ALGOS, rl_zoo3.ALGOS]
    dicts += [module.ALGOS for name, module in list(sys.modules.items())
              if name.startswith("rl_zoo3") and isinstance(getattr(module, "ALGOS", None), dict)]
    for algos in {id(d): d for d in dicts}.values():
        algos.update(ALGOS)
    for name in ALGOS:
        hyperparams_opt.HYPERPARAMS_SAMPLER[name] = sample_nigt_params if name in BATCHED else sample_unbatched_params
        hyperparams_opt.HYPERPARAMS_CONVERTER[name] = convert_nigt_params
    _patch_experiment_manager()


@contextlib.contextmanager
def _zoo_subprocesses() -> Iterator[None]:
    """Route rl-zoo3's ``python -m rl_zoo3.<script>`` child commands (record_training) through this entry point."""
    call = subprocess.call

    def routed(command: Any, *args: Any, **kwargs: Any) -> int:
        if isinstance(command, (list, tuple)) and len(command) >= 3 and command[1] == "-m" and str(command[2]).startswith("rl_zoo3."):
            script = str(command[2]).split(".", 1)[1]
            if script in SCRIPTS:
                command = [sys.executable, "-m", "sb3_nigt.zoo", script, *command[3:]]
        return call(command, *args, **kwargs)

    subprocess.call = routed  # type: ignore[assignment]  # a deliberate patch; routed forwards every form of call
    try:
        yield
    finally:
        subprocess.call = call


def _usage() -> str:
    return (
        "usage: python -m sb3_nigt.zoo SCRIPT [rl-zoo3 arguments]\n"
        f"SCRIPT is one of: {', '.join(SCRIPTS)}\n"
        f"sb3-nigt algorithms (--algo): {', '.join(ALGOS)}"
    )


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run an rl-zoo3 script with the sb3-nigt algorithms registered (as ``python -m rl_zoo3.cli``).

    :param argv: ``[script, *arguments]``; default ``sys.argv[1:]``. ``script`` is one of :data:`SCRIPTS`
        (train, enjoy, plot_train, plot_from_file, all_plots, record_video, record_training, load_from_hub,
        push_to_hub); the arguments are rl-zoo3's own.
    :raises SystemExit: with status 2 and the usage for a missing or unknown script.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        raise SystemExit(0 if argv else 2)
    script, arguments = argv[0], argv[1:]
    if script not in SCRIPTS:
        print(f"unknown script {script!r}\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    register()
    target = SCRIPTS[script]
    saved_argv = sys.argv
    sys.argv = [f"{Path(saved_argv[0]).name or 'sb3-nigt-zoo'} {script}", *arguments]
    try:
        if ":" in target:
            module_name, function = target.split(":")
            module = __import__(module_name, fromlist=[function])
            run: Callable[[], Any] = getattr(module, function)
            run()
        else:
            with _zoo_subprocesses():
                runpy.run_module(target, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved_argv


if __name__ == "__main__":
    from sb3_nigt.zoo import main as _main  # one module object, whether run with -m or imported

    _main()
