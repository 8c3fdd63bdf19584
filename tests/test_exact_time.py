"""Exact time accounting: per-agent uploads, exact ties, clamped schedules, observation warm-up, the real clock's
emulation, the global RNG, the ḣ_i·H reading, one contract for time-varying times, and the event trace.

Every timing figure is checked against exact hand arithmetic (fractions, integers), never against float code."""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_nigt import AFedPG, MaleniaNIGT, NIGTPolicy, RandomTimes, RennalaNIGT, SynchronizedNIGT
from sb3_nigt.clock.exact import ExactTime
from sb3_nigt.workers.rollout import GradientWorker

from helpers import RandomLengthEnv, reference_sync_round

ALGORITHMS = [RennalaNIGT, MaleniaNIGT, SynchronizedNIGT, AFedPG]
SMALL = dict(round_size=4, horizon=5, seed=0, policy_kwargs=dict(net_arch=[8]))


class RoundClock(BaseCallback):
    """The exact clock, the counts and the round statistics at the end of every round."""

    def __init__(self) -> None:
        super().__init__()
        self.clock: list[ExactTime] = []
        self.counts: list[list[int]] = []
        self.stats: list[dict] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.clock.append(self.model.simulated_time_exact)
        self.counts.append(list(self.model.last_counts) if self.model.last_counts is not None else [])
        self.stats.append(dict(self.model.round_stats))


def counted(trace, round_index):
    """(agent, index) of a round's counted gradients, in the order the clock counted them."""
    return [(e.agent, e.index) for e in trace if e.round == round_index and e.kind == "compute" and e.status == "counted"]


# ------------------------------------------------------------------------------ 1. uploads start when each agent stops
def test_synchronized_agent_uploads_as_soon_as_its_gradient_is_done():
    # h = (1, 10), κ = (5, 0): agent 0 receives θ at 5, finishes at 6 and its vector arrives at 11; agent 1
    # finishes at 10, κ = 0. The round costs 11 s (max over agents of 2κ_i + h_i), not t_stop + max κ = 15 s.
    model = SynchronizedNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[1, 10], communication_times=[5, 0],
                             record_trace=True, **SMALL)
    recorder = RoundClock()
    model.learn(3 * 2 * 5, callback=recorder)
    assert recorder.clock == [11, 22, 33]
    _, end = reference_sync_round([1, 10], [5, 0])
    assert end == 11
    uploads = [(e.agent, e.start, e.end) for e in model.trace if e.kind == "upload" and e.round == 0]
    assert uploads == [(0, 6, 11), (1, 10, 10)]


@pytest.mark.parametrize("case", range(6))
def test_synchronized_rounds_match_the_exact_reference(case):
    rng = np.random.default_rng(100 + case)
    n = int(rng.integers(2, 6))
    h = rng.uniform(0.1, 3.0, n).round(2).tolist()
    kappa = (rng.uniform(0.0, 2.0, n) * (rng.random(n) < 0.7)).round(2).tolist()
    model = SynchronizedNIGT("MlpPolicy", "Pendulum-v1", n_agents=n, compute_times=h, communication_times=kappa, **SMALL)
    recorder = RoundClock()
    model.learn(2 * n * 5, callback=recorder)
    _, end = reference_sync_round(h, kappa)
    assert recorder.clock == [end, 2 * end]


def test_rennala_uploads_after_the_common_stop():
    # h = (1, 3), κ = (2, 0.5), M = 2: agent 0 finishes at 3 and 4, agent 1 at 3.5. Counted: (0 at 3), (1 at 3.5);
    # every agent stops at t_stop = 3.5; uploads arrive at 5.5 and 4: the round ends at 5.5.
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[1, 3], communication_times=[2, 0.5],
                        round_size=2, horizon=5, seed=0, policy_kwargs=dict(net_arch=[8]))
    recorder = RoundClock()
    model.learn(2 * 5 * 2, callback=recorder)
    assert recorder.clock == [Fraction(11, 2), 11]
    assert recorder.counts[0] == [1, 1]


# ----------------------------------------------------------------------------------------------- 2. exact ties
def test_decimal_ties_go_to_the_lower_agent_in_every_round():
    # h = (0.1, 0.3), M = 3: agent 0 finishes at 0.1, 0.2, 0.3 and agent 1 at 0.3, a tie that goes to agent 0.
    # In floats 0.1 + 0.1 + 0.1 > 0.3, which gave (2, 1). Every round starts at a multiple of 0.3.
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[0.1, 0.3], round_size=3, horizon=3, seed=0,
                        policy_kwargs=dict(net_arch=[8]))
    recorder = RoundClock()
    model.learn(20 * 3 * 3, callback=recorder)
    assert len(recorder.counts) == 20
    assert recorder.counts == [[3, 0]] * 20
    assert recorder.clock == [Fraction(3, 10) * (r + 1) for r in range(20)]


def test_decimal_ties_in_estimate_gradient_and_with_a_decimal_start():
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=3, compute_times=[0.1, 0.2, 0.3], communication_times=[0.2, 0.1, 0.0],
                        round_size=4, horizon=3, seed=0, policy_kwargs=dict(net_arch=[8]))
    _, counts = model.estimate_gradient(n_rounds=2)
    # Agent 0 starts at 0.2 and finishes at 0.3, 0.4, 0.5; agent 1 starts at 0.1: 0.3, 0.5; agent 2: 0.3, 0.6.
    # Ordered with ties by index: 0@0.3, 1@0.3, 2@0.3, 0@0.4 → counts (2, 1, 1).
    np.testing.assert_array_equal(counts, [[2, 1, 1]] * 2)


def sqrt_reference_order(n: int, m: int) -> list[tuple[int, int]]:
    """The first m finishes of h_i = √i (κ = 0), by integer arithmetic: agent i's k-th finish (k from 1) is at
    k·√i, and k·√i < l·√j ⇔ k²·i < l²·j; ties by agent index. Returns (agent from 0, index from 0)."""
    finishes = [(k * k * i, i - 1, k - 1) for i in range(1, n + 1) for k in range(1, m + 1)]
    return [(agent, index) for _, agent, index in sorted(finishes)[:m]]


@pytest.mark.parametrize("m", [20, 50])
def test_sqrt_preset_orders_events_as_integer_arithmetic_in_every_round(m):
    n, rounds = 10, 6
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=n, compute_times="sqrt", round_size=m, horizon=2, seed=0,
                        record_trace=True, policy_kwargs=dict(net_arch=[8]))
    model.learn(rounds * m * 2)
    expected = sqrt_reference_order(n, m)
    ties = {(a, b) for a, b in zip(expected, expected[1:])}
    assert ties  # the reference has exact ties (e.g. 2·√1 = √4), which a float sum can misorder
    for r in range(model.n_rounds):  # round r starts at an irrational time; the relative order must not change
        assert counted(model.trace, r) == expected


def test_sqrt_round_durations_are_exact():
    # n = 10, M = 20, h_i = √i, κ_i = √i: each round ends at max over contributors of (t_stop + √i).
    n, m = 10, 20
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=n, compute_times="sqrt", communication_times="sqrt", round_size=m,
                        horizon=2, seed=0, policy_kwargs=dict(net_arch=[8]))
    recorder = RoundClock()
    model.learn(3 * m * 2, callback=recorder)
    # Agent i starts at √i and finishes its k-th at (k + 1)·√i: integer keys (k + 1)²·i.
    finishes = sorted(((k + 1) ** 2 * i, i, k) for i in range(1, n + 1) for k in range(1, m + 1))[:m]
    stop_key, stop_agent, stop_k = finishes[-1]
    last = max(i for _, i, _ in finishes)  # every contributor uploads at t_stop; √i grows with i
    # The duration (k + 1)·√s + √j as {square-free r: rational coefficient}, by integer arithmetic alone.
    duration: dict[int, Fraction] = {}
    for coefficient, radicand in ((stop_k + 1, stop_agent), (1, last)):
        root, free = square_free(radicand)
        duration[free] = duration.get(free, Fraction(0)) + coefficient * root
    assert len(recorder.clock) == 3
    for r, clock in enumerate(recorder.clock):
        assert dict(clock.terms) == {free: q * (r + 1) for free, q in duration.items()}


def square_free(n: int) -> tuple[int, int]:
    """n = s²·f with f square-free, by trial division: (s, f)."""
    s, f = 1, 1
    for p in range(2, n + 1):
        while n % (p * p) == 0:
            n //= p * p
            s *= p
        if n % p == 0:
            n //= p
            f *= p
    return s, f * n


# ------------------------------------------------------------------------------------- 3. the step never reverses
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_schedule_progress_is_clamped_at_zero(algorithm):
    seen: list[float] = []

    def schedule(progress: float) -> float:
        seen.append(progress)
        return 0.1 * progress

    # 2 agents, M = 4, H = 5 (Pendulum never ends early): rounds of 20 (Sync: 10, AFedPG: 5) steps; 53 overshoots.
    model = algorithm("MlpPolicy", "Pendulum-v1", n_agents=2, learning_rate=schedule, **SMALL)
    model.learn(53)
    assert model.num_timesteps > 53
    assert seen and min(seen) >= 0.0
    assert seen[-1] == 0.0
    assert model.round_stats["learning_rate"] >= 0.0


# --------------------------------------------------------------------------------- 4. observation normalization
class VarianceAtRoundStart(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.variances: list[float] = []
        self.warmup: list[bool] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        norm = self.model._obs_norm()
        self.variances.append(float(np.min(norm.var)))

    def _on_rollout_end(self) -> None:
        self.warmup.append(bool(self.model.round_stats.get("observation_warmup")))


@pytest.mark.parametrize("algorithm", [RennalaNIGT, AFedPG])
def test_the_first_used_gradient_sees_warmed_up_statistics(algorithm):
    env = VecNormalize(DummyVecEnv([lambda: __import__("gymnasium").make("Pendulum-v1")]), norm_obs=True, norm_reward=False)
    model = algorithm("MlpPolicy", env, n_agents=2, round_size=4, horizon=20, seed=0, policy_kwargs=dict(net_arch=[8]))
    recorder = VarianceAtRoundStart()
    model.learn(400, callback=recorder)
    # The first round warms the statistics up and its gradient is discarded; every later round (d_{−1} first)
    # normalizes with statistics from real trajectories, not from one reset observation (variance ~1e-4).
    assert recorder.warmup[0] and not any(recorder.warmup[1:])
    assert recorder.variances[0] == 1.0  # the warm-up round normalizes with the identity (mean 0, variance 1)
    assert min(recorder.variances[1:]) > 1e-2
    assert env.obs_rms.count > 4 * 20


def test_no_warmup_for_loaded_statistics():
    env = VecNormalize(DummyVecEnv([lambda: __import__("gymnasium").make("Pendulum-v1")]), norm_obs=True, norm_reward=False)
    env.obs_rms.update(np.random.default_rng(0).normal(size=(500, 3)))
    model = RennalaNIGT("MlpPolicy", env, n_agents=2, round_size=4, horizon=20, seed=0, policy_kwargs=dict(net_arch=[8]))
    recorder = VarianceAtRoundStart()
    model.learn(200, callback=recorder)
    assert not any(recorder.warmup)


# ------------------------------------------------------------------------------------------- 5. the real clock
def test_real_clock_emulation_needs_one_process_per_agent():
    with pytest.raises(ValueError, match="time_scale.*subprocess"):
        RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, clock="real", time_scale=0.01)
    with pytest.raises(ValueError, match="n_workers"):
        RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=3, clock="real", time_scale=0.01, backend="subprocess", n_workers=2)
    # Without emulated times the inline backend on the real clock is allowed (nothing is claimed about h_i, κ_i).
    RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, clock="real")
    with pytest.warns(UserWarning, match="time_scale"):
        RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, time_scale=0.01)


@pytest.mark.timeout(120)
def test_real_clock_emulation_matches_the_timing_model():
    # h = (1, 50) s scaled by 0.02: agent 0 takes 20 ms a gradient, agent 1 a second. With M = 6 the timing model
    # gives counts (6, 0) and rounds of 6 × 20 ms; the old emulation (agents sharing processes) gave (3, 3).
    scale, m = 0.02, 6
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[1, 50], round_size=m, horizon=3, seed=0,
                        clock="real", backend="subprocess", time_scale=scale, policy_kwargs=dict(net_arch=[8]))
    recorder = RoundClock()
    model.learn(8 * m * 3, callback=recorder)
    assert len(recorder.counts) >= 8
    assert sum(c == [m, 0] for c in recorder.counts) >= len(recorder.counts) - 1
    durations = np.diff([0.0] + [float(t) for t in recorder.clock])
    expected = m * 1 * scale
    assert np.median(durations) >= expected
    assert np.median(durations) < expected + 0.1  # scheduling noise; agent 1's 1 s gradients never count


# -------------------------------------------------------------------------------------- 6. the global RNG
def test_building_a_worker_leaves_the_global_rng_alone():
    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    th.manual_seed(7)
    state = th.get_rng_state()
    GradientWorker([lambda: gym.make("Pendulum-v1")], NIGTPolicy, env.observation_space, env.action_space, {})
    assert th.equal(state, th.get_rng_state())


@pytest.mark.timeout(120)
def test_stochastic_predict_after_learn_is_backend_independent():
    obs = np.array([0.3, -0.2, 0.5], dtype=np.float32)
    actions = []
    for backend in ("inline", "subprocess"):
        model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, backend=backend, n_workers=1, **SMALL)
        model.learn(60)
        actions.append([model.predict(obs, deterministic=False)[0] for _ in range(3)])
    np.testing.assert_array_equal(np.array(actions[0]), np.array(actions[1]))


# ------------------------------------------------------------------------------ 7. length-dependent compute time
def test_horizon_unit_charges_h_times_H_whatever_the_length():
    # RandomLengthEnv has episodes of 2..10 steps; with "horizon" each gradient costs h_i·H = h_i·10 exactly.
    model = RennalaNIGT("MlpPolicy", functools.partial(RandomLengthEnv, 10), n_agents=3, compute_times=[1, 2, 4],
                        compute_time_unit="horizon", round_size=7, horizon=10, seed=0, policy_kwargs=dict(net_arch=[8]))
    recorder = RoundClock()
    model.learn(150, callback=recorder)
    assert recorder.counts == [[4, 2, 1]] * len(recorder.counts)  # the paper's example, times H
    assert recorder.clock == [40 * (r + 1) for r in range(len(recorder.clock))]


def counted_lengths(unit: str) -> float:
    model = RennalaNIGT("MlpPolicy", functools.partial(RandomLengthEnv, 10), n_agents=8, compute_times="equal",
                        compute_time_unit=unit, round_size=4, horizon=10, seed=0, stats_window_size=10_000,
                        policy_kwargs=dict(net_arch=[8]))
    model.learn(1500)
    return float(np.mean([ep["l"] for ep in model.ep_info_buffer]))


def test_per_step_times_bias_the_first_m_towards_short_trajectories():
    # 8 agents with equal speed, M = 4: per-step times count the 4 trajectories that end first, the shortest;
    # the ḣ_i·H reading counts agents 0..3 whatever their lengths (uniform on 2..10: mean 6).
    step, horizon = counted_lengths("step"), counted_lengths("horizon")
    assert abs(horizon - 6.0) < 0.6
    assert step < horizon - 1.5


# ------------------------------------------------------------------------- 8. one contract for time-varying times
def test_callable_contract_is_agent_start_counter_in_every_algorithm():
    calls: dict[str, list] = {}
    for algorithm in (RennalaNIGT, AFedPG):
        seen: list = []

        def compute(agent, start, counter, seen=seen):
            seen.append((agent, start, counter))
            return 1.0 + agent

        model = algorithm("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=compute, round_size=3, horizon=2, seed=0,
                          policy_kwargs=dict(net_arch=[8]))
        model.learn(12)
        calls[algorithm.__name__] = seen
    # Rennala, first round (κ = 0, h = (1, 2), M = 3): agent 0 starts at 0 and 1 and finishes at 1 and 2, agent 1
    # finishes at 2 (the tie goes to agent 0, which starts again at 2, counter 2, then is abandoned). The second
    # round starts at 2: counters go on (agent 0: 3, agent 1: 1).
    rennala = calls["RennalaNIGT"]
    assert rennala[:6] == [(0, 0.0, 0), (1, 0.0, 0), (0, 1.0, 1), (0, 2.0, 2), (0, 2.0, 3), (1, 2.0, 1)]
    # AFedPG: every gradient of an agent starts where its previous one arrived; the counter is the agent's count.
    afedpg = calls["AFedPG"]
    assert afedpg[:4] == [(0, 0.0, 0), (1, 0.0, 0), (0, 1.0, 1), (0, 2.0, 2)]
    for algorithm_calls in calls.values():
        for agent in (0, 1):
            counters = [c for a, _, c in algorithm_calls if a == agent]
            assert counters == list(range(len(counters)))


def test_broadcast_and_upload_have_independent_draws():
    model = SynchronizedNIGT("MlpPolicy", "Pendulum-v1", n_agents=3, communication_times=RandomTimes("exponential", mean=1.0),
                             record_trace=True, **SMALL)
    model.learn(3 * 3 * 5)
    for round_index in range(model.n_rounds):
        for agent in range(3):
            events = {e.kind: e for e in model.trace if e.round == round_index and e.agent == agent}
            broadcast, upload = events["broadcast"], events["upload"]
            assert broadcast.end - broadcast.start != upload.end - upload.start


def test_random_times_are_the_same_draws_in_every_algorithm():
    spec = RandomTimes("exponential", mean="sqrt")
    first = [RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=3, compute_times=spec, **SMALL),
             AFedPG("MlpPolicy", "Pendulum-v1", n_agents=3, compute_times=spec, **SMALL)]
    draws = [[float(m.timing.compute_time(a, 0.0, k)) for a in range(3) for k in range(5)] for m in first]
    assert draws[0] == draws[1]


# ------------------------------------------------------------------------------------------ 11. the event trace
def test_trace_of_the_paper_example_is_hand_arithmetic():
    # h = (1, 2, 4), κ = 0, M = 3: agent 0 finishes at 1 and 2, agent 1 at 2; agent 1's second and agent 2's first
    # gradients are in flight at t_stop = 2 and abandoned.
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=3, compute_times=[1, 2, 4], round_size=3, horizon=5, seed=0,
                        record_trace=True, policy_kwargs=dict(net_arch=[8]))
    model.learn(1)  # the initial round only
    rows = [(e.agent, e.kind, e.index, e.start, e.end, e.status) for e in model.trace if e.round == 0 and e.kind == "compute"]
    assert rows == [
        (0, "compute", 0, 0, 1, "counted"),
        (0, "compute", 1, 1, 2, "counted"),
        (1, "compute", 0, 0, 2, "counted"),
        (2, "compute", 0, 0, 2, "abandoned"),
    ]
    uploads = [(e.agent, e.start, e.end) for e in model.trace if e.kind == "upload"]
    assert uploads == [(0, 2, 2), (1, 2, 2)]


def test_trace_of_afedpg_and_malenia():
    afedpg = AFedPG("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[1, 3], communication_times=[0.5, 0], record_trace=True, **SMALL)
    afedpg.learn(5 * 4)
    computes = [(e.agent, e.start, e.end) for e in afedpg.trace if e.kind == "compute" and e.status == "counted"]
    # Agent 0: download 0.5, compute 1, upload 0.5 → arrivals at 2, 4, ...; agent 1 arrives at 3.
    assert computes[:3] == [(0, Fraction(1, 2), Fraction(3, 2)), (1, 0, 3), (0, Fraction(5, 2), Fraction(7, 2))]
    malenia = MaleniaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[1, 10], round_size=4, horizon=2, seed=0,
                          record_trace=True, policy_kwargs=dict(net_arch=[8]))
    malenia.learn(1)
    assert [e.agent for e in malenia.trace if e.kind == "compute" and e.status == "counted"].count(0) == 20


@pytest.mark.timeout(120)
def test_trace_on_the_real_clock():
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, round_size=3, horizon=3, seed=0, clock="real",
                        backend="subprocess", time_scale=0.005, record_trace=True, policy_kwargs=dict(net_arch=[8]))
    model.learn(30)
    kinds = {e.kind for e in model.trace}
    assert kinds == {"broadcast", "compute", "upload"}
    assert all(float(e.end) >= float(e.start) for e in model.trace)
    computes = [e for e in model.trace if e.kind == "compute"]
    assert sum(e.status == "counted" for e in computes) == 3 * model.n_rounds
    assert {e.status for e in computes} <= {"counted", "abandoned"}  # an agent may be mid-gradient when a round ends


def test_trace_is_off_by_default_and_not_saved(tmp_path):
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, **SMALL)
    model.learn(20)
    assert model.trace == []
    traced = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, record_trace=True, **SMALL).learn(20)
    traced.save(tmp_path / "m.zip")
    assert traced.trace  # recorded, yet not saved:
    assert RennalaNIGT.load(tmp_path / "m.zip").trace == []


def test_exact_clock_survives_save_and_load(tmp_path):
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=3, compute_times="sqrt", communication_times=[0.1, 0.2, 0.3], **SMALL)
    model.learn(40)
    model.save(tmp_path / "m.zip")
    loaded = RennalaNIGT.load(tmp_path / "m.zip", env="Pendulum-v1")
    assert loaded.simulated_time_exact == model.simulated_time_exact
    assert loaded.time_counters == model.time_counters
    model.learn(40, reset_num_timesteps=False)
    loaded.learn(40, reset_num_timesteps=False)
    assert loaded.simulated_time_exact == model.simulated_time_exact
    assert math.isfinite(loaded.simulated_time)


# --------------------------------------------------------------------------------------------- the number type
def test_exact_time_arithmetic_against_decimal_at_high_precision():
    from decimal import Decimal, getcontext

    getcontext().prec = 80
    rng = np.random.default_rng(0)
    for _ in range(300):
        terms = [(int(rng.integers(1, 40)), Fraction(int(rng.integers(-50, 50)), int(rng.integers(1, 20)))) for _ in range(4)]
        value = ExactTime.of(0)
        reference = Decimal(0)
        for r, q in terms:
            value = value + ExactTime.sqrt(r, q)
            reference += Decimal(q.numerator) / Decimal(q.denominator) * Decimal(r).sqrt()
        expected = 0 if abs(reference) < Decimal("1e-60") else (1 if reference > 0 else -1)
        assert value.sign() == expected
        assert (value > 0) == (expected > 0) and (value == 0) == (expected == 0)


def test_exact_time_recognises_equal_surds_and_decimals():
    assert ExactTime.sqrt(8) + ExactTime.sqrt(2) == ExactTime.sqrt(18)
    assert ExactTime.sqrt(4) == 2 and ExactTime.sqrt(12) == 2 * ExactTime.sqrt(3)
    assert ExactTime.of(0.1) * 3 == ExactTime.of(0.3)
    assert ExactTime.of(0.1) + ExactTime.of(0.2) == 0.3
    # √10001 − 100 = 0.00499987…, just under 1/200.
    assert ExactTime.sqrt(10001) - 100 < ExactTime.of(Fraction(1, 200))
    assert ExactTime.sqrt(10001) - 100 > ExactTime.of(Fraction(1, 200) - Fraction(1, 10**6))  # 0.00499987… > 0.004999
    assert hash(ExactTime.sqrt(8)) == hash(2 * ExactTime.sqrt(2))
