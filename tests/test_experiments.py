"""Every experiment runs end to end with a tiny budget; outputs, columns, verdict rules and the cache are checked."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from sb3_nigt.experiments import EXPERIMENTS
from sb3_nigt.experiments.__main__ import main, run_experiment
from sb3_nigt.experiments.report import RESULT_COLUMNS, area_per_second, first_reach, ratio_interval, verdict


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(autouse=True)
def _fewer_bootstrap_draws(monkeypatch):
    """200 bootstrap draws per ratio interval instead of 2000 (the reports' tables took a third of a smoke run):
    smoke runs have two seeds, so the paired resamples take only 4 distinct values, all of which 200 draws meet
    (each is missed with probability 0.75^200); no test here reads an interval's figures."""
    from sb3_nigt.experiments import report

    monkeypatch.setattr(report, "BOOTSTRAP_SAMPLES", 200)


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    """One output folder, and so one run cache, for every smoke experiment: `expensive-comm` (Fig. 7) has the very
    settings of `reacher-expensive-comm` (Fig. 3), and the second reads the first's runs, as on the command line."""
    return tmp_path_factory.mktemp("smoke")


#: Experiments whose smoke run spreads over two processes (the others run in this one); they get a cache of their own.
POOLED = ("comm",)


@pytest.fixture(scope="module")
def smoke_runs(smoke_root):
    """``smoke(name)``: the experiment's smoke run in ``smoke_root`` (run once per module): experiment, folder, summary."""
    done: dict = {}

    def smoke(name):
        if name not in done:
            experiment = EXPERIMENTS[name].smoke()
            out = smoke_root / "pooled" / name if name in POOLED else smoke_root / name
            result = run_experiment(experiment, out, workers=2 if name in POOLED else 1, progress=False)
            done[name] = experiment, out, result
        return done[name]

    return smoke


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_runs_end_to_end_in_smoke_form(name, smoke_runs):
    experiment, out, result = smoke_runs(name)
    for file in ("results.csv", "tuning.csv", "returns.png", "report.md"):
        assert (out / file).stat().st_size > 0, file
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == RESULT_COLUMNS
    assert {r["algorithm"] for r in rows} == set(experiment.algorithms)
    assert {int(r["n_agents"]) for r in rows} == set(experiment.n_agents)
    assert {int(r["seed"]) for r in rows} == set(experiment.seeds)
    for r in rows:  # every run stopped at its budget: no round that ended after it is recorded
        assert 0 < float(r["simulated_seconds"]) < experiment.seconds_for(int(r["n_agents"]))
    tuning = read_csv(out / "tuning.csv")
    assert len(tuning) == len(experiment.algorithms) * len(experiment.alpha_grid) * len(experiment.tuning_seeds)
    assert sum(int(r["chosen"]) for r in tuning) == len(experiment.algorithms) * len(experiment.tuning_seeds)
    assert result["same_start"], "algorithms started from different θ_0 under one seed"
    report = (out / "report.md").read_text()
    assert experiment.claim in report and "How the full experiment differs from the paper" in report
    # The report describes the smoke run it reports, says its figures are meaningless, and names the full settings.
    assert "Smoke run: its figures are meaningless" in report
    assert f"this smoke run (budget {experiment.simulated_seconds:g} simulated s" in report
    full = EXPERIMENTS[name]
    assert f"the full experiment's settings (budget {full.simulated_seconds:g} simulated s" in report
    assert f"M = {experiment.batch_size}, η" in report and f"```bash\npython -m sb3_nigt.experiments {name} --smoke\n" in report
    assert "| nan" not in report and "nan |" not in report
    if experiment.outages:
        assert "Caveat:" in report


def test_cache_is_reused_and_one_missing_seed_is_redone(tmp_path, monkeypatch, smoke_runs):
    import shutil

    from sb3_nigt.experiments import runner

    # The smoke run of `decreasing` (the parametrized test's), copied with its own cache files only.
    experiment, smoke_out, _ = smoke_runs("decreasing")
    out = tmp_path / "decreasing"
    shutil.copytree(smoke_out, out)
    cache = out.parent / "cache"
    cache.mkdir()
    for file in (smoke_out.parent / "cache").glob(f"*-{runner.settings_digest(experiment)}.csv"):
        shutil.copy2(file, cache / file.name)
    assert len(list(cache.iterdir())) == experiment.runs()
    before = (out / "results.csv").read_text()
    files = sorted(cache.glob("report-*-s1-*.csv"))
    assert len(files) == len(experiment.algorithms)
    files[0].unlink()  # one run of seed 1 lost
    calls = []
    original = runner.run_one

    def counting(experiment, spec, path):
        calls.append(spec)
        return original(experiment, spec, path)

    monkeypatch.setattr(runner, "run_one", counting)
    run_experiment(experiment, out, workers=1, progress=False)
    assert len(calls) == 1 and calls[0].seed == 1 and calls[0].phase == "report"
    assert (out / "results.csv").read_text() == before  # the redone run is bit-identical (simulated clock)

    # --seeds 3: seeds 0 and 1 come from the same cache, only seed 2 runs; the report names the flag
    calls.clear()
    main(["decreasing", "--smoke", "--seeds", "3", "--workers", "1", "--out", str(tmp_path), "--no-progress"])
    assert sorted((c.seed, c.phase) for c in calls) == [(2, "report")] * len(experiment.algorithms)
    folder = tmp_path / "decreasing-smoke"
    with open(folder / "results.csv") as f:
        assert {row["seed"] for row in csv.DictReader(f)} == {"0", "1", "2"}
    report = (folder / "report.md").read_text()
    assert "python -m sb3_nigt.experiments decreasing --smoke --seeds 3" in report
    assert "seeds [0, 1, 2], tuning seeds" in report and "seeds [0, 1, 2], α grid" in report  # the run's seeds


def test_a_warning_of_every_run_is_shown_once(recwarn):
    import warnings

    from sb3_nigt.experiments.runner import module_name, replay_warnings

    registration = gym_registration_file()
    text = f"WARN: The environment Reacher-v4 is out of date ({id(recwarn)})"  # new text: no earlier "once" record
    facts = {"warnings": [(text, DeprecationWarning, registration, 511, module_name(registration))]}
    assert module_name(registration) == "gymnasium.envs.registration"
    with warnings.catch_warnings(record=True) as shown:
        warnings.resetwarnings()
        warnings.filterwarnings("once", "", DeprecationWarning, module=r"^gymnasium\.")  # gymnasium's own filter
        warnings.simplefilter("ignore", DeprecationWarning, append=True)
        for _ in range(16):  # one fresh process per run: each warned once
            replay_warnings(facts)
    assert [str(w.message) for w in shown] == [text]


def gym_registration_file():
    import gymnasium.envs.registration

    return gymnasium.envs.registration.__file__


@pytest.mark.parametrize("seeds", ["0", "101"])
def test_seeds_outside_the_range_are_refused_before_anything_runs(seeds, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["decreasing", "--smoke", "--seeds", seeds, "--out", str(tmp_path), "--no-progress"])
    assert "--seeds: must be in 1..100" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", POOLED)
def test_runs_spread_over_two_processes(name, smoke_runs):
    # The parametrized smoke test above already ran these experiments with two workers: one process pool each.
    experiment, out, result = smoke_runs(name)
    assert result["same_start"]
    assert len(list((out.parent / "cache").glob("*.csv"))) == experiment.runs()


def test_command_line_list(tmp_path, capsys):
    # a smoke run from the command line is in test_cache_is_reused_and_one_missing_seed_is_redone (--seeds 3)
    main(["--list", "--out", str(tmp_path)])
    listing = capsys.readouterr().out
    for name in EXPERIMENTS:
        assert f"| {name} |" in listing


def test_first_reach_and_area_against_hand_arithmetic():
    curve = [(10.0, 100, 1, -30.0), (20.0, 200, 2, -20.0), (30.0, 300, 3, -10.0)]
    assert first_reach(curve, -20.0) == 20.0 and math.isinf(first_reach(curve, 0.0))
    # Held values: -30 on [0, 20), -20 on [20, 30), -10 on [30, 40]: (-600 - 200 - 100) / 40
    assert area_per_second(curve, 40.0) == -900.0 / 40.0


def test_ratio_interval_is_paired_and_handles_never():
    rng = np.random.default_rng(0)
    point, low, high = ratio_interval([10.0, 10.0, 10.0], [20.0, 20.0, 20.0], rng)
    assert (point, low, high) == (2.0, 2.0, 2.0)
    point, low, high = ratio_interval([10.0, 10.0, 10.0], [math.inf] * 3, rng)
    assert math.isinf(point) and math.isinf(low)


@pytest.mark.parametrize("expected, low, high, answer", [
    ("faster", 1.2, 3.0, "agrees"), ("faster", 0.2, 0.9, "disagrees"), ("faster", 0.8, 1.5, "inconclusive"),
    ("alike", 0.8, 1.3, "agrees"), ("alike", 1.6, 4.0, "disagrees"), ("alike", 0.9, 2.0, "inconclusive"),
    ("faster", math.nan, math.nan, "inconclusive"),
])
def test_verdict_rules(expected, low, high, answer):
    assert verdict(expected, low, high) == answer


def test_no_verdict_when_the_reference_never_reaches_the_threshold():
    from sb3_nigt.experiments.report import tables

    experiment = EXPERIMENTS["comm"].smoke()
    slow = [(10.0, 100, 1, -40.0), (20.0, 200, 2, -30.0)]
    fast = [(10.0, 100, 1, -40.0), (20.0, 200, 2, -20.0)]
    curves = {("rennala", 3): {0: slow, 1: slow, 2: fast}, ("sync", 3): {0: slow, 1: slow, 2: slow},
              ("afedpg", 3): {0: fast, 1: fast, 2: fast}}
    alphas = {key: 0.01 for key in curves}
    _, verdicts = tables(experiment, curves, alphas)
    at_25 = {v["algorithm"]: v["verdict"] for v in verdicts if v["threshold"] == -25.0}
    # Rennala's median never reaches -25 (1 of 3 seeds): no verdict, even against Synchronized NIGT (0 of 3)
    assert at_25 == {"sync": "inconclusive", "afedpg": "inconclusive"}


def test_outage_pace_table_against_hand_arithmetic():
    from sb3_nigt.experiments.report import outage_table, steps_at

    experiment = EXPERIMENTS["outage"]  # agent 0 away from 300 s to 900 s
    curve = [(100.0, 1000, 1, -40.0), (300.0, 3000, 2, -30.0), (600.0, 4000, 3, -20.0), (900.0, 6000, 4, -20.0)]
    assert steps_at(curve, 299.0) == 1000 and steps_at(curve, 300.0) == 3000 and steps_at(curve, 50.0) == 0
    curves = {(a, 10): {0: curve} for a in experiment.algorithms}
    table = outage_table(experiment, curves, 10, [0])
    # before: 3000 steps / 300 s = 10.0; during: (6000 − 3000) / 600 s = 5.0; ratio 0.50
    assert "| Rennala NIGT | 10.0 | 5.0 | 0.50 |" in table


def test_tuning_runs_have_no_outage_and_scores_fall_back_to_the_last_round():
    from sb3_nigt.experiments.runner import RunSpec, build_model, tuning_score

    experiment = EXPERIMENTS["outage"]
    tune = build_model(experiment, RunSpec("outage", "tune", "sync", 10, 0.01, 100, 750.0))
    report = build_model(experiment, RunSpec("outage", "report", "sync", 10, 0.01, 0, 1500.0))
    twin = build_model(experiment, RunSpec("outage", "report", "rennala-no-outage", 10, 0.01, 0, 1500.0))
    assert not tune.outages and not twin.outages and report.outages
    rows = [(10.0, 100, 1, -40.0), (20.0, 200, 2, -30.0)]  # no round ended in the last quarter of 100 s
    assert tuning_score(rows, 100.0) == -30.0
    assert tuning_score(rows, 24.0) == -30.0  # the last quarter [18, 24] holds the 20 s round
    assert tuning_score([], 100.0) == -float("inf")


def _descendants(pid: int) -> set[int]:
    """Live descendants of ``pid`` (from /proc)."""
    import os

    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found, frontier = set(), {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not __import__("os").path.isdir("/proc"), reason="needs /proc to find the worker processes")
def test_sigterm_leaves_no_run_behind(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen([sys.executable, "-m", "sb3_nigt.experiments", "reacher-expensive-comm", "--workers", "2",
                                "--out", str(tmp_path), "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    workers: set[int] = set()
    while time.monotonic() < deadline and len(workers) < 3:  # the fork server and two pool workers
        time.sleep(0.5)
        workers = _descendants(process.pid)
    assert len(workers) >= 3, "the pool did not start"
    time.sleep(2)  # the workers are computing
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not [pid for pid in workers if _alive(pid)]


def test_agent_budgets_give_every_n_the_gradients_of_ten_agents():
    """Budgets scale by the compute rate Σ 1/h_i, checked against 40-digit decimals and exact fractions."""
    from decimal import Decimal, getcontext
    from fractions import Fraction

    getcontext().prec = 40
    equal, sqrt = EXPERIMENTS["agents-equal"], EXPERIMENTS["agents-heterogeneous"]
    rate = {n: sum(1 / Decimal(i).sqrt() for i in range(1, n + 1)) for n in (10, 25, 50, 100)}
    for n in (2, 10):
        assert equal.seconds_for(n) == equal.simulated_seconds and sqrt.seconds_for(n) == sqrt.simulated_seconds
    for n in (25, 50, 100):
        assert Fraction(equal.seconds_for(n)) == Fraction(int(equal.simulated_seconds)) * 10 / n
        seconds = Decimal(sqrt.seconds_for(n))
        assert seconds == seconds.to_integral_value()
        # rounded to a whole second: the gradients differ from ten agents' by at most half a second's worth
        assert abs(seconds * rate[n] - Decimal(int(sqrt.simulated_seconds)) * rate[10]) <= rate[n] / 2
