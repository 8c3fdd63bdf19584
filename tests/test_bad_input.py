"""Bad arguments and bad environments fail loudly, name the culprit, leave θ unchanged and leave no process."""

from __future__ import annotations

import math
import multiprocessing as mp
import threading
from typing import Optional

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from sb3_nigt.workers.env_factory import AgentVecEnv

from helpers import ConstantBandit, FailsOutsideProcess, assert_no_worker_alive, quadratic_reward

NAN = float("nan")



@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(env="CartPole-v1"), "action_space"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(initial_batch_size=0), "initial_batch_size"),
        (dict(momentum=0), "momentum"),
        (dict(momentum=1.5), "momentum"),
        (dict(momentum=-0.1), "momentum"),
        (dict(round_size=0), "round_size"),
        (dict(round_size=2.5), "round_size"),
        (dict(initial_round_size=0), "initial_round_size"),
        (dict(eta=0), "eta"),
        (dict(eta=1.5), "eta"),
        (dict(eta=True), "eta"),
        (dict(step_data="yes"), "step_data"),
        (dict(worker_timeout=-1.0), "worker_timeout"),
        (dict(max_failures=-1), "max_failures"),
        (dict(verbose=-1), "verbose"),
        (dict(horizon=0), "horizon"),
        (dict(gamma=1.5), "gamma"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(learning_rate=NAN), "learning_rate"),
        (dict(n_agents=0), "n_agents"),
        (dict(n_agents=3, compute_times=[1.0, 2.0]), "compute_times"),
        (dict(n_agents=3, compute_times=[1.0, -1.0, 1.0]), "compute_times"),
        (dict(n_agents=3, compute_times=[1.0, NAN, 1.0]), "compute_times"),
        (dict(n_agents=3, compute_times=[1.0, math.inf, 1.0]), "compute_times"),
        (dict(n_agents=3, compute_times=[1.0, 0.0, 1.0]), "compute_times"),
        (dict(compute_times="bogus"), "compute_times"),
        (dict(n_agents=2, communication_times=[0.0, -1.0]), "communication_times"),
        (dict(n_agents=2, communication_times=[0.0, NAN]), "communication_times"),
        (dict(n_agents=2, communication_times=[0.0, 0.0, 0.0]), "communication_times"),
        (dict(compute_time_unit="bogus"), "compute_time_unit"),
        (dict(clock="bogus"), "clock"),
        (dict(backend="bogus"), "backend"),
        (dict(backend="subprocess", n_workers=0), "n_workers"),
        (dict(clock="real", time_scale=-1.0), "time_scale"),
        (dict(policy_kwargs=dict(min_std=0.0)), "min_std"),
        (dict(policy_kwargs=dict(min_std=math.inf)), "min_std"),
        # Argument types: a clear error for every wrong type.
        (dict(learning_rate="0.1"), "learning_rate"),
        (dict(momentum=True), "momentum"),
        (dict(gamma="0.9"), "gamma"),
        (dict(seed=1.5), "seed"),
        (dict(seed=-1), "seed"),
        (dict(seed=2**32), "seed"),
        (dict(clock="real", backend="subprocess", time_scale="1"), "time_scale"),
        (dict(start_method="bogus"), "start_method"),
        (dict(stats_window_size=0), "stats_window_size"),
        (dict(compute_times={"means": 1}), "compute_times"),
        (dict(compute_times={"distribution": "lognormal", "sigma": -1.0}), "compute_times"),
        (dict(communication_times={"bogus": 1}), "communication_times"),
        (dict(compute_times=1e308), "compute_times"),
        (dict(compute_times=2e15), "compute_times"),
        (dict(communication_times=1e308), "communication_times"),
        # Policy arguments.
        (dict(policy_kwargs=dict(net_arch=[0])), "net_arch"),
        (dict(policy_kwargs=dict(net_arch=[-8])), "net_arch"),
        (dict(policy_kwargs=dict(net_arch=[8.0])), "net_arch"),
        (dict(policy_kwargs=dict(net_arch=[True])), "net_arch"),
        (dict(policy_kwargs=dict(net_arch="64")), "net_arch"),
        (dict(policy_kwargs=dict(net_arch=64)), "net_arch"),
        (dict(policy_kwargs=dict(net_arch=dict(vf=[8]))), "net_arch"),
        (dict(policy_kwargs=dict(net_arch=dict(pi=[0]))), "net_arch"),
        (dict(policy_kwargs=dict(net_arch=dict(pi=[8], bogus=[8]))), "net_arch"),
        (dict(policy_kwargs=dict(activation_fn="tanh")), "activation_fn"),
        (dict(policy_kwargs=dict(activation_fn=nn.Tanh())), "activation_fn"),
        (dict(policy_kwargs=dict(activation_fn=np.tanh)), "activation_fn"),
        (dict(policy_kwargs=dict(activation_fn=nn.BatchNorm1d)), "activation_fn"),  # needs num_features
        (dict(policy_kwargs=dict(ortho_init=True)), "policy_kwargs"),
        (dict(policy_kwargs=[("net_arch", [8])]), "policy_kwargs"),
        (dict(policy_kwargs=dict(features_extractor_class=nn.Linear)), "features_extractor_class"),
    ],
)
def test_bad_argument_raises_value_error_naming_it(make_model, kwargs, argument):
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        make_model(**kwargs)


@pytest.mark.parametrize("argument", ["compute_times", "communication_times"])
def test_a_time_that_would_overflow_the_clock_names_the_accepted_range(make_model, argument):
    with pytest.raises(ValueError, match=rf"^{argument}: .*at most 1e15 seconds"):
        make_model(**{argument: 1e308})


def test_an_unknown_start_method_is_refused_at_construction_not_at_learn(make_model):
    with pytest.raises(ValueError, match=r"^start_method: .*get_all_start_methods|^start_method: .*'bogus'"):
        make_model(backend="subprocess", start_method="bogus")
    for method in mp.get_all_start_methods():
        assert make_model(start_method=method).start_method == method


def test_bad_arguments_leave_no_environment_open(make_model, monkeypatch):
    """An argument refused after the environment list was built closes the AgentVecEnv built from it."""
    closed = []
    original = AgentVecEnv.close
    monkeypatch.setattr(AgentVecEnv, "close", lambda self: closed.append(self) or original(self))
    with pytest.raises(ValueError, match=r"^compute_times\b"):
        make_model(env=["Pendulum-v1", "Pendulum-v1"], compute_times=[1.0, 2.0, 3.0])
    assert len(closed) == 1


def test_discrete_action_space_message_mentions_the_action_space(make_model):
    with pytest.raises(ValueError, match="action space"):
        make_model(env="CartPole-v1")


def test_env_without_spec_that_cannot_be_copied_asks_for_a_factory(make_model):
    # An instance without a registered spec is copied to the workers (378a38e); one holding a lock cannot be.
    env = ConstantBandit(quadratic_reward)
    env.lock = threading.Lock()
    with pytest.raises(ValueError, match=r"^env: .*factory"):
        make_model(env=env)


def test_eta_one_is_accepted(make_model):
    model = make_model(eta=1.0)
    model.learn(3 * 4 * 20)
    assert model.n_rounds == 3


# -------------------------------------------------------------------------------------------- NaN reward
class NaNRewardEnv(gym.Env):
    """A custom env defined in this test module (workers receive it through ``env=lambda: NaNRewardEnv(...)``).

    A dynamics-free env: reward −(a − 0.3)² per step, but NaN from the ``nan_after``-th step of the instance's
    life (``nan_after=0``: the very first reward). Episodes last ``length`` steps.
    """

    def __init__(self, nan_after: int = 0, length: int = 10):
        self.nan_after = int(nan_after)
        self.length = int(length)
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.total_steps = 0
        self.t = 0

    def reset(self, *, seed: Optional[int] = None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0, 1.0], dtype=np.float32), {}

    def step(self, action):
        a = float(np.asarray(action).reshape(-1)[0])
        reward = float("nan") if self.total_steps >= self.nan_after else -(a - 0.3) ** 2
        self.total_steps += 1
        self.t += 1
        return np.array([self.t / self.length, 1.0], dtype=np.float32), reward, self.t >= self.length, False, {}


class ParamsAtRoundStart(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.params: list[np.ndarray] = []

    def _on_rollout_start(self) -> None:
        self.params.append(self.model.get_flat_params())

    def _on_step(self) -> bool:
        return True


BACKENDS = [dict(backend="inline"), dict(backend="subprocess", n_workers=2)]


@pytest.mark.parametrize("backend", BACKENDS, ids=["inline", "subprocess"])
def test_nan_reward_at_once_leaves_theta_unchanged(make_model, worker_spy, backend):
    model = make_model(env=lambda: NaNRewardEnv(nan_after=0), **backend)
    before = model.get_flat_params()
    with pytest.raises(ValueError, match="reward"):
        model.learn(1000)
    assert np.array_equal(model.get_flat_params(), before)
    assert model.momentum_buffer is None
    if backend["backend"] == "subprocess":
        assert_no_worker_alive(worker_spy)


@pytest.mark.parametrize("backend", BACKENDS, ids=["inline", "subprocess"])
def test_nan_reward_after_some_rounds_stops_before_the_update(make_model, worker_spy, backend):
    # Each env instance returns NaN from its 150th step on: several updates happen first.
    model = make_model(env=lambda: NaNRewardEnv(nan_after=150, length=10), **backend)
    initial = model.get_flat_params()
    recorder = ParamsAtRoundStart()
    with pytest.raises(ValueError, match="reward"):
        model.learn(100_000, callback=recorder)
    assert len(recorder.params) >= 3
    assert not np.array_equal(recorder.params[-1], initial)
    assert np.array_equal(model.get_flat_params(), recorder.params[-1])
    if backend["backend"] == "subprocess":
        assert_no_worker_alive(worker_spy)


# ------------------------------------------------------------------------------ no process left behind
class Interrupt(BaseCallback):
    def _on_step(self) -> bool:
        if self.num_timesteps == 50:
            raise KeyboardInterrupt
        return True


def test_keyboard_interrupt_in_a_callback_leaves_no_worker(make_model, worker_spy):
    model = make_model(backend="subprocess", n_workers=2)
    with pytest.raises(KeyboardInterrupt):
        model.learn(100_000, callback=Interrupt())
    assert model.num_timesteps == 50
    assert_no_worker_alive(worker_spy)


def test_worker_that_cannot_build_its_env_fails_loudly_and_leaves_no_worker(make_model, worker_spy):
    model = make_model(env=FailsOutsideProcess(), backend="subprocess", n_workers=2)
    with pytest.raises(RuntimeError, match="inside a worker"):
        model.learn(1000)
    assert_no_worker_alive(worker_spy)


def test_workers_are_closed_by_close_after_a_normal_run(make_model, worker_spy):
    model = make_model(backend="subprocess", n_workers=2)
    model.learn(2 * 4 * 20)
    assert all(process.is_alive() for process in worker_spy)  # kept for the next learn()
    model.close()
    assert_no_worker_alive(worker_spy)
