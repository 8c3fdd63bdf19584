"""The real clock: gradients count in physical arrival order; injected sleeps emulate h_i and κ_i; one round driver
(sb3_nigt.clock.real) whatever counts the arrivals."""

from __future__ import annotations

import multiprocessing as mp
import uuid
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pytest
import torch.distributed as dist

from sb3_nigt import RennalaNIGT
from sb3_nigt.backends.contract import WorkerLost
from sb3_nigt.backends.torch_distributed import StoreCounter
from sb3_nigt.clock.real import Counted, RealRound, Tally
from sb3_nigt.clock.timing import TimeCounters, TimingModel
from sb3_nigt.core.aggregation import MaleniaAggregation, RennalaAggregation, SynchronizedAggregation
from sb3_nigt.workers.messages import AgentReport, AgentRun
from sb3_nigt.workers.rollout import TrajectoryStats, UnitResult, WorkUnit

from helpers import RoundRecorder


def test_real_clock_inline_counts_exactly_m_per_round():
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=3, round_size=5, horizon=10, clock="real", seed=0)
    recorder = RoundRecorder()
    model.learn(200, callback=recorder)
    assert [r["gradients_per_round"] for r in recorder.rounds] == [5] * len(recorder.rounds)
    clocks = [r["clock"] for r in recorder.rounds]
    assert all(b > a for a, b in zip(clocks, clocks[1:]))  # wall seconds accumulate


def test_real_clock_emulated_times_favour_the_fast_agent():
    # h = (1, 2, 8) x 40 ms of injected sleep: over the run the fastest agent contributes more than the slowest.
    scale = 0.04
    model = RennalaNIGT(
        "MlpPolicy", "Pendulum-v1", n_agents=3, compute_times=[1, 2, 8], round_size=7, horizon=5,
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
    model.close()
    assert not mp.active_children()


# ------------------------------------------------------------------------------- the driver, with a scripted backend
class ScriptedBackend:
    """Agents in lockstep: every ``wait`` reports one trajectory of each running agent, in agent order. Trajectory k
    of agent a has the gradient [a, k] (float64); a flushed run (or one that reaches ``max_gradients``) sends the
    sum of its counted trajectories. At wait number ``lose_at`` the worker of agent ``victim`` is lost."""

    def __init__(self, lose_at: int = 0, victim: int = 0):
        self.lose_at, self.victim = lose_at, victim
        self.runs: dict[int, list] = {}  # agent → [run, next index]
        self.outbox: list = []
        self.calls = 0
        self.started: list[tuple[int, int]] = []  # (agent, first) of every run started

    def start_run(self, run: AgentRun) -> None:
        self.runs[run.agent] = [run, run.first]
        self.started.append((run.agent, run.first))

    def _send(self, run: AgentRun, count: int) -> None:
        gradient = np.array([run.agent * count, sum(range(run.first, run.first + count))], dtype=np.float64)
        unit = WorkUnit(run.round_index, run.agent, run.first, count, run.seed, run.env_index, run.horizon, run.gamma, run.epoch)
        self.outbox.append(UnitResult(unit, gradient, [], 0.0))

    def flush(self, epoch: int, agent: int, count: int, upload_delay: float = 0.0) -> None:
        run, _ = self.runs.pop(agent)
        if count:
            self._send(run, count)

    def wait(self, timeout=None) -> list:
        self.calls += 1
        events, self.outbox = self.outbox, []
        if self.calls == self.lose_at and self.victim in self.runs:  # while it runs
            return events + [WorkerLost(0, "killed", [], [self.runs.pop(self.victim)[0]])]
        unsent = [e for e in events if e.unit.agent == self.victim]
        if self.calls == self.lose_at and unsent:  # flushed, its sum not yet sent
            run = AgentRun(1, 0, self.victim, unsent[0].unit.first, 0, 0, 5, 0.99)
            return [e for e in events if e not in unsent] + [WorkerLost(0, "killed", [], [run])]
        for agent, entry in sorted(self.runs.items()):
            run, index = entry
            events.append(AgentReport(run.epoch, TrajectoryStats(agent, index, 0.0, 5, 5)))
            entry[1] += 1
            if run.max_gradients is not None and entry[1] - run.first >= run.max_gradients:
                del self.runs[agent]
                self._send(run, run.max_gradients)
        return events


def collector_of(backend: ScriptedBackend, n: int, communication=0.0) -> SimpleNamespace:
    """What :class:`RealRound` reads of a collector."""
    return SimpleNamespace(backend=backend, timing=TimingModel(n, communication_times=communication), time_scale=None,
                           counters=TimeCounters.zeros(n), epoch=1, n_agents=n, seed=0, agent_env_index=[0] * n,
                           horizon=5, gamma=0.99, lost_agents=[])


def check_every_counted_gradient_is_summed(played, rule) -> None:
    by_agent: dict[int, list[int]] = {}
    for c in played.counted:
        by_agent.setdefault(c.agent, []).append(c.index)
    assert {a: len(i) for a, i in by_agent.items()} == {a: int(m) for a, m in enumerate(rule.counts) if m}
    for agent, indices in by_agent.items():
        np.testing.assert_array_equal(played.sums[agent], [agent * len(indices), sum(indices)])


def test_the_driver_counts_exactly_m_in_arrival_order_and_sums_each_agent_once():
    backend, rule, trace = ScriptedBackend(), RennalaAggregation(3, 7), []
    played = RealRound(collector_of(backend, 3), rule, 0, 10.0, trace).run()
    assert rule.counts.tolist() == [3, 2, 2]  # lockstep, ties by agent order: 0 1 2 0 1 2 0
    assert [c.agent for c in played.counted] == [0, 1, 2, 0, 1, 2, 0]
    assert [c.order for c in played.counted] == list(range(1, 8))
    check_every_counted_gradient_is_summed(played, rule)
    assert played.vectors == 3 and 10.0 <= played.stop <= played.end
    assert [e.kind for e in trace].count("broadcast") == 3 and [e.kind for e in trace].count("upload") == 3


def test_a_worker_lost_mid_round_uncounts_its_agent_and_starts_it_past_its_trajectories():
    backend, rule = ScriptedBackend(lose_at=2, victim=1), RennalaAggregation(3, 9)
    host = collector_of(backend, 3)
    with pytest.warns(RuntimeWarning, match="lost"):
        played = RealRound(host, rule, 0, 0.0, []).run()
    assert host.lost_agents == [1]
    assert (1, 2) in backend.started  # it had counted trajectory 0 (1 was in flight): it starts again at 2
    assert int(rule.counts.sum()) == 9
    check_every_counted_gradient_is_summed(played, rule)
    assert all(c.index >= 2 for c in played.counted if c.agent == 1)


def test_a_worker_lost_after_the_flush_restarts_the_round_until_the_rule_is_met_again():
    backend, rule = ScriptedBackend(lose_at=4, victim=0), RennalaAggregation(3, 7)
    with pytest.warns(RuntimeWarning, match="lost"):
        played = RealRound(collector_of(backend, 3), rule, 0, 0.0, []).run()
    assert backend.started[-1] == (0, 4)  # it had counted 0, 1, 2 (3 was in flight)
    assert rule.counts.tolist() == [3, 2, 2]
    check_every_counted_gradient_is_summed(played, rule)
    assert [c.index for c in played.counted if c.agent == 0] == [4, 5, 6]


def test_synchronized_agents_send_at_once_and_every_draw_advances_the_counters():
    backend, rule = ScriptedBackend(), SynchronizedAggregation(3, 1)
    host = collector_of(backend, 3, communication=[0.5, 0.0, 0.25])
    played = RealRound(host, rule, 0, 0.0, []).run()
    assert rule.counts.tolist() == [1, 1, 1] and played.vectors == 3
    check_every_counted_gradient_is_summed(played, rule)
    # Per agent: a broadcast and an upload drawn ahead; the counted gradient plus the one in flight (no emulation).
    assert host.counters.communication == [2, 2, 2] and host.counters.compute == [2, 2, 2]


# -------------------------------------------------------------------- torch.distributed: counted through a TCPStore
def store_counters(rule_type, n: int, batch: int, ranks: int = 2):
    """One StoreCounter per simulated rank, on one shared TCPStore (no process group: only the counting)."""
    store = dist.TCPStore("127.0.0.1", 0, 1, True, timedelta(seconds=10))
    owners = [SimpleNamespace(local=None, timeout=30.0, rank=r, _owns=lambda agent, r=r: agent % ranks == r) for r in range(ranks)]
    rules, prefix = [rule_type(n, batch) for _ in range(ranks)], f"test/{uuid.uuid4().hex}"
    return rules, [StoreCounter(owner, store, rule, prefix) for owner, rule in zip(owners, rules)]


def test_store_counter_rennala_counts_exactly_m_over_ranks():
    rules, (first, second) = store_counters(RennalaAggregation, 4, 3)
    assert [first.arrive(0), second.arrive(1), first.arrive(2)] == [1, 2, 3]  # the third is the M-th: the round stops
    assert first.done() and second.done()
    assert second.arrive(3) is None  # counted nowhere
    assert rules[0].counts.tolist() == [1, 0, 1, 0] and rules[1].counts.tolist() == [0, 1, 0, 0]


def test_store_counter_malenia_stops_when_every_agent_counts_and_a_lost_agent_cannot_be_uncounted():
    rules, (first, second) = store_counters(MaleniaAggregation, 2, 2)
    first.arrive(0)
    first.arrive(0)
    assert not first.done() and not second.done()  # agent 1 has no gradient yet
    second.arrive(1)
    assert first.done() and second.done()
    with pytest.raises(RuntimeError, match="lost on the real clock"):
        second.forget(1)


def test_tallies_of_disjoint_agents_merge_into_the_whole_round():
    stats = TrajectoryStats(0, 0, 0.0, 5, 5)
    a = Tally({0: [Counted(2, 1.0, 0, 0, stats)], 1: []}, {0: np.ones(2)}, {0: 3.0}, {}, stop=2.0, vectors=1)
    b = Tally({0: [], 1: [Counted(1, 0.5, 1, 0, stats)]}, {1: np.zeros(2)}, {1: 4.0}, {1: 0.5}, stop=2.5, vectors=1)
    whole = Tally.merged([a, b])
    assert [c.order for c in whole.counted[0] + whole.counted[1]] == [2, 1]
    assert sorted(whole.sums) == [0, 1] and whole.uploaded == {0: 3.0, 1: 4.0} and whole.stops == {1: 0.5}
    assert whole.stop == 2.5 and whole.vectors == 2
