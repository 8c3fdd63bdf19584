"""SB3's ``env`` conventions: an unregistered instance, a class, a DummyVecEnv, a SubprocVecEnv.

The environment classes live in this module, which workers import by name (cloudpickle pickles an importable
class by reference), so they also work with the subprocess backend.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import warnings
from typing import Optional

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from sb3_nigt import MaleniaNIGT, RennalaNIGT
from sb3_nigt.workers.env_factory import EnvFactory, EnvSnapshot, env_factories

from helpers import assert_no_worker_alive

ALGOS = [RennalaNIGT, MaleniaNIGT]
BACKENDS = [dict(backend="inline"), dict(backend="subprocess", n_workers=1)]
SMALL = dict(horizon=5, round_size=2, n_agents=2, seed=0)
STEPS = 50


class TinyEnv(gym.Env):
    """1-D Box observation and action; reward −a²; the episode ends after ``length`` steps."""

    def __init__(self, length: int = 5):
        self.length = int(length)
        self.observation_space = spaces.Box(-10.0, 10.0, (1,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t = 0

    def reset(self, *, seed: Optional[int] = None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action):
        a = float(np.asarray(action).reshape(-1)[0])
        self.t += 1
        return np.array([float(self.t)], dtype=np.float32), -a * a, self.t >= self.length, False, {}


class LockedEnv(TinyEnv):
    """A TinyEnv that holds a lock: cloudpickle cannot copy it."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()


class NoisyEnv(TinyEnv):
    """A TinyEnv whose constructor emits a DeprecationWarning of its own."""

    def __init__(self) -> None:
        warnings.warn("NoisyEnv: another deprecation", DeprecationWarning, stacklevel=2)
        super().__init__()


TINY_ID = "TinyConventions-v0"
gym.register(TINY_ID, entry_point=f"{__name__}:TinyEnv")
# v0 has a newer version: gymnasium.make("TinyNoisy-v0") warns "The environment TinyNoisy-v0 is out of date".
gym.register("TinyNoisy-v0", entry_point=f"{__name__}:NoisyEnv")
gym.register("TinyNoisy-v1", entry_point=f"{__name__}:NoisyEnv")


def make_registered() -> gym.Env:
    return gym.make(TINY_ID)


def unregistered_spec_env() -> TinyEnv:
    env = TinyEnv()
    env.spec = EnvSpec("TinyNotRegistered-v0", entry_point=f"{__name__}:TinyEnv")
    return env


def learn_and_close(model) -> None:
    before = model.get_flat_params()
    try:
        model.learn(STEPS)
        assert model.num_timesteps >= STEPS
        assert not np.array_equal(model.get_flat_params(), before)
    finally:
        model.close()
        model.get_env().close()


# --------------------------------------------------------------------------------- forms that work
ENV_FORMS = {
    "unregistered_instance": lambda: TinyEnv(),
    "unregistered_spec_instance": unregistered_spec_env,
    "class": lambda: TinyEnv,
    "dummy_vec_env": lambda: DummyVecEnv([lambda: TinyEnv()]),
    "dummy_vec_env_of_n_envs": lambda: DummyVecEnv([lambda: TinyEnv()] * SMALL["n_agents"]),
}


@pytest.mark.parametrize("form", list(ENV_FORMS))
@pytest.mark.parametrize("backend", BACKENDS, ids=["inline", "subprocess"])
@pytest.mark.parametrize("algo", ALGOS, ids=lambda cls: cls.__name__)
def test_env_form_learns(algo, backend, form, worker_spy):
    model = algo("MlpPolicy", ENV_FORMS[form](), **SMALL, **backend)
    learn_and_close(model)
    if backend["backend"] == "subprocess":
        assert_no_worker_alive(worker_spy)


def test_one_dummy_vec_env_per_agent_gives_each_agent_its_env():
    model = MaleniaNIGT("MlpPolicy", DummyVecEnv([lambda: TinyEnv(), lambda: TinyEnv(length=3)]), **SMALL)
    try:
        assert model.heterogeneous and model._agent_env_index() == [0, 1]
        assert [f().length for f in model._env_factories] == [5, 3]
    finally:
        model.close()
        model.get_env().close()


@pytest.mark.parametrize("form", ["unregistered_instance", "class", "dummy_vec_env"])
def test_set_env_accepts_the_same_forms(form):
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", **SMALL)
    model.get_env().close()
    with pytest.raises(ValueError):  # Pendulum's spaces differ from TinyEnv's: set_env still checks them
        model.set_env(TinyEnv())
    model = RennalaNIGT("MlpPolicy", TinyEnv, **SMALL)
    model.get_env().close()
    model.set_env(ENV_FORMS[form]())
    learn_and_close(model)


def test_an_unregistered_instance_is_copied_fresh_at_each_call():
    env = TinyEnv()
    env.reset(seed=0)
    env.step(np.zeros(1, dtype=np.float32))
    (factory,) = env_factories(env)
    assert isinstance(factory, EnvSnapshot)
    first, second = factory(), factory()
    assert first is not second and first is not env and first.t == second.t == 1
    env.step(np.zeros(1, dtype=np.float32))
    assert factory().t == 1  # the copy taken when it was given, not the live instance
    assert env_factories(TinyEnv()) == env_factories(TinyEnv())  # copies of one fresh env are one environment


def test_a_registered_instance_is_still_rebuilt_from_its_spec():
    (factory,) = env_factories(gym.make(TINY_ID))
    assert isinstance(factory, EnvFactory)


# ------------------------------------------------------------------------------ forms that do not
@pytest.mark.parametrize("algo", ALGOS, ids=lambda cls: cls.__name__)
def test_an_env_that_cannot_be_copied_raises_saying_what_to_pass(algo):
    with pytest.raises(ValueError, match=r"^env: .*cannot be copied.*_thread\.lock.*its class \(env=LockedEnv\)"):
        algo("MlpPolicy", LockedEnv(), **SMALL)
    with pytest.raises(ValueError, match=r"^env\[1\]: .*cannot be copied"):
        algo("MlpPolicy", [TinyEnv(), LockedEnv()], **SMALL)
    with pytest.raises(ValueError, match=r"^env: sub-environment 0 of the DummyVecEnv: .*cannot be copied"):
        algo("MlpPolicy", DummyVecEnv([LockedEnv]), **SMALL)


# ----------------------------------------------------------------------------------- SubprocVecEnv
@pytest.mark.parametrize("backend", BACKENDS, ids=["inline", "subprocess"])
@pytest.mark.parametrize("algo", ALGOS, ids=lambda cls: cls.__name__)
def test_subproc_vec_env_warns_that_its_processes_are_not_used(algo, backend, worker_spy):
    venv = SubprocVecEnv([make_registered])
    try:
        with pytest.warns(UserWarning, match=r"SubprocVecEnv.*do not use its processes.*backend='subprocess'") as record:
            model = algo("MlpPolicy", venv, **SMALL, **backend)
        assert any(w.filename == __file__ for w in record if "SubprocVecEnv" in str(w.message))
        learn_and_close(model)
    finally:
        venv.close()
    if backend["backend"] == "subprocess":
        assert_no_worker_alive(worker_spy)


def test_subproc_vec_env_without_registered_specs_raises():
    venv = SubprocVecEnv([TinyEnv])
    try:
        with pytest.raises(ValueError, match=r"^env: sub-environment 0 of this SubprocVecEnv has no registered"):
            RennalaNIGT("MlpPolicy", venv, **SMALL)
    finally:
        venv.close()
    assert mp.active_children() == []


# -------------------------------------------------------------------------------------------- noise
def built_warnings(factory) -> list[str]:
    """The warnings emitted while ``factory()`` builds its environment (all shown)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        factory().close()
    return [str(w.message) for w in record]


def test_out_of_date_warning_only_in_the_main_process():
    factory = EnvFactory("TinyNoisy-v0")  # as heterogeneous_envs("Hopper-v4") and env="Hopper-v4" build it
    main = built_warnings(factory)
    assert any("TinyNoisy-v0 is out of date" in m for m in main)
    assert any("another deprecation" in m for m in main)
    with mp.get_context("forkserver").Pool(1) as pool:
        in_worker = pool.apply(built_warnings, (factory,))
    assert any("another deprecation" in m for m in in_worker)  # other warnings still show
    assert not any("out of date" in m for m in in_worker)
