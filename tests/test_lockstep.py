"""Lockstep rollouts on the simulated clock: batches cut by the round's count alone, each trajectory what it is
alone, the weighted batch gradients equal to the rule's aggregate, and one vector per contributing agent."""

from __future__ import annotations

from fractions import Fraction

import gymnasium as gym
import numpy as np
import pytest
import torch as th

from sb3_nigt import MaleniaNIGT, RennalaNIGT, SynchronizedNIGT
from sb3_nigt.core.aggregation import MaleniaAggregation, RennalaAggregation, SynchronizedAggregation
from sb3_nigt.policies import NIGTPolicy
from sb3_nigt.workers.rollout import LOCKSTEP_SIZE, BatchItem, GradientWorker, WorkUnit, lockstep_sizes


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 20, 31, 32, 33, 100, 257])
def test_batches_cover_the_round_in_near_equal_sizes_of_at_most_the_limit(n):
    sizes = lockstep_sizes(n)
    assert sum(sizes) == n
    assert all(1 <= size <= LOCKSTEP_SIZE for size in sizes)
    assert len(sizes) == -(-n // LOCKSTEP_SIZE)  # as few batches as the limit allows
    assert not sizes or max(sizes) - min(sizes) <= 1


def _worker(env_id: str = "Pendulum-v1") -> GradientWorker:
    env = gym.make(env_id)
    th.manual_seed(0)
    worker = GradientWorker([lambda: gym.make(env_id)], NIGTPolicy, env.observation_space, env.action_space, {}, step_data=True)
    worker.set_params(th.nn.utils.parameters_to_vector(worker.policy.parameters()).detach().numpy())
    return worker


def test_a_trajectory_in_a_batch_is_the_trajectory_sampled_alone():
    """Same reset seed and noise stream: the same states and actions up to the batched forward's rounding."""
    worker = _worker()
    items = [(agent, index, 0) for agent in range(3) for index in range(2)]
    together = worker.sample_batch(items, seed=7, horizon=30, round_index=4)
    for item, batched in zip(items, together):
        alone = worker.sample_batch([item], seed=7, horizon=30, round_index=4)[0]
        assert batched.stats.episode_length == alone.stats.episode_length
        np.testing.assert_allclose(batched.observations, alone.observations, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(batched.actions, alone.actions, rtol=1e-4, atol=1e-5)
    first, second = together[0], together[1]
    assert not np.allclose(first.observations, second.observations)  # distinct seeds: distinct trajectories
    worker.close()


def test_trajectories_of_different_lengths_leave_the_batch_when_they_end():
    from step_envs import InfoEnv

    lengths = [3, 7, 1, 5]
    factories = [lambda n=n: InfoEnv(n) for n in lengths]
    probe = InfoEnv()
    worker = GradientWorker(factories, NIGTPolicy, probe.observation_space, probe.action_space, {}, step_data=True)
    trajectories = worker.sample_batch([(a, 0, a) for a in range(4)], seed=0, horizon=6)
    assert [t.stats.episode_length for t in trajectories] == [3, 6, 1, 5]  # H = 6 truncates the 7-step episode
    for t in trajectories:  # each its own steps, in order, with no auto-reset
        assert [info["t"] for info in t.stats.infos] == list(range(t.stats.episode_length))
        np.testing.assert_array_equal(t.stats.rewards, np.arange(1, t.stats.episode_length + 1))
        np.testing.assert_array_equal(t.stats.new_obs.ravel(), np.arange(1, t.stats.episode_length + 1))
    assert [t.stats.terminated for t in trajectories] == [True, False, True, True]
    worker.close()


@pytest.mark.parametrize("rule", [RennalaAggregation(3, 7), MaleniaAggregation(3, 7), SynchronizedAggregation(3, 3)],
                         ids=["rennala", "malenia", "synchronized"])
def test_the_weighted_batches_give_the_rules_aggregate(rule):
    counts = {"RennalaAggregation": [4, 2, 1], "MaleniaAggregation": [5, 2, 1], "SynchronizedAggregation": [1, 1, 1]}
    for agent, count in enumerate(counts[type(rule).__name__]):
        for _ in range(count):
            rule.add(agent)
    weights = rule.weights()
    n = rule.n_agents
    exact = {"RennalaAggregation": [Fraction(1, 7)] * 3,
             "MaleniaAggregation": [Fraction(1, n * int(c)) for c in rule.counts],
             "SynchronizedAggregation": [Fraction(1, n)] * 3}[type(rule).__name__]
    assert [Fraction(w) for w in weights] == [Fraction(float(e)) for e in exact]
    worker = _worker()
    pairs = [(agent, k) for agent in range(n) for k in range(int(rule.counts[agent]))]
    sums = {agent: worker.gradient_sum(worker.sample_batch([(agent, k, 0) for a, k in pairs if a == agent], 3, 20), 0.99)
            for agent in range(n)}
    expected = rule.aggregate(sums)
    total = np.zeros_like(expected)
    begin = 0
    for size in lockstep_sizes(len(pairs)):
        chunk = pairs[begin:begin + size]
        begin += size
        unit = WorkUnit(0, chunk[0][0], chunk[0][1], size, 3, 0, 20, 0.99,
                        items=tuple(BatchItem(a, k, 0, float(weights[a])) for a, k in chunk))
        total += worker.run_unit(unit).gradient
    np.testing.assert_allclose(total, expected, rtol=2e-4, atol=1e-6 * np.abs(expected).max())
    worker.close()


def test_a_round_of_more_than_one_batch_is_modelled_as_one_vector_per_contributing_agent():
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[1, 3], round_size=40,
                        initial_round_size=40, horizon=5, seed=0)
    model.learn(400)
    rounds = model.n_rounds
    assert model.last_counts.tolist() == [30, 10]  # h = (1, 3), M = 40: 30 and 10 by t = 30
    assert lockstep_sizes(40) == [14, 13, 13]  # three batches, yet two vectors per round
    assert model.n_communications == rounds * (2 + 2)
    assert model.bytes_sent == rounds * (2 * 4 + 2 * 8) * model.n_params


@pytest.mark.parametrize("algorithm", [RennalaNIGT, MaleniaNIGT, SynchronizedNIGT])
def test_the_bits_do_not_depend_on_the_number_of_workers(algorithm):
    settings = dict(n_agents=5, compute_times="sqrt", horizon=8, seed=3)
    if algorithm is not SynchronizedNIGT:
        settings["round_size"] = 20

    def run(n_workers):
        model = algorithm("MlpPolicy", "Pendulum-v1", backend="subprocess", n_workers=n_workers, **settings)
        try:
            model.learn(1200)
            return model.get_flat_params().tobytes()
        finally:
            model.close()

    inline = algorithm("MlpPolicy", "Pendulum-v1", **settings)
    inline.learn(1200)
    assert run(3) == inline.get_flat_params().tobytes()
