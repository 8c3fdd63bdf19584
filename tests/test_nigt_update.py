"""The NIGT outer loop (paper, Algorithm 1) replayed from the aggregates the collector returned."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback

from sb3_nigt.clock.rounds import Collector

from helpers import ConstantBandit, zero_reward


@pytest.fixture
def collect_spy(monkeypatch) -> list:
    """Records (θ sent to the agents, aggregate returned) for every round."""
    rounds: list = []
    original = Collector.collect

    def collect(self, params, rule, round_index, start_time, obs_norm=None):
        result = original(self, params, rule, round_index, start_time, obs_norm)
        rounds.append((np.array(params, copy=True), result.aggregate.copy()))
        return result

    monkeypatch.setattr(Collector, "collect", collect)
    return rounds


@pytest.mark.parametrize("eta", [0.1, 0.5, 1.0])
def test_algorithm_1_replayed(make_model, collect_spy, eta):
    alpha = 0.05
    model = make_model(learning_rate=alpha, eta=eta, round_size=3, initial_round_size=5, horizon=15)
    theta0 = model.get_flat_params().astype(np.float64)
    model.learn(5 * 15 + 6 * 3 * 15)
    assert len(collect_spy) == 7

    # d_{-1} = Aggregate(θ_0, M_init); θ_{-1} = θ_0.
    sent, g = collect_spy[0]
    np.testing.assert_array_equal(sent, theta0.astype(np.float32))
    d, theta, previous = g.copy(), theta0, theta0
    for sent, g in collect_spy[1:]:
        extrapolated = theta + ((1 - eta) / eta) * (theta - previous)  # θ̃_t
        np.testing.assert_allclose(sent, extrapolated, rtol=1e-5, atol=1e-6)
        d = (1 - eta) * d + eta * g
        previous, theta = theta, theta + alpha * d / np.linalg.norm(d)
        theta = theta.astype(np.float32).astype(np.float64)  # θ lives in float32 parameters
    np.testing.assert_allclose(model.get_flat_params(), theta, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.momentum_buffer, d, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(model.previous_params, previous, rtol=1e-5, atol=1e-6)
    assert model.round_stats["d_norm"] == pytest.approx(np.linalg.norm(d))


def test_every_step_has_length_alpha(make_model):
    alpha = 2**-5
    params = []

    class Record(BaseCallback):
        def _on_rollout_start(self) -> None:
            params.append(self.model.get_flat_params().astype(np.float64))

        def _on_step(self) -> bool:
            return True

    model = make_model(learning_rate=alpha)
    model.learn(6 * 4 * 20, callback=Record())
    params.append(model.get_flat_params().astype(np.float64))
    # params[0] = θ_0 before the initial round and params[1] = θ_0 before round t = 0; then one step per round.
    assert np.array_equal(params[0], params[1])
    steps = [np.linalg.norm(b - a) for a, b in zip(params[1:], params[2:])]
    assert len(steps) == 5
    assert steps == pytest.approx([alpha] * 5, rel=1e-4)


def test_zero_gradient_makes_no_step(make_model):
    model = make_model(env=functools.partial(ConstantBandit, zero_reward), horizon=5)
    before = model.get_flat_params()
    model.learn(40)
    assert model.n_rounds > 2
    assert model.round_stats["d_norm"] == 0.0
    assert np.array_equal(model.get_flat_params(), before)
    assert np.all(np.isfinite(model.momentum_buffer))


def test_learning_rate_schedule_follows_the_remaining_progress(make_model):
    seen = []

    class Record(BaseCallback):
        def _on_rollout_start(self) -> None:
            if "learning_rate" in self.model.round_stats:
                seen.append((self.model.round_stats["learning_rate"], self.model.num_timesteps))

        def _on_step(self) -> bool:
            return True

    total = 6 * 4 * 20
    model = make_model(learning_rate=lambda progress: 0.1 * progress)
    model.learn(total, callback=Record())
    assert len(seen) == 4
    for rate, timesteps in seen:
        assert rate == pytest.approx(0.1 * (1 - timesteps / total))
