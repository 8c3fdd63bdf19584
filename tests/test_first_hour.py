"""What a newcomer meets in the first hour: a budget too small for one update says so, learn's budget is checked,
logs are paced like PPO's, a loaded model runs inline unless asked, a typo'd keyword names the closest valid one,
the library's warnings do not repeat, Ray's token notice is dropped and torchrun ranks other than 0 are quiet."""

from __future__ import annotations

import collections
import logging
import warnings

import numpy as np
import pytest
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecNormalize

from sb3_nigt import AFedPG, MaleniaNIGT, RennalaNIGT, SynchronizedNIGT
from sb3_nigt.algorithms.base import LOG_EVERY_STEPS
from sb3_nigt.core.errors import UnknownArgumentError

ALGORITHMS = [RennalaNIGT, MaleniaNIGT, SynchronizedNIGT, AFedPG]
HORIZON = 10


def tiny(cls=RennalaNIGT, env="Pendulum-v1", **kwargs):
    settings = dict(n_agents=2, horizon=HORIZON, seed=0, policy_kwargs=dict(net_arch=[8]))
    if cls.uses_round_size:
        settings["round_size"] = 4
    settings.update(kwargs)
    return cls("MlpPolicy", env, **settings)


def read_csv(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------- learn's budget
@pytest.mark.parametrize("bad", [-5, 0, 2.5, True, "10", float("nan"), None])
def test_a_bad_budget_is_refused_before_anything_changes(bad):
    model = tiny()
    theta = model.get_flat_params().copy()
    with pytest.raises(ValueError, match=r"^total_timesteps: must be an integer >= 1, got"):
        model.learn(bad)
    assert model.num_timesteps == 0 and model.n_rounds == 0 and model._n_updates == 0
    np.testing.assert_array_equal(model.get_flat_params(), theta)


def test_an_integral_float_budget_is_accepted():
    model = tiny().learn(4e2)
    assert model.num_timesteps >= 400 and model._n_updates > 0


# --------------------------------------------------------------------------------------- budget too small
def test_a_budget_spent_before_the_first_update_warns_with_the_steps_it_needs():
    model = tiny()  # M_init = M = 4 gradients of up to 10 steps: 40 + 40 steps for the first update
    theta = model.get_flat_params().copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.learn(20)  # more than the 4 gradients of the initial round, fewer than its 40 steps
    budget = [w for w in caught if "total_timesteps" in str(w.message)]
    assert len(budget) == 1, [str(w.message) for w in caught]
    message = str(budget[0].message)
    assert budget[0].filename == __file__ and issubclass(budget[0].category, UserWarning)
    assert "without any update" in message and "80 environment steps" in message and "H=10" in message
    assert model._n_updates == 0
    np.testing.assert_array_equal(model.get_flat_params(), theta)


def test_the_first_update_counts_the_observation_warmup_round():
    model = tiny(env=VecNormalize(make_vec_env("Pendulum-v1", n_envs=1), norm_reward=False))
    with pytest.warns(UserWarning, match=r"observation warm-up round.*120 environment steps") as record:
        model.learn(3)  # fewer steps than the 8 gradients before the first update: known in advance
    assert [str(w.message).count("total_timesteps:") for w in record if "total_timesteps" in str(w.message)] == [1]
    assert model._n_updates == 0


def test_a_budget_that_reaches_the_first_update_does_not_warn():
    model = tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.learn(81)
    assert model._n_updates >= 1


# ------------------------------------------------------------------------------------------------ logging
@pytest.mark.parametrize("cls", ALGORITHMS)
def test_logs_are_paced_by_environment_steps_by_default_and_the_values_do_not_change(cls, tmp_path):
    budget = 2 * LOG_EVERY_STEPS + 300
    paced, every = tiny(cls), tiny(cls)
    paced.set_logger(configure(str(tmp_path / "paced"), ["csv"]))
    every.set_logger(configure(str(tmp_path / "every"), ["csv"]))
    paced.learn(budget)
    every.learn(budget, log_interval=1)
    paced_rows = read_csv(tmp_path / "paced" / "progress.csv")
    every_rows = read_csv(tmp_path / "every" / "progress.csv")
    steps = [int(row["time/total_timesteps"]) for row in paced_rows]
    assert len(steps) == 2, steps  # PPO's pace: one table per 2048 steps
    assert all(b - a >= LOG_EVERY_STEPS for a, b in zip([0] + steps, steps))
    assert len(every_rows) > 10 * len(paced_rows)  # log_interval=1: one table per round, as before
    by_step = {row["time/total_timesteps"]: row for row in every_rows}
    for row in paced_rows:  # the same values at the same step, only fewer tables
        other = by_step[row["time/total_timesteps"]]
        for key in ("rollout/ep_rew_mean", "time/iterations", "time/simulated_time", "train/d_norm"):
            assert key in row and key in other, key
            assert row[key] == other[key], key


def test_log_interval_zero_never_dumps(tmp_path):
    model = tiny()
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(LOG_EVERY_STEPS + 100, log_interval=0)
    assert read_csv(tmp_path / "progress.csv") == []


def test_the_pace_runs_across_learn_calls_and_restarts_with_the_step_counter(tmp_path):
    model = tiny()
    model.set_logger(configure(str(tmp_path), ["csv"]))
    for _ in range(3):
        model.learn(LOG_EVERY_STEPS // 2, reset_num_timesteps=False)
    assert len(read_csv(tmp_path / "progress.csv")) == 1  # 3 × 1024 steps: one table, as PPO's rollouts would
    model.learn(LOG_EVERY_STEPS + 50)  # reset_num_timesteps: the pace counts from step 0 again
    assert len(read_csv(tmp_path / "progress.csv")) == 2


# ---------------------------------------------------------------------------------------------------- load
def test_load_runs_inline_unless_a_backend_is_asked_for(tmp_path):
    tiny(backend="subprocess", n_workers=2).save(tmp_path / "model.zip")
    assert RennalaNIGT.load(tmp_path / "model.zip").backend == "inline"
    assert RennalaNIGT.load(tmp_path / "model.zip", backend="subprocess").backend == "subprocess"
    with pytest.raises(ValueError, match=r"^backend: must be one of"):
        RennalaNIGT.load(tmp_path / "model.zip", backend="carrier-pigeon")


def test_load_names_the_closest_keyword_of_a_typo(tmp_path):
    tiny().save(tmp_path / "model.zip")
    with pytest.raises(UnknownArgumentError, match=r"RennalaNIGT\.load .*'round_sise'.*'round_size'"):
        RennalaNIGT.load(tmp_path / "model.zip", round_sise=3)


# ------------------------------------------------------------------------------------------ typo'd keywords
@pytest.mark.parametrize("cls", ALGORITHMS)
@pytest.mark.parametrize("typo, closest", [("n_agent", "n_agents"), ("n_steps", "horizon"), ("lerning_rate", "learning_rate")])
def test_a_typod_keyword_names_the_algorithm_and_the_closest_valid_one(cls, typo, closest):
    with pytest.raises(TypeError) as error:
        cls("MlpPolicy", "Pendulum-v1", **{typo: 4})
    assert isinstance(error.value, UnknownArgumentError)
    message = str(error.value)
    assert message.startswith(f"{cls.__name__} got an unexpected keyword argument {typo!r}")
    assert repr(closest) in message


def test_afedpg_own_keyword_is_suggested():
    with pytest.raises(UnknownArgumentError, match="'momentum_schedule'"):
        AFedPG("MlpPolicy", "Pendulum-v1", momentum_schedul=None)


def test_a_keyword_far_from_every_name_lists_the_valid_ones():
    with pytest.raises(UnknownArgumentError, match=r"'xyzzy'; valid arguments: .*round_size"):
        RennalaNIGT("MlpPolicy", "Pendulum-v1", xyzzy=1)


# ---------------------------------------------------------------------------------------- warnings once
@pytest.mark.parametrize("cls", ALGORITHMS)
def test_a_short_learn_repeats_no_warning(cls, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every call counted, not only the first per line
        model = tiny(cls, env=VecNormalize(make_vec_env("Pendulum-v1", n_envs=1)), verbose=1, momentum=0.2)
        model.learn(400)
    counts = collections.Counter((w.category, str(w.message)) for w in caught)
    assert counts and max(counts.values()) == 1, counts
    capsys.readouterr()


# ------------------------------------------------------------------------------------------- Ray, torchrun
def test_rays_token_enabled_notice_is_dropped_and_nothing_else():
    from sb3_nigt.backends.ray_actors import _drop_auth_enabled_notice

    def record(text):
        return logging.LogRecord("ray", logging.WARNING, __file__, 1, text, None, None)

    assert not _drop_auth_enabled_notice(record("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE"))
    assert _drop_auth_enabled_notice(record("Token authentication is disabled for this Ray cluster. Anyone with"))
    assert _drop_auth_enabled_notice(record("Started a local Ray instance."))


@pytest.mark.parametrize("rank, loud", [("0", True), ("1", False)])
def test_only_rank_0_prints_sb3s_start_up_lines(monkeypatch, capsys, rank, loud):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    model = tiny(backend="torch_distributed", verbose=1)
    out = capsys.readouterr().out
    assert ("Using cpu device" in out) is loud, out
    assert model.verbose == (1 if loud else 0)


def test_a_torch_distributed_checkpoint_keeps_its_backend_only_inside_torchrun(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    tiny(backend="torch_distributed").save(tmp_path / "model.zip")
    assert RennalaNIGT.load(tmp_path / "model.zip").backend == "inline"  # a notebook: no ranks to join
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert RennalaNIGT.load(tmp_path / "model.zip").backend == "torch_distributed"  # torchrun restarted the ranks
