"""The validated configuration: the clear names (eta, round_size, initial_round_size), their old names as warned
aliases (constructor, load, attributes, saved files), the warning for a round size an algorithm does not use,
and the typed errors."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

from sb3_nigt import AFedPG, MaleniaNIGT, RennalaNIGT, SynchronizedNIGT
from sb3_nigt.algorithms.config import check_settings
from sb3_nigt.core.errors import NonFiniteEnvironmentError, PolicyError

SMALL = dict(horizon=5, n_agents=2, seed=0, policy_kwargs=dict(net_arch=[8]))


@pytest.mark.parametrize(
    "old, new, value",
    [("momentum", "eta", 0.3), ("batch_size", "round_size", 3), ("initial_batch_size", "initial_round_size", 7)],
)
def test_an_old_name_still_works_with_a_future_warning_naming_the_new_one(old, new, value):
    with pytest.warns(FutureWarning, match=rf"^{old} is now called {new}") as record:
        model = RennalaNIGT("MlpPolicy", "Pendulum-v1", **{old: value}, **SMALL)
    assert all(w.filename == __file__ for w in record)  # the warning points at the user's line
    assert getattr(model, new) == value and getattr(model, old) == value
    setattr(model, old, value + 1)  # the old attribute writes the new one (rl-zoo3, Optuna)
    assert getattr(model, new) == value + 1


def test_the_new_names_do_not_warn_and_give_the_same_run():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = RennalaNIGT("MlpPolicy", "Pendulum-v1", eta=0.3, round_size=3, initial_round_size=4, **SMALL)
    with pytest.warns(FutureWarning):
        old = RennalaNIGT("MlpPolicy", "Pendulum-v1", momentum=0.3, batch_size=3, initial_batch_size=4, **SMALL)
    new.learn(60)
    old.learn(60)
    assert np.array_equal(new.get_flat_params(), old.get_flat_params())
    assert new.simulated_time_exact == old.simulated_time_exact


@pytest.mark.parametrize("cls", [SynchronizedNIGT, AFedPG])
@pytest.mark.parametrize("name", ["round_size", "batch_size"])
def test_a_round_size_that_the_algorithm_does_not_use_warns(cls, name):
    with pytest.warns(FutureWarning, match=rf"^{name}: {cls.__name__} does not use it"):
        cls("MlpPolicy", "Pendulum-v1", **{name: 50}, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls("MlpPolicy", "Pendulum-v1", **SMALL)


def test_round_size_is_s_for_malenia():
    model = MaleniaNIGT("MlpPolicy", "Pendulum-v1", round_size=5, **SMALL)
    assert model._make_rule(model.round_size).batch_size == 5


def test_load_accepts_old_and_new_names(tmp_path):
    RennalaNIGT("MlpPolicy", "Pendulum-v1", **SMALL).save(tmp_path / "model.zip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = RennalaNIGT.load(tmp_path / "model.zip", eta=0.5, round_size=np.int64(6))
    assert (loaded.eta, loaded.momentum, loaded.round_size, loaded.batch_size) == (0.5, 0.5, 6, 6)
    with pytest.warns(FutureWarning, match="^momentum is now called eta"):
        loaded = RennalaNIGT.load(tmp_path / "model.zip", momentum=0.25)
    assert loaded.eta == 0.25 and "momentum" not in loaded.__dict__


def test_check_settings_names_the_argument_as_given():
    assert check_settings(dict(momentum=np.float32(0.5), batch_size=np.int64(3))) == dict(eta=0.5, round_size=3)
    with pytest.raises(ValueError, match=r"^momentum: η must be a float in \(0, 1\]"):
        check_settings(dict(momentum=0.0))
    with pytest.raises(ValueError, match=r"^eta: η must be a float in \(0, 1\]"):
        check_settings(dict(eta=2))
    with pytest.raises(ValueError, match=r"^round_size: must be an integer >= 1"):
        check_settings(dict(round_size=0))
    with pytest.raises(ValueError, match=r"^step_data: must be True or False"):
        check_settings(dict(step_data="yes"))


def test_estimate_gradient_takes_round_size_and_its_old_name():
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", **SMALL)
    _, counts = model.estimate_gradient(round_size=3)
    assert counts.sum() == 3
    with pytest.warns(FutureWarning, match="^batch_size is now called round_size"):
        _, counts = model.estimate_gradient(batch_size=2)
    assert counts.sum() == 2


def test_an_unknown_policy_raises_a_policy_error_that_is_a_value_error():
    with pytest.raises(PolicyError, match="^policy: "):
        RennalaNIGT("CnnPolicy", "Pendulum-v1", **SMALL)
    assert issubclass(PolicyError, ValueError)


def test_non_finite_environment_error_pickles_and_renames_its_round():
    error = NonFiniteEnvironmentError("reward", float("nan"), 1, 0, 4)
    assert str(error).startswith("reward: the environment returned a non-finite reward nan (agent 1, round 0, step 4)")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is NonFiniteEnvironmentError and str(copy) == str(error)
    renamed = error.at_round("AFedPG round 3 (server update 9)")
    assert isinstance(renamed, ValueError)
    assert "(agent 1, AFedPG round 3 (server update 9), step 4)" in str(renamed)
    observation = NonFiniteEnvironmentError("observations", [1.0, float("inf")], 0, 2, 0)
    assert str(observation).startswith("observations: the environment returned a non-finite observation [1.0, inf]")


@pytest.mark.parametrize("old, new", [("momentum", "eta"), ("batch_size", "round_size"), ("initial_batch_size", "initial_round_size")])
def test_an_old_name_given_with_its_new_name_wins_and_says_so(old, new, tmp_path):
    """As rl-zoo3's ``--hyperparams batch_size:4`` merged into a zoo file's ``round_size: 20``."""
    with pytest.warns(FutureWarning, match=rf"^{old} is now called {new}.*it overrides {new}=1, given too"):
        model = RennalaNIGT("MlpPolicy", "Pendulum-v1", **{old: 1 if old == "momentum" else 2, new: 1}, **SMALL)
    assert getattr(model, new) == (1 if old == "momentum" else 2)
    model.save(tmp_path / "model.zip")
    with pytest.warns(FutureWarning, match=rf"^{old} is now called {new}.*it overrides {new}=3"):
        loaded = RennalaNIGT.load(tmp_path / "model.zip", **{old: 1, new: 3})
    assert getattr(loaded, new) == 1 and old not in loaded.__dict__


def test_afedpg_names_its_server_round_in_a_typed_environment_error(monkeypatch):
    from sb3_nigt.algorithms import afedpg

    def serve(self, *args, **kwargs):
        raise NonFiniteEnvironmentError("observations", [float("nan")], 1, 0, 3)

    monkeypatch.setattr(afedpg.AsyncServer, "serve", serve)
    model = AFedPG("MlpPolicy", "Pendulum-v1", **SMALL)
    with pytest.raises(NonFiniteEnvironmentError, match=r"^observations: .*\(agent 1, AFedPG round 0 \(server update 0\), step 3\)"):
        model.learn(50)
