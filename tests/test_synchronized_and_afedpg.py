"""The paper's baselines in the same harness: SynchronizedNIGT and AFedPG (event arithmetic, update rule, staleness)."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback

from sb3_nigt import AFedPG, MaleniaNIGT, RennalaNIGT, SynchronizedNIGT
from sb3_nigt.envs import heterogeneous_envs
from sb3_nigt.workers.env_factory import EnvFactory
from sb3_nigt.workers.rollout import GradientWorker, WorkUnit

from helpers import ConstantBandit, RandomLengthEnv, RoundRecorder, identity_reward

HORIZON = 5
SMALL = dict(horizon=HORIZON, seed=0, policy_kwargs=dict(net_arch=[8]))
ALGORITHMS = [RennalaNIGT, MaleniaNIGT, SynchronizedNIGT, AFedPG]


class ArrivalRecorder(BaseCallback):
    """(simulated time, agent) of every gradient used, recorded at its trajectory's last step."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[float, int]] = []

    def _on_step(self) -> bool:
        if self.locals["dones"][0]:
            self.arrivals.append((self.model.simulated_time, self.locals["agent"]))
        return True


# ------------------------------------------------------------------------------------------ SynchronizedNIGT
def test_synchronized_round_waits_for_the_slowest_agent():
    model = SynchronizedNIGT("MlpPolicy", "Pendulum-v1", n_agents=3, compute_times=[1, 2, 4], **SMALL)
    recorder = RoundRecorder()
    model.learn(4 * 3 * HORIZON, callback=recorder)
    assert len(recorder.rounds) == 4
    for k, stats in enumerate(recorder.rounds):
        assert stats["round_seconds"] == 4.0
        assert stats["clock"] == 4.0 * (k + 1)
        np.testing.assert_array_equal(stats["counts"], [1, 1, 1])
    assert model.n_communications == 4 * (3 + 3)  # n broadcasts + n uploads per round


def test_synchronized_round_with_communication():
    # Agent i uploads as soon as its one gradient is done: round = max_i (2κ_i + h_i) = max(2, 2, 6) = 6 seconds.
    model = SynchronizedNIGT("MlpPolicy", "Pendulum-v1", n_agents=3, compute_times=[1, 2, 4], communication_times=[0.5, 0.0, 1.0], **SMALL)
    recorder = RoundRecorder()
    model.learn(2 * 3 * HORIZON, callback=recorder)
    assert [r["round_seconds"] for r in recorder.rounds] == [6.0, 6.0]


def test_synchronized_aggregate_is_the_mean_of_one_gradient_per_agent():
    # With equal times, Rennala with M = n also takes one gradient per agent: the same aggregate.
    common = dict(n_agents=3, compute_times="equal", **SMALL)
    g_sync, c_sync = SynchronizedNIGT("MlpPolicy", "Pendulum-v1", **common).estimate_gradient(n_rounds=3)
    g_ren, c_ren = RennalaNIGT("MlpPolicy", "Pendulum-v1", round_size=3, **common).estimate_gradient(n_rounds=3)
    np.testing.assert_array_equal(c_sync, [[1, 1, 1]] * 3)
    np.testing.assert_array_equal(g_sync, g_ren)


def test_synchronized_ignores_round_size_and_warns():
    with pytest.warns(FutureWarning, match="^round_size: SynchronizedNIGT does not use it"):
        model = SynchronizedNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[1, 5], round_size=50, **SMALL)
    _, counts = model.estimate_gradient()
    np.testing.assert_array_equal(counts, [[1, 1]])


def test_equal_weighted_algorithms_do_not_warn_on_heterogeneous_envs():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SynchronizedNIGT("MlpPolicy", heterogeneous_envs("Pendulum-v1", 2))
    with pytest.warns(UserWarning, match="speed-weighted"):
        AFedPG("MlpPolicy", heterogeneous_envs("Pendulum-v1", 2))


# --------------------------------------------------------------------------------------------------- AFedPG
@pytest.mark.parametrize(
    "kappa, expected_arrivals, expected_staleness",
    [
        # h = (1, 3), κ = 0: agent 0 arrives at 1, 2, 3, ...; agent 1 at 3, 6 (after agent 0 at ties).
        ([0.0, 0.0], [(1, 0), (2, 0), (3, 0), (3, 1), (4, 0), (5, 0), (6, 0), (6, 1)], [0, 0, 0, 3, 1, 0, 0, 3]),
        # κ = (0.5, 0): agent 0's cycle is 0.5 + 1 + 0.5 = 2 s, so it arrives at 2, 4, 6; agent 1 at 3, 6.
        ([0.5, 0.0], [(2, 0), (3, 1), (4, 0), (6, 0), (6, 1), (8, 0)], [0, 1, 1, 0, 2, 1]),
    ],
)
def test_afedpg_update_order_and_staleness(kappa, expected_arrivals, expected_staleness):
    model = AFedPG("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[1.0, 3.0], communication_times=kappa, **SMALL)
    recorder = ArrivalRecorder()
    model.learn(len(expected_arrivals) * HORIZON, callback=recorder)
    assert recorder.arrivals == [(float(t), a) for t, a in expected_arrivals]
    assert model._n_updates == len(expected_arrivals)
    np.testing.assert_array_equal(model.staleness_histogram, np.bincount(expected_staleness))
    # n initial downloads, then one upload and one reply per update (the last reply starts work that the next
    # learn() carries on).
    assert model.n_communications == 2 + 2 * len(expected_arrivals)


def test_afedpg_logs_staleness_mean_and_max():
    model = AFedPG("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[1.0, 3.0], **SMALL)
    seen = []

    class Spy(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            seen.append((self.model.round_stats["staleness_mean"], self.model.round_stats["staleness_max"]))

    model.learn(8 * HORIZON, callback=Spy())
    # Rounds of n = 2 updates: staleness (0, 0), (0, 3), (1, 0), (0, 3).
    assert seen[:4] == [(0.0, 0), (1.5, 3), (0.5, 1), (1.5, 3)]


def reference_afedpg(model_kwargs: dict, schedule: list[tuple[int, int]], alpha: float, eta: float) -> np.ndarray:
    """θ after replaying the server's updates by hand with a GradientWorker (our reading of AFedPG, docs/algorithms.md)."""
    model = AFedPG("MlpPolicy", "Pendulum-v1", **model_kwargs)
    policy = model.policy
    worker = GradientWorker([EnvFactory("Pendulum-v1")], type(policy), model.observation_space, model.action_space, model.policy_kwargs)
    theta = model.get_flat_params().astype(np.float64)
    previous = theta.copy()
    d = None
    job_params = {agent: theta.astype(np.float32) for agent in range(model.n_agents)}
    index = {agent: 0 for agent in range(model.n_agents)}
    for agent in schedule:
        worker.set_params(job_params[agent])
        g = worker.run_unit(WorkUnit(0, agent, index[agent], 1, 0, 0, HORIZON, model.gamma)).gradient
        d = g.copy() if d is None else (1 - eta) * d + eta * g
        previous = theta.copy()
        theta = (theta + alpha * d / np.linalg.norm(d)).astype(np.float32).astype(np.float64)
        index[agent] += 1
        job_params[agent] = (theta + ((1 - eta) / eta) * (theta - previous)).astype(np.float32)  # the reply's θ̃
    return theta


def test_afedpg_update_rule_matches_a_hand_replay():
    kwargs = dict(n_agents=2, compute_times=[1.0, 3.0], eta=0.3, learning_rate=0.05, **SMALL)
    model = AFedPG("MlpPolicy", "Pendulum-v1", **kwargs).learn(8 * HORIZON)
    expected = reference_afedpg(kwargs, [0, 0, 0, 1, 0, 0, 0, 1], alpha=0.05, eta=0.3)
    np.testing.assert_allclose(model.get_flat_params(), expected, rtol=0, atol=1e-6)


def test_afedpg_momentum_schedule_hook():
    calls = []

    def schedule(staleness: int, update: int) -> float:
        calls.append((staleness, update))
        return 0.5 / (1 + staleness)

    model = AFedPG("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[1.0, 3.0], momentum_schedule=schedule, **SMALL)
    model.learn(8 * HORIZON)
    assert calls == [(0, 0), (0, 1), (0, 2), (3, 3), (1, 4), (0, 5), (0, 6), (3, 7)]
    constant = AFedPG("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[1.0, 3.0], **SMALL).learn(8 * HORIZON)
    assert not np.array_equal(model.get_flat_params(), constant.get_flat_params())


@pytest.mark.parametrize("schedule", [lambda s, k: 0.0, lambda s, k: 1.5, lambda s, k: float("nan")])
def test_afedpg_bad_schedule_value_raises(schedule):
    model = AFedPG("MlpPolicy", "Pendulum-v1", n_agents=2, momentum_schedule=schedule, **SMALL)
    with pytest.raises(ValueError, match="momentum_schedule"):
        model.learn(10 * HORIZON)


def test_afedpg_schedule_must_be_callable():
    with pytest.raises(ValueError, match="momentum_schedule"):
        AFedPG("MlpPolicy", "Pendulum-v1", momentum_schedule=0.1)


def test_afedpg_has_no_aggregation_round():
    with pytest.raises(NotImplementedError, match="no aggregation round"):
        AFedPG("MlpPolicy", "Pendulum-v1").estimate_gradient()


def test_afedpg_save_load_continue_is_bit_identical(tmp_path):
    kwargs = dict(n_agents=3, compute_times="sqrt", communication_times=[0.1, 0.0, 0.3], **SMALL)
    model = AFedPG("MlpPolicy", "Pendulum-v1", **kwargs).learn(12 * HORIZON)
    model.save(tmp_path / "afedpg.zip")
    loaded = AFedPG.load(tmp_path / "afedpg.zip", env="Pendulum-v1")
    assert loaded.next_job_index == model.next_job_index
    np.testing.assert_array_equal(loaded.staleness_histogram, model.staleness_histogram)
    model.learn(9 * HORIZON, reset_num_timesteps=False)
    loaded.learn(9 * HORIZON, reset_num_timesteps=False)
    assert np.array_equal(loaded.get_flat_params(), model.get_flat_params())
    assert loaded.simulated_time == model.simulated_time


def test_afedpg_stops_before_the_update_when_a_callback_says_so():
    class StopAtFirstGradient(BaseCallback):
        def _on_step(self) -> bool:
            return not self.locals["dones"][0]

    model = AFedPG("MlpPolicy", "Pendulum-v1", n_agents=2, **SMALL)
    theta = model.get_flat_params()
    model.learn(100 * HORIZON, callback=StopAtFirstGradient())
    assert model._n_updates == 0
    np.testing.assert_array_equal(model.get_flat_params(), theta)


def test_afedpg_real_clock_runs():
    model = AFedPG("MlpPolicy", "Pendulum-v1", n_agents=2, clock="real", **SMALL)
    model.learn(10 * HORIZON)
    assert model._n_updates >= 10 and model.simulated_time > 0


# ------------------------------------------------------------------------------------ shared across algorithms
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_same_seed_same_initial_parameters(algorithm):
    reference = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=3, seed=7).get_flat_params()
    np.testing.assert_array_equal(algorithm("MlpPolicy", "Pendulum-v1", n_agents=3, seed=7).get_flat_params(), reference)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_learns_a_bandit(algorithm):
    # r(a) = a on [−1, 1]: the deterministic action tanh(μ) must move to the upper bound.
    env = functools.partial(ConstantBandit, identity_reward, length=1)
    model = algorithm(
        "MlpPolicy", env, n_agents=3, compute_times="sqrt", communication_times=0.1, horizon=1,
        learning_rate=0.05, seed=0, policy_kwargs=dict(net_arch=[]), **(dict(round_size=6) if algorithm.uses_round_size else {}),
    )
    obs = np.ones((1, 1), dtype=np.float32)
    before = float(model.predict(obs, deterministic=True)[0][0, 0])
    # 2,400 one-step trajectories: with 1,200, some seeds of the lockstep engine's noise streams are still on their
    # way (seeds 0-5: Malenia NIGT 0.76-1.0, and AFedPG's seed 0 at −1.0 before it turns back; all >= 0.85 at 2,400).
    model.learn(2400)
    after = float(model.predict(obs, deterministic=True)[0][0, 0])
    assert before < 0.6 and after > 0.95, (before, after)


@pytest.mark.parametrize("algorithm", [SynchronizedNIGT, AFedPG])
def test_subprocess_backend_is_bit_identical_to_inline(algorithm):
    kwargs = dict(n_agents=3, compute_times="sqrt", communication_times=[0.2, 0.0, 0.1], **SMALL)
    inline = algorithm("MlpPolicy", "Pendulum-v1", **kwargs).learn(30 * HORIZON)
    again = algorithm("MlpPolicy", "Pendulum-v1", **kwargs).learn(30 * HORIZON)
    workers = algorithm("MlpPolicy", "Pendulum-v1", backend="subprocess", n_workers=2, **kwargs).learn(30 * HORIZON)
    assert np.array_equal(inline.get_flat_params(), again.get_flat_params())
    assert np.array_equal(inline.get_flat_params(), workers.get_flat_params())
    assert inline.simulated_time == workers.simulated_time


def test_afedpg_per_step_times_are_backend_independent():
    env = functools.partial(RandomLengthEnv, 8)
    kwargs = dict(n_agents=3, compute_times=[0.1, 0.25, 0.4], compute_time_unit="step", horizon=8, seed=0, policy_kwargs=dict(net_arch=[8]))
    inline = AFedPG("MlpPolicy", env, **kwargs).learn(200)
    workers = AFedPG("MlpPolicy", env, backend="subprocess", n_workers=2, **kwargs).learn(200)
    assert np.array_equal(inline.get_flat_params(), workers.get_flat_params())
    assert inline.simulated_time == workers.simulated_time
