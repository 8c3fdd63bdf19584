"""MaleniaNIGT (paper, Algorithm 3): the stopping rule, unbiasedness with heterogeneous agents, per-agent envs."""

from __future__ import annotations

import csv
import functools
import warnings

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_nigt import MaleniaNIGT, RennalaNIGT
from sb3_nigt.core.aggregation import MaleniaAggregation
from sb3_nigt.envs import AgentTagObservation, heterogeneous_envs

from helpers import (
    ConstantBandit,
    RoundRecorder,
    constant_reward,
    expected_tanh_gradient,
    reference_malenia_round,
    scaled_identity_reward,
)

HORIZON = 5


def make_malenia(env="Pendulum-v1", **kwargs) -> MaleniaNIGT:
    config = dict(round_size=4, horizon=HORIZON, seed=0, policy_kwargs=dict(net_arch=[8]))
    config.update(kwargs)
    return MaleniaNIGT("MlpPolicy", env, **config)


# -------------------------------------------------------------------------------------- the stopping rule
@pytest.mark.parametrize(
    "h, expected_counts",
    [((1.0, 10.0), (20, 2)), ((1.5, 10.0), (13, 2))],  # docs/algorithms.md: both rounds stop at t = 20
)
def test_paper_examples_through_the_model(h, expected_counts):
    model = make_malenia(n_agents=2, compute_times=list(h), round_size=4)
    recorder = RoundRecorder()
    model.learn(3 * sum(expected_counts) * HORIZON, callback=recorder)
    assert len(recorder.rounds) == 3  # the initial round, then two updates
    for k, stats in enumerate(recorder.rounds):
        assert tuple(stats["counts"]) == expected_counts
        assert stats["round_seconds"] == 20.0
        assert stats["clock"] == 20.0 * (k + 1)


def test_paper_example_through_estimate_gradient():
    model = make_malenia(n_agents=2, compute_times=[1.0, 10.0], round_size=4)
    _, counts = model.estimate_gradient(n_rounds=3)
    np.testing.assert_array_equal(counts, [[20, 2]] * 3)


CASES = [
    # (h, κ, S): unequal speeds, S below / at / above n, ties between agents, communication
    ([1.0, 2.0, 4.0], [0.0, 0.0, 0.0], 7),
    ([1.0, 2.0, 4.0], [0.0, 0.0, 0.0], 2),
    ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], 3),
    ([3.0, 1.0], [0.0, 0.0], 9),
    ([0.5, 2.0, 2.0, 7.0], [0.3, 0.0, 1.0, 0.2], 12),
    ([1.0, 10.0], [4.0, 0.5], 4),
    ([2.0, 3.0, 6.0], [0.0, 0.0, 0.0], 9),  # Σ 1/M_i hits n²/S exactly at counts (3, 2, 1)
]


@pytest.mark.parametrize("h, kappa, s", CASES)
def test_stopping_rule_matches_the_reference(make_collector, h, kappa, s):
    collector, params = make_collector(h, kappa, horizon=2)
    result = collector.collect(params, MaleniaAggregation(len(h), s), 0, 0.0)
    counts, counted, stop, end = reference_malenia_round(lambda i, k: h[i], kappa, s)
    np.testing.assert_array_equal(result.counts, counts)
    assert [(a.agent, a.index) for a in result.arrivals] == [(agent, index) for _, agent, index in counted]
    assert result.stop_time == pytest.approx(stop)
    assert result.end_time == pytest.approx(end)


@pytest.mark.parametrize("case", range(6))
def test_random_configurations_match_the_reference(make_collector, case):
    rng = np.random.default_rng(100 + case)
    n = int(rng.integers(2, 6))
    h = rng.uniform(0.3, 3.0, n).round(2).tolist()
    kappa = (rng.uniform(0.0, 2.0, n) * (rng.random(n) < 0.6)).round(2).tolist()
    s = int(rng.integers(1, 4 * n))
    start = float(rng.uniform(0, 50))
    collector, params = make_collector(h, kappa, horizon=2)
    result = collector.collect(params, MaleniaAggregation(n, s), 0, start)
    counts, _, stop, end = reference_malenia_round(lambda i, k: h[i], kappa, s, start)
    np.testing.assert_array_equal(result.counts, counts)
    assert (result.stop_time, result.end_time) == pytest.approx((stop, end))


def test_harmonic_condition_is_exact_at_the_boundary():
    # counts (2, 3, 6): Σ 1/M_i = 1 exactly, n²/S = 9/9 = 1: done, although 1/2 + 1/3 + 1/6 is not 1 in floats.
    rule = MaleniaAggregation(3, 9)
    for agent, times in ((0, 2), (1, 3), (2, 5)):
        for _ in range(times):
            rule.add(agent)
    assert not rule.done()
    rule.add(2)
    assert rule.done()
    # counts (2, 3, 5): Σ 1/M_i = 31/30 > 1: not done.
    rule = MaleniaAggregation(3, 9)
    for agent, times in ((0, 2), (1, 3), (2, 5)):
        for _ in range(times):
            rule.add(agent)
    assert not rule.done()


def test_every_agent_must_contribute():
    rule = MaleniaAggregation(3, 1)  # S/n < 1: the harmonic condition alone would hold at once
    for _ in range(50):
        rule.add(0)
        rule.add(1)
    assert not rule.done()
    rule.add(2)
    assert rule.done()


def test_aggregate_is_the_equal_weighted_mean_of_local_means():
    rule = MaleniaAggregation(2, 4)
    for agent in [0] * 20 + [1] * 2:
        rule.add(agent)
    sums = np.array([[20.0, 40.0], [6.0, -2.0]])
    np.testing.assert_allclose(rule.aggregate(sums), 0.5 * (sums[0] / 20 + sums[1] / 2))


def test_equal_speeds_with_s_equal_n_coincide_with_rennala():
    # Every agent finishes exactly one gradient at t = h: both rules average the same n gradients.
    kwargs = dict(n_agents=3, compute_times="equal", round_size=3, horizon=HORIZON, seed=4, policy_kwargs=dict(net_arch=[8]))
    malenia = MaleniaNIGT("MlpPolicy", "Pendulum-v1", **kwargs).learn(6 * 3 * HORIZON)
    rennala = RennalaNIGT("MlpPolicy", "Pendulum-v1", **kwargs).learn(6 * 3 * HORIZON)
    np.testing.assert_array_equal(malenia.last_counts, [1, 1, 1])
    np.testing.assert_allclose(malenia.get_flat_params(), rennala.get_flat_params(), rtol=0, atol=1e-6)


# -------------------------------------------------------------------------------------------- unbiasedness
def test_malenia_is_unbiased_and_rennala_is_speed_weighted():
    # Agent 0 (fast, h = 1) is rewarded r = a, agent 1 (slow, h = 10) r = −3a, one rewarded step each. Then
    # E[g_i] = c_i ∇E[tanh u] with c = (1, −3), so the equal-weighted target (1/2)Σ∇J_i = −∇E[tanh u]; Rennala with
    # M = 11 takes counts (10, 1) and estimates (10·1 + 1·(−3))/11 ∇E[tanh u] = (7/11) ∇E[tanh u] instead.
    envs = [functools.partial(ConstantBandit, functools.partial(scaled_identity_reward, c)) for c in (1.0, -3.0)]
    common = dict(n_agents=2, compute_times=[1.0, 10.0], horizon=2, seed=0, policy_kwargs=dict(net_arch=[], min_std=1e-3))
    malenia = MaleniaNIGT("MlpPolicy", envs, round_size=4, **common)
    with pytest.warns(UserWarning, match="speed-weighted"):
        rennala = RennalaNIGT("MlpPolicy", envs, round_size=11, **common)
    theta = malenia.get_flat_params().astype(np.float64)
    np.testing.assert_array_equal(rennala.get_flat_params(), theta)  # same seed, same initial θ
    grad = expected_tanh_gradient(theta, min_std=1e-3)
    equal_weight = 0.5 * (1.0 - 3.0) * grad

    rounds = 400
    g_malenia, counts_malenia = malenia.estimate_gradient(n_rounds=rounds)
    g_rennala, counts_rennala = rennala.estimate_gradient(n_rounds=rounds)
    np.testing.assert_array_equal(counts_malenia, [[20, 2]] * rounds)
    np.testing.assert_array_equal(counts_rennala, [[10, 1]] * rounds)

    def mean_and_se(g):
        return g.mean(axis=0), g.std(axis=0, ddof=1) / np.sqrt(len(g))

    mean_m, se_m = mean_and_se(g_malenia)
    mean_r, se_r = mean_and_se(g_rennala)
    clear = np.abs(grad) > 0.2 * np.abs(grad).max()  # the coordinates where the gradient is clearly non-zero
    assert clear.sum() >= 2
    # Malenia converges to the equal-weighted mean (4 standard errors) ...
    assert np.all(np.abs(mean_m - equal_weight) < 4 * se_m), (mean_m, equal_weight, se_m)
    # ... Rennala to the speed-weighted one, far from the equal-weighted mean.
    assert np.all(np.abs(mean_r - (7.0 / 11.0) * grad) < 4 * se_r), (mean_r, grad, se_r)
    assert np.all(np.abs(mean_r - equal_weight)[clear] > 8 * se_r[clear])


# ----------------------------------------------------------------------------------- per-agent environments
def bandit(value: float) -> ConstantBandit:
    return ConstantBandit(constant_reward(value), length=1)


gym.register("sb3_nigt_tests/Bandit-v0", entry_point=bandit, kwargs=dict(value=0.0))


@pytest.mark.parametrize(
    "make_env",
    [
        pytest.param(lambda: [functools.partial(bandit, 1.0), functools.partial(bandit, 2.0), functools.partial(bandit, 3.0)], id="callables"),
        pytest.param(lambda: [("sb3_nigt_tests/Bandit-v0", dict(value=v)) for v in (1.0, 2.0, 3.0)], id="id-kwargs"),
        pytest.param(lambda: DummyVecEnv([functools.partial(gym.make, "sb3_nigt_tests/Bandit-v0", value=v) for v in (1.0, 2.0, 3.0)]), id="vecenv"),
    ],
)
def test_agent_i_samples_from_environment_i(make_env):
    # Agent i's bandit pays i + 1 per episode: the per-agent returns show which environment each agent used.
    model = make_malenia(make_env(), compute_times=[1.0, 2.0, 3.0], round_size=3, horizon=1)
    assert model.n_agents == 3 and model.heterogeneous
    model.learn(200)
    for agent, value in enumerate((1.0, 2.0, 3.0)):
        assert {ep["r"] for ep in model.agent_ep_info_buffer[agent]} == {value}


def test_list_of_env_ids_gives_one_agent_each():
    model = make_malenia(["Pendulum-v1", "Pendulum-v1"])
    assert model.n_agents == 2
    assert not model.heterogeneous  # the same environment twice: one shared factory
    model.learn(100)


def test_per_agent_returns_are_logged(tmp_path):
    model = make_malenia([functools.partial(bandit, 1.0), functools.partial(bandit, 5.0)], compute_times=[1.0, 3.0], horizon=1)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(100, log_interval=1)  # a table every round (the default paces tables by 2,048 steps)
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    assert float(last["rollout/ep_rew_mean_agent_0"]) == 1.0
    assert float(last["rollout/ep_rew_mean_agent_1"]) == 5.0
    assert float(last["rollout/ep_rew_mean_equal_weight"]) == 3.0
    assert float(last["rollout/ep_rew_mean"]) < 3.0  # the fast agent's episodes dominate the plain mean


@pytest.mark.parametrize(
    "envs, kind",
    [
        (["Pendulum-v1", "MountainCarContinuous-v0"], "observation"),
        ([lambda: gym.make("Pendulum-v1"), lambda: gym.wrappers.RescaleAction(gym.make("Pendulum-v1"), np.float32(-1.0), np.float32(3.0))], "action"),
    ],
)
def test_spaces_mismatch_names_the_agents(envs, kind):
    with pytest.raises(ValueError, match=rf"agents 0 and 1 have different {kind} spaces"):
        MaleniaNIGT("MlpPolicy", envs)


def test_spaces_mismatch_in_a_vec_env_names_the_agents():
    venv = DummyVecEnv([lambda: gym.make("Pendulum-v1")] * 2 + [lambda: gym.make("MountainCarContinuous-v0")])
    with pytest.raises(ValueError, match="agents 0 and 2 have different observation spaces"):
        MaleniaNIGT("MlpPolicy", venv)


def test_number_of_environments_must_be_one_or_n():
    with pytest.raises(ValueError, match="n_agents=3"):
        MaleniaNIGT("MlpPolicy", heterogeneous_envs("Pendulum-v1", 2), n_agents=3)


def test_same_environment_shared_by_more_agents_is_accepted():
    model = MaleniaNIGT("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2), n_agents=5, horizon=HORIZON, round_size=5)
    assert model._agent_env_index() == [0] * 5


def test_non_recreatable_wrapper_asks_for_a_callable():
    class Unrecorded(gym.ObservationWrapper):
        def observation(self, observation):
            return observation

    with pytest.raises(ValueError, match="cannot be re-created"):
        MaleniaNIGT("MlpPolicy", DummyVecEnv([lambda: Unrecorded(gym.make("Pendulum-v1"))] * 2))


def test_rennala_warns_only_for_different_environments():
    with pytest.warns(UserWarning, match="speed-weighted objective"):
        RennalaNIGT("MlpPolicy", heterogeneous_envs("Pendulum-v1", 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RennalaNIGT("MlpPolicy", ["Pendulum-v1", "Pendulum-v1"])
        MaleniaNIGT("MlpPolicy", heterogeneous_envs("Pendulum-v1", 2))


# ------------------------------------------------------------------------------------------ save / load
def test_save_load_continue_is_bit_identical(tmp_path):
    envs = heterogeneous_envs("Pendulum-v1", 2)
    model = make_malenia(envs, compute_times=[1.0, 3.0], communication_times=[0.5, 0.0])
    model.learn(300)
    model.save(tmp_path / "malenia.zip")
    loaded = MaleniaNIGT.load(tmp_path / "malenia.zip", env=heterogeneous_envs("Pendulum-v1", 2))
    assert isinstance(loaded, MaleniaNIGT)
    assert loaded.n_agents == 2 and loaded.heterogeneous
    assert np.array_equal(loaded.momentum_buffer, model.momentum_buffer)
    assert loaded.simulated_time == model.simulated_time > 0

    model.learn(200, reset_num_timesteps=False)
    loaded.learn(200, reset_num_timesteps=False)
    assert np.array_equal(loaded.get_flat_params(), model.get_flat_params())
    assert loaded.simulated_time == model.simulated_time
    np.testing.assert_array_equal(loaded.last_counts, model.last_counts)


def test_subprocess_workers_build_each_agent_environment_bit_identically():
    envs = heterogeneous_envs("Pendulum-v1", 2)
    inline = make_malenia(envs, compute_times=[1.0, 2.5]).learn(300)
    workers = make_malenia(envs, compute_times=[1.0, 2.5], backend="subprocess", n_workers=2).learn(300)
    assert np.array_equal(inline.get_flat_params(), workers.get_flat_params())


# ---------------------------------------------------------------------------------------- the H.3 wrappers
def test_heterogeneous_envs_flip_and_tag_the_observation():
    base = gym.make("Pendulum-v1")
    agent0, agent1 = (factory() for factory in heterogeneous_envs("Pendulum-v1", 2))
    assert agent0.observation_space == agent1.observation_space
    assert agent0.observation_space.shape == (4,)
    o, _ = base.reset(seed=3)
    o0, _ = agent0.reset(seed=3)
    o1, _ = agent1.reset(seed=3)
    np.testing.assert_array_equal(o0, np.append(o, 0.0).astype(np.float32))
    np.testing.assert_array_equal(o1, np.append(-o, 1.0).astype(np.float32))
    assert agent0.observation_space.contains(o0) and agent1.observation_space.contains(o1)


def test_tag_wrapper_is_rebuilt_from_its_spec():
    env = AgentTagObservation(gym.make("Pendulum-v1"), tag=1.0, sign=-1.0)
    rebuilt = gym.make(env.spec)
    o, _ = env.reset(seed=1)
    r, _ = rebuilt.reset(seed=1)
    np.testing.assert_array_equal(o, r)


def test_heterogeneous_envs_for_more_agents_alternate_the_sign():
    factories = heterogeneous_envs("Pendulum-v1", 3)
    assert [f.wrappers[0][1]["sign"] for f in factories] == [1.0, -1.0, 1.0]
    assert [f.wrappers[0][1]["tag"] for f in factories] == [0.0, 1.0, 2.0]
    spaces = [f().observation_space for f in factories]
    assert spaces[0] == spaces[1] == spaces[2]
    assert spaces[0].low[-1] == 0.0 and spaces[0].high[-1] == 2.0


@pytest.mark.parametrize("kwargs, argument", [(dict(sign=2.0), "sign"), (dict(tag=5.0), "tag")])
def test_tag_wrapper_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        AgentTagObservation(gym.make("Pendulum-v1"), **kwargs)


def test_heterogeneous_envs_rejects_bad_n_agents():
    with pytest.raises(ValueError, match="n_agents"):
        heterogeneous_envs("Pendulum-v1", 0)
