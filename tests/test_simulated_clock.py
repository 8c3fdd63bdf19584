"""The simulated clock: the paper's event arithmetic, communication, ties, and the timing model's forms."""

from __future__ import annotations

import functools
import math
from decimal import Decimal, getcontext

import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback

from sb3_nigt import NIGTPolicy, RandomTimes, TimingModel
from sb3_nigt.clock.exact import ExactTime
from sb3_nigt.core.aggregation import RennalaAggregation
from sb3_nigt.workers.rollout import GradientWorker, WorkUnit

from helpers import RandomLengthEnv, reference_round


class RoundRecorder(BaseCallback):
    """Records the clock and the round statistics at the end of every round."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self.stats: list[dict] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.times.append(self.model.simulated_time)
        self.stats.append(dict(self.model.round_stats))


def round_durations(times: list[float]) -> np.ndarray:
    return np.diff([0.0] + times)


def collect(collector, params, batch_size, round_index=0, start_time=0.0):
    return collector.collect(params, RennalaAggregation(collector.n_agents, batch_size), round_index, start_time)


def arrival_keys(result) -> list[tuple[int, int]]:
    return [(a.agent, a.index) for a in result.arrivals]


def assert_matches_reference(result, reference) -> None:
    counts, counted, stop, end = reference
    np.testing.assert_array_equal(result.counts, counts)
    assert arrival_keys(result) == [(agent, index) for _, agent, index in counted]
    # Exact: the clock's times equal the rational reference, not just approximately.
    assert [a.time for a in result.arrivals] == [t for t, _, _ in counted]
    assert result.stop_time == stop
    assert result.end_time == end


# ----------------------------------------------------------------------------- the paper's worked example
def test_paper_example_counts_and_arrival_order(make_collector):
    # docs/time.md: h = (1, 2, 4), κ = 0, M = 7. Agent 1 finishes at 1, 2, 3, 4; agent 2 at 2, 4; agent 3 at 4.
    collector, params = make_collector([1, 2, 4])
    result = collect(collector, params, 7)
    np.testing.assert_array_equal(result.counts, [4, 2, 1])
    assert result.duration == 4.0
    assert result.stop_time == 4.0 and result.end_time == 4.0
    # Ties (t = 2 and t = 4) are processed in increasing agent index.
    assert [(a.time, a.agent) for a in result.arrivals] == [(1, 0), (2, 0), (2, 1), (3, 0), (4, 0), (4, 1), (4, 2)]
    assert arrival_keys(result) == [(0, 0), (0, 1), (1, 0), (0, 2), (0, 3), (1, 1), (2, 0)]
    assert result.aggregate.shape == params.shape


def test_paper_example_with_m3(make_collector):
    collector, params = make_collector([1, 2, 4])
    result = collect(collector, params, 3)
    np.testing.assert_array_equal(result.counts, [2, 1, 0])
    assert result.duration == 2.0


def test_round_starting_later_is_shifted(make_collector):
    collector, params = make_collector([1, 2, 4])
    result = collect(collector, params, 7, round_index=3, start_time=10.0)
    assert (result.start_time, result.stop_time, result.end_time) == (10.0, 14.0, 14.0)
    assert result.duration == 4.0
    np.testing.assert_array_equal(result.counts, [4, 2, 1])


def test_aggregate_is_the_mean_of_the_counted_gradients(make_collector):
    # Each counted gradient recomputed on its own (one trajectory, one backward) by an independent worker.
    collector, params = make_collector([1, 2, 4])
    result = collect(collector, params, 7)
    args = collector.backend.worker_args
    worker = GradientWorker(args["env_factories"], args["policy_class"], args["observation_space"], args["action_space"], args["policy_kwargs"])
    worker.set_params(params)
    gradients = np.array([
        worker.run_unit(WorkUnit(0, a.agent, a.index, 1, collector.seed, 0, collector.horizon, collector.gamma)).gradient
        for a in result.arrivals
    ], dtype=np.float64)
    np.testing.assert_allclose(result.aggregate, gradients.mean(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_size, duration, contributing", [(7, 4.0, 3), (3, 2.0, 2)])
def test_paper_example_through_the_model(make_model, batch_size, duration, contributing):
    horizon = 20
    model = make_model(n_agents=3, compute_times=[1, 2, 4], communication_times=0, round_size=batch_size, horizon=horizon)
    recorder = RoundRecorder()
    model.learn(batch_size * horizon * 4, callback=recorder)
    assert len(recorder.times) == model.n_rounds == 4
    assert np.all(round_durations(recorder.times) == duration)
    assert model.simulated_time == duration * model.n_rounds
    for stats in recorder.stats:
        assert stats["gradients_per_round"] == batch_size
        assert stats["round_seconds"] == duration
        assert stats["agents_contributing"] == contributing
        assert stats["steps_per_round"] == batch_size * horizon  # Pendulum never ends before H


def test_initial_round_uses_initial_batch_size(make_model):
    model = make_model(n_agents=3, compute_times=[1, 2, 4], round_size=7, initial_round_size=3, horizon=10)
    recorder = RoundRecorder()
    model.learn(3 * 10 + 7 * 10 * 2, callback=recorder)
    assert [s["gradients_per_round"] for s in recorder.stats] == [3, 7, 7]
    assert list(round_durations(recorder.times)) == [2.0, 4.0, 4.0]


# ------------------------------------------------------------------------------------------------ ties
def test_simultaneous_finishes_are_processed_in_increasing_agent_index(make_collector):
    # h = (2, 1): agent 1 finishes at 1 and 2, agent 0 at 2. With M = 2 the tie at t = 2 goes to agent 0.
    collector, params = make_collector([2, 1])
    result = collect(collector, params, 2)
    np.testing.assert_array_equal(result.counts, [1, 1])
    assert arrival_keys(result) == [(1, 0), (0, 0)]
    # Equal times: the first M agents by index contribute.
    collector, params = make_collector("equal", n_agents=4)
    np.testing.assert_array_equal(collect(collector, params, 3).counts, [1, 1, 1, 0])


# ---------------------------------------------------------------------------------------- communication
def test_communication_delays_start_and_only_contributors_upload(make_collector):
    # κ = (0.5, 0, 3): agent 2 (κ = 3) does not contribute, so its κ must not lengthen the round.
    h, kappa, m = [1, 2, 4], [0.5, 0.0, 3.0], 3
    collector, params = make_collector(h, kappa)
    result = collect(collector, params, m)
    reference = reference_round(lambda i, k: h[i], kappa, m)
    assert_matches_reference(result, reference)
    assert result.counts[2] == 0
    assert result.end_time == result.stop_time + 0.5
    assert result.end_time != result.stop_time + max(kappa)
    # Agent i's k-th gradient arrives at κ_i + (k + 1) h_i.
    for arrival in result.arrivals:
        assert arrival.time == kappa[arrival.agent] + (arrival.index + 1) * h[arrival.agent]


def test_communication_through_the_model(make_model):
    h, kappa, m = [1, 2, 4], [0.5, 0.0, 3.0], 3
    _, _, _, end = reference_round(lambda i, k: h[i], kappa, m)
    model = make_model(n_agents=3, compute_times=h, communication_times=kappa, round_size=m, horizon=10)
    recorder = RoundRecorder()
    model.learn(m * 10 * 3, callback=recorder)
    assert len(recorder.times) == 3
    assert [model.simulated_time_exact == 3 * end, round_durations(recorder.times)[0]] == [True, pytest.approx(float(end))]


@pytest.mark.parametrize("case", range(8))
def test_random_configurations_match_the_reference_rule(make_collector, case):
    rng = np.random.default_rng(case)
    n = int(rng.integers(2, 6))
    h = rng.uniform(0.3, 3.0, n).round(3).tolist()
    kappa = (rng.uniform(0.0, 2.0, n) * (rng.random(n) < 0.7)).round(3).tolist()
    m = int(rng.integers(1, 13))
    collector, params = make_collector(h, kappa, horizon=3)
    start = float(rng.uniform(0, 50))
    assert_matches_reference(collect(collector, params, m, start_time=start), reference_round(lambda i, k: h[i], kappa, m, start))


# ------------------------------------------------------------------------------------------ TimingModel
def test_presets():
    n = 5
    i = np.arange(1, n + 1)
    equal = TimingModel(n, "equal", "zero")
    sqrt = TimingModel(n, "sqrt", "sqrt")
    for agent in range(n):
        assert equal.compute_time(agent, 0, 0) == 1
        assert equal.communication_time(agent, 0) == 0
        assert float(sqrt.compute_time(agent, 2, 3)) == pytest.approx(math.sqrt(i[agent]))
        assert sqrt.communication_time(agent, 2) == ExactTime.sqrt(int(i[agent]))  # exactly √i
    d = 4242
    expensive = TimingModel(n, "sqrt", "expensive", n_params=d)
    assert [float(expensive.communication_time(a, 0)) for a in range(n)] == pytest.approx(np.sqrt(i) * d**0.25)


def test_expensive_communication_uses_the_number_of_policy_parameters(make_model):
    model = make_model(n_agents=3, communication_times="expensive", policy_kwargs=dict(net_arch=[8]))
    d = sum(p.numel() for p in model.policy.parameters())
    assert model.n_params == d
    assert [float(model.timing.communication_time(a, 0)) for a in range(3)] == pytest.approx(np.sqrt([1, 2, 3]) * d**0.25)


def test_expensive_communication_round(make_collector):
    collector, params = make_collector("equal", "expensive", n_agents=3)
    d = params.shape[0]
    kappa = [float(collector.timing.communication_time(a)) for a in range(3)]
    assert kappa == pytest.approx((np.sqrt([1, 2, 3]) * d**0.25).tolist())
    result = collect(collector, params, 3)
    # Reference at 60 significant digits: κ_i = √i · D with D = d^(1/4) as the decimal of its float.
    getcontext().prec = 60
    factor = Decimal(repr(d**0.25))
    kappa_exact = [Decimal(i).sqrt() * factor for i in (1, 2, 3)]
    finishes = sorted((kappa_exact[i] + k + 1, i, k) for i in range(3) for k in range(3))[:3]
    assert arrival_keys(result) == [(i, k) for _, i, k in finishes]
    stop = finishes[-1][0]
    end = max(stop + kappa_exact[i] for i in {i for _, i, _ in finishes})
    assert abs(Decimal(repr(float(result.end_time))) - end) < Decimal("1e-12") * end


def test_expensive_is_not_a_compute_preset():
    with pytest.raises(ValueError, match="compute_times"):
        TimingModel(3, "expensive")


def test_random_times_are_deterministic_in_the_seed():
    spec = RandomTimes("exponential", mean=[1.0, 2.0, 3.0])
    a, b, c = TimingModel(3, spec, seed=5), TimingModel(3, spec, seed=5), TimingModel(3, spec, seed=6)
    keys = [(agent, 0.0, k) for agent in range(3) for k in range(12)]  # (agent, start, counter)
    draws_a = [a.compute_time(*key) for key in keys]
    assert draws_a == [b.compute_time(*key) for key in keys]
    assert draws_a != [c.compute_time(*key) for key in keys]
    assert len(set(draws_a)) == len(keys)  # every (agent, counter) has its own draw
    assert all(x > 0 for x in draws_a)
    # The dict form is the same specification.
    d = TimingModel(3, {"distribution": "exponential", "mean": [1.0, 2.0, 3.0]}, seed=5)
    assert draws_a == [d.compute_time(*key) for key in keys]


@pytest.mark.parametrize("spec", [RandomTimes("exponential", mean="sqrt"), RandomTimes("lognormal", mean="sqrt", sigma=0.7)])
def test_random_times_have_the_requested_means(spec):
    timing = TimingModel(3, spec, spec, seed=1)
    for agent in range(3):
        draws = np.array([float(timing.compute_time(agent, 0.0, k)) for k in range(2000)])
        assert abs(draws.mean() - math.sqrt(agent + 1)) < 5 * draws.std() / math.sqrt(len(draws))
        comm = np.array([float(timing.communication_time(agent, 0.0, k)) for k in range(2000)])
        assert abs(comm.mean() - math.sqrt(agent + 1)) < 5 * comm.std() / math.sqrt(len(comm))


def test_random_times_in_the_model_are_reproducible(make_model):
    def run(seed):
        recorder = RoundRecorder()
        make_model(n_agents=3, compute_times=RandomTimes("exponential", "sqrt"), round_size=3, horizon=5, seed=seed).learn(60, callback=recorder)
        return recorder.times

    first = run(0)
    assert len(first) == 4
    assert first == run(0)
    assert first != run(1)


def test_random_times_reject_a_bad_distribution():
    with pytest.raises(ValueError, match="distribution"):
        RandomTimes("uniform")


# ---------------------------------------------------------------------------------------- callable form
def test_callable_times(make_collector):
    # The contract: f(agent, start seconds, counter). In a first round the compute counter of agent i's k-th
    # gradient is k; the broadcast is transfer 0 and the upload transfer 1 of each agent.
    def compute(agent, start, counter):
        return 1.0 + agent + 0.25 * counter

    def communication(agent, start, counter):
        return 0.1 * agent + (0.5 if counter == 1 else 0.0)

    collector, params = make_collector(compute, communication, n_agents=3)
    reference = reference_round(
        lambda i, k: compute(i, 0, k), [communication(i, 0, 0) for i in range(3)], 6, 7.0,
        upload=[communication(i, 0, 1) for i in range(3)],
    )
    assert_matches_reference(collect(collector, params, 6, 0, 7.0), reference)


def test_callable_returning_an_invalid_time_raises(make_collector):
    collector, params = make_collector(lambda agent, start, counter: 0.0, n_agents=2)
    with pytest.raises(ValueError, match="compute_times"):
        collect(collector, params, 2)
    collector, params = make_collector("equal", lambda agent, start, counter: -1.0, n_agents=2)
    with pytest.raises(ValueError, match="communication_times"):
        collect(collector, params, 2)


# ------------------------------------------------------------------------------------- per-step compute
def test_per_step_times_scale_with_the_trajectory_length(make_collector):
    horizon = 5  # Pendulum never ends early: every trajectory has H steps
    collector, params = make_collector([1, 2, 4], horizon=horizon, compute_time_unit="step")
    result = collect(collector, params, 7)
    np.testing.assert_array_equal(result.counts, [4, 2, 1])  # the paper's example, every time × H
    assert result.duration == 4.0 * horizon


def test_per_step_times_with_variable_lengths(make_collector):
    # Episode lengths vary (2..10 steps); agent i's k-th gradient takes h_i × its length. The reference reads
    # each job's length by running the same job (same seed) in a separate worker.
    h, kappa, m, horizon, seed, round_index = [1.0, 1.5, 3.0], [0.0, 0.2, 0.1], 8, 20, 3, 2
    env_factory = functools.partial(RandomLengthEnv, 10)
    collector, params = make_collector(h, kappa, env_factory=env_factory, horizon=horizon, compute_time_unit="step", seed=seed)
    result = collect(collector, params, m, round_index=round_index)

    probe = env_factory()
    worker = GradientWorker([env_factory], NIGTPolicy, probe.observation_space, probe.action_space, {"net_arch": [8]})
    worker.set_params(params)

    @functools.lru_cache(maxsize=None)
    def length(agent, k):
        return worker.run_unit(WorkUnit(round_index, agent, k, 1, seed, 0, horizon, collector.gamma)).n_steps

    lengths = {length(a, k) for a in range(3) for k in range(4)}
    assert len(lengths) > 2, "the test env must produce trajectories of different lengths"
    assert_matches_reference(result, reference_round(lambda i, k: h[i] * length(i, k), kappa, m))
    for arrival in result.arrivals:
        assert arrival.result.n_steps == length(arrival.agent, arrival.index)


def test_per_step_times_through_the_model(make_model):
    horizon = 10
    model = make_model(n_agents=3, compute_times=[1, 2, 4], round_size=7, horizon=horizon, compute_time_unit="step")
    recorder = RoundRecorder()
    model.learn(7 * horizon * 2, callback=recorder)
    assert list(round_durations(recorder.times)) == [4.0 * horizon] * 2
