"""rl-zoo3 integration (``sb3_nigt.zoo``): train → enjoy → continue for every algorithm, Optuna tuning, pruning.

Every call goes in-process through ``sb3_nigt.zoo.main``, i.e. rl-zoo3's own ``train``/``enjoy`` and its
``ExperimentManager``, on Pendulum-v1 with tiny budgets (2 agents, M = 4, H = 20).
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml

pytest.importorskip("rl_zoo3")
optuna = pytest.importorskip("optuna")

from gymnasium.envs.classic_control.pendulum import PendulumEnv  # noqa: E402
from stable_baselines3.common.vec_env import VecNormalize  # noqa: E402

from sb3_nigt import zoo  # noqa: E402

ALGO_NAMES = ["rennala_nigt", "malenia_nigt", "synchronized_nigt", "afedpg"]
REPO = Path(__file__).resolve().parents[1]
# 2 agents, M = 4 gradients of H = 20 steps: 80 environment steps per round.
SMALL = ["--hyperparams", "n_agents:2", "round_size:4", "horizon:20", "compute_times:'sqrt'", "communication_times:0.5"]


def small(algo: str) -> list[str]:
    """SMALL without ``round_size`` for the algorithms that do not use it (they warn that it has no effect)."""
    return SMALL if algo in zoo.BATCHED else [item for item in SMALL if not item.startswith("round_size")]
ZOO_KEYS = {"n_timesteps", "policy", "normalize", "n_envs", "env_wrapper", "vec_env_wrapper", "frame_stack", "callback",
            "env_kwargs", "monitor_kwargs"}
REQUIRED_ENVS = ["Hopper", "Walker2d", "HalfCheetah", "Humanoid", "Reacher", "InvertedPendulum"]


def run_zoo(*argv: str) -> None:
    zoo.main([str(a) for a in argv])


def load_algo(algo: str):
    return zoo.ALGOS[algo]


# ------------------------------------------------------------------------------------------------ registration
def test_register_is_idempotent_and_reaches_every_module():
    import rl_zoo3
    import rl_zoo3.enjoy
    import rl_zoo3.exp_manager
    import rl_zoo3.hyperparams_opt as opt
    import rl_zoo3.record_video
    import rl_zoo3.train
    import rl_zoo3.utils
    from rl_zoo3.exp_manager import ExperimentManager

    zoo.register()
    init, objective = ExperimentManager.__init__, ExperimentManager.objective
    zoo.register()
    assert ExperimentManager.__init__ is init and ExperimentManager.objective is objective  # not wrapped twice
    for module in (rl_zoo3, rl_zoo3.utils, rl_zoo3.train, rl_zoo3.exp_manager, rl_zoo3.enjoy, rl_zoo3.record_video):
        for name in ALGO_NAMES:
            assert module.ALGOS[name] is zoo.ALGOS[name]
    for name in ALGO_NAMES:
        assert name in opt.HYPERPARAMS_SAMPLER and opt.HYPERPARAMS_CONVERTER[name] is zoo.convert_nigt_params
    assert "ppo" in rl_zoo3.ALGOS  # the zoo's own algorithms are untouched


def test_config_defaults_to_packaged_files_unless_given(tmp_path):
    from argparse import Namespace

    from rl_zoo3.exp_manager import ExperimentManager

    zoo.register()
    manager = ExperimentManager(Namespace(), "rennala_nigt", "Pendulum-v1", str(tmp_path))
    assert Path(manager.config) == zoo.hyperparams_path("rennala_nigt")
    custom = tmp_path / "custom.yml"
    manager = ExperimentManager(Namespace(), "rennala_nigt", "Pendulum-v1", str(tmp_path), config=str(custom))
    assert manager.config == str(custom)
    assert ExperimentManager(Namespace(), "ppo", "Pendulum-v1", str(tmp_path)).config.endswith("rl_zoo3/hyperparams/ppo.yml")


def test_unknown_script_and_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        zoo.main(["no_such_script"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        zoo.main([])
    assert exit_info.value.code == 2
    assert "rennala_nigt" in capsys.readouterr().out
    with pytest.raises(ValueError, match="algo"):
        zoo.hyperparams_path("ppo")


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "sb3_nigt.zoo", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "afedpg" in result.stdout


# --------------------------------------------------------------------------------------- hyperparameter files
@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_hyperparameter_files(algo):
    path = zoo.hyperparams_path(algo)
    assert path.is_file()
    top_level = REPO / "hyperparams" / f"{algo}.yml"
    if top_level.exists():  # the repository's copy is the packaged file (a symlink)
        assert top_level.read_text() == path.read_text()
    entries = yaml.safe_load(path.read_text())
    for env in REQUIRED_ENVS:
        assert any(key.startswith(f"{env}-v") for key in entries), f"{algo}: no entry for {env}"
    assert "Pendulum-v1" in entries
    accepted = set(inspect.signature(zoo.ALGOS[algo].__init__).parameters) | set(
        inspect.signature(zoo.ALGOS["rennala_nigt"].__init__).parameters)
    for env_id, entry in entries.items():
        assert {"n_timesteps", "policy", "n_agents", "compute_times", "communication_times", "clock", "backend"} <= set(entry), env_id
        unknown = set(entry) - ZOO_KEYS - accepted
        assert not unknown, f"{algo}/{env_id}: unknown keys {unknown}"
        kwargs = {k: v for k, v in entry.items() if k not in ZOO_KEYS}
        # The constructor checks every value (times, clock, backend, ranges); Pendulum stands in for the env.
        zoo.ALGOS[algo]("MlpPolicy", "Pendulum-v1", **kwargs)


# ------------------------------------------------------------------------------------------- train/enjoy/-i
@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_train_enjoy_continue(algo, tmp_path, capsys):
    logs = tmp_path / "logs"
    run_zoo("train", "--algo", algo, "--env", "Pendulum-v1", "-f", logs, "-n", 320, "--eval-freq", 160,
            "--eval-episodes", 1, "--save-freq", 160, "--seed", 3, "--verbose", 0, "-tb", tmp_path / "tb", *small(algo))
    run_dir = logs / algo / "Pendulum-v1_1"
    for name in ("Pendulum-v1.zip", "best_model.zip", "evaluations.npz", "rl_model_160_steps.zip",
                 "Pendulum-v1/config.yml", "Pendulum-v1/args.yml", "Pendulum-v1/vecnormalize.pkl"):
        assert (run_dir / name).is_file(), name
    assert list((tmp_path / "tb" / "Pendulum-v1").iterdir())  # --tensorboard-log
    config = yaml.load((run_dir / "Pendulum-v1" / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert config["n_agents"] == 2 and config["compute_times"] == "sqrt" and config["horizon"] == 20
    evaluations = np.load(run_dir / "evaluations.npz")
    assert len(evaluations["timesteps"]) == 2 and np.all(np.isfinite(evaluations["results"]))
    model = load_algo(algo).load(run_dir / "Pendulum-v1.zip")
    assert model.n_agents == 2 and model.horizon == 20 and model.seed == 3 and model.num_timesteps >= 320
    # The workers' observation statistics reached the main process's VecNormalize (saved next to the model).
    stats = VecNormalize.load(str(run_dir / "Pendulum-v1" / "vecnormalize.pkl"), _dummy_env())
    assert stats.obs_rms.count >= 320 and np.all(stats.obs_rms.var > 0)

    capsys.readouterr()
    run_zoo("enjoy", "--algo", algo, "--env", "Pendulum-v1", "-f", logs, "--no-render", "-n", 200, "--seed", 0)
    out = capsys.readouterr().out
    assert "Loading running average" in out and "1 Episodes" in out and "Mean reward" in out
    run_zoo("enjoy", "--algo", algo, "--env", "Pendulum-v1", "-f", logs, "--no-render", "-n", 10, "--load-best", "--verbose", 0)

    run_zoo("train", "--algo", algo, "--env", "Pendulum-v1", "-f", logs, "-n", 80, "--eval-freq", -1, "--seed", 4,
            "--verbose", 0, "-i", run_dir / "Pendulum-v1.zip", *small(algo))
    continued = load_algo(algo).load(logs / algo / "Pendulum-v1_2" / "Pendulum-v1.zip")
    # Continued: the clock, the rounds and θ go on from the trained agent.
    assert continued.simulated_time > model.simulated_time and continued.n_rounds > model.n_rounds
    assert not np.allclose(continued.get_flat_params(), model.get_flat_params())


def _dummy_env():
    from stable_baselines3.common.vec_env import DummyVecEnv

    return DummyVecEnv([lambda: gym.make("Pendulum-v1")])


def test_subproc_vec_env_and_no_normalize(tmp_path):
    conf = tmp_path / "conf.yml"
    conf.write_text(yaml.safe_dump({"Pendulum-v1": {
        "n_timesteps": 160, "policy": "MlpPolicy", "n_agents": 2, "horizon": 20,
        "compute_times": "equal", "communication_times": 0.0, "clock": "simulated", "backend": "inline"}}))
    run_zoo("train", "--algo", "synchronized_nigt", "--env", "Pendulum-v1", "-f", tmp_path / "logs", "-conf", conf,
            "--vec-env", "subproc", "--eval-freq", 80, "--eval-episodes", 1, "--verbose", 0, "--seed", 0)
    run_dir = tmp_path / "logs" / "synchronized_nigt" / "Pendulum-v1_1"
    assert (run_dir / "Pendulum-v1.zip").is_file() and (run_dir / "best_model.zip").is_file()
    assert not (run_dir / "Pendulum-v1" / "vecnormalize.pkl").exists()


def test_track_without_wandb_gives_rl_zoo3_message(tmp_path):
    try:
        import wandb  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("wandb is installed")
    with pytest.raises(ImportError, match="pip install wandb"):
        run_zoo("train", "--algo", "rennala_nigt", "--env", "Pendulum-v1", "-f", tmp_path, "--track", *SMALL)


# ------------------------------------------------------------------------------------------------- Optuna
def test_samplers_and_converter():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial.set_user_attr(zoo.TIME_LIMIT_ATTR, 1000)
    params = zoo.sample_nigt_params(trial, 1, 1, {})
    assert set(params) == {"learning_rate", "eta", "round_size", "horizon"}  # the model's argument names
    assert set(trial.params) == {"learning_rate", "momentum", "batch_size", "horizon"}  # the study's, as before
    assert 2**-10 <= params["learning_rate"] <= 2**-1 and params["eta"] in zoo.MOMENTUM_CHOICES
    assert params["round_size"] in zoo.BATCH_SIZE_CHOICES and params["horizon"] in (100, 200, 500, 1000)
    assert zoo.convert_nigt_params(trial.params) == params
    trial = study.ask()
    trial.set_user_attr(zoo.TIME_LIMIT_ATTR, 50)  # Reacher: nothing shorter than the time limit on the grid
    assert set(zoo.sample_unbatched_params(trial, 1, 1, {})) == {"learning_rate", "eta"}
    assert zoo._horizon_choices(200) == [100, 200] and zoo._horizon_choices(None) == list(zoo.HORIZON_GRID)


def test_optimize_two_trials(tmp_path, capsys):
    logs = tmp_path / "logs"
    run_zoo("train", "--algo", "rennala_nigt", "--env", "Pendulum-v1", "-f", logs, "-n", 400, "-optimize",
            "--n-trials", 2, "--n-jobs", 1, "--sampler", "tpe", "--pruner", "median", "--n-evaluations", 1,
            "--eval-episodes", 1, "--no-optim-plots", "--seed", 0, "--verbose", 1,
            "--hyperparams", "n_agents:2", "compute_times:'sqrt'")
    reports = list((logs / "rennala_nigt").glob("report_Pendulum-v1_2-trials-400-tpe-median_*.csv"))
    assert len(reports) == 1
    import pandas as pd

    trials = pd.read_csv(reports[0])
    assert len(trials) == 2 and set(trials["state"]) == {"COMPLETE"}
    assert {"params_learning_rate", "params_momentum", "params_batch_size", "params_horizon"} <= set(trials.columns)
    assert "Best trial" in capsys.readouterr().out


class NaNRewardPendulum(PendulumEnv):
    """Pendulum whose every reward is NaN."""

    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        return obs, float("nan"), terminated, truncated, info


@pytest.mark.filterwarnings("ignore:.*reward is a NaN value")
def test_nan_trial_is_pruned_not_fatal(tmp_path, capsys):
    env_id = "NaNRewardPendulum-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=NaNRewardPendulum, max_episode_steps=200)
    conf = tmp_path / "conf.yml"
    conf.write_text(yaml.safe_dump({env_id: {
        "n_timesteps": 400, "policy": "MlpPolicy", "n_agents": 2, "compute_times": "sqrt",
        "communication_times": 0.0, "clock": "simulated", "backend": "inline"}}))
    run_zoo("train", "--algo", "afedpg", "--env", env_id, "-f", tmp_path / "logs", "-conf", conf, "-optimize",
            "--n-trials", 1, "--n-jobs", 1, "--sampler", "tpe", "--pruner", "median", "--n-evaluations", 1,
            "--eval-episodes", 1, "--no-optim-plots", "--seed", 0)
    out = capsys.readouterr().out
    assert "[sb3-nigt] trial 0 pruned: training raised NonFiniteEnvironmentError" in out and "non-finite" in out
    assert "[sb3-nigt] no trial completed" in out


# ------------------------------------------------------------------------------------- budget and progress
@pytest.mark.parametrize(("algo", "trajectories"), [("rennala_nigt", 4 + 4), ("malenia_nigt", 4 + 4),
                                                    ("synchronized_nigt", 2 + 2), ("afedpg", 1)])
def test_first_update_steps_counts_the_rounds_before_the_first_update(algo, trajectories):
    sizes = {"round_size": 4} if algo in zoo.BATCHED else {"initial_round_size": 4}  # only what the algorithm uses
    model = zoo.ALGOS[algo]("MlpPolicy", "Pendulum-v1", n_agents=2, horizon=20, **sizes)
    assert zoo.first_update_steps(model)[:2] == (trajectories, trajectories * 20)


def test_the_pendulum_budget_of_the_report_is_too_small_and_says_so():
    # rennala_nigt's Pendulum entry: M = M_init = 20, H = 200, fresh VecNormalize: warm-up 20 + initial 20 + update 20.
    from stable_baselines3.common.env_util import make_vec_env

    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1), norm_obs=True, norm_reward=False)
    model = zoo.ALGOS["rennala_nigt"]("MlpPolicy", env, n_agents=10, round_size=20)
    trajectories, steps, detail = zoo.first_update_steps(model)
    assert (trajectories, steps) == (60, 12_000) and "observation warm-up 20" in detail
    message, certain = zoo.budget_message("rennala_nigt", "Pendulum-v1", 5000, model)
    assert not certain and "WARNING: -n 5,000 may be too small" in message and "12,000" in message
    assert "average under 83 steps" in message and "-n 12000" in message
    message, certain = zoo.budget_message("rennala_nigt", "Pendulum-v1", 50, model)
    assert certain and "WARNING: -n 50 is too small for one update" in message
    message, certain = zoo.budget_message("rennala_nigt", "Pendulum-v1", 12_000, model)
    assert not certain and "WARNING" not in message and "needs 60 trajectories" in message


def test_train_says_before_and_after_when_the_budget_is_too_small(tmp_path, capsys):
    # SMALL, fresh VecNormalize: warm-up 4 + initial 4 + update 4 trajectories of H = 20 steps = 240 steps.
    run_zoo("train", "--algo", "rennala_nigt", "--env", "Pendulum-v1", "-f", tmp_path / "logs", "-n", 100,
            "--eval-freq", -1, "--verbose", 0, *SMALL)
    err = capsys.readouterr().err
    assert "[sb3-nigt] WARNING: -n 100 may be too small: the first update of rennala_nigt" in err and "240" in err
    after, = [line for line in err.splitlines() if "no update" in line]
    assert after.startswith("[sb3-nigt] WARNING: training made no update in 160 environment steps") and "needs 12 trajectories" in after


def test_train_prints_progress_at_the_default_verbosity(tmp_path, capsys):
    run_zoo("train", "--algo", "rennala_nigt", "--env", "Pendulum-v1", "-f", tmp_path / "logs", "-n", 800,
            "--eval-freq", -1, *SMALL)
    captured = capsys.readouterr()
    assert "needs 12 trajectories" in captured.out and "WARNING" not in captured.out + captured.err
    lines = [line for line in captured.out.splitlines() if line.startswith("[sb3-nigt]") and "/800 env steps" in line]
    assert len(lines) >= 3 and "updates" in lines[-1] and "simulated s" in lines[-1]
