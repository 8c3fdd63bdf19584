"""The comparison runner (python -m sb3_nigt.compare): tidy CSV, summary, plot, per-algorithm overrides."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from sb3_nigt import compare


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_compare_writes_tidy_results_summary_and_plot(tmp_path, capsys):
    out = compare.main([
        "--env", "Pendulum-v1", "--algorithms", "rennala", "sync", "afedpg", "--scenario", "comm", "--seeds", "0", "1",
        "--timesteps", "600", "--n-agents", "3", "--horizon", "20", "--threshold=-1e9", "--out", str(tmp_path),
        "--set", "afedpg:learning_rate=0.001",
    ])
    rows = read(tmp_path / "results.csv")
    assert list(rows[0]) == compare.COLUMNS
    assert {r["algorithm"] for r in rows} == {"rennala", "sync", "afedpg"}
    assert {r["seed"] for r in rows} == {"0", "1"}
    for name in ("rennala", "sync", "afedpg"):
        seconds = [float(r["simulated_seconds"]) for r in rows if r["algorithm"] == name and r["seed"] == "0"]
        assert seconds == sorted(seconds) and seconds[-1] > 0
    summary = read(tmp_path / "summary.csv")
    assert len(summary) == 6
    # A threshold below any return is reached at the first recorded round.
    first = {(r["algorithm"], r["seed"]): float(r["simulated_seconds"]) for r in reversed(rows)}
    for r in summary:
        assert float(r["seconds_to_threshold"]) == first[(r["algorithm"], r["seed"])]
    assert (tmp_path / "returns.png").stat().st_size > 10_000
    assert "time to reach return" in capsys.readouterr().out
    assert set(out["medians"]) == {"rennala", "sync", "afedpg"}


def test_sync_rounds_in_the_runner_cost_the_slowest_agent(tmp_path):
    compare.main([
        "--env", "Pendulum-v1", "--algorithms", "sync", "--scenario", "heterogeneous", "--seeds", "0", "--timesteps", "300",
        "--n-agents", "4", "--horizon", "10", "--out", str(tmp_path),
    ])
    seconds = np.array([float(r["simulated_seconds"]) for r in read(tmp_path / "results.csv")])
    np.testing.assert_allclose(np.diff(seconds), 2.0)  # h_4 = √4 = 2 s per round


def test_unreached_threshold_is_reported_as_never(tmp_path):
    out = compare.main([
        "--env", "Pendulum-v1", "--algorithms", "rennala", "--seeds", "0", "--timesteps", "200", "--n-agents", "2",
        "--horizon", "10", "--threshold", "1e9", "--out", str(tmp_path),
    ])
    assert out["medians"]["rennala"] == float("inf")
    assert read(tmp_path / "summary.csv")[0]["seconds_to_threshold"] == "nan"


@pytest.mark.parametrize("item", ["rennala:learning_rate", "nope:learning_rate=1", "learning_rate=1"])
def test_bad_override_is_a_clear_error(item):
    with pytest.raises(ValueError, match="--set"):
        compare.parse_overrides([item])


def test_normalize_and_heterogeneous_envs(tmp_path):
    with pytest.warns(UserWarning, match="speed-weighted"):  # Rennala on different environments
        out = compare.main([
            "--env", "Pendulum-v1", "--normalize", "--heterogeneous-envs", "--algorithms", "malenia", "rennala",
            "--seeds", "0", "--timesteps", "300", "--n-agents", "2", "--horizon", "10", "--out", str(tmp_path),
        ])
    assert {row[0] for row in out["summary"]} == {"malenia", "rennala"}
    assert {r["algorithm"] for r in read(tmp_path / "results.csv")} == {"malenia", "rennala"}


def test_deterministic_evaluation_is_the_default_metric(tmp_path):
    out = compare.main([
        "--env", "Pendulum-v1", "--algorithms", "rennala", "--seeds", "0", "--timesteps", "1000", "--n-agents", "2",
        "--horizon", "10", "--eval-episodes", "1", "--eval-every", "30", "--threshold=-1e9", "--out", str(tmp_path),
    ])
    rows = read(tmp_path / "results.csv")
    evaluated = [r for r in rows if r["eval_return"] != "nan"]
    assert 2 <= len(evaluated) < len(rows)  # every 30 simulated seconds (rounds take 12 s), not every round
    assert float(evaluated[0]["eval_return"]) < -100  # Pendulum's full 200-step episodes, not 10-step trajectories
    summary = read(tmp_path / "summary.csv")[0]
    assert float(summary["final_return"]) == float(evaluated[-1]["eval_return"])
    assert out["medians"]["rennala"] == float(evaluated[0]["simulated_seconds"])


def test_eval_metric_needs_episodes(tmp_path):
    with pytest.raises(ValueError, match="--eval-episodes"):
        compare.main(["--env", "Pendulum-v1", "--metric", "eval", "--out", str(tmp_path)])


def test_several_thresholds(tmp_path):
    out = compare.main([
        "--env", "Pendulum-v1", "--algorithms", "rennala", "sync", "--seeds", "0", "--timesteps", "300", "--n-agents", "2",
        "--horizon", "10", "--threshold", "-100000", "100000", "--out", str(tmp_path),
    ])
    assert set(out["medians_by_threshold"]) == {-100000.0, 100000.0}
    assert all(m == float("inf") for m in out["medians_by_threshold"][100000.0].values())
    summary = read(tmp_path / "summary.csv")
    assert len(summary) == 4 and {r["threshold"] for r in summary} == {"-100000.0", "100000.0"}


# ---------------------------------------------------------------------------------------------- the paper's settings
def spy(monkeypatch, name):
    """Replace ALGORITHMS[name] by a subclass that records the keyword arguments of every construction."""
    seen = []
    base = compare.ALGORITHMS[name]

    class Spy(base):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setitem(compare.ALGORITHMS, name, Spy)
    return seen


def forbid_runs(monkeypatch):
    """Make every algorithm's construction fail, to show that errors come before the first run."""
    for name, base in list(compare.ALGORITHMS.items()):
        class Refuse(base):  # a subclass, so that --set keys are still checked against the real constructor
            def __init__(self, *args, **kwargs):
                raise AssertionError("a run started before the command line was checked")

        monkeypatch.setitem(compare.ALGORITHMS, name, Refuse)


def round_seconds(path, algorithm=None):
    rows = read(path / "results.csv")
    return np.array([float(r["simulated_seconds"]) for r in rows if algorithm is None or r["algorithm"] == algorithm])


TINY = ["--env", "Pendulum-v1", "--seeds", "0", "--timesteps", "200", "--horizon", "10"]


@pytest.mark.parametrize("argv, compute, communication", [
    (["--n-agents", "2", "--compute-times", "1", "10"], [1.0, 10.0], 0.0),
    (["--n-agents", "3", "--compute-times", "2.5"], [2.5, 2.5, 2.5], 0.0),
    (["--n-agents", "3", "--compute-times", "sqrt", "--communication-times", "expensive"], "sqrt", "expensive"),
    (["--n-agents", "2", "--scenario", "comm", "--compute-times", "equal"], "equal", "sqrt"),
    (["--n-agents", "2", "--scenario", "expensive-comm", "--communication-times", "0", "0.5"], "sqrt", [0.0, 0.5]),
    (["--n-agents", "2", "--communication-times", "zero"], "sqrt", "zero"),
    (["--n-agents", "3", "--scenario", "equal"], "equal", 0.0),
])
def test_compute_and_communication_times_override_the_scenario(argv, compute, communication):
    args = compare.parse_args(argv)
    assert args.compute == compute and args.communication == communication


@pytest.mark.parametrize("argv, message", [
    (["--n-agents", "2", "--compute-times", "1", "2", "3"], "--compute-times: expected one preset, one float or n = 2"),
    (["--n-agents", "3", "--communication-times", "1", "2"], "--communication-times: expected one preset"),
    (["--n-agents", "2", "--compute-times", "0"], "> 0"),
    (["--n-agents", "2", "--compute-times", "1", "-1"], "> 0"),
    (["--n-agents", "2", "--compute-times", "nan"], "finite"),
    (["--n-agents", "2", "--compute-times", "inf", "1"], "finite"),
    (["--n-agents", "2", "--communication-times", "-0.5"], ">= 0"),
    (["--n-agents", "2", "--communication-times", "1", "nan"], "finite"),
    (["--n-agents", "2", "--compute-times", "zero"], "neither a preset"),  # not a compute preset
    (["--n-agents", "2", "--compute-times", "expensive"], "neither a preset"),
    (["--n-agents", "2", "--communication-times", "fast"], "neither a preset"),
    (["--n-agents", "2", "--compute-times", "sqrt", "1"], "neither a preset"),
    (["--n-agents", "0"], "--n-agents"),
])
def test_bad_times_are_argparse_errors_before_any_run(monkeypatch, tmp_path, capsys, argv, message):
    forbid_runs(monkeypatch)
    with pytest.raises(SystemExit) as error:
        compare.main(TINY + argv + ["--out", str(tmp_path)])
    assert error.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results.csv").exists()


def test_app_h3_setting_runs_with_explicit_compute_times(tmp_path, monkeypatch):
    seen = spy(monkeypatch, "sync")
    compare.main(TINY + ["--heterogeneous-envs", "--n-agents", "2", "--compute-times", "1", "10", "--algorithms", "sync",
                         "--out", str(tmp_path)])
    assert seen[0]["compute_times"] == [1.0, 10.0] and seen[0]["communication_times"] == 0.0
    np.testing.assert_allclose(np.diff(round_seconds(tmp_path)), 10.0)  # every round waits for the 10 s agent


def test_one_float_is_the_same_time_for_every_agent(tmp_path):
    compare.main(TINY + ["--n-agents", "3", "--compute-times", "3", "--algorithms", "sync", "--out", str(tmp_path)])
    np.testing.assert_allclose(np.diff(round_seconds(tmp_path)), 3.0)


def test_communication_times_reach_the_clock(tmp_path):
    compare.main(TINY + ["--n-agents", "2", "--compute-times", "1", "--communication-times", "0.5", "2",
                         "--algorithms", "sync", "--out", str(tmp_path)])
    # One synchronized round: max_i (κ_i + h_i) + max_i κ_i = (2 + 1) + 2 s.
    np.testing.assert_allclose(np.diff(round_seconds(tmp_path)), 5.0)


def test_decreasing_scenario_times():
    np.testing.assert_allclose(compare.scenario_times("decreasing", 4)[0], [2.0, np.sqrt(3), np.sqrt(2), 1.0])
    args = compare.parse_args(["--scenario", "decreasing", "--n-agents", "3"])
    assert isinstance(args.compute, list) and all(isinstance(h, float) for h in args.compute)
    np.testing.assert_allclose(args.compute, [np.sqrt(3), np.sqrt(2), 1.0])
    assert args.communication == 0.0
    assert compare.scenario_times("decreasing", 1) == ([1.0], 0.0)


def test_decreasing_is_heterogeneous_with_the_agents_relabelled(tmp_path, monkeypatch):
    seen = spy(monkeypatch, "rennala")
    common = TINY[:-4] + ["--timesteps", "400", "--horizon", "10", "--n-agents", "4", "--algorithms", "rennala", "sync",
                          "--batch-size", "3"]
    compare.main(common + ["--scenario", "decreasing", "--out", str(tmp_path / "decreasing")])
    compare.main(common + ["--scenario", "heterogeneous", "--out", str(tmp_path / "heterogeneous")])
    np.testing.assert_allclose(seen[0]["compute_times"], [2.0, np.sqrt(3), np.sqrt(2), 1.0])
    assert seen[1]["compute_times"] == "sqrt"
    # The same multiset of times: the same round ends and environment steps, whichever agent is slow.
    decreasing, heterogeneous = read(tmp_path / "decreasing" / "results.csv"), read(tmp_path / "heterogeneous" / "results.csv")
    assert len(decreasing) == len(heterogeneous)
    for column in ("simulated_seconds", "env_steps"):
        np.testing.assert_allclose([float(r[column]) for r in decreasing], [float(r[column]) for r in heterogeneous])
    np.testing.assert_allclose(np.diff(round_seconds(tmp_path / "decreasing", "sync")), 2.0)  # h_1 = √4


@pytest.mark.parametrize("text, value", [
    ("1,10", [1.0, 10.0]),
    ("[1, 10]", [1.0, 10.0]),
    ("(0.5, 2)", [0.5, 2.0]),
    ("1,inf", [1.0, float("inf")]),
    ("true", True), ("False", False), ("None", None), ("null", None),
    ("3", 3), ("-2", -2), ("0.5", 0.5), ("1e-3", 0.001), ("inf", float("inf")),
    ("sqrt", "sqrt"), ("'quoted'", "quoted"), ("MlpPolicy", "MlpPolicy"),
    ("{'net_arch': [8, 8]}", {"net_arch": [8, 8]}),
])
def test_set_values(text, value):
    parsed = compare.parse_value(text)
    assert parsed == value and type(parsed) is type(value)
    if isinstance(value, list):
        assert all(type(v) is float for v in parsed)


def test_set_lists_reach_the_algorithm(tmp_path, monkeypatch):
    seen = spy(monkeypatch, "sync")
    compare.main(TINY + ["--n-agents", "2", "--algorithms", "sync", "--set", "sync:compute_times=[1, 4]",
                         "--set", "sync:communication_times=0,0", "--out", str(tmp_path)])
    assert seen[0]["compute_times"] == [1.0, 4.0] and seen[0]["communication_times"] == [0.0, 0.0]
    np.testing.assert_allclose(np.diff(round_seconds(tmp_path)), 4.0)


@pytest.mark.parametrize("item, message", [
    ("nope:learning_rate=1", "unknown algorithm"),
    ("malenia:learning_rate=1", "not among --algorithms"),
    ("rennala:learning_rate", "expected ALGO:KEY=VALUE"),
    ("learning_rate=1", "expected ALGO:KEY=VALUE"),
    ("rennala:=1", "expected ALGO:KEY=VALUE"),
    ("rennala:learnin_rate=1", "no parameter 'learnin_rate'"),
    ("afedpg:not_a_parameter=1", "no parameter 'not_a_parameter'"),  # AFedPG takes **kwargs: checked up the classes
    ("rennala:env=CartPole-v1", "set by the runner"),
])
def test_bad_set_is_an_argparse_error_before_any_run(monkeypatch, tmp_path, capsys, item, message):
    forbid_runs(monkeypatch)
    with pytest.raises(SystemExit):
        compare.main(TINY + ["--algorithms", "rennala", "afedpg", "--set", "rennala:learning_rate=0.01", "--set", item,
                             "--out", str(tmp_path)])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("items, message", [
    (["rennala:n_agents=5"], "same value for every algorithm"),
    (["rennala:compute_times=1,2", "afedpg:compute_times=1,3"], "same value for every algorithm"),
    (["rennala:outages={0: 5.0}"], "same value for every algorithm"),
    (["rennala:compute_times=1,2", "afedpg:compute_times=1,2"], "expected 10 values"),  # n = 10 agents
])
def test_overrides_of_the_agents_must_be_shared_by_every_algorithm(monkeypatch, tmp_path, capsys, items, message):
    forbid_runs(monkeypatch)
    argv = TINY + ["--algorithms", "rennala", "afedpg", "--out", str(tmp_path)]
    for item in items:
        argv += ["--set", item]
    with pytest.raises(SystemExit):
        compare.main(argv)
    assert message in capsys.readouterr().err


def test_a_shared_override_of_the_agents_is_accepted(monkeypatch, tmp_path):
    forbid_runs(monkeypatch)
    args = compare.parse_args(TINY + ["--algorithms", "rennala", "afedpg", "--set", "rennala:n_agents=2",
                                      "--set", "afedpg:n_agents=2", "--set", "rennala:compute_times=1,10",
                                      "--set", "afedpg:compute_times=1,10", "--out", str(tmp_path)])
    assert args.override_map["rennala"]["n_agents"] == args.override_map["afedpg"]["n_agents"] == 2


def test_afedpg_overrides_are_checked_against_the_base_class():
    keys = compare.accepted_keys(compare.ALGORITHMS["afedpg"])
    assert {"momentum_schedule", "learning_rate", "compute_times"} <= keys


def test_one_hundred_agents(tmp_path):
    out = compare.main([
        "--env", "Pendulum-v1", "--n-agents", "100", "--scenario", "heterogeneous", "--algorithms", "rennala", "sync",
        "--seeds", "0", "--timesteps", "600", "--horizon", "5", "--threshold=-1e9", "--out", str(tmp_path),
    ])
    assert set(out["medians"]) == {"rennala", "sync"}
    sync = round_seconds(tmp_path, "sync")
    assert len(sync) >= 1 and sync[0] == pytest.approx(10.0)  # a round waits for h_100 = √100
    rennala = round_seconds(tmp_path, "rennala")
    assert len(rennala) >= 2 and rennala[0] < 10.0  # M = 20 gradients arrive long before the slowest agent's


def test_never_instead_of_nan_or_inf(tmp_path, capsys):
    compare.main(TINY + ["--n-agents", "2", "--algorithms", "rennala", "sync", "--threshold", "1e9", "-100000",
                         "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "never" in printed
    assert not re.search(r"\b(nan|inf)\b", printed.split("\nwrote ")[0], re.IGNORECASE)
    assert "1e+09: never" in printed  # the per-run line
    assert "1.00x Rennala NIGT's" in printed  # the reached threshold still has its ratio


def test_format_never():
    assert compare.format_seconds(float("nan")) == "never" == compare.format_seconds(float("inf"))
    assert compare.format_seconds(12.34) == "12.3 s"
    assert compare.format_ratio(float("inf"), 2.0, "Rennala NIGT") == "ratio never"
    assert compare.format_ratio(3.0, float("inf"), "Rennala NIGT") == "ratio never: Rennala NIGT never reached it"
    assert compare.format_ratio(3.0, 2.0, "Rennala NIGT") == "1.50x Rennala NIGT's"


def test_every_scenario_is_in_the_tables():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "baselines.md").read_text()
    section = docs.split("## The comparison runner", 1)[1]
    for scenario in compare.SCENARIOS:
        assert f"--scenario {scenario}" in compare.__doc__ and f"`{scenario}`" in section
    for text in ("√(n + 1 − i)", "√i · d^(1/4)", "--heterogeneous-envs --n-agents 2", "--compute-times 1 10"):
        assert text in compare.__doc__ and text in section


def test_timeline_of_the_first_seed(tmp_path, monkeypatch):
    from sb3_nigt.timeline import plot_timelines, write_trace_csv  # what main needs; a broken import fails here

    assert callable(plot_timelines) and callable(write_trace_csv)

    for algorithm in compare.ALGORITHMS.values():
        assert "record_trace" in compare.accepted_keys(algorithm), algorithm.__name__
    seen = spy(monkeypatch, "rennala")
    compare.main(["--env", "Pendulum-v1", "--seeds", "0", "1", "--timesteps", "300", "--horizon", "10", "--n-agents", "3",
                  "--algorithms", "rennala", "sync", "--batch-size", "4", "--timeline", "2", "--out", str(tmp_path)])
    assert seen[0].get("record_trace") is True and "record_trace" not in seen[1]  # the first seed only
    rows = read(tmp_path / "timeline.csv")
    assert {r["algorithm"] for r in rows} == {"rennala", "sync"}
    assert {int(r["round"]) for r in rows} == {0, 1}
    assert {r["kind"] for r in rows} >= {"compute"}
    assert (tmp_path / "timeline.png").stat().st_size > 5_000


def test_timeline_needs_a_positive_number_of_rounds(monkeypatch, tmp_path, capsys):
    forbid_runs(monkeypatch)
    with pytest.raises(SystemExit):
        compare.main(TINY + ["--timeline", "0", "--out", str(tmp_path)])
    assert "--timeline" in capsys.readouterr().err


def test_a_discrete_action_space_is_a_one_line_error_naming_env(monkeypatch, tmp_path, capsys):
    forbid_runs(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--env", "CartPole-v1", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--env: CartPole-v1 has a Discrete action space" in error and "continuous (Box) action space" in error
    with pytest.raises(SystemExit):
        compare.main(["--env", "NoSuchEnv-v0", "--out", str(tmp_path)])
    assert "--env: cannot make 'NoSuchEnv-v0'" in capsys.readouterr().err


def test_default_env_is_learned_and_progress_bar_is_documented():
    parser = compare.build_parser()
    assert parser.get_default("env") == compare.DEFAULT_ENV == "InvertedPendulum-v5"
    assert "progress bar" in parser.format_help()
    page = (Path(__file__).resolve().parents[1] / "docs" / "baselines.md").read_text()
    assert "`--progress-bar`" in page and f"`{compare.DEFAULT_ENV}`" in page


def test_timeline_shares_one_time_window_and_shows_afedpg_updates(tmp_path, monkeypatch):
    drawn = {}

    def record(traces, path, **kwargs):
        drawn.update(traces=traces, **kwargs)

    monkeypatch.setattr("sb3_nigt.timeline.plot_timelines", record)
    compare.main(["--env", "Pendulum-v1", "--seeds", "0", "--timesteps", "400", "--horizon", "10", "--n-agents", "3",
                  "--algorithms", "rennala", "afedpg", "--batch-size", "4", "--timeline", "2", "--out", str(tmp_path)])
    assert drawn["sharex"] is True and drawn["server_versions"] == ["AFedPG"]
    rennala, afedpg = drawn["traces"]["Rennala NIGT"], drawn["traces"]["AFedPG"]
    until = max(float(e.end) for e in rennala if e.kind == "upload")
    # AFedPG is drawn over Rennala's first two rounds: many server versions, not just its first two.
    assert len({e.round for e in afedpg}) > 2 and all(float(e.start) < until for e in afedpg)
    assert max(float(e.end) for e in afedpg) >= 0.5 * until
    rows = read(tmp_path / "timeline.csv")
    assert {int(r["round"]) for r in rows if r["algorithm"] == "rennala"} == {0, 1}
    assert len({int(r["round"]) for r in rows if r["algorithm"] == "afedpg"}) > 2
