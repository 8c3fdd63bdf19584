"""The engine: agent-side accumulation, one vector per contributing agent, failures (killed, hung, repeated),
large policies, slow agents, mid-round checkpoints, SIGTERM, and outages on the simulated clock."""

from __future__ import annotations

import functools
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback

from sb3_nigt import AFedPG, MaleniaNIGT, RennalaNIGT, SynchronizedNIGT
from sb3_nigt.backends.contract import WorkerError

from fault_envs import FaultyEnv
from helpers import SaveAndStop, processes_marked

ALGORITHMS = [RennalaNIGT, MaleniaNIGT, SynchronizedNIGT, AFedPG]
NIGT = [RennalaNIGT, MaleniaNIGT, SynchronizedNIGT]
SMALL = dict(horizon=5, seed=0, policy_kwargs=dict(net_arch=[8]))


class Rounds(BaseCallback):
    """Per round: the counts, the clock, and the communications and bytes it added."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: list[list[int]] = []
        self.clock: list = []
        self.communications: list[int] = []
        self.bytes: list[int] = []
        self._last = (0, 0)

    def _on_training_start(self) -> None:
        self._last = (self.model.n_communications, self.model.bytes_sent)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.counts.append([int(c) for c in self.model.last_counts])
        self.clock.append(self.model.simulated_time_exact)
        self.communications.append(self.model.n_communications - self._last[0])
        self.bytes.append(self.model.bytes_sent - self._last[1])
        self._last = (self.model.n_communications, self.model.bytes_sent)


def faulty(mode: str = "none", marker=None, **kwargs):
    return functools.partial(FaultyEnv, mode, None if marker is None else str(marker), **kwargs)


# ------------------------------------------------------------------------------------------ a worker that dies
@pytest.mark.timeout(120)
@pytest.mark.parametrize("algorithm", [RennalaNIGT, MaleniaNIGT, AFedPG])
def test_killed_worker_on_the_simulated_clock_changes_no_bit(algorithm, tmp_path):
    kwargs = dict(n_agents=3, compute_times=[1, 2, 3], round_size=6, **SMALL)
    reference = algorithm("MlpPolicy", faulty(), **kwargs).learn(400)
    marker = tmp_path / "kill"
    marker.touch()
    model = algorithm("MlpPolicy", faulty("kill", marker, at_step=47), backend="subprocess", n_workers=2, **kwargs)
    with pytest.warns(RuntimeWarning, match="lost"):
        model.learn(400)
    assert not marker.exists()  # the worker really died
    np.testing.assert_array_equal(model.get_flat_params(), reference.get_flat_params())
    assert model.simulated_time_exact == reference.simulated_time_exact


@pytest.mark.timeout(120)
def test_killed_worker_on_the_real_clock_keeps_every_count_right(tmp_path):
    marker = tmp_path / "kill"
    marker.touch()
    model = RennalaNIGT("MlpPolicy", faulty("kill", marker, at_step=30), n_agents=2, round_size=4, clock="real",
                        backend="subprocess", n_workers=2, **SMALL)
    rounds = Rounds()
    with pytest.warns(RuntimeWarning, match="lost"):
        model.learn(200, callback=rounds)
    assert not marker.exists()
    assert rounds.counts and all(sum(c) == 4 for c in rounds.counts)
    # Every counted gradient was summed: the aggregate is finite and the steps match the counts.
    assert model.num_timesteps == 5 * sum(sum(c) for c in rounds.counts)


@pytest.mark.timeout(120)
def test_hung_worker_is_declared_dead_after_the_timeout(tmp_path):
    kwargs = dict(n_agents=2, round_size=4, **SMALL)
    reference = RennalaNIGT("MlpPolicy", faulty(), **kwargs).learn(100)
    marker = tmp_path / "hang"
    marker.touch()
    model = RennalaNIGT("MlpPolicy", faulty("hang", marker, at_step=12), backend="subprocess", n_workers=2,
                        worker_timeout=2.0, **kwargs)
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="hung"):
        model.learn(100)
    assert time.monotonic() - start < 60
    np.testing.assert_array_equal(model.get_flat_params(), reference.get_flat_params())


@pytest.mark.timeout(120)
def test_repeated_failures_raise_and_leave_the_model_usable(tmp_path):
    model = RennalaNIGT("MlpPolicy", faulty("kill", always=True, at_step=3, spare_pid=os.getpid()), n_agents=2, round_size=4,
                        backend="subprocess", n_workers=1, max_failures=1, **SMALL)
    before = model.get_flat_params()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(WorkerError, match="max_failures"):
            model.learn(100)
    np.testing.assert_array_equal(model.get_flat_params(), before)
    assert model.simulated_time == 0 and model.momentum_buffer is None
    model.save(tmp_path / "m.zip")
    resumed = RennalaNIGT.load(tmp_path / "m.zip", env=faulty())  # the inline backend and a sound env
    resumed.backend = "inline"
    resumed.learn(40)
    assert resumed.n_rounds >= 1


# ------------------------------------------------------------------------------- one vector per agent per round
@pytest.mark.timeout(120)
@pytest.mark.parametrize("clock, backend", [("simulated", "inline"), ("simulated", "subprocess"), ("real", "subprocess"), ("real", "inline")])
def test_one_vector_per_contributing_agent_per_round(clock, backend):
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=3, compute_times=[1, 2, 3], round_size=6, clock=clock,
                        backend=backend, n_workers=2, **SMALL)
    rounds = Rounds()
    model.learn(150, callback=rounds)
    d = model.n_params
    for counts, communications, sent in zip(rounds.counts, rounds.communications, rounds.bytes):
        contributors = sum(c > 0 for c in counts)
        assert communications == 3 + contributors  # θ to each agent, one vector back per contributing agent
        assert sent == 3 * 4 * d + contributors * 8 * d


# ------------------------------------------------------------------------------------------------ large policies
@pytest.mark.timeout(300)
@pytest.mark.parametrize("clock", ["simulated", "real"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_million_parameters_never_block(algorithm, clock):
    model = algorithm("MlpPolicy", "Pendulum-v1", n_agents=2, round_size=2, horizon=3, seed=0, clock=clock,
                      backend="subprocess", n_workers=2, policy_kwargs=dict(net_arch=[1000, 1000]))
    assert model.n_params > 1_000_000
    start = time.monotonic()
    model.learn(30)
    assert model.num_timesteps >= 30
    assert time.monotonic() - start < 120


# ---------------------------------------------------------------------------------------------- a slow agent
@pytest.mark.timeout(120)
def test_a_slow_agent_does_not_throttle_the_others():
    def rate(h):
        model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=3, compute_times=h, round_size=4, horizon=3, seed=0,
                            clock="real", backend="subprocess", time_scale=0.02, policy_kwargs=dict(net_arch=[8]))
        rounds = Rounds()
        start = time.monotonic()
        model.learn(12 * 4 * 3, callback=rounds)
        return len(rounds.counts) / (time.monotonic() - start), rounds.counts

    fast, _ = rate([1, 1, 1])
    slow, counts = rate([1, 1, 20])
    assert slow >= (2 / 3) * fast * 0.8, (fast, slow)
    assert sum(c[2] for c in counts) <= 1  # the slow agent (20 × 20 ms a gradient) almost never contributes


# ------------------------------------------------------------------------------------------ mid-round checkpoints
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("at", [3, 20, 41, 57])  # in the initial round, at a round boundary, mid-round, ...
def test_checkpoint_written_mid_round_resumes_bit_identically(algorithm, at, tmp_path):
    kwargs = dict(n_agents=3, compute_times=[1, 2, 3], communication_times=[0.5, 0, 0.25], round_size=4, **SMALL)
    total = 200
    reference = algorithm("MlpPolicy", "Pendulum-v1", **kwargs).learn(total)
    path = tmp_path / "checkpoint.zip"
    algorithm("MlpPolicy", "Pendulum-v1", **kwargs).learn(total, callback=SaveAndStop(at, path))
    resumed = algorithm.load(path, env="Pendulum-v1")
    assert resumed.num_timesteps == at
    resumed.learn(total - resumed.num_timesteps, reset_num_timesteps=False)
    np.testing.assert_array_equal(resumed.get_flat_params(), reference.get_flat_params())
    np.testing.assert_array_equal(resumed.momentum_buffer, reference.momentum_buffer)
    assert resumed.simulated_time_exact == reference.simulated_time_exact
    assert resumed.num_timesteps == reference.num_timesteps


# --------------------------------------------------------------------------------------------------- SIGTERM
@pytest.mark.timeout(120)
@pytest.mark.parametrize("call", ["model.learn(10**9)", "model.estimate_gradient(n_rounds=10)"])
def test_sigterm_leaves_no_process_behind(tmp_path, call):
    # The workers are stuck in an env.step that never returns, so they would never notice the main process dying:
    # only learn()'s / estimate_gradient()'s own clean-up on SIGTERM ends them.
    marker = f"SB3_NIGT_TEST_{uuid.uuid4().hex}"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import functools
        from contract_envs import SleepyEnv
        from sb3_nigt import RennalaNIGT
        if __name__ == "__main__":
            model = RennalaNIGT("MlpPolicy", functools.partial(SleepyEnv), n_agents=2, backend="subprocess", n_workers=2, seed=0,
                                horizon=5, policy_kwargs=dict(net_arch=[8]))
            print("started", flush=True)
            {call}
    """))
    env = dict(os.environ, SB3_NIGT_MARKER=marker)
    process = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "started"
        time.sleep(4)  # the workers are up and stuck
        assert len(processes_marked(marker)) >= 3  # the script, its workers (and the fork server)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while processes_marked(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_marked(marker) == []
    finally:
        if process.poll() is None:
            process.kill()
        for pid in processes_marked(marker):
            os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------------------------ outages
def test_rennala_goes_on_without_an_agent_that_disconnects():
    # h = (1, 1), κ = 0, M = 4. Round 0: both agents finish at 1 and 2: (2, 2), ends at 2. Agent 1 is gone from
    # 2.5 on: in round 1 its gradient [2, 3) is lost, and agent 0 alone finishes at 3, 4, 5, 6: (4, 0), ends at 6.
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[1, 1], round_size=4, outages={1: 2.5},
                        record_trace=True, **SMALL)
    rounds = Rounds()
    model.learn(4 * 5 * 3, callback=rounds)
    assert rounds.counts == [[2, 2], [4, 0], [4, 0]]
    assert rounds.clock == [2, 6, 10]
    downs = [(e.agent, e.start) for e in model.trace if e.status == "down"]
    assert downs[0] == (1, Fraction(5, 2))


def test_an_outage_loses_the_gradients_an_agent_held():
    # h = (1, 1), M = 6, agent 1 down during [2.5, 3.5). Counted by t = 2: 0@1, 1@1, 0@2, 1@2. At 2.5 agent 1 goes
    # down: its in-flight gradient and its two counted, unsent gradients are lost (uncounted). Agent 0 finishes at
    # 3, 4, 5; agent 1 is back at 3.5 and finishes at 4.5. Counts (5, 1): 0@1, 0@2, 0@3, 0@4, 1@4.5, 0@5. Ends at 5.
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[1, 1], round_size=6, outages={1: [(2.5, 3.5)]},
                        record_trace=True, **SMALL)
    rounds = Rounds()
    model.learn(1, callback=rounds)
    assert rounds.counts == [[5, 1]]
    assert rounds.clock == [5]
    lost = [(e.agent, e.index) for e in model.trace if e.kind == "compute" and e.status == "abandoned"]
    assert (1, 0) in lost and (1, 1) in lost and (1, 2) in lost


def test_synchronized_and_malenia_wait_for_an_agent_that_comes_back():
    # h = (1, 1), agent 1 down during [0.5, 3): its first gradient is lost; back at 3, it finishes at 4.
    sync = SynchronizedNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[1, 1], outages={1: [(0.5, 3)]}, **SMALL)
    rounds = Rounds()
    sync.learn(1, callback=rounds)
    assert rounds.counts == [[1, 1]] and rounds.clock == [4]
    # Malenia, S = 2: stops once both have M_i >= 1 — at 4, where agent 0 has finished 4 (the tie goes to it).
    malenia = MaleniaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[1, 1], round_size=2, outages={1: [(0.5, 3)]}, **SMALL)
    rounds = Rounds()
    malenia.learn(1, callback=rounds)
    assert rounds.counts == [[4, 1]] and rounds.clock == [4]


def test_an_agent_gone_for_good_stops_malenia_with_a_clear_error():
    model = MaleniaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[1, 1], round_size=2, outages={1: 0.5}, **SMALL)
    with pytest.raises(RuntimeError, match=r"agents \[1\] are down for good"):
        model.learn(1)


def test_bad_outages_are_refused():
    for outages, match in [({5: 1.0}, "outages"), ({0: [(2, 1)]}, "outages"), ({0: -1.0}, "outages"), ({0: [(math.nan, 1)]}, "outages")]:
        with pytest.raises(ValueError, match=match):
            RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, outages=outages)
    with pytest.raises(ValueError, match="outages"):
        RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, outages={0: 1.0}, clock="real")
    with pytest.raises(ValueError, match="outages"):
        AFedPG("MlpPolicy", "Pendulum-v1", n_agents=2, outages={0: 1.0})


# ------------------------------------------------------------------------------------------------------- scale
def test_the_vectorized_planner_equals_the_event_loop():
    # With record_trace the clock plays every event; without it, a Rennala round with constant times is planned
    # with NumPy. Both must give the same bits, the same exact clock and the same work counters.
    rng = np.random.default_rng(3)
    for case in range(6):
        n, m = int(rng.integers(64, 200)), int(rng.integers(1, 90))
        h = rng.choice([0.5, 1.0, 1.5, 0.1, 0.3], n).tolist() if case % 2 else "sqrt"
        kappa = rng.choice([0.0, 0.2, 0.5], n).tolist() if case % 3 else "sqrt"
        runs = []
        for trace in (False, True):
            model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=n, compute_times=h, communication_times=kappa, round_size=m,
                                horizon=2, seed=0, record_trace=trace, policy_kwargs=dict(net_arch=[4]))
            model.learn(2 * m * 2)
            runs.append((model.get_flat_params(), model.simulated_time_exact, model.time_counters))
        np.testing.assert_array_equal(runs[0][0], runs[1][0])
        assert runs[0][1] == runs[1][1]
        assert runs[0][2] == runs[1][2]
