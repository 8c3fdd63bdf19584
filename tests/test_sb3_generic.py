"""Stable-Baselines3's generic algorithm tests, adapted to the four algorithms of this library.

SB3 checks every algorithm against the same conventions in its ``tests/`` folder (test_save_load, test_predict,
test_deterministic, test_callbacks, test_logger, test_tensorboard, test_run, test_vec_normalize,
test_custom_policy, test_train_eval_mode, test_spaces). These are our own versions of the checks that apply to an
on-policy, continuous-action algorithm, each run for RennalaNIGT, MaleniaNIGT, SynchronizedNIGT and AFedPG on both
backends (the subprocess backend with one worker, to stay light on two shared cores). ``test_sb3_test_callbacks``
follows SB3's test_callbacks step for step, ``callback.locals["new_obs"]`` included.

The cases that the algorithms refuse with a clear error at construction (image observations and SB3's
``CnnPolicy``, BatchNorm, Dict/Tuple and multi-dimensional observations, discrete or unbounded actions) are listed
in docs/policy.md, "SB3's generic tests: the cases refused"; the tests below check those errors.

Small settings: Pendulum-v1 (never ends before H), H = 5, n = 2 agents, M = 2. Every algorithm then consumes
ROUND = 10 environment steps per round (Rennala: first 2 gradients; Malenia: S = n = 2, one per agent;
Synchronized: one per agent; AFedPG: a "round" is n = 2 updates of one 5-step trajectory each), and the NIGT
algorithms' initial round (d_{-1}) is one more round of 10 steps. ``learn`` runs whole rounds (AFedPG: whole
trajectories), so every budget below is a multiple of 10 and is met exactly.

Environment classes and factories are module-level so that subprocess workers can rebuild them by reference.
"""

from __future__ import annotations

import copy
import csv
import functools
import io
import itertools
import json
import os
import time
import warnings
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common import callbacks as sb3_callbacks
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CallbackList,
    CheckpointCallback,
    EvalCallback,
    EveryNTimesteps,
    StopTrainingOnMaxEpisodes,
    StopTrainingOnNoModelImprovement,
    StopTrainingOnRewardThreshold,
)
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import safe_mean
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

from sb3_nigt import AFedPG, MaleniaNIGT, RennalaNIGT, SynchronizedNIGT

ALGORITHMS = [RennalaNIGT, MaleniaNIGT, SynchronizedNIGT, AFedPG]
BACKENDS = ["inline", "subprocess"]
HORIZON = 5
N_AGENTS = 2
ROUND = N_AGENTS * HORIZON  # environment steps per round, for all four algorithms with these settings
ENV_ID = "Pendulum-v1"


# ------------------------------------------------------------------------------------------------ environments
class TaggedPendulum(gym.Wrapper):
    """Pendulum-v1 whose ``info`` carries the environment's own keys: ``tag`` and the step index ``t``."""

    def __init__(self) -> None:
        super().__init__(gym.make(ENV_ID))
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.t = 0
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, dict(info, tag="tagged", t=-1)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info, tag="tagged", t=self.t)
        self.t += 1
        return obs, reward, terminated, truncated, info


def make_tagged_pendulum() -> gym.Env:
    return TaggedPendulum()


class SuccessPendulum(gym.Wrapper):
    """Pendulum-v1 that terminates after ``length`` steps and reports ``info["is_success"] = True`` then (a
    goal-reaching task that always succeeds)."""

    def __init__(self, length: int = HORIZON) -> None:
        super().__init__(gym.make(ENV_ID))
        self.length = length
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.t = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, _, truncated, info = self.env.step(action)
        self.t += 1
        terminated = self.t >= self.length
        if terminated:
            info = dict(info, is_success=True)
        return obs, reward, terminated, truncated, info


def make_success_pendulum() -> gym.Env:
    return SuccessPendulum()


class BoxEnv(gym.Env):
    """A small continuous task with configurable Box spaces: observations uniform in [-1, 1], reward
    −‖a‖² / dim, episodes of ``length`` steps (terminated)."""

    def __init__(self, obs_shape=(3,), action_low=(-1.0,), action_high=(1.0,), dtype=np.float32, length: int = HORIZON):
        self.observation_space = spaces.Box(-1.0, 1.0, tuple(obs_shape), dtype=dtype)
        self.action_space = spaces.Box(np.array(action_low, dtype=dtype), np.array(action_high, dtype=dtype), dtype=dtype)
        self.length = length
        self.t = 0

    def _obs(self) -> np.ndarray:
        return self.np_random.uniform(-1.0, 1.0, self.observation_space.shape).astype(self.observation_space.dtype)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        reward = -float(np.mean(np.square(np.asarray(action, dtype=np.float64))))
        return self._obs(), reward, self.t >= self.length, False, {}


SPACE_ENVS = {
    # several action dimensions with asymmetric, non-unit bounds
    "multi_dim_action": functools.partial(BoxEnv, (4,), (-1.0, 0.0, -3.0), (1.0, 5.0, -1.0)),
    # float64 spaces (SB3's test_float64_action_space)
    "float64": functools.partial(BoxEnv, (3,), (-1.0, -2.0), (1.0, 2.0), np.float64),
}


class BatchNormDropoutExtractor(BaseFeaturesExtractor):
    """Features extractor with BatchNorm and Dropout, whose outputs depend on the train/eval mode (SB3's
    test_train_eval_mode uses the same idea). NIGT refuses layers with running statistics (documented)."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 16):
        super().__init__(observation_space, features_dim)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(get_flattened_obs_dim(observation_space), features_dim)
        self.batch_norm = nn.BatchNorm1d(features_dim)
        self.dropout = nn.Dropout(0.5)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.dropout(self.batch_norm(self.linear(self.flatten(observations))))


class LayerNormDropoutExtractor(BaseFeaturesExtractor):
    """Features extractor with LayerNorm (no running statistics) and Dropout (active in training mode only)."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 16):
        super().__init__(observation_space, features_dim)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(get_flattened_obs_dim(observation_space), features_dim)
        self.layer_norm = nn.LayerNorm(features_dim)
        self.dropout = nn.Dropout(0.5)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.dropout(th.tanh(self.layer_norm(self.linear(self.flatten(observations)))))


class RandomProjectionExtractor(BaseFeaturesExtractor):
    """Random features: a fixed random projection drawn at construction and kept as a buffer (not a parameter:
    it is never trained, but it is part of the policy and saved in its state_dict)."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 16):
        super().__init__(observation_space, features_dim)
        self.register_buffer("projection", th.randn(get_flattened_obs_dim(observation_space), features_dim))
        self.flatten = nn.Flatten()

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return th.tanh(self.flatten(observations) @ self.projection)


# ------------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(params=ALGORITHMS, ids=lambda cls: cls.__name__)
def algo(request) -> type:
    return request.param


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def make(algo: type, backend: str, env: Any = ENV_ID, **kwargs: Any):
    """A small model of ``algo`` on ``backend`` (one worker process for the subprocess backend)."""
    config: dict[str, Any] = dict(horizon=HORIZON, round_size=2, n_agents=N_AGENTS, seed=0, backend=backend)
    if backend == "subprocess":
        config["n_workers"] = 1
    config.update(kwargs)
    return algo("MlpPolicy", env, **config)


def pendulum_observations(n: int = 6) -> np.ndarray:
    space = gym.make(ENV_ID).observation_space
    space.seed(1)
    return np.stack([space.sample() for _ in range(n)])


def flat(model) -> np.ndarray:
    return th.nn.utils.parameters_to_vector(model.policy.parameters()).detach().cpu().numpy().copy()


def assert_same_parameters(a, b) -> None:
    pa, pb = a.get_parameters()["policy"], b.get_parameters()["policy"]
    assert pa.keys() == pb.keys()
    for key in pa:
        assert th.equal(pa[key].cpu(), pb[key].cpu()), key


def read_csv(path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def eval_env() -> Monitor:
    return Monitor(gym.make(ENV_ID, max_episode_steps=10))


# ============================================================================================ test_run.py
def test_learn_returns_self_and_counts_timesteps(algo, backend):
    model = make(algo, backend)
    assert model.learn(3 * ROUND) is model
    assert model.num_timesteps == 3 * ROUND
    assert len(model.ep_info_buffer) == 3 * ROUND // HORIZON  # one episode per consumed trajectory
    before = flat(model)
    model.learn(2 * ROUND, reset_num_timesteps=False)  # continue counting
    assert model.num_timesteps == 5 * ROUND
    assert not np.array_equal(flat(model), before)
    model.learn(2 * ROUND)  # reset_num_timesteps=True: the counter restarts
    assert model.num_timesteps == 2 * ROUND


def test_learn_with_one_environment_per_agent(algo, backend):
    envs = [ENV_ID, (ENV_ID, dict(g=9.0))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # speed-weighted algorithms warn about different environments
        model = make(algo, backend, env=envs)
    assert model.get_env().num_envs == N_AGENTS
    model.learn(3 * ROUND)
    assert model.num_timesteps == 3 * ROUND
    assert {ep["l"] for ep in model.ep_info_buffer} == {HORIZON}


# ====================================================================================== test_save_load.py
def test_save_load_round_trip_and_continue(algo, backend, tmp_path):
    model = make(algo, backend).learn(3 * ROUND)
    obs = pendulum_observations()
    actions, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "model.zip")

    loaded = algo.load(tmp_path / "model.zip", env=ENV_ID)
    assert type(loaded) is algo
    assert_same_parameters(loaded, model)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], actions)
    assert loaded.num_timesteps == model.num_timesteps == 3 * ROUND
    assert loaded._n_updates == model._n_updates
    assert loaded.policy_kwargs == model.policy_kwargs
    assert loaded.learning_rate == model.learning_rate
    for name in ("batch_size", "horizon", "n_agents", "momentum", "gamma", "seed"):
        assert getattr(loaded, name) == getattr(model, name), name
    assert loaded.backend == "inline"  # a process backend comes back only when load(..., backend=) asks for it
    assert algo.load(tmp_path / "model.zip", backend=backend).backend == backend

    # Continue training from the loaded model without resetting the counter: the same run as the original's.
    loaded.learn(2 * ROUND, reset_num_timesteps=False)
    model.learn(2 * ROUND, reset_num_timesteps=False)
    assert loaded.num_timesteps == model.num_timesteps == 5 * ROUND
    assert_same_parameters(loaded, model)


def test_save_load_file_like_path_suffix_and_exclude(algo, backend, tmp_path):
    model = make(algo, backend, verbose=0).learn(2 * ROUND)
    obs = pendulum_observations()
    actions, _ = model.predict(obs, deterministic=True)

    buffer = io.BytesIO()
    model.save(buffer)
    buffer.seek(0)
    np.testing.assert_array_equal(algo.load(buffer).predict(obs, deterministic=True)[0], actions)

    model.save(str(tmp_path / "no_suffix"))  # SB3 appends ".zip"
    assert (tmp_path / "no_suffix.zip").is_file()
    np.testing.assert_array_equal(algo.load(tmp_path / "no_suffix").predict(obs, deterministic=True)[0], actions)

    model.stats_window_size_marker = "saved"  # an attribute that only `exclude` can leave out
    model.save(tmp_path / "excluded.zip", exclude=["stats_window_size_marker"])
    assert not hasattr(algo.load(tmp_path / "excluded.zip"), "stats_window_size_marker")
    model.save(tmp_path / "included.zip")
    assert algo.load(tmp_path / "included.zip").stats_window_size_marker == "saved"


def test_get_set_parameters(algo, backend, tmp_path):
    model = make(algo, backend).learn(2 * ROUND)
    obs = pendulum_observations()
    actions, _ = model.predict(obs, deterministic=True)
    original = copy.deepcopy(model.get_parameters())
    assert "policy" in original

    noisy = copy.deepcopy(original)
    for key, tensor in noisy["policy"].items():
        noisy["policy"][key] = tensor + th.randn_like(tensor)
    model.set_parameters(noisy, exact_match=True)
    assert not np.array_equal(model.predict(obs, deterministic=True)[0], actions)

    model.set_parameters(original, exact_match=True)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], actions)

    with pytest.raises(ValueError):
        model.set_parameters({"policy": original["policy"], "not_an_object": {}}, exact_match=True)

    model.save(tmp_path / "model.zip")
    model.set_parameters(noisy, exact_match=True)
    model.set_parameters(str(tmp_path / "model.zip"), exact_match=True)  # from a saved file
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], actions)
    model.learn(ROUND, reset_num_timesteps=False)  # training still works after set_parameters


def test_load_without_env_then_set_env(algo, backend, tmp_path):
    model = make(algo, backend).learn(2 * ROUND)
    model.save(tmp_path / "model.zip")
    loaded = algo.load(tmp_path / "model.zip")
    assert loaded.get_env() is None
    obs = pendulum_observations()
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    loaded.set_env(make_vec_env(ENV_ID, n_envs=1))
    loaded.learn(ROUND, reset_num_timesteps=False)
    assert loaded.num_timesteps == 3 * ROUND


def test_load_with_other_spaces_raises(algo, backend, tmp_path):
    make(algo, backend).save(tmp_path / "model.zip")
    with pytest.raises(ValueError):
        algo.load(tmp_path / "model.zip", env=gym.make("MountainCarContinuous-v0"))


# ======================================================================================== test_predict.py
def test_predict_shapes_bounds_and_determinism(algo, backend):
    model = make(algo, backend)
    space = model.action_space
    obs = pendulum_observations()

    action, state = model.predict(obs[0], deterministic=True)  # no batch dimension
    assert action.shape == space.shape and state is None
    assert action.dtype == space.dtype
    actions, _ = model.predict(obs, deterministic=True)  # a batch
    assert actions.shape == (len(obs), *space.shape)
    np.testing.assert_array_equal(actions[0], action)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], actions)  # deterministic is repeatable

    stochastic, _ = model.predict(obs, deterministic=False)
    assert stochastic.shape == actions.shape and not np.array_equal(stochastic, actions)
    for a in (actions, stochastic):
        assert np.all(a >= space.low) and np.all(a <= space.high)

    vec_obs = model.get_env().reset()  # what the training VecEnv returns
    vec_actions, _ = model.predict(vec_obs, episode_start=np.ones(len(vec_obs), dtype=bool))
    assert vec_actions.shape == (model.get_env().num_envs, *space.shape)

    with pytest.raises(ValueError):
        model.predict(np.zeros(5, dtype=np.float32))  # wrong observation shape


# ================================================================================== test_deterministic.py
def test_same_seed_same_parameters(algo, backend):
    first, second, other = make(algo, backend, seed=3), make(algo, backend, seed=3), make(algo, backend, seed=4)
    np.testing.assert_array_equal(flat(first), flat(second))
    assert not np.array_equal(flat(first), flat(other))
    for model in (first, second, other):
        model.learn(3 * ROUND)
    np.testing.assert_array_equal(flat(first), flat(second))
    assert [ep["r"] for ep in first.ep_info_buffer] == [ep["r"] for ep in second.ep_info_buffer]
    assert not np.array_equal(flat(first), flat(other))


def test_set_random_seed_makes_stochastic_predict_repeatable(algo, backend):
    model = make(algo, backend)
    obs = pendulum_observations()
    model.set_random_seed(7)
    first, _ = model.predict(obs, deterministic=False)
    following, _ = model.predict(obs, deterministic=False)
    model.set_random_seed(7)
    again, _ = model.predict(obs, deterministic=False)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, following)


# ====================================================================================== test_callbacks.py
def test_sb3_callbacks_together(algo, backend, tmp_path):
    model = make(algo, backend)
    checkpoint = CheckpointCallback(save_freq=20, save_path=str(tmp_path / "ckpt"), name_prefix="rl_model")
    never_stop = StopTrainingOnRewardThreshold(reward_threshold=1e9)
    evaluation = EvalCallback(
        eval_env(), callback_on_new_best=never_stop, best_model_save_path=str(tmp_path / "best"),
        log_path=str(tmp_path / "eval"), eval_freq=20, n_eval_episodes=2, warn=False,
    )
    on_event = CheckpointCallback(save_freq=1, save_path=str(tmp_path / "event"), name_prefix="event")
    every = EveryNTimesteps(n_steps=25, callback=on_event)
    max_episodes = StopTrainingOnMaxEpisodes(max_episodes=1000)
    model.learn(6 * ROUND, callback=CallbackList([checkpoint, evaluation, every, max_episodes]))
    assert model.num_timesteps == 6 * ROUND

    assert sorted(os.listdir(tmp_path / "ckpt")) == sorted(f"rl_model_{k}_steps.zip" for k in (20, 40, 60))
    assert algo.load(tmp_path / "ckpt" / "rl_model_40_steps.zip").num_timesteps == 40
    assert sorted(os.listdir(tmp_path / "event")) == sorted(f"event_{k}_steps.zip" for k in (25, 50))

    evaluations = np.load(tmp_path / "eval" / "evaluations.npz")
    assert list(evaluations["timesteps"]) == [20, 40, 60]
    assert evaluations["results"].shape == (3, 2)
    assert np.all(evaluations["ep_lengths"] == 10)
    assert evaluation.best_mean_reward == pytest.approx(evaluations["results"].mean(axis=1).max())
    assert (tmp_path / "best" / "best_model.zip").is_file()

    # No callback, then a plain function as callback (SB3 wraps it in a ConvertCallback).
    model.learn(ROUND, callback=None)
    calls = []
    model.learn(ROUND, callback=lambda local_vars, global_vars: calls.append(1) is None)
    assert len(calls) == ROUND


def test_sb3_test_callbacks(algo, backend, tmp_path):
    # SB3's test_callbacks, step for step, with budgets in rounds of these small settings and an evaluation env of
    # 10 steps. The reward threshold is unreachable (Pendulum's rewards are <= 0) and no-improvement needs 1000
    # evaluations, so every callback runs for the whole budget.
    log_folder = str(tmp_path / "logs" / "callbacks")
    model = make(algo, backend, policy_kwargs=dict(net_arch=[32]))
    checkpoint_callback = CheckpointCallback(save_freq=4 * ROUND, save_path=log_folder)
    callback_on_best = StopTrainingOnRewardThreshold(reward_threshold=0.0, verbose=1)
    callback_no_model_improvement = StopTrainingOnNoModelImprovement(max_no_improvement_evals=1000, min_evals=1, verbose=1)
    eval_callback = EvalCallback(
        eval_env(), callback_on_new_best=callback_on_best, callback_after_eval=callback_no_model_improvement,
        best_model_save_path=log_folder, log_path=log_folder, eval_freq=2 * ROUND, n_eval_episodes=2, warn=False,
    )
    # Equivalent to the checkpoint callback, but event-driven.
    checkpoint_on_event = CheckpointCallback(save_freq=1, save_path=log_folder, name_prefix="event")
    event_callback = EveryNTimesteps(n_steps=5 * ROUND, callback=checkpoint_on_event)
    callback_max_episodes = StopTrainingOnMaxEpisodes(max_episodes=100, verbose=1)
    callback = CallbackList([checkpoint_callback, eval_callback, event_callback, callback_max_episodes])
    model.learn(10 * ROUND, callback=callback)

    # Access to the local variables, as PPO gives it.
    assert model.env.observation_space.contains(callback.locals["new_obs"][0])
    assert model.env.action_space.contains(callback.locals["actions"][0])
    assert isinstance(callback.locals["rewards"], np.ndarray) and isinstance(callback.locals["dones"], np.ndarray)
    assert isinstance(callback.locals["infos"], list)
    # The child callbacks were called with the same locals.
    assert checkpoint_callback.locals["new_obs"] is callback.locals["new_obs"]
    assert event_callback.locals["new_obs"] is callback.locals["new_obs"]
    assert checkpoint_on_event.locals["new_obs"] is callback.locals["new_obs"]
    # The callbacks' counters match the model's.
    assert event_callback.num_timesteps == model.num_timesteps == 10 * ROUND
    assert event_callback.n_calls == model.num_timesteps

    model.learn(10 * ROUND, callback=None)
    model.learn(10 * ROUND, callback=[checkpoint_callback, eval_callback])  # a list becomes a CallbackList
    model.learn(10 * ROUND, callback=lambda _locals, _globals: True)  # the old way: a function

    # Several environments (SB3 runs this part for A2C and PPO): StopTrainingOnMaxEpisodes counts episodes per
    # environment, and each environment's episode here lasts H steps.
    max_episodes, n_envs = 1, 2
    envs = make_vec_env(ENV_ID, n_envs=n_envs, seed=0)
    model = make(algo, backend, env=envs, policy_kwargs=dict(net_arch=[32]))
    callback_max_episodes = StopTrainingOnMaxEpisodes(max_episodes=max_episodes, verbose=1)
    model.learn(100 * ROUND, callback=CallbackList([callback_max_episodes]))
    assert callback_max_episodes.n_episodes // n_envs == max_episodes
    assert model.num_timesteps // n_envs == HORIZON


class EventLog(BaseCallback):
    """Records the sequence of callback events: T(raining start), S(tart of rollout), s(tep), E(nd of rollout),
    F(inish of training)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def _on_training_start(self) -> None:
        self.events.append("T")

    def _on_rollout_start(self) -> None:
        self.events.append("S")

    def _on_step(self) -> bool:
        self.events.append("s")
        return True

    def _on_rollout_end(self) -> None:
        self.events.append("E")

    def _on_training_end(self) -> None:
        self.events.append("F")


def test_callback_event_order(algo, backend):
    # SB3: learn fires on_training_start, then rollouts (on_rollout_start, its on_step calls, on_rollout_end), then
    # on_training_end; a rollout that started also ends when no callback stopped training.
    import re

    model = make(algo, backend)
    for steps, reset in ((3 * ROUND, True), (ROUND + HORIZON, False)):  # the second one ends in the middle of a round
        log = EventLog()
        model.learn(steps, callback=log, reset_num_timesteps=reset)
        sequence = "".join(log.events)
        assert sequence.count("s") == log.n_calls
        assert re.fullmatch(r"T(Ss+E)+F", sequence), f"learn({steps}) fired {sequence}"


def test_load_overrides_learning_rate(algo, backend, tmp_path):
    # SB3: keyword arguments of load (and custom_objects) replace saved attributes before the model is set up, so
    # the learning-rate schedule follows them. Each NIGT/AFedPG update is a normalized step of length α.
    make(algo, backend, learning_rate=0.01).learn(2 * ROUND).save(tmp_path / "model.zip")
    one_update = HORIZON if algo is AFedPG else ROUND  # AFedPG: one update per trajectory
    for loaded in (algo.load(tmp_path / "model.zip", env=ENV_ID, learning_rate=0.25),
                   algo.load(tmp_path / "model.zip", env=ENV_ID, custom_objects=dict(learning_rate=0.25))):
        assert loaded.learning_rate == 0.25 and loaded.lr_schedule(1.0) == 0.25
        before, updates = flat(loaded).astype(np.float64), loaded._n_updates
        loaded.learn(one_update, reset_num_timesteps=False)
        assert loaded._n_updates == updates + 1
        assert np.linalg.norm(flat(loaded) - before) == pytest.approx(0.25, rel=1e-4)


def test_checkpoint_resumes_exactly(algo, backend, tmp_path):
    model = make(algo, backend)
    model.learn(6 * ROUND, callback=CheckpointCallback(save_freq=20, save_path=str(tmp_path), name_prefix="ckpt"))
    resumed = algo.load(tmp_path / "ckpt_40_steps.zip", env=ENV_ID)
    assert resumed.num_timesteps == 40
    resumed.learn(20, reset_num_timesteps=False)
    assert resumed.num_timesteps == model.num_timesteps == 60
    assert_same_parameters(resumed, model)


def test_stop_training_on_max_episodes(algo, backend):
    model = make(algo, backend)
    model.learn(100 * ROUND, callback=StopTrainingOnMaxEpisodes(max_episodes=3))
    assert model.num_timesteps == 3 * HORIZON  # one episode per consumed trajectory of H steps


def test_stop_training_on_reward_threshold(algo, backend):
    model = make(algo, backend)
    stop = StopTrainingOnRewardThreshold(reward_threshold=-1e9)  # the first evaluation reaches it
    evaluation = EvalCallback(eval_env(), callback_on_new_best=stop, eval_freq=15, n_eval_episodes=1, warn=False)
    model.learn(100 * ROUND, callback=evaluation)
    assert model.num_timesteps == 15


class LocalsRecorder(BaseCallback):
    """Records, at every ``on_step``, what a callback can see: ``self.locals`` (rewards, dones, infos), the step
    counter and the number of calls."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []

    def _on_step(self) -> bool:
        local_vars = self.locals
        self.records.append(dict(
            num_timesteps=self.num_timesteps,
            n_calls=self.n_calls,
            rewards=np.array(local_vars["rewards"], copy=True) if "rewards" in local_vars else None,
            dones=np.array(local_vars["dones"], copy=True) if "dones" in local_vars else None,
            infos=copy.deepcopy(list(local_vars["infos"])) if "infos" in local_vars else None,
        ))
        return True


def test_callback_locals_have_rewards_matching_the_episodes(algo, backend):
    model = make(algo, backend)
    recorder = LocalsRecorder()
    model.learn(3 * ROUND, callback=recorder)
    records = recorder.records
    assert len(records) == 3 * ROUND
    missing = sorted({key for r in records for key in ("rewards", "dones", "infos") if r[key] is None})
    assert not missing, f"self.locals lacks {missing} in on_step"
    episode_return, episodes = 0.0, 0
    for record in records:
        assert len(record["rewards"]) == len(record["dones"]) == len(record["infos"])
        assert np.all(np.isfinite(record["rewards"]))
        episode_return += float(record["rewards"][0])
        if record["dones"][0]:
            assert record["infos"][0]["episode"]["r"] == pytest.approx(episode_return, abs=1e-4)
            episode_return, episodes = 0.0, episodes + 1
    assert episodes == 3 * ROUND // HORIZON


def test_callback_infos_carry_the_envs_own_info(algo, backend):
    model = make(algo, backend, env=make_tagged_pendulum)
    recorder = LocalsRecorder()
    model.learn(2 * ROUND, callback=recorder)
    infos = [r["infos"] for r in recorder.records]
    assert all(i is not None and len(i) == 1 for i in infos)
    tags = [i[0].get("tag") for i in infos]
    assert tags == ["tagged"] * len(tags), f"on_step infos without the env's info: {tags}"
    # The env's step index: 0..H-1 within each trajectory, as the env returned it at that step.
    assert [i[0]["t"] for i in infos] == list(range(HORIZON)) * (len(infos) // HORIZON)


def test_callback_dones_and_num_timesteps_advance_per_step(algo, backend):
    model = make(algo, backend)
    recorder = LocalsRecorder()
    model.learn(3 * ROUND, callback=recorder)
    records = recorder.records
    assert records[0]["num_timesteps"] == 1 and records[0]["n_calls"] == 1
    for previous, record in zip(records, records[1:]):
        assert record["n_calls"] == previous["n_calls"] + 1
        # SB3: each on_step stands for len(dones) = num_envs environment steps.
        assert record["num_timesteps"] == previous["num_timesteps"] + len(record["dones"])
    assert records[-1]["num_timesteps"] == model.num_timesteps
    dones = [bool(r["dones"][0]) for r in records]
    assert dones == ([False] * (HORIZON - 1) + [True]) * (len(records) // HORIZON)
    for record in records:
        if record["dones"][0]:
            info = record["infos"][0]
            episode = info["episode"]
            assert {"r", "l", "t"} <= set(episode) and episode["l"] == HORIZON
            # SB3's VecEnv conventions at an episode's end: Pendulum is cut by H, a truncation, not a termination.
            assert info["TimeLimit.truncated"] is True
            assert np.shape(info["terminal_observation"]) == model.observation_space.shape


class FakeProgressBar:
    """Stands in for tqdm in SB3's ProgressBarCallback, recording the total and the updates."""

    instances: ClassVar[list[FakeProgressBar]] = []

    def __init__(self, total: int | None = None, **kwargs: Any) -> None:
        self.total = total
        self.n = 0
        FakeProgressBar.instances.append(self)

    def update(self, n: int = 1) -> None:
        self.n += n

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("n_envs", [1, 2])
@pytest.mark.parametrize("how", ["flag", "callback"])
def test_progress_bar_counts_timesteps_exactly(algo, backend, n_envs, how, monkeypatch):
    monkeypatch.setattr(sb3_callbacks, "tqdm", FakeProgressBar)
    FakeProgressBar.instances = []
    model = make(algo, backend, env=make_vec_env(ENV_ID, n_envs=n_envs, seed=0))

    def learn(steps: int, **kwargs: Any) -> None:
        if how == "flag":
            model.learn(steps, progress_bar=True, **kwargs)
        else:  # SB3's ProgressBarCallback given by the user, inside a list
            model.learn(steps, callback=[LocalsRecorder(), sb3_callbacks.ProgressBarCallback()], **kwargs)

    learn(4 * ROUND)
    bar = FakeProgressBar.instances[-1]
    assert bar.total == 4 * ROUND
    assert bar.n == model.num_timesteps == 4 * ROUND, f"the bar counted {bar.n} steps for {model.num_timesteps}"
    learn(2 * ROUND, reset_num_timesteps=False)
    bar = FakeProgressBar.instances[-1]
    assert bar.total == 2 * ROUND and bar.n == 2 * ROUND


# ========================================================================================= test_logger.py
def test_logger_writes_sb3_keys_to_every_format(algo, backend, tmp_path, monkeypatch):
    model = make(algo, backend)
    model.set_logger(configure(str(tmp_path), ["csv", "json", "log"]))
    # A clock that advances one second per reading: the elapsed time is a whole number of seconds, which the
    # logger writes exactly, so fps must equal SB3's int(steps / elapsed) (SB3 reads time.time_ns for both).
    ticks = itertools.count(start=10**9, step=10**9)
    monkeypatch.setattr(time, "time_ns", lambda: next(ticks))
    model.learn(5 * ROUND, log_interval=1)  # one table per round (the default paces them every 2048 steps)
    monkeypatch.undo()

    rows = read_csv(tmp_path / "progress.csv")
    with open(tmp_path / "progress.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    text = (tmp_path / "log.txt").read_text()
    assert rows and len(records) == len(rows)
    expected = {"rollout/ep_rew_mean", "rollout/ep_len_mean", "time/fps", "time/time_elapsed", "time/total_timesteps",
                "time/iterations"}
    assert expected <= set(rows[0]), expected - set(rows[0])
    assert expected <= set(records[-1]), expected - set(records[-1])
    for key in ("ep_rew_mean", "ep_len_mean", "fps", "total_timesteps"):
        assert key in text

    last = records[-1]
    assert last["time/total_timesteps"] == model.num_timesteps == 5 * ROUND
    fps, elapsed = last["time/fps"], last["time/time_elapsed"]
    assert elapsed >= 1 and fps == int(model.num_timesteps / elapsed), (fps, elapsed)
    assert last["rollout/ep_len_mean"] == HORIZON
    assert last["rollout/ep_rew_mean"] == pytest.approx(safe_mean([ep["r"] for ep in model.ep_info_buffer]))
    steps = [int(float(r["time/total_timesteps"])) for r in rows]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)


def test_logger_log_interval(algo, backend, tmp_path):
    dumps = {}
    for interval in (1, 2):
        model = make(algo, backend)
        model.set_logger(configure(str(tmp_path / str(interval)), ["csv"]))
        model.learn(9 * ROUND, log_interval=interval)
        dumps[interval] = len(read_csv(tmp_path / str(interval) / "progress.csv"))
    assert dumps[1] >= 4 and dumps[2] == dumps[1] // 2


def test_ep_info_buffer_and_stats_window_size(algo, backend):
    model = make(algo, backend, stats_window_size=3)
    model.learn(3 * ROUND)
    assert model.ep_info_buffer.maxlen == model.ep_success_buffer.maxlen == 3
    assert len(model.ep_info_buffer) == 3
    for episode in model.ep_info_buffer:
        assert {"r", "l", "t"} <= set(episode)
        assert episode["l"] == HORIZON and np.isfinite(episode["r"])


def test_is_success_gives_rollout_success_rate(algo, backend, tmp_path):
    model = make(algo, backend, env=make_success_pendulum, horizon=2 * HORIZON)  # episodes end at 5 steps
    model.set_logger(configure(str(tmp_path), ["csv"]))
    recorder = LocalsRecorder()
    model.learn(5 * ROUND, callback=recorder, log_interval=1)
    assert {ep["l"] for ep in model.ep_info_buffer} == {HORIZON}
    done_infos = [r["infos"][0] for r in recorder.records if r["dones"][0]]
    assert len(done_infos) == 5 * ROUND // HORIZON
    for info in done_infos:  # the env terminated the episode itself
        assert info["is_success"] is True and info["TimeLimit.truncated"] is False
    assert len(model.ep_success_buffer) == len(model.ep_info_buffer), "info['is_success'] was not collected"
    rows = read_csv(tmp_path / "progress.csv")
    assert "rollout/success_rate" in rows[-1]
    assert float(rows[-1]["rollout/success_rate"]) == 1.0


# ==================================================================================== test_tensorboard.py
def test_tensorboard_run_folders_and_scalars(algo, backend, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = make(algo, backend, tensorboard_log=str(tmp_path))
    model.learn(3 * ROUND, tb_log_name="run", log_interval=1)
    assert sorted(os.listdir(tmp_path)) == ["run_1"]
    model.learn(2 * ROUND, tb_log_name="run", reset_num_timesteps=False, log_interval=1)  # continues the same run
    assert sorted(os.listdir(tmp_path)) == ["run_1"]
    model.learn(2 * ROUND, tb_log_name="run", log_interval=1)
    assert sorted(os.listdir(tmp_path)) == ["run_1", "run_2"]
    model.learn(2 * ROUND, log_interval=1)  # default run name: the class name
    assert (tmp_path / f"{algo.__name__}_1").is_dir()

    # One event file per learn() call, read in the order they were written: TensorBoard orders a folder's files by
    # name, and names made in the same second differ by a process-wide counter ("...9" sorts after "...10").
    events = []
    for path in sorted((tmp_path / "run_1").iterdir()):
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        scalars = set(accumulator.Tags()["scalars"])
        assert {"rollout/ep_rew_mean", "rollout/ep_len_mean", "time/fps"} <= scalars, scalars
        events += [(event.wall_time, event.step) for event in accumulator.Scalars("rollout/ep_rew_mean")]
    steps = [step for _, step in sorted(events)]
    assert len(os.listdir(tmp_path / "run_1")) == 2 and steps == sorted(steps) and steps[-1] == 5 * ROUND


# ================================================================================== test_vec_normalize.py
@pytest.mark.parametrize("norm_obs, norm_reward", [(True, False), (True, True), (False, True)])
def test_vec_normalize_learn_save_load(algo, backend, tmp_path, norm_obs, norm_reward):
    def venv(seed: int = 0):
        return make_vec_env(ENV_ID, n_envs=1, seed=seed)

    env = VecNormalize(venv(), norm_obs=norm_obs, norm_reward=norm_reward)
    count_before = float(env.obs_rms.count) if norm_obs else None
    if norm_reward:
        with pytest.warns(UserWarning, match="norm_reward"):
            model = make(algo, backend, env=env)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            model = make(algo, backend, env=env)
    assert model.get_vec_normalize_env() is env
    model.learn(3 * ROUND)
    if norm_obs:  # one raw observation per consumed step (fresh statistics are first replaced by a warm-up round)
        assert float(env.obs_rms.count) == pytest.approx(1e-4 + model.num_timesteps)
    else:
        assert not hasattr(env, "obs_rms") or float(env.obs_rms.count) == count_before

    model.save(tmp_path / "model.zip")
    env.save(str(tmp_path / "vec_normalize.pkl"))
    new_env = VecNormalize.load(str(tmp_path / "vec_normalize.pkl"), venv(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loaded = algo.load(tmp_path / "model.zip", env=new_env)
    assert loaded.get_vec_normalize_env() is new_env
    assert new_env.norm_obs == norm_obs and new_env.norm_reward == norm_reward
    if norm_obs:
        np.testing.assert_array_equal(new_env.obs_rms.mean, env.obs_rms.mean)
        np.testing.assert_array_equal(new_env.obs_rms.var, env.obs_rms.var)
    if norm_reward:
        np.testing.assert_array_equal(new_env.ret_rms.var, env.ret_rms.var)
    obs = pendulum_observations()
    np.testing.assert_array_equal(
        loaded.predict(new_env.normalize_obs(obs), deterministic=True)[0],
        model.predict(env.normalize_obs(obs), deterministic=True)[0],
    )

    count = float(new_env.obs_rms.count) if norm_obs else None
    loaded.learn(2 * ROUND, reset_num_timesteps=False)
    model.learn(2 * ROUND, reset_num_timesteps=False)
    assert loaded.num_timesteps == 5 * ROUND
    if norm_obs:
        # No second warm-up: the loaded statistics are used and updated with the consumed steps (plus, as in SB3,
        # the reset observation of the loaded env, which learn() resets once).
        assert float(new_env.obs_rms.count) - count in (pytest.approx(2 * ROUND), pytest.approx(2 * ROUND + 1))
    else:  # nothing depends on the env's statistics: the loaded model continues the original run exactly
        assert_same_parameters(loaded, model)


# ================================================================================== test_custom_policy.py
CUSTOM_POLICIES = {
    "net_arch_16_16": (dict(net_arch=[16, 16]), [16, 16], nn.Tanh),
    "net_arch_dict_pi": (dict(net_arch=dict(pi=[16])), [16], nn.Tanh),
    "relu": (dict(activation_fn=th.nn.ReLU), [64, 64], nn.ReLU),
    "elu_torch_forward": (dict(net_arch=[8], activation_fn=th.nn.ELU), [8], nn.ELU),
    "linear": (dict(net_arch=[]), [], None),
}


@pytest.mark.parametrize("name", list(CUSTOM_POLICIES))
def test_custom_policy_kwargs(algo, backend, tmp_path, name):
    policy_kwargs, hidden, activation = CUSTOM_POLICIES[name]
    model = make(algo, backend, policy_kwargs=policy_kwargs)
    layers = [m for m in model.policy.latent if isinstance(m, nn.Linear)]
    assert [layer.out_features for layer in layers] == hidden
    activations = [m for m in model.policy.latent if not isinstance(m, nn.Linear)]
    assert len(activations) == len(hidden) and all(type(m) is activation for m in activations)
    before = flat(model)
    model.learn(3 * ROUND)
    assert not np.array_equal(flat(model), before)

    obs = pendulum_observations()
    model.save(tmp_path / "model.zip")
    loaded = algo.load(tmp_path / "model.zip")
    assert [m.out_features for m in loaded.policy.latent if isinstance(m, nn.Linear)] == hidden
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


# ============================================================================== test_train_eval_mode.py
BN_KWARGS = dict(features_extractor_class=BatchNormDropoutExtractor, features_extractor_kwargs=dict(features_dim=16), net_arch=[16])
DROPOUT_KWARGS = dict(features_extractor_class=LayerNormDropoutExtractor, features_extractor_kwargs=dict(features_dim=16), net_arch=[16])


def test_train_eval_mode_with_dropout(algo, backend):
    model = make(algo, backend, policy_kwargs=DROPOUT_KWARGS)
    obs = pendulum_observations()
    before = flat(model)
    model.learn(3 * ROUND)
    assert not np.array_equal(flat(model), before)
    # NIGT's main policy takes no optimizer step: after learn it is left in evaluation mode, every module with it.
    assert model.policy.training is False
    assert not any(module.training for module in model.policy.modules())

    model.policy.set_training_mode(True)  # predict must switch to evaluation mode by itself
    first, _ = model.predict(obs, deterministic=True)
    assert model.policy.training is False
    second, _ = model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(first, second)  # no dropout at prediction
    # The workers sample in evaluation mode as well: a second identical run gives identical episodes.
    again = make(algo, backend, policy_kwargs=DROPOUT_KWARGS).learn(3 * ROUND)
    np.testing.assert_array_equal(flat(again), flat(model))


def test_batch_norm_is_refused_with_a_clear_error(algo, backend):
    with pytest.raises(ValueError, match="policy_kwargs.*BatchNorm"):
        make(algo, backend, policy_kwargs=BN_KWARGS)


def test_workers_use_the_policys_buffers(algo, backend):
    # The policy is its parameters and its buffers (here a random projection drawn at construction): workers must
    # sample trajectories with the policy that predict() uses. Two models with the same seed and parameters but
    # different buffers are different policies, so their episodes must differ.
    kwargs = dict(features_extractor_class=RandomProjectionExtractor, features_extractor_kwargs=dict(features_dim=8), net_arch=[8])
    reference, shifted = make(algo, backend, policy_kwargs=kwargs), make(algo, backend, policy_kwargs=kwargs)
    np.testing.assert_array_equal(flat(reference), flat(shifted))
    with th.no_grad():
        shifted.policy.features_extractor.projection.mul_(-3.0)
    obs = pendulum_observations()
    assert not np.array_equal(reference.predict(obs, deterministic=True)[0], shifted.predict(obs, deterministic=True)[0])
    reference.learn(3 * ROUND)
    shifted.learn(3 * ROUND)
    assert [ep["r"] for ep in reference.ep_info_buffer] != [ep["r"] for ep in shifted.ep_info_buffer], (
        "the workers' trajectories ignore the policy's buffers: both models sampled the very same episodes"
    )


# ========================================================================================== test_spaces.py
@pytest.mark.parametrize("name", list(SPACE_ENVS))
def test_box_spaces(algo, backend, name):
    factory = SPACE_ENVS[name]
    model = make(algo, backend, env=factory)
    space = model.action_space
    model.learn(3 * ROUND)
    assert model.num_timesteps == 3 * ROUND
    env = factory()
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=False)
    assert action.shape == space.shape
    assert action.dtype == space.dtype
    batch = np.stack([env.observation_space.sample() for _ in range(4)])
    actions, _ = model.predict(batch, deterministic=True)
    assert actions.shape == (4, *space.shape)
    for a in (action[None], actions):
        assert np.all(a >= space.low) and np.all(a <= space.high)


class SpacesEnv(BoxEnv):
    """BoxEnv with other spaces declared (only the construction-time checks are exercised)."""

    def __init__(self, observation_space: spaces.Space | None = None, action_space: spaces.Space | None = None) -> None:
        super().__init__()
        self.observation_space = observation_space or self.observation_space
        self.action_space = action_space or self.action_space


class DictObsEnv(BoxEnv):
    def __init__(self) -> None:
        super().__init__()
        self.observation_space = spaces.Dict({"x": spaces.Box(-1.0, 1.0, (3,), np.float32)})

    def _obs(self):
        return {"x": np.zeros(3, dtype=np.float32)}


UNSUPPORTED = {
    # (env, what the error must name); callables, so that the check is about the space and not about rebuilding
    "discrete_action": ("CartPole-v1", "action space"),
    "dict_observation": (functools.partial(DictObsEnv), "observation space"),
    "unbounded_action": (functools.partial(BoxEnv, (3,), (-np.inf,), (np.inf,)), "action_space"),
    # SB3 flattens it; NIGT refuses it (documented: workers sample on the raw flattened observation)
    "2d_observation": (functools.partial(BoxEnv, (2, 3), (-1.0,), (1.0,)), "observation_space"),
    "image_observation": (functools.partial(FakeImageEnv, discrete=False), "observation_space: an image space"),
    "tuple_observation": (functools.partial(SpacesEnv, observation_space=spaces.Tuple([spaces.Box(-1.0, 1.0, (2,))])), "observation_space"),
    "multi_discrete_action": (functools.partial(SpacesEnv, action_space=spaces.MultiDiscrete([2, 3])), "action_space"),
    "multi_binary_action": (functools.partial(SpacesEnv, action_space=spaces.MultiBinary(3)), "action_space"),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_unsupported_spaces_raise(algo, backend, name):
    env, match = UNSUPPORTED[name]
    with pytest.raises((ValueError, AssertionError), match=match):
        make(algo, backend, env=env)


@pytest.mark.parametrize("alias", ["CnnPolicy", "MultiInputPolicy"])
def test_sb3_policy_aliases_are_refused(algo, alias):
    # SB3's image and Dict policies: the error names the accepted policy, before any environment step.
    with pytest.raises(ValueError, match=r"^policy: unknown policy '" + alias + r"'.*MlpPolicy"):
        algo(alias, ENV_ID)
