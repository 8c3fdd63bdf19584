"""The real clock: gradients count in physical arrival order; injected sleeps emulate h_i and κ_i."""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from sb3_nigt import RennalaNIGT


class RoundRecorder(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.rounds: list[dict] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.rounds.append(dict(self.model.round_stats, clock=self.model.simulated_time, counts=self.model.last_counts.copy()))


def test_real_clock_inline_counts_exactly_m_per_round():
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=3, batch_size=5, horizon=10, clock="real", seed=0)
    recorder = RoundRecorder()
    model.learn(200, callback=recorder)
    assert [r["gradients_per_round"] for r in recorder.rounds] == [5] * len(recorder.rounds)
    clocks = [r["clock"] for r in recorder.rounds]
    assert all(b > a for a, b in zip(clocks, clocks[1:]))  # wall seconds accumulate


def test_real_clock_emulated_times_favour_the_fast_agent():
    # h = (1, 2, 8) x 40 ms: the fast agent must contribute most gradients and the slowest the fewest.
    scale = 0.04
    model = RennalaNIGT(
        "MlpPolicy", "Pendulum-v1", n_agents=3, compute_times=[1, 2, 8], batch_size=7, horizon=5,
        clock="real", backend="subprocess", time_scale=scale, seed=0,
    )
    recorder = RoundRecorder()
    start = time.perf_counter()
    model.learn(3 * 7 * 5, callback=recorder)
    wall = time.perf_counter() - start
    assert [r["gradients_per_round"] for r in recorder.rounds] == [7] * len(recorder.rounds)
    # Each round needs at least 4 x 40 ms of emulated compute (agent 1 can finish at most 4 gradients by then).
    per_round = [b["clock"] - a["clock"] for a, b in zip(recorder.rounds, recorder.rounds[1:])]
    assert min(per_round) >= 3 * scale
    assert wall < 60
    total = np.sum([r["counts"] for r in recorder.rounds], axis=0)
    assert total[0] > total[2], total
    assert not mp.active_children()
