"""The comparison runner (python -m sb3_nigt.compare): tidy CSV, summary, plot, per-algorithm overrides."""

from __future__ import annotations

import csv

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
