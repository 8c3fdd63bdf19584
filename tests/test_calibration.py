"""Times from a real run (docs/calibration.md): the trace's measured column, TraceTimes' replay and resample
against exact hand arithmetic, bad traces, the CSV, a real-clock subprocess run, save/load and the command lines."""

from __future__ import annotations

import math
import multiprocessing as mp
from fractions import Fraction

import numpy as np
import pytest

from sb3_nigt import RennalaNIGT, SynchronizedNIGT, TraceTimes
from sb3_nigt.clock.calibration import RecordedTimes
from sb3_nigt.clock.timing import TimeCounters, TimingModel
from sb3_nigt.clock.trace import COLUMNS_WITHOUT_MEASURED, TraceEvent
from sb3_nigt.timeline import read_trace_csv, write_trace_csv

E = TraceEvent
SMALL = dict(horizon=10, seed=0)


def exact(x: float) -> Fraction:
    """A float as the decimal it prints as (how the clock reads a recorded float)."""
    return Fraction(repr(float(x)))


def rounds_of(trace: list) -> list[tuple]:
    """(start, end, {agent: M_i}) of every round of a simulated-clock trace, times exact."""
    out = []
    for r in sorted({e.round for e in trace}):
        events = [e for e in trace if e.round == r]
        counts: dict[int, int] = {}
        for e in events:
            if e.kind == "compute" and e.status == "counted":
                counts[e.agent] = counts.get(e.agent, 0) + 1
        out.append((min(e.start for e in events), max(e.end for e in events if e.kind == "upload"), counts))
    return out


def reference_rennala(compute, communication, sizes, aligned=None):
    """Rounds of Rennala NIGT by hand, in Fractions: each agent receives θ after its next transfer time, computes
    gradients back to back (the k-th draw of agent i is compute[i][k % len]), the round stops at the M-th finish (no
    ties in the data), every agent that has a gradient in flight at the stop (not the one that finished last) has
    used one draw more, and each contributing agent uploads from the stop. ``aligned``: (compute starts,
    communication starts) per round, where each round's draws begin (replay aligned by round)."""
    n = len(compute)
    draw_c, draw_k = [0] * n, [0] * n
    start, out = Fraction(0), []
    for r, m in enumerate(sizes):
        if aligned is not None:
            starts_c, starts_k = aligned
            cycle, pos = divmod(r, len(starts_c))
            draw_c = [cycle * len(compute[i]) + starts_c[pos][i] for i in range(n)]
            draw_k = [cycle * len(communication[i]) + starts_k[pos][i] for i in range(n)]
        arrive = []
        for i in range(n):
            arrive.append(start + exact(communication[i][draw_k[i] % len(communication[i])]))
            draw_k[i] += 1
        finishes = []
        for i in range(n):
            t = arrive[i]
            for j in range(4 * m + 4):
                t += exact(compute[i][(draw_c[i] + j) % len(compute[i])])
                finishes.append((t, i))
        finishes.sort()
        stop, stopper = finishes[m - 1]
        counts = {}
        for _, i in finishes[:m]:
            counts[i] = counts.get(i, 0) + 1
        for i in range(n):
            last = max([t for t, a in finishes[:m] if a == i], default=arrive[i])
            draw_c[i] += counts.get(i, 0) + (1 if i != stopper and last < stop else 0)
        end = stop
        for i in sorted(counts):
            end = max(end, stop + exact(communication[i][draw_k[i] % len(communication[i])]))
            draw_k[i] += 1
        out.append((start, end, counts))
        start = end
    return out


COMPUTE = [[0.3, 0.1, 0.7, 0.2], [0.45, 0.65]]
COMMUNICATION = [[0.05, 0.01, 0.02], [0.1]]


def test_replay_rounds_equal_exact_hand_arithmetic():
    times = TraceTimes(COMPUTE, COMMUNICATION)
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, round_size=3, compute_times=times.compute,
                        communication_times=times.communication, record_trace=True, **SMALL)
    model.learn(6 * 3 * 10)
    got = rounds_of(model.trace)
    expected = reference_rennala(COMPUTE, COMMUNICATION, [sum(c.values()) for _, _, c in got])
    assert len(got) >= 5
    assert [(s, e, c) for s, e, c in got] == expected  # ExactTime == Fraction: exact, not approximate


def test_replay_aligned_by_round_restarts_each_round_where_its_recording_does():
    starts = ([[0, 0], [2, 1]], [[0, 0], [1, 0]])
    times = TraceTimes(COMPUTE, COMMUNICATION, rounds=(0, *starts))
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, round_size=3, compute_times=times.compute,
                        communication_times=times.communication, record_trace=True, **SMALL)
    model.learn(5 * 3 * 10)
    got = rounds_of(model.trace)
    assert got == reference_rennala(COMPUTE, COMMUNICATION, [sum(c.values()) for _, _, c in got], aligned=starts)
    assert got != reference_rennala(COMPUTE, COMMUNICATION, [sum(c.values()) for _, _, c in got])  # it matters here


def test_replay_cycles_and_resample_draws_seeded_from_the_agents_durations():
    times = TraceTimes(COMPUTE, COMMUNICATION)
    assert [times.compute(0, 0.0, k) for k in range(6)] == [0.3, 0.1, 0.7, 0.2, 0.3, 0.1]
    assert [times.communication(1, 5.0, k) for k in range(3)] == [0.1] * 3
    drawn = TraceTimes(COMPUTE, COMMUNICATION, mode="resample", seed=3)
    values = [drawn.compute(0, 0.0, k) for k in range(200)]
    assert set(values) == set(COMPUTE[0])  # only recorded durations, each of them drawn
    assert values == [drawn.compute(0, 123.0, k) for k in range(200)]  # a function of (agent, counter) only
    assert values == [TraceTimes(COMPUTE, COMMUNICATION, mode="resample", seed=3).compute(0, 0.0, k) for k in range(200)]
    assert values != [TraceTimes(COMPUTE, COMMUNICATION, mode="resample", seed=4).compute(0, 0.0, k) for k in range(200)]
    counters = TimeCounters([5, 5], [5, 5])
    TimingModel(2, times.compute, times.communication).begin_round(3, counters)
    assert counters == TimeCounters([5, 5], [5, 5])  # no recorded rounds: the counters are left alone


def real_like_trace() -> list[TraceEvent]:
    """Two rounds of two agents as a real clock records them (measured durations)."""
    return [
        E(0, 0, "broadcast", -1, 0.0, 0.02, "sent", 0.02), E(0, 1, "broadcast", -1, 0.0, 0.03, "sent", 0.03),
        E(0, 0, "compute", 0, 0.02, 0.12, "counted", 0.1), E(0, 0, "compute", 1, 0.12, 0.22, "counted", 0.1),
        E(0, 1, "compute", 0, 0.03, 0.25, "counted", 0.22),
        E(0, 0, "upload", -1, 0.25, 0.27, "sent", 0.02), E(0, 1, "upload", -1, 0.25, 0.29, "sent", 0.04),
        E(1, 0, "broadcast", -1, 0.29, 0.31, "sent", 0.02), E(1, 1, "broadcast", -1, 0.29, 0.33, "sent", 0.04),
        E(1, 0, "compute", 0, 0.31, 0.42, "counted", 0.11), E(1, 0, "compute", 1, 0.42, 0.53, "counted", 0.11),
        E(1, 0, "compute", 2, 0.53, 0.64, "counted", 0.11),
        E(1, 1, "compute", 0, 0.33, 0.56, "counted", 0.23), E(1, 1, "compute", 1, 0.56, 0.70, "abandoned", 0.2),
        E(1, 0, "upload", -1, 0.64, 0.66, "sent", 0.02), E(1, 1, "upload", -1, 0.64, 0.67, "sent", 0.03),
    ]


def test_from_trace_lays_out_the_draws_as_the_simulated_clock_takes_them():
    times = TraceTimes.from_trace(real_like_trace())
    # Round 0: agent 0 counted 2 and is in flight at the stop (0.25): 0.25 - 0.22 s run, plus 0.11, the
    # median of its measured 0.1, 0.1, 0.11, 0.11, 0.11 (modelled); agent 1 stopped the round. Round 1: agent 0
    # stopped it; agent 1's in-flight gradient was measured.
    assert times.compute.durations[0] == pytest.approx((0.1, 0.1, 0.25 - 0.22 + 0.11, 0.11, 0.11, 0.11))
    assert times.compute.durations[1] == (0.22, 0.23, 0.2)
    assert times.compute.pool == ((0.1, 0.1, 0.11, 0.11, 0.11), (0.22, 0.23, 0.2))  # measured only
    assert times.communication.durations == ((0.02, 0.02, 0.02, 0.02), (0.03, 0.04, 0.04, 0.03))
    assert times.compute.starts == ((0, 0), (3, 1)) and times.communication.starts == ((0, 0), (2, 2))
    counters = TimeCounters([9, 9], [9, 9])
    TimingModel(2, times.compute, times.communication).begin_round(3, counters)  # round 3 = recorded round 1, 2nd cycle
    assert counters == TimeCounters([6 + 3, 3 + 1], [4 + 2, 4 + 2])


def test_arrivals_time_each_gradient_from_the_previous_arrival():
    times = TraceTimes.from_trace(real_like_trace(), gradients="arrivals")
    # Agent 0, round 1: its first gradient keeps its worker's 0.11 s; the next ones last from arrival to arrival.
    assert times.compute.durations[0][3:] == pytest.approx((0.11, 0.53 - 0.42, 0.64 - 0.53))
    # Agent 1, round 1: the measured in-flight gradient lasts from its counted one's arrival (0.56) to its own (0.70).
    assert times.compute.durations[1] == pytest.approx((0.22, 0.23, 0.70 - 0.56))
    assert times.communication == TraceTimes.from_trace(real_like_trace()).communication
    with pytest.raises(ValueError, match="gradients: must be one of 'worker', 'arrivals'"):
        TraceTimes.from_trace(real_like_trace(), gradients="server")


def test_csv_round_trip_keeps_the_measured_column_and_reads_old_files(tmp_path):
    trace = real_like_trace()
    path = write_trace_csv(trace, tmp_path / "trace.csv", algorithm="rennala")
    rows = read_trace_csv(path)
    assert [r["measured"] for r in rows] == [e.measured for e in trace]
    from_csv = TraceTimes.read_csv(path)
    from_trace = TraceTimes.from_trace(trace)
    assert from_csv.compute == from_trace.compute and from_csv.communication == from_trace.communication
    assert TraceTimes.from_trace(rows).compute == from_trace.compute
    # A file written before the measured column: every duration is end - start.
    old = tmp_path / "old.csv"
    old.write_text(",".join(COLUMNS_WITHOUT_MEASURED) + "\n" + "\n".join(
        ",".join(map(str, e.as_row("sync")[:-1])) for e in trace) + "\n")
    assert [r["measured"] for r in read_trace_csv(old)] == [None] * len(trace)
    assert TraceTimes.read_csv(old).communication.durations[1] == pytest.approx((0.03, 0.04, 0.04, 0.03))
    both = write_trace_csv({"a": trace, "b": trace}, tmp_path / "both.csv")
    with pytest.raises(ValueError, match="algorithm: .* holds the traces of 'a', 'b'"):
        TraceTimes.read_csv(both)
    assert TraceTimes.read_csv(both, algorithm="b").compute == from_trace.compute


@pytest.mark.parametrize("build, message", [
    (lambda: TraceTimes([[0.1], [0.2]], [[0.0], [0.0]], mode="shuffle"), "mode: must be one of 'replay', 'resample'"),
    (lambda: TraceTimes([[0.1], []], [[0.0], [0.0]]), "compute: agent 1 has no recorded gradient"),
    (lambda: TraceTimes([[0.1], [-0.2]], [[0.0], [0.0]]), "compute: agent 1's durations must be finite, > 0"),
    (lambda: TraceTimes([[0.1], [math.nan]], [[0.0], [0.0]]), "compute: agent 1's durations must be finite"),
    (lambda: TraceTimes([[0.1], [math.inf]], [[0.0], [0.0]]), "compute: agent 1's durations must be finite"),
    (lambda: TraceTimes([[0.1], [0.2]], [[0.0], [-1.0]]), "communication: agent 1's durations must be finite, >= 0"),
    (lambda: TraceTimes([[0.1], [0.2]], [[0.0]]), "communication: expected 2 agents"),
    (lambda: TraceTimes([[0.1]], [[0.0]], seed=-1), "seed: must be an int >= 0"),
    (lambda: TraceTimes.from_trace([]), "trace: no event"),
    (lambda: TraceTimes.from_trace([e for e in real_like_trace() if not (e.agent == 1 and e.kind == "compute")]),
     r"trace: agents \[1\] have no recorded gradient"),
    (lambda: TraceTimes.from_trace([E(0, 0, "compute", 0, 0.0, 0.1, "counted", -0.5)] + real_like_trace()[7:]),
     "compute: agent 0's durations must be finite, > 0"),
    (lambda: TraceTimes.from_trace([{"round": 0, "agent": 0}]), "trace: an event must have the fields"),
])
def test_bad_traces_are_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_models_refuse_a_trace_with_fewer_agents_or_per_step_units():
    times = TraceTimes.from_trace(real_like_trace())
    with pytest.raises(ValueError, match="compute_times: the trace records 2 agents, fewer than n_agents=3"):
        RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=3, compute_times=times.compute, **SMALL)
    with pytest.raises(ValueError, match="communication_times: the trace records 2 agents, fewer than n_agents=3"):
        RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=3, communication_times=times.communication, **SMALL)
    with pytest.raises(ValueError, match="compute_times: recorded times are seconds per gradient"):
        RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=times.compute, compute_time_unit="step", **SMALL)
    RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=1, compute_times=times.compute, **SMALL)  # a subset is fine


def test_bad_csv_files(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("round,agent\n0,0\n")
    with pytest.raises(ValueError, match="expected the header"):
        TraceTimes.read_csv(bad)
    path = write_trace_csv(real_like_trace(), tmp_path / "t.csv")
    path.write_text(path.read_text().replace("0.22,counted,0.1", "0.22,counted,x"))
    with pytest.raises(ValueError, match="line 5"):
        TraceTimes.read_csv(path)
    with pytest.raises(FileNotFoundError):
        TraceTimes.read_csv(tmp_path / "missing.csv")


def test_save_and_load_round_trip(tmp_path):
    times = TraceTimes.from_trace(real_like_trace(), mode="resample", seed=7)
    kwargs = dict(n_agents=2, round_size=3, compute_times=times.compute, communication_times=times.communication, **SMALL)
    straight = RennalaNIGT("MlpPolicy", "Pendulum-v1", **kwargs)
    straight.learn(120)
    straight.learn(120, reset_num_timesteps=False)
    first = RennalaNIGT("MlpPolicy", "Pendulum-v1", **kwargs)
    first.learn(120)
    first.save(tmp_path / "model.zip")
    loaded = RennalaNIGT.load(tmp_path / "model.zip", env="Pendulum-v1")
    assert isinstance(loaded.compute_times, RecordedTimes) and loaded.compute_times == times.compute
    assert loaded.communication_times == times.communication
    loaded.learn(120, reset_num_timesteps=False)
    assert loaded.simulated_time == straight.simulated_time
    assert np.array_equal(loaded.get_flat_params(), straight.get_flat_params())


def test_real_subprocess_run_records_measured_times_that_replay():
    # Synchronized NIGT, 2 agents, emulated h = (30, 60) ms and κ = 10 ms: each measured duration is at least
    # its emulated sleep (a lower bound, not a timing target).
    model = SynchronizedNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[0.03, 0.06], communication_times=0.01,
                             clock="real", backend="subprocess", time_scale=1.0, record_trace=True, horizon=5, seed=0)
    model.learn(3 * 2 * 5)
    model.close()
    assert not mp.active_children()
    trace = model.trace
    assert trace and all(e.measured is not None for e in trace)
    for e in trace:  # a gradient is timed on its worker, which sleeps at least h_i
        assert e.kind != "compute" or e.measured >= (0.03, 0.06)[e.agent] * 0.99, e
        assert math.isclose(float(e.end) - float(e.start), e.measured, rel_tol=1e-9, abs_tol=1e-9) or e.kind == "broadcast"
    for r in {e.round for e in trace}:  # transfers are timed on the main process; each agent's round trip is whole
        for agent in (0, 1):
            trip = sum(e.measured for e in trace if e.round == r and e.agent == agent)
            assert trip >= (0.01 + (0.03, 0.06)[agent] + 0.01) * 0.99, (r, agent, trip)
    times = TraceTimes.from_trace(trace)
    replay = SynchronizedNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=times.compute,
                              communication_times=times.communication, record_trace=True, horizon=5, seed=0)
    replay.learn(3 * 2 * 5)
    assert [c for _, _, c in rounds_of(replay.trace)] == [c for _, _, c in rounds_of(trace)]
    # Each agent's broadcast, gradient and upload are measured on the main process's clock in a round of
    # Synchronized NIGT, so the replayed rounds end where the real ones did (up to float rounding).
    assert replay.simulated_time == pytest.approx(model.simulated_time, rel=1e-9)


def test_compare_times_from(tmp_path, capsys):
    from sb3_nigt import compare

    path = write_trace_csv(real_like_trace(), tmp_path / "trace.csv", algorithm="rennala")
    out = compare.main(["--env", "Pendulum-v1", "--algorithms", "rennala", "sync", "--seeds", "0", "--timesteps", "200",
                        "--n-agents", "2", "--horizon", "10", "--batch-size", "3", "--threshold=-1e9",
                        "--times-from", str(path), "--out", str(tmp_path / "out")])
    assert set(out["medians"]) == {"rennala", "sync"}
    args = compare.parse_args(["--times-from", str(path), "--n-agents", "2", "--times-mode", "resample"])
    assert isinstance(args.compute, RecordedTimes) and args.compute.mode == "resample"
    for argv, message in [(["--n-agents", "3"], "fewer than n_agents=3"),
                          (["--n-agents", "2", "--compute-times", "1"], "drop --compute-times")]:
        with pytest.raises(SystemExit):
            compare.parse_args(["--times-from", str(path), *argv])
        assert message in capsys.readouterr().err


def test_experiment_times_from_replaces_the_times_and_checks_the_agents(tmp_path):
    import dataclasses

    from sb3_nigt.experiments.registry import EXPERIMENTS, with_trace_times
    from sb3_nigt.experiments.runner import RunSpec, build_model

    path = str(write_trace_csv(real_like_trace(), tmp_path / "trace.csv"))
    experiment = dataclasses.replace(EXPERIMENTS["decreasing"].smoke(), n_agents=(2,))
    recorded = with_trace_times(experiment, path)
    assert recorded.times_from == path
    assert recorded.simulated_seconds == experiment.simulated_seconds  # the budget stays the experiment's
    model = build_model(recorded, RunSpec("decreasing", "report", "rennala", 2, 0.01, 0, 10.0, 4))
    first = [Fraction(float(model.timing.compute_time(agent))) for agent in range(2)]
    assert first == [Fraction(durations[0]) for durations in COMPUTE_OF_TRACE]  # each agent's first recorded h_i
    with pytest.raises(ValueError, match="--times-from: .* records 2 agents"):
        with_trace_times(EXPERIMENTS["decreasing"], path)


COMPUTE_OF_TRACE = TraceTimes.from_trace(real_like_trace()).compute.durations
