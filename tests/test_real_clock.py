"""The real clock: gradients count in physical arrival order; injected sleeps emulate h_i and κ_i."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np

from sb3_nigt import RennalaNIGT

from helpers import RoundRecorder


def test_real_clock_inline_counts_exactly_m_per_round():
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=3, batch_size=5, horizon=10, clock="real", seed=0)
    recorder = RoundRecorder()
    model.learn(200, callback=recorder)
    assert [r["gradients_per_round"] for r in recorder.rounds] == [5] * len(recorder.rounds)
    clocks = [r["clock"] for r in recorder.rounds]
    assert all(b > a for a, b in zip(clocks, clocks[1:]))  # wall seconds accumulate


def test_real_clock_emulated_times_favour_the_fast_agent():
    # h = (1, 2, 8) x 40 ms of injected sleep: over the run the fastest agent contributes more than the slowest.
    scale = 0.04
    model = RennalaNIGT(
        "MlpPolicy", "Pendulum-v1", n_agents=3, compute_times=[1, 2, 8], batch_size=7, horizon=5,
        clock="real", backend="subprocess", time_scale=scale, seed=0,
    )
    recorder = RoundRecorder()
    model.learn(3 * 7 * 5, callback=recorder)
    assert [r["gradients_per_round"] for r in recorder.rounds] == [7] * len(recorder.rounds)
    # The 7th gradient cannot arrive before 4 periods of 40 ms (agent 0 finishes at 1, 2, 3, 4 periods, agent 1
    # at 2, 4, agent 2 at 8); one period of slack is left for sleep granularity.
    per_round = [b["clock"] - a["clock"] for a, b in zip(recorder.rounds, recorder.rounds[1:])]
    assert min(per_round) >= 3 * scale
    total = np.sum([r["counts"] for r in recorder.rounds], axis=0)
    assert total[0] > total[2], total
    assert not mp.active_children()
