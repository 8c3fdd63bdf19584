"""Stable-Baselines3 behaviour: save/load, predict, set_env, callbacks, logger, tensorboard, VecNormalize."""

from __future__ import annotations

import csv
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CheckpointCallback,
    EvalCallback,
    StopTrainingOnMaxEpisodes,
    StopTrainingOnRewardThreshold,
)
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecNormalize

from sb3_nigt import NIGTPolicy, RennalaNIGT

STEPS_PER_ROUND = 4 * 20  # batch_size × horizon of the small model (Pendulum never ends before H)


def sample_observations(n: int = 8) -> np.ndarray:
    space = gym.make("Pendulum-v1").observation_space
    space.seed(0)
    return np.array([space.sample() for _ in range(n)])


class Counter(BaseCallback):
    """Counts every callback event; optionally stops at a given step and records θ at each round start."""

    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        self.stop_at = stop_at
        self.events = dict(training_start=0, rollout_start=0, step=0, rollout_end=0, training_end=0)
        self.params_at_round_start: list[np.ndarray] = []

    def _on_training_start(self) -> None:
        self.events["training_start"] += 1

    def _on_rollout_start(self) -> None:
        self.events["rollout_start"] += 1
        self.params_at_round_start.append(self.model.get_flat_params())

    def _on_step(self) -> bool:
        self.events["step"] += 1
        return self.stop_at is None or self.num_timesteps < self.stop_at

    def _on_rollout_end(self) -> None:
        self.events["rollout_end"] += 1

    def _on_training_end(self) -> None:
        self.events["training_end"] += 1


# ------------------------------------------------------------------------------------------ save / load
@pytest.fixture
def trained(make_model):
    return make_model().learn(3 * STEPS_PER_ROUND)


def test_save_load_round_trip(trained, tmp_path):
    obs = sample_observations()
    actions, _ = trained.predict(obs, deterministic=True)
    trained.save(tmp_path / "model.zip")
    loaded = RennalaNIGT.load(tmp_path / "model.zip", env=gym.make("Pendulum-v1"))

    assert np.array_equal(loaded.get_flat_params(), trained.get_flat_params())
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], actions)
    assert np.array_equal(loaded.momentum_buffer, trained.momentum_buffer)
    assert np.array_equal(loaded.previous_params, trained.previous_params)
    assert loaded.simulated_time == trained.simulated_time > 0
    assert loaded.n_rounds == trained.n_rounds == 3
    assert loaded.num_timesteps == trained.num_timesteps
    for name in ("batch_size", "horizon", "n_agents", "momentum", "gamma", "compute_times"):
        assert getattr(loaded, name) == getattr(trained, name), name


def test_training_continues_after_load_exactly_as_without_saving(trained, tmp_path):
    trained.save(tmp_path / "model.zip")
    loaded = RennalaNIGT.load(tmp_path / "model.zip", env=gym.make("Pendulum-v1"))
    time_before, steps_before = loaded.simulated_time, loaded.num_timesteps

    loaded.learn(2 * STEPS_PER_ROUND, reset_num_timesteps=False)
    trained.learn(2 * STEPS_PER_ROUND, reset_num_timesteps=False)

    assert loaded.num_timesteps == steps_before + 2 * STEPS_PER_ROUND
    assert loaded.simulated_time > time_before
    assert loaded.n_rounds == 5
    # Job seeds depend on (seed, round, agent, index) only, so a reload continues the same run bit for bit.
    assert np.array_equal(loaded.get_flat_params(), trained.get_flat_params())
    assert loaded.simulated_time == trained.simulated_time


def test_load_without_env_cannot_learn_but_can_predict(trained, tmp_path):
    trained.save(tmp_path / "model.zip")
    loaded = RennalaNIGT.load(tmp_path / "model.zip")
    obs = sample_observations()
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], trained.predict(obs, deterministic=True)[0])
    with pytest.raises((ValueError, AssertionError)):
        loaded.learn(10)


def test_policy_save_and_load(make_model, tmp_path):
    model = make_model(policy_kwargs=dict(net_arch=[16], min_std=0.01)).learn(2 * STEPS_PER_ROUND)
    model.policy.save(tmp_path / "policy.pth")
    policy = NIGTPolicy.load(tmp_path / "policy.pth")
    assert policy.net_arch == [16] and policy.min_std == 0.01
    for a, b in zip(policy.parameters(), model.policy.parameters()):
        assert th.equal(a, b)
    obs = sample_observations()
    np.testing.assert_array_equal(policy.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


def test_deterministic_predict_is_the_squashed_mean_on_the_box(make_model):
    model = make_model()
    obs = sample_observations()
    actions, _ = model.predict(obs, deterministic=True)
    with th.no_grad():
        mean, _ = model.policy.distribution_params(th.as_tensor(obs))
    high = model.action_space.high  # Pendulum: [-2, 2]
    np.testing.assert_allclose(actions, high * np.tanh(mean.numpy()), rtol=1e-5, atol=1e-6)
    stochastic, _ = model.predict(obs, deterministic=False)
    assert stochastic.shape == actions.shape and not np.array_equal(stochastic, actions)
    assert np.all(np.abs(stochastic) <= high)


# ------------------------------------------------------------------------------------------- env forms
def test_workers_rebuild_the_env_from_its_spec_or_factory(make_model):
    def params(env) -> np.ndarray:
        return make_model(env=env).learn(2 * STEPS_PER_ROUND).get_flat_params()

    reference = params(lambda: gym.make("Pendulum-v1", g=2.0))
    assert np.array_equal(params(gym.make("Pendulum-v1", g=2.0)), reference)  # the spec keeps g
    assert np.array_equal(params(Monitor(gym.make("Pendulum-v1", g=2.0))), reference)
    assert not np.array_equal(params("Pendulum-v1"), reference)  # default g = 10


def test_horizon_defaults_to_the_time_limit(make_model):
    model = make_model(env=gym.make("Pendulum-v1", max_episode_steps=7), horizon=None)
    assert model.horizon == 7
    model.learn(3 * 4 * 7)
    assert {ep["l"] for ep in model.ep_info_buffer} == {7}


# ---------------------------------------------------------------------------------------------- set_env
@pytest.mark.parametrize("new_env", [lambda: gym.make("Pendulum-v1"), lambda: make_vec_env("Pendulum-v1"), lambda: (lambda: gym.make("Pendulum-v1"))])
def test_set_env_then_continue_training(trained, new_env):
    env = new_env()
    trained.set_env(env)
    steps = trained.num_timesteps
    trained.learn(STEPS_PER_ROUND, reset_num_timesteps=False)
    assert trained.num_timesteps == steps + STEPS_PER_ROUND
    if not callable(env) or hasattr(env, "step"):
        assert trained.get_env().observation_space == env.observation_space


def test_set_env_with_other_spaces_raises(trained):
    with pytest.raises(ValueError):
        trained.set_env(gym.make("MountainCarContinuous-v0"))


# -------------------------------------------------------------------------------------------- callbacks
def test_callback_events_match_steps_and_rounds(make_model):
    model = make_model()
    counter = Counter()
    model.learn(4 * STEPS_PER_ROUND, callback=counter)
    assert counter.events["step"] == model.num_timesteps == 4 * STEPS_PER_ROUND
    assert counter.events["rollout_start"] == counter.events["rollout_end"] == model.n_rounds == 4
    assert counter.events["training_start"] == counter.events["training_end"] == 1


@pytest.mark.parametrize("stop_at", [2 * STEPS_PER_ROUND + 30, 10])
def test_returning_false_stops_at_once_before_the_update(make_model, stop_at):
    model = make_model()
    counter = Counter(stop_at=stop_at)
    model.learn(100 * STEPS_PER_ROUND, callback=counter)
    assert model.num_timesteps == counter.events["step"] == stop_at
    # θ is the one the stopped round started from: its update did not happen.
    assert np.array_equal(model.get_flat_params(), counter.params_at_round_start[-1])
    assert len(counter.params_at_round_start) == stop_at // STEPS_PER_ROUND + 1


def test_eval_and_checkpoint_callbacks(make_model, tmp_path):
    model = make_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # eval env type differs from the training VecEnv
        eval_callback = EvalCallback(
            Monitor(gym.make("Pendulum-v1")), eval_freq=100, n_eval_episodes=1, best_model_save_path=str(tmp_path / "best"),
            log_path=str(tmp_path / "eval"), deterministic=True,
        )
    checkpoint = CheckpointCallback(save_freq=100, save_path=str(tmp_path / "ckpt"), name_prefix="nigt")
    model.learn(5 * STEPS_PER_ROUND, callback=[eval_callback, checkpoint])

    evaluations = np.load(tmp_path / "eval" / "evaluations.npz")
    assert list(evaluations["timesteps"]) == [100, 200, 300, 400]
    assert evaluations["results"].shape == (4, 1)
    assert np.all(evaluations["ep_lengths"] == 200)
    assert eval_callback.best_mean_reward == evaluations["results"].max()
    RennalaNIGT.load(tmp_path / "best" / "best_model.zip")
    saved = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert saved == sorted(f"nigt_{k}_steps.zip" for k in (100, 200, 300, 400))
    RennalaNIGT.load(tmp_path / "ckpt" / "nigt_400_steps.zip", env=gym.make("Pendulum-v1"))


def test_stop_training_on_reward_threshold(make_model):
    model = make_model()
    stop = StopTrainingOnRewardThreshold(reward_threshold=-1e9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        eval_callback = EvalCallback(Monitor(gym.make("Pendulum-v1")), callback_on_new_best=stop, eval_freq=50, n_eval_episodes=1)
    model.learn(100 * STEPS_PER_ROUND, callback=eval_callback)
    assert model.num_timesteps == 50


def test_stop_training_on_max_episodes(make_model):
    # Every consumed trajectory is one episode; on Pendulum each has exactly H = 20 steps.
    model = make_model()
    model.learn(100 * STEPS_PER_ROUND, callback=StopTrainingOnMaxEpisodes(max_episodes=5))
    assert model.num_timesteps == 5 * 20


@pytest.mark.filterwarnings("ignore:rich is experimental")
def test_progress_bar(make_model):
    model = make_model()
    model.learn(2 * STEPS_PER_ROUND, progress_bar=True)
    assert model.num_timesteps == 2 * STEPS_PER_ROUND


# ----------------------------------------------------------------------------------- logger, tensorboard
def test_csv_logger_columns(make_model, tmp_path):
    model = make_model()
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(4 * STEPS_PER_ROUND, log_interval=1)  # one table per round (the default: every 2048 steps)
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    expected = {
        "rollout/ep_rew_mean", "rollout/ep_len_mean", "time/simulated_time", "train/d_norm",
        "train/gradients_per_round", "time/fps", "train/round_seconds",
    }
    assert expected <= set(rows[0])
    assert len(rows) == model.n_rounds - 1  # one dump per update; the initial round makes no update
    assert float(rows[-1]["time/simulated_time"]) == model.simulated_time
    assert [float(r["train/gradients_per_round"]) for r in rows] == [model.batch_size] * len(rows)
    assert float(rows[-1]["rollout/ep_len_mean"]) == model.horizon
    assert all(float(r["train/d_norm"]) > 0 for r in rows)


def test_tensorboard_log(make_model, tmp_path):
    model = make_model(tensorboard_log=str(tmp_path))
    model.learn(2 * STEPS_PER_ROUND)
    events = list((tmp_path / "RennalaNIGT_1").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


# -------------------------------------------------------------------------------------------- VecNormalize
class StatsAtStart(BaseCallback):
    def _on_training_start(self) -> None:
        rms = self.model.get_vec_normalize_env().obs_rms
        self.count, self.mean = rms.count, rms.mean.copy()

    def _on_step(self) -> bool:
        return True


def test_vec_normalize_statistics_are_merged_from_the_workers(make_model):
    venv = VecNormalize(make_vec_env("Pendulum-v1", seed=0), norm_obs=True, norm_reward=False)
    model = make_model(env=venv)
    stats = StatsAtStart()
    model.learn(3 * STEPS_PER_ROUND, callback=stats)
    rms = venv.obs_rms
    # One observation per environment step consumed (the state each action was taken in). Fresh statistics
    # (built from the reset observation only) are first replaced by a warm-up round's, so the reset observation
    # is forgotten: the count is SB3's ε plus the steps.
    assert stats.count < 2
    assert rms.count == pytest.approx(1e-4 + model.num_timesteps)
    assert not np.allclose(rms.mean, stats.mean)


def test_vec_normalize_not_training_keeps_its_statistics(make_model):
    venv = VecNormalize(make_vec_env("Pendulum-v1", seed=0), norm_obs=True, norm_reward=False)
    venv.training = False
    model = make_model(env=venv)
    stats = StatsAtStart()
    model.learn(2 * STEPS_PER_ROUND, callback=stats)
    assert venv.obs_rms.count == stats.count


def test_vec_normalize_norm_reward_warns(make_model):
    venv = VecNormalize(make_vec_env("Pendulum-v1", seed=0), norm_obs=True, norm_reward=True)
    with pytest.warns(UserWarning, match="norm_reward"):
        make_model(env=venv)


def test_used_trajectories_are_written_to_the_main_envs_monitor(make_model, tmp_path):
    # Workers step their own env copies; the algorithm writes each used trajectory to the main env's Monitor, so
    # monitor.csv files (rl-zoo3's plot_train, SB3's load_results) fill up as with PPO.
    from stable_baselines3.common.monitor import load_results
    from stable_baselines3.common.vec_env import DummyVecEnv

    env = DummyVecEnv([lambda: Monitor(gym.make("Pendulum-v1"), str(tmp_path / "0"))])
    model = make_model(env).learn(3 * STEPS_PER_ROUND)
    env.close()
    frame = load_results(str(tmp_path))
    episodes = list(model.ep_info_buffer)
    assert len(frame) == len(episodes) == model._episode_num
    np.testing.assert_allclose(frame["r"].to_numpy(), [ep["r"] for ep in episodes], atol=1e-5)
    assert frame["l"].tolist() == [ep["l"] for ep in episodes]


@pytest.mark.parametrize("override, argument", [(dict(momentum=1.5), "momentum"), (dict(batch_size=0), "batch_size"),
                                                (dict(learning_rate=-1.0), "learning_rate"), (dict(gamma=2.0), "gamma")])
def test_load_checks_overridden_hyperparameters(trained, tmp_path, override, argument):
    # SB3's load writes kwargs into the model directly (rl-zoo3's -i passes hyperparameters this way).
    trained.save(tmp_path / "model.zip")
    with pytest.raises(ValueError, match=argument):
        RennalaNIGT.load(tmp_path / "model.zip", env=gym.make("Pendulum-v1"), **override)
