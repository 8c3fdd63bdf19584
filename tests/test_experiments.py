"""Every experiment runs end to end with a tiny budget; outputs, columns, verdict rules and the cache are checked."""

from __future__ import annotations

import csv
import math
import warnings

import numpy as np
import pytest

from sb3_nigt.experiments import EXPERIMENTS
from sb3_nigt.experiments.__main__ import main, run_experiment
from sb3_nigt.experiments.report import RESULT_COLUMNS, area_per_second, first_reach, ratio_interval, verdict
from sb3_nigt.experiments.tuning import study_algorithm


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


#: The experiments run end to end in smoke form: one per distinct path through the runner (heterogeneous
#: environments, several n, a time schedule, an outage with its twin, expensive communication read from a shared
#: cache, runs over two processes). The others differ from one of these only in their environment or their times:
#: each of them builds and trains every model it would run (test_every_experiment_trains_each_of_its_models).
END_TO_END = ("agents-heterogeneous", "comm", "decreasing", "expensive-comm", "heterogeneous-envs-hopper", "outage",
              "reacher-expensive-comm")


@pytest.mark.parametrize("name", END_TO_END)
def test_every_experiment_runs_end_to_end_in_smoke_form(name, smoke_runs):
    experiment, out, result = smoke_runs(name)
    for file in ("results.csv", "tuning.csv", "returns.png", "report.md"):
        assert (out / file).stat().st_size > 0, file
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == RESULT_COLUMNS
    assert {r["algorithm"] for r in rows} == set(experiment.algorithms)
    assert {int(r["n_agents"]) for r in rows} == set(experiment.n_agents)
    assert {int(r["seed"]) for r in rows} == set(experiment.seeds)
    for r in rows:  # every run stopped at its budget: no training round that ended after it is recorded
        if r["curve"] == "train":
            assert 0 < float(r["simulated_seconds"]) < experiment.seconds_for(int(r["n_agents"]))
    tuning = read_csv(out / "tuning.csv")
    studies = {(study_algorithm(a), n) for a in experiment.algorithms for n in experiment.n_agents}
    assert len(tuning) == sum(experiment.trials(a) for a, _ in studies)
    assert sum(int(r["chosen"]) for r in tuning) == len(studies)
    assert {r["state"] for r in tuning} <= {"complete", "pruned", "failed"}
    assert result["same_start"], "algorithms started from different θ_0 under one seed"
    report = (out / "report.md").read_text()
    assert experiment.claim in report and "How the full experiment differs from the paper" in report
    # The report describes the smoke run it reports, says its figures are meaningless, and names the full settings.
    assert "Smoke run: its figures are meaningless" in report
    assert f"this smoke run (budget {experiment.simulated_seconds:g} simulated s" in report
    full = EXPERIMENTS[name]
    assert f"the full experiment's settings (budget {full.simulated_seconds:g} simulated s" in report
    assert f"M/S grid {list(experiment.round_size_grid)}, η" in report
    assert f"```bash\npython -m sb3_nigt.experiments {name} --smoke\n" in report
    assert "| nan" not in report and "nan |" not in report and "CPU hours in all" in report
    if experiment.outages:
        assert "Caveat:" in report


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_trains_each_of_its_models(name):
    """Every experiment's every (algorithm, n) of its smoke form builds and trains for a few rounds."""
    from sb3_nigt.experiments.runner import RunSpec, build_model

    experiment = EXPERIMENTS[name].smoke()
    for algorithm in experiment.algorithms:
        for n in experiment.n_agents:
            spec = RunSpec(name, "report", algorithm, n, experiment.alpha_grid[0], 0, experiment.seconds_for(n),
                           experiment.round_size_grid[0])
            model = build_model(experiment, spec)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # budget and heterogeneous-environment notices
                model.learn(300)
            assert model.num_timesteps >= 300 and model.simulated_time > 0, (algorithm, n)
            model.close()


@pytest.mark.parametrize("name", ["heterogeneous-envs-hopper", "decreasing"])
def test_evaluation_rows_at_the_fixed_times_for_every_agent_env(name, smoke_runs):
    experiment, out, _ = smoke_runs(name)
    n = experiment.n_agents[0]
    envs = [f"agent{i}" for i in range(n)] + ["mean"] if experiment.heterogeneous_envs else ["all"]
    times: dict = {}
    for r in read_csv(out / "results.csv"):
        if r["curve"] == "eval":
            times.setdefault((r["algorithm"], r["seed"], r["env"]), []).append(float(r["simulated_seconds"]))
    assert {key[2] for key in times} == set(envs)
    assert len(times) == len(experiment.algorithms) * len(experiment.seeds) * len(envs)
    for key, found in times.items():  # k · budget / eval_points, k = 0 … eval_points, for every algorithm and env
        assert found == [experiment.seconds_for(n) * k / experiment.eval_points for k in range(experiment.eval_points + 1)], key
    if experiment.heterogeneous_envs:  # the mean column is the equal-weighted mean of the agents' columns
        values = {(r["algorithm"], r["seed"], r["env"], r["simulated_seconds"]): float(r["mean_return"])
                  for r in read_csv(out / "results.csv") if r["curve"] == "eval"}
        for (algorithm, seed, env, seconds), value in values.items():
            if env == "mean":
                parts = [values[(algorithm, seed, f"agent{i}", seconds)] for i in range(n)]
                assert value == pytest.approx(sum(parts) / n, rel=1e-12)


def test_cache_is_reused_and_one_missing_seed_is_redone(tmp_path, monkeypatch, smoke_runs):
    import shutil

    from sb3_nigt.experiments import runner

    # The smoke run of `decreasing` (the parametrized test's), copied with its own cache files only.
    experiment, smoke_out, _ = smoke_runs("decreasing")
    out = tmp_path / "decreasing"
    shutil.copytree(smoke_out, out)
    shutil.copytree(smoke_out.parent / "cache", out.parent / "cache")
    cache = out.parent / "cache"
    digest = runner.settings_digest(experiment)
    for file in cache.glob("*.csv"):
        if file.name != "costs.csv" and not file.name.endswith(f"-{digest}.csv"):
            file.unlink()
    assert len(list(cache.glob(f"report-*-{digest}.csv"))) == len(experiment.algorithms) * len(experiment.seeds)
    before = (out / "results.csv").read_text()
    files = sorted(cache.glob(f"report-*-s1-*-{digest}.csv"))
    assert len(files) == len(experiment.algorithms)
    files[0].unlink()  # one run of seed 1 lost
    calls = []
    original = runner.train

    def counting(experiment, spec, *args, **kwargs):
        calls.append(spec)
        return original(experiment, spec, *args, **kwargs)

    monkeypatch.setattr(runner, "train", counting)
    run_experiment(experiment, out, workers=1, progress=False)
    # the tuning studies come from their journals (no trial runs again), and only the lost run is redone
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


def test_cache_key_includes_the_engine_version(monkeypatch):
    from sb3_nigt import version
    from sb3_nigt.experiments.runner import RunSpec, settings_digest
    from sb3_nigt.experiments.tuning import study_name

    experiment = EXPERIMENTS["decreasing"]
    digest, study = settings_digest(experiment), study_name(experiment, "rennala", 10)
    spec = RunSpec("decreasing", "report", "rennala", 10, 2.0**-5, 0, 1500.0, 20)
    monkeypatch.setattr(version, "ENGINE_VERSION", version.ENGINE_VERSION + 1)
    assert settings_digest(experiment) != digest and study_name(experiment, "rennala", 10) != study
    assert spec.file_name(settings_digest(experiment)) != spec.file_name(digest)
    monkeypatch.undo()
    assert settings_digest(experiment) == digest  # and nothing else in the key moved


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


@pytest.mark.parametrize("args, message", [(["--first-seed", "-1"], "--first-seed: must be >= 0"),
                                           (["--first-seed", "99"], "must be at least one and avoid the tuning seeds"),
                                           (["--first-seed", "100", "--seeds", "1"], "avoid the tuning seeds")])
def test_first_seeds_that_reach_a_tuning_seed_are_refused(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["decreasing", "--smoke", *args, "--out", str(tmp_path), "--no-progress"])
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_first_seed_reports_other_seeds_with_the_tuned_settings():
    from sb3_nigt.experiments.__main__ import command_of, with_seeds

    experiment = with_seeds(EXPERIMENTS["outage"], None, 50)
    assert experiment.seeds == (50, 51, 52, 53, 54) and experiment.max_seeds == 10
    assert command_of(experiment, None) == "python -m sb3_nigt.experiments outage --first-seed 50"
    assert with_seeds(EXPERIMENTS["outage"], 3, 0).seeds == (0, 1, 2)


@pytest.mark.parametrize("name", POOLED)
def test_runs_spread_over_two_processes(name, smoke_runs):
    # The parametrized smoke test above already ran these experiments with two workers: one process pool each.
    experiment, out, result = smoke_runs(name)
    assert result["same_start"]
    reported = len(experiment.algorithms) * len(experiment.n_agents) * len(experiment.seeds)
    assert len(list((out.parent / "cache").glob("report-*.csv"))) == reported


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


def _runs(curves):
    """Synthetic reported runs: each evaluation curve as the ``all`` column, no training curve."""
    return {key: {seed: ([], {"all": curve}) for seed, curve in by_seed.items()} for key, by_seed in curves.items()}


def test_no_time_measure_when_the_reference_never_reaches_the_threshold():
    from sb3_nigt.experiments.report import tables

    experiment = EXPERIMENTS["comm"].smoke()
    slow = [(0.0, 0, 0, -45.0), (10.0, 100, 1, -40.0), (20.0, 200, 2, -30.0)]
    fast = [(0.0, 0, 0, -45.0), (10.0, 100, 1, -40.0), (20.0, 200, 2, -20.0)]
    curves = {("rennala", 3): {0: slow, 1: slow, 2: fast}, ("sync", 3): {0: slow, 1: slow, 2: slow},
              ("afedpg", 3): {0: fast, 1: fast, 2: fast}}
    text, verdicts = tables(experiment, _runs(curves), {key: (0.01, 4) for key in curves})
    # Rennala's median never reaches -25 (1 of 3 seeds): no time measure, only final return and area
    for v in verdicts:
        assert [m["name"] for m in v["measures"]] == ["final return", "area / s"]
    # and no ratio in the table (AFedPG's median reached it: a ratio to "never" would print as 0.00)
    row = next(line for line in text.splitlines() if line.startswith("| -25 |"))
    assert row.count("×–") == 2 and "0.00" not in row
    assert "median seed never reached the threshold" in text


def _curve(values, step=10.0):
    return [(k * step, 100 * k, k, value) for k, value in enumerate(values)]


@pytest.mark.parametrize("case, expected, answer, straddles", [
    ("better", "faster", "agrees", False),      # the reference reaches every threshold sooner, ends higher
    ("worse", "faster", "disagrees", False),
    ("same", "alike", "agrees", False),         # identical curves: every ratio 1, every difference 0
    ("better", "alike", "disagrees", False),    # far apart: outside [2/3, 3/2] and beyond the margin
    ("mixed", "faster", "inconclusive", True),  # better on some seeds, worse on others
])
def test_verdicts_on_synthetic_evaluation_curves(case, expected, answer, straddles):
    import dataclasses

    from sb3_nigt.experiments.report import tables

    experiment = dataclasses.replace(EXPERIMENTS["comm"].smoke(), algorithms=("rennala", "sync"), expected_ratio=expected,
                                     seeds=(0, 1, 2, 3, 4), simulated_seconds=40.0)
    good, bad = _curve([-45, -30, -12, -8, -5]), _curve([-45, -44, -40, -35, -30])
    reference = {s: good for s in range(5)}
    other = {"better": {s: bad for s in range(5)}, "worse": {s: _curve([-45, -10, -8, -4, -2]) for s in range(5)},
             "same": dict(reference), "mixed": {s: (bad if s % 2 else _curve([-45, -20, -9, -6, -1])) for s in range(5)}}[case]
    if case == "worse":
        reference = {s: _curve([-45, -30, -20, -14, -12]) for s in range(5)}
    _, verdicts = tables(experiment, _runs({("rennala", 3): reference, ("sync", 3): other}),
                         {("rennala", 3): (0.01, 4), ("sync", 3): (0.01, 4)})
    (v,) = verdicts
    assert (v["verdict"], v["straddles"]) == (answer, straddles), v["measures"]


@pytest.mark.parametrize("measures, expected, answer", [
    ([("time", 1.2, 2.0), ("return", 1.0, 3.0)], "faster", "agrees"),
    ([("time", 1.2, 2.0), ("return", -3.0, -1.0)], "faster", "inconclusive"),  # the measures disagree
    ([("time", 0.5, 0.9), ("return", -3.0, 1.0)], "faster", "disagrees"),
    ([("time", 0.8, 1.2), ("return", -1.0, 1.0)], "alike", "agrees"),  # margin 2
    ([("time", 0.8, 1.2), ("return", 2.5, 4.0)], "alike", "disagrees"),
    ([("time", 0.8, 1.6), ("return", -1.0, 1.0)], "alike", "inconclusive"),
    ([("time", math.nan, math.nan)], "faster", "inconclusive"),
])
def test_verdicts_combine_the_measures(measures, expected, answer):
    from sb3_nigt.experiments.report import judge

    assert judge(expected, [dict(kind=k, low=lo, high=hi) for k, lo, hi in measures], 2.0)[0] == answer


def test_a_straddling_interval_extends_the_seeds_or_prints_the_command(tmp_path, monkeypatch, smoke_runs):
    import dataclasses
    import shutil

    from sb3_nigt.experiments import __main__ as command

    experiment, smoke_out, _ = smoke_runs("decreasing")
    experiment = dataclasses.replace(experiment, max_seeds=3)
    shutil.copytree(smoke_out.parent / "cache", tmp_path / "cache")  # tuning and seeds 0, 1 come from the cache
    original = command.tables

    def straddling(*args, **kwargs):
        body, verdicts = original(*args, **kwargs)
        return body, [dict(v, straddles=True) for v in verdicts]

    monkeypatch.setattr(command, "tables", straddling)
    printed = run_experiment(experiment, tmp_path / "printed", workers=1, progress=False, extend=False)
    assert printed["extend_command"] == "python -m sb3_nigt.experiments decreasing --smoke --seeds 3"
    assert printed["seeds"] == [0, 1] and "--seeds 3` for 3" in (tmp_path / "printed" / "report.md").read_text()
    extended = run_experiment(experiment, tmp_path / "extended", workers=1, progress=False)
    assert extended["extend_command"] is None and extended["seeds"] == [0, 1, 2]
    assert {r["seed"] for r in read_csv(tmp_path / "extended" / "results.csv")} == {"0", "1", "2"}


@pytest.mark.parametrize("when", ["mid-run", "before its parameters", "in a finalist"])
def test_tuning_resumes_from_its_storage(when, tmp_path, monkeypatch):
    from sb3_nigt.experiments import runner, tuning
    from sb3_nigt.experiments.tuning import grid, run_study

    experiment = EXPERIMENTS["decreasing"].smoke()
    points = grid(experiment, "rennala")

    def study(folder):
        return [{k: v for k, v in row.items() if k != "cpu_seconds"} for row in run_study(experiment, "rennala", 3, folder)]

    uninterrupted = study(tmp_path / "whole")
    final = [(row["alpha"], row["round_size"]) for row in uninterrupted if row["finalist"]]
    assert final, "the smoke study must have a finalist for this test to mean anything"
    killed_call = len(points) + 1 if when == "in a finalist" else 3
    original, calls = runner.train, []
    report = tuning._Trial.__call__

    def counting(experiment, spec, *args, **kwargs):
        calls.append((spec.alpha, spec.round_size))
        return original(experiment, spec, *args, **kwargs)

    def killed_mid_run(hook, index, seconds, returns):
        if len(calls) == killed_call and index == 2:
            raise KeyboardInterrupt  # the process dies mid-trial, after one report: the trial stays RUNNING
        return report(hook, index, seconds, returns)

    run_trial, started = tuning._run_trial, []

    def killed_before_the_third(experiment, algorithm, n_agents, trial, cache, finalist=False):
        started.append(trial)
        if len(started) == 3:
            calls.append(None)
            raise KeyboardInterrupt  # dies between Optuna's ask and the trial's parameters: RUNNING, no params
        return run_trial(experiment, algorithm, n_agents, trial, cache, finalist)

    if when == "before its parameters":
        monkeypatch.setattr(tuning, "_run_trial", killed_before_the_third)
    else:
        monkeypatch.setattr(tuning._Trial, "__call__", killed_mid_run)
    monkeypatch.setattr(runner, "train", counting)
    with pytest.raises(KeyboardInterrupt):
        run_study(experiment, "rennala", 3, tmp_path / "killed")
    assert calls[:killed_call - 1] == (points + final)[:killed_call - 1] and len(calls) == killed_call
    monkeypatch.setattr(tuning._Trial, "__call__", report)
    monkeypatch.setattr(tuning, "_run_trial", run_trial)
    calls.clear()
    resumed = study(tmp_path / "killed")
    # only the killed trial and those never started run again, and the result is the uninterrupted one's
    assert calls == (points + final)[killed_call - 1:]
    assert resumed == uninterrupted
    calls.clear()
    assert study(tmp_path / "killed") == uninterrupted and not calls
    name = tuning.study_name(experiment, "rennala", 3)
    journal = tuning._open_study(tmp_path / "killed" / "tuning" / f"{name}.journal", name, experiment, 3)
    assert len(journal.trials) == len(points) + len(final)  # the killed trial was resumed, not duplicated


def test_the_best_pruned_trials_of_the_first_rung_are_finished_before_one_is_chosen(tmp_path, monkeypatch):
    """Successive halving's survivor is not chosen blindly: the FINALISTS best trials at the first rung that were
    pruned run again, unpruned, to the whole budget, and the choice is the best completed trial."""
    from sb3_nigt.experiments import tuning
    from sb3_nigt.experiments.tuning import FINALISTS, report_step, run_study

    experiment = EXPERIMENTS["decreasing"].smoke()
    budget = experiment.seconds_for(3)
    monkeypatch.setattr(tuning, "FINALISTS", 0)
    halving = run_study(experiment, "rennala", 3, tmp_path / "halving")
    monkeypatch.setattr(tuning, "FINALISTS", FINALISTS)
    rows = run_study(experiment, "rennala", 3, tmp_path / "finalists")
    assert not any(row["finalist"] for row in halving)
    name = tuning.study_name(experiment, "rennala", 3)
    study = tuning._open_study(tmp_path / "finalists" / "tuning" / f"{name}.journal", name, experiment, 3)
    first = [t for t in study.trials if not t.user_attrs.get("finalist")]
    rung = report_step(budget / 9)
    at_rung = sorted(((-t.intermediate_values[min(s for s in t.intermediate_values if s >= rung)],
                       t.params["alpha"], t.params["round_size"]), t.state.name) for t in first
                     if any(s >= rung for s in t.intermediate_values))
    expected = {(alpha, size) for (_, alpha, size), state in at_rung[:FINALISTS] if state == "PRUNED"}
    assert expected and {(r["alpha"], r["round_size"]) for r in rows if r["finalist"]} == expected
    for trial in (t for t in study.trials if t.user_attrs.get("finalist")):
        assert trial.state.name == "COMPLETE" and trial.user_attrs["simulated_seconds"] >= budget
        pruned = next(t for t in first if t.params == trial.params)
        # the finalist is the same run on the simulated clock, taken further: its reports agree up to the pruning
        assert {s: v for s, v in trial.intermediate_values.items() if s in pruned.intermediate_values} == \
            pruned.intermediate_values
    best = max((r for r in rows if r["state"] == "complete"), key=lambda r: r["score"])
    assert best["chosen"] == 1 and sum(r["chosen"] for r in rows) == 1
    assert best["score"] >= next(r["score"] for r in halving if r["chosen"])


def test_a_diverging_trial_fails_and_is_never_chosen_and_other_errors_propagate(tmp_path, monkeypatch):
    from sb3_nigt.experiments import runner
    from sb3_nigt.experiments.tuning import run_study

    experiment = EXPERIMENTS["decreasing"].smoke()
    original = runner.train

    def diverging(experiment, spec, *args, **kwargs):
        if spec.alpha == 2.0**-4:
            raise ValueError("gradient: the aggregate of round 3 has non-finite entries (NaN or inf)")
        return original(experiment, spec, *args, **kwargs)

    monkeypatch.setattr(runner, "train", diverging)
    rows = run_study(experiment, "sync", 3, tmp_path)
    assert {(r["alpha"], r["state"], r["chosen"]) for r in rows} == {(2.0**-4, "failed", 0), (2.0**-6, "complete", 1)}

    def broken(experiment, spec, *args, **kwargs):
        raise ValueError("learning_rate: must be > 0")

    monkeypatch.setattr(runner, "train", broken)
    with pytest.raises(ValueError, match="learning_rate"):
        run_study(experiment, "afedpg", 3, tmp_path)


def test_tuning_prunes_by_simulated_seconds_and_picks_the_best_complete_trial():
    from sb3_nigt.experiments.tuning import best_row, report_step, score

    assert report_step(2.5) == 3 and report_step(900.0) == 900
    values = [(0.0, -50.0), (10.0, -40.0), (20.0, -30.0), (30.0, -20.0), (40.0, -10.0)]
    assert score(values, 40.0) == (-30.0 - 20.0 - 10.0) / 3  # the evaluations in [20, 40]
    assert score(values, 10.0) == -40.0
    rows = [dict(state="complete", score=-5.0, alpha=0.25, round_size=20),
            dict(state="complete", score=-5.0, alpha=0.125, round_size=30),
            dict(state="pruned", score=0.0, alpha=0.5, round_size=20),
            dict(state="failed", score=math.nan, alpha=0.5, round_size=50)]
    assert best_row(rows) is rows[1]  # ties: the smaller α; pruned and failed trials are never chosen


def test_outage_pace_table_against_hand_arithmetic():
    from sb3_nigt.experiments.report import outage_table, steps_at

    experiment = EXPERIMENTS["outage"]  # agent 0 away from 300 s to 900 s
    curve = [(100.0, 1000, 1, -40.0), (300.0, 3000, 2, -30.0), (600.0, 4000, 3, -20.0), (900.0, 6000, 4, -20.0)]
    assert steps_at(curve, 299.0) == 1000 and steps_at(curve, 300.0) == 3000 and steps_at(curve, 50.0) == 0
    curves = {(a, 10): {0: curve} for a in experiment.algorithms}
    table = outage_table(experiment, curves, 10, [0])
    # before: 3000 steps / 300 s = 10.0; during: (6000 − 3000) / 600 s = 5.0; ratio 0.50
    assert "| Rennala NIGT | 10.0 | 5.0 | 0.50 |" in table


def test_tuning_runs_have_no_outage_and_the_twin_shares_rennalas_study():
    from sb3_nigt.experiments.runner import RunSpec, build_model
    from sb3_nigt.experiments.tuning import study_name

    experiment = EXPERIMENTS["outage"]
    tune = build_model(experiment, RunSpec("outage", "tune", "sync", 10, 0.01, 100, 750.0), tuning=True)
    report = build_model(experiment, RunSpec("outage", "report", "sync", 10, 0.01, 0, 1500.0))
    twin = build_model(experiment, RunSpec("outage", "report", "rennala-no-outage", 10, 0.01, 0, 1500.0))
    assert not tune.outages and not twin.outages and report.outages
    assert study_name(experiment, "rennala-no-outage", 10) == study_name(experiment, "rennala", 10)


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


def test_one_budget_and_one_evaluation_grid_for_every_n():
    for name in ("agents-equal", "agents-heterogeneous"):
        experiment = EXPERIMENTS[name]
        assert {experiment.seconds_for(n) for n in experiment.n_agents} == {experiment.simulated_seconds}
        assert len({tuple(experiment.eval_times(n)) for n in experiment.n_agents}) == 1
    for experiment in EXPERIMENTS.values():  # the paper's protocol everywhere
        assert len(experiment.seeds) >= 5 and experiment.max_seeds >= 10 and experiment.momentum == 0.1
        assert experiment.alpha_grid == tuple(2.0**-k for k in range(10, 0, -1))
        assert experiment.round_size_grid == (20, 30, 50)
    h3 = EXPERIMENTS["heterogeneous-envs"]
    assert (h3.env, h3.compute_times, h3.simulated_seconds) == ("Humanoid-v4", (1.0, 10.0), 18000.0)


def test_decreasing_times_against_exact_hand_arithmetic():
    """h_i(t) = 1 + (i − 1)/4 · 2^(−⌊t/375⌋) (last phase from 1125 s on), read exactly by the time model."""
    from fractions import Fraction

    from sb3_nigt.clock.timing import TimingModel
    from sb3_nigt.experiments.registry import DecreasingTimes

    schedule = EXPERIMENTS["decreasing"].compute_schedule
    assert schedule == DecreasingTimes(375.0, 4)
    model = TimingModel(10, schedule)
    expected = {  # (agent from 0, start seconds) → h by hand
        (0, 0.0): Fraction(1), (9, 0.0): Fraction(13, 4), (9, 374.9): Fraction(13, 4), (9, 375.0): Fraction(17, 8),
        (4, 750.0): Fraction(5, 4), (9, 1125.0): Fraction(41, 32), (9, 1e6): Fraction(41, 32), (1, 800.0): Fraction(17, 16),
    }
    for (agent, start), h in expected.items():
        assert model.compute_time(agent, start, counter=7) == h, (agent, start)
        assert schedule.exact(agent, start) == h
    with pytest.raises(ValueError, match="period"):
        DecreasingTimes(0.0)


def test_cpu_estimate_from_measured_costs(tmp_path):
    from sb3_nigt.experiments.cache import record_cost
    from sb3_nigt.experiments.costs import calibrate, estimate, planned_seconds, spent
    from sb3_nigt.experiments.tuning import FINALISTS, expected_fraction

    experiment = EXPERIMENTS["decreasing"].smoke()
    assert estimate(tmp_path, experiment) == (None, [(a, 3) for a in experiment.algorithms])
    # 2 CPU s per simulated s for every algorithm, from two runs each
    for algorithm in experiment.algorithms:
        record_cost(tmp_path, experiment, "report", algorithm, 3, 4.0, 6.0)
        record_cost(tmp_path, experiment, "tune", algorithm, 3, 6.0, 14.0)
    budget = experiment.simulated_seconds
    fraction = expected_fraction(experiment, 3)
    assert 0 < fraction < 1
    # the smoke grid: 2 α × 2 round sizes for Rennala NIGT, 2 α for the others; finalists: 3 of 4, 2 of 2
    trials, finalists = {"rennala": 4, "sync": 2, "afedpg": 2}, {"rennala": 3, "sync": 2, "afedpg": 2}
    assert FINALISTS == 3 and set(trials) == set(experiment.algorithms) and len(experiment.seeds) == 2
    for algorithm in experiment.algorithms:
        assert planned_seconds(experiment, algorithm, 3) == pytest.approx(
            (trials[algorithm] * fraction + finalists[algorithm] + 2) * budget)
    total, missing = estimate(tmp_path, experiment)
    assert not missing and total == pytest.approx(2.0 * sum(planned_seconds(experiment, a, 3) for a in experiment.algorithms))
    # with 5 reported seeds (the straddle rule's extension) instead of 2: the same tuning, 3 more runs per algorithm
    extended, _ = estimate(tmp_path, experiment, 5)
    assert extended == pytest.approx(total + 2.0 * 3 * len(experiment.algorithms) * budget)
    assert spent(tmp_path, experiment) == pytest.approx(3 * 20.0)
    # a calibration measures what is missing, and is not counted as spent
    other = EXPERIMENTS["comm"].smoke()
    assert calibrate(other, tmp_path / "c", workers=1) == [(a, 3) for a in other.algorithms]
    assert estimate(tmp_path / "c", other)[0] > 0 and spent(tmp_path / "c", other) == 0.0


def test_a_dead_pool_worker_is_reported_not_waited_for():
    """A worker killed from outside (here SIGABRT from os.abort) breaks the pool: pool_map returns it as a failure
    within a bound instead of waiting for a result that will never come."""
    import os
    import threading
    import time

    from sb3_nigt.experiments.runner import pool_map

    results: dict = {}
    failures: list = []
    call = threading.Thread(target=lambda: failures.extend(pool_map(
        {"dies": (os.abort, ()), "sleeps": (time.sleep, (0.2,))}, 2, lambda key, value: results.__setitem__(key, value))),
        daemon=True)  # a pool that waits forever fails the test below instead of hanging the suite
    call.start()
    call.join(60)
    assert not call.is_alive(), "pool_map still waits for a worker that died"
    assert any(text.startswith("dies: BrokenProcessPool") for text in failures), failures
    assert len(failures) + len(results) == 2


def test_alpha_set_by_hand_reports_a_labelled_sensitivity_run(tmp_path, smoke_runs, capsys):
    import shutil

    experiment, smoke_out, tuned = smoke_runs("decreasing")
    shutil.copytree(smoke_out.parent / "cache", tmp_path / "cache")  # tuning and the tuned runs come from the cache
    result = main(["decreasing", "--smoke", "--alpha", "sync=2^-3", "--out", str(tmp_path), "--workers", "1",
                   "--no-progress"])
    assert result["out"] == tmp_path / "decreasing-smoke-sync-alpha0.125"
    for (algorithm, n), (alpha, size) in result["configs"].items():  # only Synchronized NIGT's α changes
        assert (alpha, size) == ((0.125, tuned["configs"][(algorithm, n)][1]) if algorithm == "sync"
                                 else tuned["configs"][(algorithm, n)])
    rows = read_csv(result["out"] / "results.csv")
    assert {float(r["alpha"]) for r in rows if r["algorithm"] == "sync"} == {0.125}
    report = (result["out"] / "report.md").read_text()
    assert "Sensitivity run: α set by hand, not tuned" in report and "--alpha sync=2^-3" in report
    capsys.readouterr()


@pytest.mark.parametrize("value, message", [("foo=2^-3", "must be one of"), ("sync=2^-3 sync=2^-4", "once each"),
                                            ("sync=0", "finite number > 0"), ("sync=2^x", "finite number > 0"),
                                            ("sync=nan", "finite number > 0"), ("sync=2^5000", "finite number > 0")])
def test_alpha_set_by_hand_is_checked_before_anything_runs(value, message, tmp_path, capsys):
    args = [item for text in value.split() for item in ("--alpha", text)]
    with pytest.raises(SystemExit):
        main(["decreasing", "--smoke", *args, "--out", str(tmp_path), "--no-progress"])
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_run_leaves_no_log_folder_in_the_temporary_directory(tmp_path, monkeypatch):
    """SB3's default logger makes a folder under the temporary directory on every learn(); a run sets a logger that
    writes nothing, so a full reproduction does not leave thousands of empty folders behind."""
    import tempfile

    from sb3_nigt.experiments.runner import RunSpec, train

    monkeypatch.delenv("SB3_LOGDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    experiment = EXPERIMENTS["comm"].smoke()
    facts = train(experiment, RunSpec(experiment.name, "calibrate", "rennala", 3, 2.0**-6, 100, 5.0, 4))
    assert facts["rows"] and list(tmp_path.iterdir()) == []
