"""Compare the algorithms on one environment, scenario and seed list (the paper's Section 6 plots).

Every algorithm runs with the same agents, compute and communication times, hyperparameters and seeds; under a
seed every algorithm starts from the same θ_0. At the end of every round (for AFedPG: every n updates) the runner
records the mean undiscounted return of the last ``--window`` training trajectories and, with
``--eval-episodes N``, every ``--eval-every`` simulated seconds, the mean return of N deterministic episodes
(tanh of the mean action; averaged over the agents' environments with ``--heterogeneous-envs``). ``--metric``
chooses which one the threshold and the plot use (default: the evaluation when there is one). The training
return includes the exploration noise, which some tasks penalise (Reacher's control cost).

Scenarios (n agents, d = number of policy parameters; PAPER.md "Time model"):

    equal           h_i = 1,   κ_i = 0
    heterogeneous   h_i = √i,  κ_i = 0
    comm            h_i = √i,  κ_i = √i
    expensive-comm  h_i = √i,  κ_i = √i · d^(1/4)

Writes, in ``--out``:

- ``results.csv``, tidy: algorithm, seed, simulated_seconds, env_steps, communications, mean_return (training),
  eval_return (NaN between evaluations), one row per round;
- ``summary.csv``: per algorithm, seed and threshold, the simulated seconds, environment steps and communications
  needed to reach it (NaN if never), the final return and the wall time;
- ``returns.png``: return against simulated time, the median over seeds and the 20–80% band per algorithm.

It prints, for each ``--threshold``, the simulated time each algorithm needed to reach it (median over seeds) and
its ratio to the first algorithm's.

Usage::

    python -m sb3_nigt.compare --env Pendulum-v1 --scenario heterogeneous --algorithms rennala afedpg sync \\
        --seeds 0 1 2 --timesteps 200000 --threshold -600 --out runs/compare
"""

from __future__ import annotations

import argparse
import csv
import math
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import safe_mean
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize, sync_envs_normalization

from sb3_nigt import AFedPG, MaleniaNIGT, RennalaNIGT, SynchronizedNIGT
from sb3_nigt.common.envs import AgentVecEnv
from sb3_nigt.envs import heterogeneous_envs

ALGORITHMS = {"rennala": RennalaNIGT, "malenia": MaleniaNIGT, "sync": SynchronizedNIGT, "afedpg": AFedPG}
SCENARIOS = {
    "equal": ("equal", 0.0),
    "heterogeneous": ("sqrt", 0.0),
    "comm": ("sqrt", "sqrt"),
    "expensive-comm": ("sqrt", "expensive"),
}
LABELS = {"rennala": "Rennala NIGT", "malenia": "Malenia NIGT", "sync": "Synchronized NIGT", "afedpg": "AFedPG"}
COLUMNS = ["algorithm", "seed", "simulated_seconds", "env_steps", "communications", "mean_return", "eval_return"]
SUMMARY_COLUMNS = ["algorithm", "seed", "threshold", "seconds_to_threshold", "steps_to_threshold", "communications_to_threshold",
                   "final_return", "simulated_seconds", "env_steps", "communications", "wall_seconds"]


class Recorder(BaseCallback):
    """At the end of every round: (simulated seconds, environment steps, communications, mean training return,
    deterministic evaluation return or NaN).

    :param window: training trajectories averaged for the training return.
    :param max_seconds: stop training once the simulated clock has passed this many seconds (None: never).
    :param eval_envs: environments for the deterministic evaluation (one per distinct agent environment; the
        result is their mean, the equal-weighted J), or None for no evaluation.
    :param eval_episodes: episodes per environment and evaluation.
    :param eval_every: simulated seconds between evaluations (the first is at the first round's end).
    """

    def __init__(self, window: int, max_seconds: Optional[float] = None, eval_envs: Optional[list] = None,
                 eval_episodes: int = 0, eval_every: float = 100.0) -> None:
        super().__init__()
        self.window = window
        self.max_seconds = max_seconds
        self.eval_envs = eval_envs or []
        self.eval_episodes = eval_episodes
        self.eval_every = eval_every
        self.next_eval = 0.0
        self.rows: list[tuple[float, int, int, float, float]] = []

    def _on_step(self) -> bool:
        return self.max_seconds is None or self.model.simulated_time < self.max_seconds

    def _evaluate(self) -> float:
        returns = []
        for eval_env in self.eval_envs:
            if isinstance(eval_env, VecNormalize):
                sync_envs_normalization(self.model.get_env(), eval_env)
            mean, _ = evaluate_policy(self.model, eval_env, n_eval_episodes=self.eval_episodes, deterministic=True, warn=False)
            returns.append(float(mean))
        return float(np.mean(returns))

    def _on_rollout_end(self) -> None:
        episodes = list(self.model.ep_info_buffer)[-self.window:]
        if not episodes:
            return
        now = float(self.model.simulated_time)
        evaluation = math.nan
        if self.eval_envs and self.eval_episodes > 0 and now >= self.next_eval:
            evaluation = self._evaluate()
            while self.next_eval <= now:
                self.next_eval += self.eval_every
        self.rows.append((now, int(self.model.num_timesteps), int(self.model.n_communications),
                          float(safe_mean([ep["r"] for ep in episodes])), evaluation))


def metric_rows(rows: list[tuple], metric: str) -> list[tuple[float, int, int, float]]:
    """(simulated seconds, env steps, communications, value) of the rows where ``metric`` ("train" or "eval") exists."""
    column = 3 if metric == "train" else 4
    return [(r[0], r[1], r[2], r[column]) for r in rows if not math.isnan(r[column])]


def parse_value(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``ALGO:KEY=VALUE`` items → {algo: {key: value}}."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        try:
            algo, assignment = item.split(":", 1)
            key, value = assignment.split("=", 1)
        except ValueError:
            raise ValueError(f"--set: expected ALGO:KEY=VALUE, got {item!r}") from None
        if algo not in ALGORITHMS:
            raise ValueError(f"--set: unknown algorithm {algo!r}; choose from {list(ALGORITHMS)}")
        overrides.setdefault(algo, {})[key] = parse_value(value)
    return overrides


def first_reach(rows: list[tuple], threshold: float) -> tuple[float, float, float]:
    """(simulated seconds, env steps, communications) of the first round whose return is >= threshold; NaN if never
    (or if the threshold is NaN)."""
    if not math.isnan(threshold):
        for seconds, steps, communications, value in rows:
            if value >= threshold:
                return seconds, float(steps), float(communications)
    return math.nan, math.nan, math.nan


def plot(curves: dict[str, list[list[tuple]]], path: Path, title: str, thresholds: Sequence[float] = (), metric: str = "train") -> None:
    """Median and 20–80% band over seeds of the return against simulated time, one colour per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, runs in curves.items():
        runs = [np.asarray(rows, dtype=np.float64) for rows in runs if rows]
        if not runs:
            continue
        end = min(r[-1, 0] for r in runs)
        grid = np.linspace(0.0, end, 300)
        values = []
        for r in runs:  # the last recorded return at each grid time (NaN before the first round)
            idx = np.searchsorted(r[:, 0], grid, side="right") - 1
            values.append(np.where(idx >= 0, r[np.clip(idx, 0, None), 3], np.nan))
        values = np.asarray(values)
        with warnings.catch_warnings():  # grid times before a seed's first round are NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(values, axis=0)
            low, high = np.nanpercentile(values, 20, axis=0), np.nanpercentile(values, 80, axis=0)
        line, = ax.plot(grid, median, label=f"{LABELS[name]} ({len(runs)} seeds)")
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2)
    for threshold in thresholds:
        ax.axhline(threshold, color="gray", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("mean training return" if metric == "train" else "deterministic evaluation return")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m sb3_nigt.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1", help="gymnasium env id")
    parser.add_argument("--heterogeneous-envs", action="store_true",
                        help="give agent i the App. H.3 environment [(−1)^i · obs, i] (sb3_nigt.envs.heterogeneous_envs)")
    parser.add_argument("--normalize", action="store_true",
                        help="wrap the env in VecNormalize(norm_obs=True, norm_reward=False), fresh statistics per run")
    parser.add_argument("--scenario", default="heterogeneous", choices=list(SCENARIOS))
    parser.add_argument("--algorithms", nargs="+", default=["rennala", "afedpg", "sync"], choices=list(ALGORITHMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=200_000, help="environment steps per algorithm and seed (at most)")
    parser.add_argument("--max-simulated-seconds", type=float, default=None,
                        help="also stop each run once its simulated clock passes this many seconds (equal time budgets)")
    parser.add_argument("--n-agents", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=2**-6, help="α, shared")
    parser.add_argument("--momentum", type=float, default=0.1, help="η, shared")
    parser.add_argument("--batch-size", type=int, default=20, help="M (Rennala), S (Malenia); unused by sync and AFedPG")
    parser.add_argument("--horizon", type=int, default=None, help="H (default: the env's time limit)")
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="ALGO:KEY=VALUE",
                        help="a per-algorithm override, e.g. --set afedpg:learning_rate=0.002 (repeatable)")
    parser.add_argument("--threshold", type=float, nargs="+", default=None,
                        help="return(s) to reach, e.g. --threshold -12 -10; prints the simulated time each algorithm needed "
                             "(argparse reads -12 and -9.5 as numbers, but not -1e3: write --threshold=-1e3)")
    parser.add_argument("--window", type=int, default=100, help="trajectories averaged for the training return")
    parser.add_argument("--eval-episodes", type=int, default=0,
                        help="deterministic evaluation episodes (per agent environment) every --eval-every simulated seconds; "
                             "0 (default): no evaluation")
    parser.add_argument("--eval-every", type=float, default=100.0, help="simulated seconds between evaluations")
    parser.add_argument("--metric", choices=["train", "eval"], default=None,
                        help="the return used for the threshold and the plot: the training return, or the deterministic "
                             "evaluation (default: eval when --eval-episodes > 0, else train)")
    parser.add_argument("--backend", default="inline", choices=["inline", "subprocess"])
    parser.add_argument("--n-workers", type=int, default=None)
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--progress-bar", action="store_true")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.overrides)
    thresholds = list(args.threshold or [])
    metric = args.metric or ("eval" if args.eval_episodes > 0 else "train")
    if metric == "eval" and args.eval_episodes <= 0:
        raise ValueError("--metric eval needs --eval-episodes > 0")

    compute, communication = SCENARIOS[args.scenario]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env: Any = heterogeneous_envs(args.env, args.n_agents) if args.heterogeneous_envs else args.env
    results, summary = [], []
    curves: dict[str, list[list[tuple]]] = {name: [] for name in args.algorithms}
    for seed in args.seeds:
        initial = None
        for name in args.algorithms:
            kwargs = dict(
                learning_rate=args.learning_rate, momentum=args.momentum, batch_size=args.batch_size, horizon=args.horizon,
                gamma=args.gamma, n_agents=args.n_agents, compute_times=compute, communication_times=communication,
                backend=args.backend, n_workers=args.n_workers, seed=seed,
            )
            kwargs.update(overrides.get(name, {}))
            run_env = env
            if args.normalize:
                base = AgentVecEnv(env) if isinstance(env, list) else make_vec_env(env, n_envs=1, seed=seed)
                run_env = VecNormalize(base, norm_obs=True, norm_reward=False)
            model = ALGORITHMS[name]("MlpPolicy", run_env, **kwargs)
            theta0 = model.get_flat_params()
            if initial is None:
                initial = theta0
            elif not np.array_equal(initial, theta0):
                raise RuntimeError(f"{name}: seed {seed} gave a different initial θ than {args.algorithms[0]}")
            eval_envs = None
            if args.eval_episodes > 0:
                sources = (heterogeneous_envs(args.env, args.n_agents) if args.heterogeneous_envs else [args.env])
                eval_envs = [make_vec_env(source, n_envs=1, seed=10_000 + seed) for source in sources]
                if args.normalize:
                    eval_envs = [VecNormalize(e, training=False, norm_obs=True, norm_reward=False) for e in eval_envs]
            recorder = Recorder(args.window, args.max_simulated_seconds, eval_envs, args.eval_episodes, args.eval_every)
            start = time.perf_counter()
            model.learn(args.timesteps, callback=recorder, progress_bar=args.progress_bar)
            wall = time.perf_counter() - start
            for eval_env in eval_envs or []:
                eval_env.close()
            chosen = metric_rows(recorder.rows, metric)
            curves[name].append(chosen)
            results += [(name, seed, *row) for row in recorder.rows]
            final = chosen[-1][3] if chosen else math.nan
            reaches = {threshold: first_reach(chosen, threshold) for threshold in (thresholds or [math.nan])}
            for threshold, reach in reaches.items():
                summary.append((name, seed, threshold, *reach, final, model.simulated_time, model.num_timesteps,
                                model.n_communications, wall))
            reached = ", ".join(f"{t:g}: {r[0]:.1f} s" for t, r in reaches.items() if thresholds)
            print(f"{LABELS[name]:>18} seed {seed}: final return {final:9.1f}; {model.simulated_time:10.1f} simulated s, "
                  f"{model.num_timesteps} env steps, {model.n_communications} communications; "
                  f"{'time to threshold ' + reached + '; ' if reached else ''}{wall:.0f} wall s", flush=True)

    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(results)
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SUMMARY_COLUMNS)
        writer.writerows(summary)
    title = (f"{args.env}{' (App. H.3 agents)' if args.heterogeneous_envs else ''}, scenario {args.scenario}, "
             f"n = {args.n_agents}, {len(args.seeds)} seeds")
    plot(curves, out / "returns.png", title, thresholds, metric)

    reference = args.algorithms[0]
    medians: dict[float, dict[str, float]] = {}
    for threshold in thresholds:
        print(f"\ntime to reach return {threshold:g} (median over seeds; simulated seconds):")
        medians[threshold] = {}
        for name in args.algorithms:
            times = [row[3] for row in summary if row[0] == name and row[2] == threshold]
            reached = [t for t in times if not math.isnan(t)]
            # A seed that never reached the threshold counts as infinitely slow.
            medians[threshold][name] = float(np.median([t if not math.isnan(t) else math.inf for t in times]))
        base = medians[threshold][reference]
        for name in args.algorithms:
            ratio = medians[threshold][name] / base if 0 < base < math.inf else math.nan
            n_reached = sum(1 for row in summary if row[0] == name and row[2] == threshold and not math.isnan(row[3]))
            print(f"  {LABELS[name]:>18}: {medians[threshold][name]:10.1f} s  ({n_reached}/{len(args.seeds)} seeds reached; "
                  f"{ratio:.2f}x {LABELS[reference]}'s)")
    print("\nmedian final return:")
    for name in args.algorithms:
        finals = [row[6] for row in summary if row[0] == name and (not thresholds or row[2] == thresholds[0])]
        print(f"  {LABELS[name]:>18}: {np.median(finals):.1f}")
    print(f"wrote {out}/: results.csv, summary.csv, returns.png")
    return {"medians": medians[thresholds[0]] if thresholds else {}, "medians_by_threshold": medians, "summary": summary}


if __name__ == "__main__":
    main()
