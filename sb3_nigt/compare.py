"""Compare the algorithms on one environment, scenario and seed list (the paper's Section 6 plots).

Every algorithm runs with the same agents, compute and communication times, hyperparameters and seeds; under a
seed every algorithm starts from the same θ_0. At the end of every round (for AFedPG: every n updates) the runner
records the mean undiscounted return of the last ``--window`` training trajectories and, with
``--eval-episodes N``, every ``--eval-every`` simulated seconds, the mean return of N deterministic episodes
(tanh of the mean action; averaged over the agents' environments with ``--heterogeneous-envs``). ``--metric``
chooses which one the threshold and the plot use (default: the evaluation when there is one). The training
return includes the exploration noise, which some tasks penalise (Reacher's control cost).

Scenarios (n agents, agent i = 1..n, i.e. agent ``i − 1`` in code; d = number of policy parameters;
docs/algorithms.md, "The time model in brief"):

    scenario / setting                                        h_i (compute)   κ_i (communication)
    --scenario equal                                          1               0
    --scenario heterogeneous (default)                        √i              0
    --scenario comm                                           √i              √i
    --scenario expensive-comm                                 √i              √i · d^(1/4)
    --scenario decreasing (paper Fig. 8)                      √(n + 1 − i)    0
    App. H.3: --heterogeneous-envs --n-agents 2
              --compute-times 1 10                            (1, 10)         0
    a real run's: --times-from trace.csv                      measured        measured

``--times-from`` reads a trace CSV of a real-clock run (``record_trace=True``) as
:class:`~sb3_nigt.clock.calibration.TraceTimes`: which algorithm would be fastest on those machines
(docs/calibration.md).

``decreasing`` gives compute times that decrease with the agent index (agent 0 is the slowest, √n), passed to
the algorithms as an explicit list of n floats. With identical environments it is a permutation of
``heterogeneous``'s √i, so its results equal those of ``heterogeneous`` up to the relabelling of the agents
(which agent draws which trajectories). The paper's Fig. 8 caption ("computation times decrease") is ambiguous:
it may instead mean times that decrease over time, which this scenario does not model (our reading:
docs/algorithms.md, "Where this library departs from the paper, or reads it"). With
``--heterogeneous-envs`` the relabelling matters, since agent i's environment depends on i.

``--compute-times`` and ``--communication-times`` override the scenario's h_i and κ_i: one preset name
(compute: ``equal``, ``sqrt``; communication: ``zero``, ``equal``, ``sqrt``, ``expensive``), one float (the
same for every agent) or exactly n floats, one per agent. ``--set ALGO:KEY=VALUE`` overrides any constructor
argument of one algorithm (lists as ``1,10`` or ``[1, 10]``, ``true``/``false``, ``None``, numbers, strings).
All options are checked before the first run.

Writes, in ``--out``:

- ``results.csv``, tidy: algorithm, seed, simulated_seconds, env_steps, communications, mean_return (training),
  eval_return (NaN between evaluations), one row per round;
- ``summary.csv``: per algorithm, seed and threshold, the simulated seconds, environment steps and communications
  needed to reach it (NaN if never), the final return and the wall time;
- ``returns.png``: return against simulated time, the median over seeds and the 20–80% band per algorithm;
- with ``--timeline N``: ``timeline.csv`` and ``timeline.png``, the clock's event trace (broadcasts, gradients,
  uploads of every agent) of each algorithm's first seed over one shared time window, the time the first N rounds
  took (the longest among the round-based algorithms); AFedPG, whose "rounds" are server versions (one per
  gradient), is drawn over the same window (:mod:`sb3_nigt.timeline`).

``--env`` must have a continuous (``Box``) action space; ``--progress-bar`` shows SB3's progress bar (tqdm and
rich) for each run.

It prints, for each ``--threshold``, the simulated time each algorithm needed to reach it (median over seeds;
"never" when the median seed did not reach it) and its ratio to the first algorithm's.

Usage::

    python -m sb3_nigt.compare --env InvertedPendulum-v5 --scenario heterogeneous --algorithms rennala afedpg sync \\
        --seeds 0 1 2 --timesteps 200000 --threshold 500 --out runs/compare

    # App. H.3: two agents on different environments, h = (1, 10)
    python -m sb3_nigt.compare --env Hopper-v4 --heterogeneous-envs --n-agents 2 --compute-times 1 10 \\
        --algorithms malenia rennala sync --out runs/compare_h3
"""

from __future__ import annotations

import argparse
import ast
import csv
import importlib
import inspect
import math
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.utils import safe_mean
from stable_baselines3.common.vec_env import VecNormalize, sync_envs_normalization

from sb3_nigt import AFedPG, MaleniaNIGT, RennalaNIGT, SynchronizedNIGT
from sb3_nigt.algorithms.base import NIGTAlgorithm
from sb3_nigt.clock.calibration import RecordedTimes, TraceTimes
from sb3_nigt.envs import heterogeneous_envs
from sb3_nigt.workers.env_factory import AgentVecEnv

ALGORITHMS = {"rennala": RennalaNIGT, "malenia": MaleniaNIGT, "sync": SynchronizedNIGT, "afedpg": AFedPG}


def decreasing_compute_times(n_agents: int) -> list[float]:
    """h_i = √(n + 1 − i), i = 1..n: agent 0 is the slowest (√n), the last agent the fastest (1 s)."""
    return [math.sqrt(n_agents + 1 - i) for i in range(1, n_agents + 1)]


#: scenario → (compute times, communication times): a preset name, a float, or a function of n giving n floats.
SCENARIOS = {
    "equal": ("equal", 0.0),
    "heterogeneous": ("sqrt", 0.0),
    "comm": ("sqrt", "sqrt"),
    "expensive-comm": ("sqrt", "expensive"),
    "decreasing": (decreasing_compute_times, 0.0),
}
COMPUTE_PRESETS = ("equal", "sqrt")
COMMUNICATION_PRESETS = ("zero", "equal", "sqrt", "expensive")
LABELS = {"rennala": "Rennala NIGT", "malenia": "Malenia NIGT", "sync": "Synchronized NIGT", "afedpg": "AFedPG"}
COLUMNS = ["algorithm", "seed", "simulated_seconds", "env_steps", "communications", "mean_return", "eval_return"]
SUMMARY_COLUMNS = ["algorithm", "seed", "threshold", "seconds_to_threshold", "steps_to_threshold", "communications_to_threshold",
                   "final_return", "simulated_seconds", "env_steps", "communications", "wall_seconds"]
#: ``--set`` keys that define the agents: allowed only with the same value for every algorithm compared.
PREMISE_KEYS = ("n_agents", "compute_times", "communication_times", "compute_time_unit", "outages")
_UNSET = object()
#: constructor arguments the runner passes positionally; ``--set`` may not override them.
RESERVED_KEYS = ("policy", "env")

TimeSpec = Union[str, float, list, RecordedTimes]
#: ``--env``'s default: a task the algorithms visibly learn at the default budget (docs/baselines.md).
DEFAULT_ENV = "InvertedPendulum-v5"
#: The algorithms whose round collects M = ``--batch-size`` gradients (``round_size``).
ROUND_SIZED = ("rennala", "malenia")
#: The algorithm whose trace's "round" is the server version θ_k the agent downloaded (one per gradient).
SERVER_VERSIONED = ("afedpg",)


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

    model: NIGTAlgorithm  # every algorithm compared is an NIGTAlgorithm

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
        return self.max_seconds is None or float(self.model.simulated_time) < self.max_seconds

    def _evaluate(self) -> float:
        returns = []
        for eval_env in self.eval_envs:
            if isinstance(eval_env, VecNormalize):
                train_env = self.model.get_env()
                assert train_env is not None  # called during learn
                sync_envs_normalization(train_env, eval_env)
            mean, _ = evaluate_policy(self.model, eval_env, n_eval_episodes=self.eval_episodes, deterministic=True, warn=False)
            # A float without return_episode_rewards; SB3 annotates the union of both forms, without overloads.
            returns.append(float(mean))  # type: ignore[arg-type]
        return float(np.mean(returns))

    def _on_rollout_end(self) -> None:
        assert self.model.ep_info_buffer is not None  # SB3's _setup_learn made it
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


# ---------------------------------------------------------------------------------------------- parsing
def scenario_times(scenario: str, n_agents: int) -> tuple[TimeSpec, TimeSpec]:
    """The (compute times, communication times) of a named scenario for n agents, as the algorithms take them."""
    if scenario not in SCENARIOS:
        raise ValueError(f"--scenario: unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    return tuple(spec(n_agents) if callable(spec) else spec for spec in SCENARIOS[scenario])  # type: ignore[return-value]


def parse_times(tokens: Sequence[str], option: str, presets: Sequence[str], n_agents: int, positive: bool) -> TimeSpec:
    """``--compute-times``/``--communication-times`` tokens → a preset name or a list of n floats.

    One token may be a preset name; otherwise every token must be a number, and there must be 1 (the same time
    for every agent) or n of them. Times must be finite and >= 0 (> 0 when ``positive``).

    :raises ValueError: naming ``option``, for an unknown preset, a wrong count, or a bad value.
    """
    tokens = list(tokens)
    if len(tokens) == 1 and tokens[0] in presets:
        return tokens[0]
    values = []
    for token in tokens:
        try:
            values.append(float(token))
        except ValueError:
            raise ValueError(f"{option}: {token!r} is neither a preset ({', '.join(presets)}) nor a number") from None
    if len(values) not in (1, n_agents):
        raise ValueError(f"{option}: expected one preset, one float or n = {n_agents} floats (one per agent), "
                         f"got {len(values)} values")
    for value in values:
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise ValueError(f"{option}: every time must be finite and {'> 0' if positive else '>= 0'} seconds, got {value:g}")
    return values * n_agents if len(values) == 1 else values


_WORDS = {"true": True, "false": False, "none": None, "null": None}


def recorded_times(args: argparse.Namespace) -> tuple[TimeSpec, TimeSpec]:
    """``--times-from``: the recorded h_i and κ_i (:class:`~sb3_nigt.clock.calibration.TraceTimes`), checked
    against ``--n-agents``.

    :raises ValueError: starting ``--times-from:``, with ``--compute-times`` or ``--communication-times`` too, for a
        file that is not a trace, a bad trace, or fewer agents recorded than ``--n-agents``.
    """
    from sb3_nigt.clock.timing import TimingModel

    if args.compute_times is not None or args.communication_times is not None:
        raise ValueError("--times-from: gives h_i and κ_i; drop --compute-times and --communication-times")
    try:
        recorded = TraceTimes.read_csv(args.times_from, args.times_mode, algorithm=args.times_algorithm)
        TimingModel(args.n_agents, recorded.compute, recorded.communication)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--times-from: {args.times_from}: {exc}") from None
    return recorded.compute, recorded.communication


def parse_value(text: str) -> Any:
    """A ``--set`` value: ``true``/``false`` (any case), ``None``/``null``, an int, a float (``inf`` and ``nan``
    too), a list of numbers (``1,10`` or ``[1, 10]``, always floats), any other Python literal (a dict, a quoted
    string) through :func:`ast.literal_eval`, or else the text itself as a string."""
    stripped = text.strip()
    if stripped.lower() in _WORDS:
        return _WORDS[stripped.lower()]
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        if "," in stripped:  # a bare list with non-literal items, e.g. 1,inf
            value = [parse_value(part) for part in stripped.split(",")]
        else:
            try:
                return float(stripped)  # inf, nan
            except ValueError:
                return text
    if isinstance(value, (list, tuple)):
        items = list(value)
        if items and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            return [float(v) for v in items]
        return items
    return value


def accepted_keys(algorithm: Any) -> Optional[set[str]]:
    """The keyword arguments the constructor of ``algorithm`` (a class) accepts, following ``**kwargs`` up the
    class hierarchy; None if that cannot be told (not a class, or ``**kwargs`` all the way up)."""
    if not inspect.isclass(algorithm):
        return None
    keys: set[str] = set()
    for klass in algorithm.__mro__:
        if "__init__" not in vars(klass):
            continue
        if klass is object:
            return None
        parameters = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]
        keys.update(p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            return keys
    return None


def parse_overrides(items: list[str], algorithms: Optional[Sequence[str]] = None) -> dict[str, dict[str, Any]]:
    """``ALGO:KEY=VALUE`` items → {algo: {key: value}} (values through :func:`parse_value`).

    :param algorithms: the algorithms that will run; an override for another one is an error (None: any).
    :raises ValueError: naming ``--set``, for a malformed item, an unknown algorithm or one not in
        ``algorithms``, or a key its constructor does not take.
    """
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        try:
            algo, assignment = item.split(":", 1)
            key, value = assignment.split("=", 1)
        except ValueError:
            raise ValueError(f"--set: expected ALGO:KEY=VALUE, got {item!r}") from None
        algo, key = algo.strip(), key.strip()
        if algo not in ALGORITHMS:
            raise ValueError(f"--set: unknown algorithm {algo!r} in {item!r}; choose from {list(ALGORITHMS)}")
        if algorithms is not None and algo not in algorithms:
            raise ValueError(f"--set: {algo!r} in {item!r} is not among --algorithms {list(algorithms)}")
        if not key.isidentifier():
            raise ValueError(f"--set: expected ALGO:KEY=VALUE with KEY a parameter name, got {item!r}")
        if key in RESERVED_KEYS:
            raise ValueError(f"--set: {key!r} is set by the runner (--env and the MlpPolicy), not by {item!r}")
        keys = accepted_keys(ALGORITHMS[algo])
        if keys is not None and key not in keys:
            raise ValueError(f"--set: {ALGORITHMS[algo].__name__} has no parameter {key!r} ({item!r})")
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


def format_seconds(seconds: float) -> str:
    """``12.3 s``, or ``never`` for a NaN or infinite time (a threshold not reached)."""
    return f"{seconds:.1f} s" if math.isfinite(seconds) else "never"


def format_ratio(seconds: float, reference_seconds: float, reference: str) -> str:
    """The ratio of two times to a threshold, as printed; ``never`` when either was never reached."""
    if math.isfinite(seconds) and math.isfinite(reference_seconds) and reference_seconds > 0:
        return f"{seconds / reference_seconds:.2f}x {reference}'s"
    if not math.isfinite(seconds):
        return "ratio never"
    return f"ratio never: {reference} never reached it"


def describe_times(spec: TimeSpec) -> str:
    """A short description of a time specification for the plot's title."""
    if isinstance(spec, RecordedTimes):
        return f"recorded ({spec.mode})"
    if isinstance(spec, (list, tuple)):
        if len(set(spec)) == 1:
            return f"{spec[0]:g}"
        return "(" + ", ".join(f"{v:.3g}" for v in spec) + ")" if len(spec) <= 4 else f"{len(spec)} values"
    return str(spec)


def plot(curves: dict[str, list[list[tuple]]], path: Path, title: str, thresholds: Sequence[float] = (), metric: str = "train") -> None:
    """Median and 20–80% band over seeds of the return against simulated time, one colour per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, runs in curves.items():
        arrays = [np.asarray(rows, dtype=np.float64) for rows in runs if rows]
        if not arrays:
            continue
        end = min(r[-1, 0] for r in arrays)
        grid = np.linspace(0.0, end, 300)
        per_seed = []
        for r in arrays:  # the last recorded return at each grid time (NaN before the first round)
            idx = np.searchsorted(r[:, 0], grid, side="right") - 1
            per_seed.append(np.where(idx >= 0, r[np.clip(idx, 0, None), 3], np.nan))
        values = np.asarray(per_seed)
        with warnings.catch_warnings():  # grid times before a seed's first round are NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(values, axis=0)
            low, high = np.nanpercentile(values, 20, axis=0), np.nanpercentile(values, 80, axis=0)
        line, = ax.plot(grid, median, label=f"{LABELS[name]} ({len(arrays)} seeds)")
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


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m sb3_nigt.compare`` (checks beyond types: :func:`parse_args`)."""
    parser = argparse.ArgumentParser(prog="python -m sb3_nigt.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=DEFAULT_ENV,
                        help=f"gymnasium env id with a continuous (Box) action space (default: {DEFAULT_ENV})")
    parser.add_argument("--heterogeneous-envs", action="store_true",
                        help="give agent i the App. H.3 environment [(−1)^i · obs, i] (sb3_nigt.envs.heterogeneous_envs)")
    parser.add_argument("--normalize", action="store_true",
                        help="wrap the env in VecNormalize(norm_obs=True, norm_reward=False), fresh statistics per run")
    parser.add_argument("--scenario", default="heterogeneous", choices=list(SCENARIOS),
                        help="the (h_i, κ_i) of the table above (default: heterogeneous)")
    parser.add_argument("--compute-times", nargs="+", default=None, metavar="H",
                        help=f"h_i, overriding the scenario's: a preset ({', '.join(COMPUTE_PRESETS)}), one float for every "
                             "agent, or n floats, e.g. --compute-times 1 10 --n-agents 2; > 0 seconds")
    parser.add_argument("--communication-times", nargs="+", default=None, metavar="KAPPA",
                        help=f"κ_i, overriding the scenario's: a preset ({', '.join(COMMUNICATION_PRESETS)}), one float for "
                             "every agent, or n floats; >= 0 seconds")
    parser.add_argument("--times-from", default=None, metavar="TRACE_CSV",
                        help="h_i and κ_i measured in a real run: a trace CSV of a real-clock run with record_trace=True "
                             "(sb3_nigt.TraceTimes, docs/calibration.md); replaces the scenario's times; --n-agents "
                             "at most the agents recorded")
    parser.add_argument("--times-mode", default="replay", choices=["replay", "resample"],
                        help="with --times-from: agent i's k-th gradient takes its k-th recorded duration (replay, "
                             "cycling) or a seeded draw among them (resample)")
    parser.add_argument("--times-algorithm", default=None, metavar="NAME",
                        help="with --times-from: the algorithm column to read, when the CSV holds several traces")
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
                        help="a per-algorithm constructor override (repeatable), e.g. --set afedpg:learning_rate=0.002, "
                             "--set rennala:compute_times=1,10 (a list of floats; also [1, 10]), true/false, None, "
                             "numbers, strings")
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
    parser.add_argument("--timeline", type=int, default=None, metavar="N",
                        help="also record the clock's event trace of each algorithm's first seed and write timeline.csv "
                             "and timeline.png of its first N rounds")
    parser.add_argument("--backend", default="inline", help="a registered backend name (sb3_nigt.backends.registry.BACKENDS: inline, subprocess, ...)")
    parser.add_argument("--n-workers", type=int, default=None)
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--progress-bar", action="store_true",
                        help="show SB3's progress bar (environment steps) during each run")
    return parser


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Parse and check the whole command line before any run starts (argparse errors, i.e. ``SystemExit``).

    Adds ``compute`` and ``communication`` (the times the algorithms get: the scenario's, or the
    ``--compute-times``/``--communication-times`` override) and ``override_map`` ({algo: {key: value}}).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n_agents < 1:
        parser.error(f"--n-agents: must be >= 1, got {args.n_agents}")
    try:
        compute, communication = scenario_times(args.scenario, args.n_agents)
        if args.compute_times is not None:
            compute = parse_times(args.compute_times, "--compute-times", COMPUTE_PRESETS, args.n_agents, positive=True)
        if args.communication_times is not None:
            communication = parse_times(args.communication_times, "--communication-times", COMMUNICATION_PRESETS,
                                        args.n_agents, positive=False)
        if args.times_from is not None:
            compute, communication = recorded_times(args)
        args.override_map = parse_overrides(args.overrides, args.algorithms)
        check_env(args.env)
    except ValueError as exc:
        parser.error(str(exc))
    args.compute, args.communication = compute, communication
    # The comparison's premise: every algorithm runs on identical agents. An override of the agents or their times
    # must be the same for every algorithm compared.
    for key in PREMISE_KEYS:
        values = {name: args.override_map.get(name, {}).get(key, _UNSET) for name in args.algorithms}
        given = {name: value for name, value in values.items() if value is not _UNSET}
        if given and (len(given) < len(args.algorithms) or any(v != next(iter(given.values())) for v in given.values())):
            parser.error(f"--set: {key} must be set to the same value for every algorithm in --algorithms (identical "
                         f"agents are the comparison's premise); got {', '.join(f'{n}={v!r}' for n, v in given.items())}"
                         f" and {', '.join(n for n in args.algorithms if n not in given) or 'different values'}")
    if any(key in args.override_map.get(name, {}) for name in args.algorithms for key in ("n_agents", "compute_times", "communication_times")):
        from sb3_nigt.clock.timing import TimingModel

        first = args.override_map.get(args.algorithms[0], {})
        n = first.get("n_agents", args.n_agents)
        try:
            TimingModel(n, first.get("compute_times", compute), first.get("communication_times", communication))
        except (ValueError, TypeError) as exc:
            parser.error(f"--set: {exc}")
    if args.timeline is not None:
        if args.timeline < 1:
            parser.error(f"--timeline: must be >= 1 rounds, got {args.timeline}")
        try:
            importlib.import_module("sb3_nigt.timeline")
        except ImportError as exc:
            parser.error(f"--timeline: sb3_nigt.timeline is not available ({exc})")
        for name in args.algorithms:
            keys = accepted_keys(ALGORITHMS[name])
            if keys is not None and "record_trace" not in keys:
                parser.error(f"--timeline: {ALGORITHMS[name].__name__} cannot record an event trace (no record_trace)")
    return args


def check_env(env_id: str) -> None:
    """Check that ``env_id`` is a registered gymnasium id whose action space is continuous (``Box``).

    :param env_id: the ``--env`` value; the environment is made once and closed.
    :raises ValueError: naming ``--env``, for an unknown id or a discrete (or other non-``Box``) action space.
    """
    import gymnasium as gym

    try:
        env = gym.make(env_id)
    except gym.error.Error as exc:
        raise ValueError(f"--env: cannot make {env_id!r} ({exc})") from None
    space = env.action_space
    env.close()
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"--env: {env_id} has a {type(space).__name__} action space; the algorithms need a continuous "
                         f"(Box) action space, e.g. {DEFAULT_ENV} or Pendulum-v1")


def resolve_metric(args: argparse.Namespace) -> str:
    """The return the threshold and the plot use: ``--metric``, or ``eval`` when there is an evaluation.

    Raises ``ValueError`` for ``--metric eval`` without ``--eval-episodes``.
    """
    metric = args.metric or ("eval" if args.eval_episodes > 0 else "train")
    if metric == "eval" and args.eval_episodes <= 0:
        raise ValueError("--metric eval needs --eval-episodes > 0")
    return metric


def build_model(name: str, args: argparse.Namespace, env: Any, seed: int, trace: bool) -> Any:
    """One algorithm's model on the shared agents, times and hyperparameters, then its ``--set`` overrides."""
    kwargs = dict(
        learning_rate=args.learning_rate, eta=args.momentum, horizon=args.horizon,
        gamma=args.gamma, n_agents=args.n_agents, compute_times=args.compute, communication_times=args.communication,
        backend=args.backend, n_workers=args.n_workers, seed=seed,
    )
    # M sizes Rennala's and Malenia's rounds; the others only size their observation warm-up round with it (M_init).
    kwargs["round_size" if name in ROUND_SIZED else "initial_round_size"] = args.batch_size
    if trace:
        kwargs["record_trace"] = True
    kwargs.update(args.override_map.get(name, {}))
    run_env = env
    if args.normalize:
        base = AgentVecEnv(env) if isinstance(env, list) else make_vec_env(env, n_envs=1, seed=seed)
        run_env = VecNormalize(base, norm_obs=True, norm_reward=False)
    return ALGORITHMS[name]("MlpPolicy", run_env, **kwargs)


def build_eval_envs(args: argparse.Namespace, seed: int) -> Optional[list[Any]]:
    """The evaluation environments (one per agent environment, seeded ``10_000 + seed``), or None without evaluation."""
    if args.eval_episodes <= 0:
        return None
    sources = heterogeneous_envs(args.env, args.n_agents) if args.heterogeneous_envs else [args.env]
    eval_envs = [make_vec_env(source, n_envs=1, seed=10_000 + seed) for source in sources]
    if args.normalize:
        eval_envs = [VecNormalize(e, training=False, norm_obs=True, norm_reward=False) for e in eval_envs]
    return eval_envs


def train_recorded(model: Any, args: argparse.Namespace, seed: int) -> tuple[Recorder, float]:
    """Train ``model`` for ``--timesteps`` under a :class:`Recorder`; returns it and the wall time in seconds."""
    eval_envs = build_eval_envs(args, seed)
    recorder = Recorder(args.window, args.max_simulated_seconds, eval_envs, args.eval_episodes, args.eval_every)
    start = time.perf_counter()
    model.learn(args.timesteps, callback=recorder, progress_bar=args.progress_bar)
    wall = time.perf_counter() - start
    model.close()  # its workers: the next run starts its own
    for eval_env in eval_envs or []:
        eval_env.close()
    return recorder, wall


def summarize_run(name: str, seed: int, model: Any, chosen: list[tuple], thresholds: list[float], wall: float) -> list[tuple]:
    """The run's ``summary.csv`` rows (one per threshold, one NaN row without any), printed as one line."""
    simulated = float(model.simulated_time)
    final = chosen[-1][3] if chosen else math.nan
    reaches = {threshold: first_reach(chosen, threshold) for threshold in (thresholds or [math.nan])}
    rows = [(name, seed, threshold, *reach, final, simulated, model.num_timesteps, model.n_communications, wall)
            for threshold, reach in reaches.items()]
    reached = ", ".join(f"{t:g}: {format_seconds(r[0])}" for t, r in reaches.items() if thresholds)
    print(f"{LABELS[name]:>18} seed {seed}: final return {final:9.1f}; {simulated:10.1f} simulated s, "
          f"{model.num_timesteps} env steps, {model.n_communications} communications; "
          f"{'time to threshold ' + reached + '; ' if reached else ''}{wall:.0f} wall s", flush=True)
    return rows


def write_csv(path: Path, header: Sequence[str], rows: list[tuple]) -> None:
    """Write ``rows`` under ``header`` to the CSV file ``path``."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def plot_title(args: argparse.Namespace) -> str:
    """The returns plot's title: environment, scenario, the overridden times, n and the number of seeds."""
    times = "".join([
        f", h = {describe_times(args.compute)}" if args.compute_times is not None else "",
        f", κ = {describe_times(args.communication)}" if args.communication_times is not None else "",
        f", times from {Path(args.times_from).name} ({args.times_mode})" if args.times_from is not None else "",
    ])
    return (f"{args.env}{' (App. H.3 agents)' if args.heterogeneous_envs else ''}, scenario {args.scenario}{times}, "
            f"n = {args.n_agents}, {len(args.seeds)} seeds")


def timeline_window(traces: dict[str, list], rounds: int) -> dict[str, list]:
    """Cut every trace to one shared time window: the seconds the first ``rounds`` rounds took.

    The window ends where the last of the first ``rounds`` rounds ends, the latest such end among the round-based
    algorithms (Rennala, Malenia, Synchronized); AFedPG's "round" is the server version θ_k an agent downloaded
    (one per gradient), so its first ``rounds`` versions last a fraction of a round: it keeps instead every event
    that starts inside the window. Without a round-based algorithm, AFedPG's first ``rounds`` versions are kept.

    :param traces: ``{short name: TraceEvent list}`` (whole traces for AFedPG, the first rounds for the others).
    :param rounds: N of ``--timeline N``, >= 1.
    :return: ``{short name: the events drawn}``.
    """
    from sb3_nigt.timeline import round_ends

    first = {name: [e for e in events if e.round < rounds] for name, events in traces.items()}
    ends = [end for name, events in first.items() if name not in SERVER_VERSIONED and events
            for end in round_ends(events).values()]
    if not ends:
        return first
    until = max(ends)
    return {name: [e for e in events if float(e.start) < until] if name in SERVER_VERSIONED else first[name]
            for name, events in traces.items()}


def write_timeline(traces: dict[str, list], out: Path, rounds: int) -> list[str]:
    """Write ``timeline.csv`` and, when any event was recorded, ``timeline.png`` over one time window
    (:func:`timeline_window`), every panel on the same time axis.

    Returns the names of the files written.
    """
    from sb3_nigt.timeline import plot_timelines, write_trace_csv

    window = timeline_window(traces, rounds)
    # The CSV's algorithm column uses the runner's short names (as results.csv); the plot the full labels.
    write_trace_csv(window, out / "timeline.csv")
    drawn = {LABELS[name]: events for name, events in window.items() if events}
    if not drawn:
        warnings.warn("--timeline: no algorithm recorded any event in its first rounds; timeline.png not drawn", stacklevel=3)
        return ["timeline.csv"]
    plot_timelines(drawn, out / "timeline.png", sharex=True, server_versions=[LABELS[name] for name in SERVER_VERSIONED])
    return ["timeline.csv", "timeline.png"]


def report_thresholds(summary: list[tuple], algorithms: Sequence[str], thresholds: list[float],
                      n_seeds: int) -> dict[float, dict[str, float]]:
    """Print and return, per threshold and algorithm, the median simulated seconds to reach it over the seeds.

    A seed that never reached the threshold counts as infinitely slow; the ratio is to the first algorithm's.
    """
    reference = algorithms[0]
    medians: dict[float, dict[str, float]] = {}
    for threshold in thresholds:
        print(f"\ntime to reach return {threshold:g} (median over seeds; simulated seconds):")
        times = {name: [row[3] for row in summary if row[0] == name and row[2] == threshold] for name in algorithms}
        medians[threshold] = {name: float(np.median([math.inf if math.isnan(t) else t for t in seconds]))
                              for name, seconds in times.items()}
        reference_seconds = medians[threshold][reference]
        for name in algorithms:
            n_reached = sum(1 for t in times[name] if not math.isnan(t))
            print(f"  {LABELS[name]:>18}: {format_seconds(medians[threshold][name]):>12}  ({n_reached}/{n_seeds} "
                  f"seeds reached; {format_ratio(medians[threshold][name], reference_seconds, LABELS[reference])})")
    return medians


def report_finals(summary: list[tuple], algorithms: Sequence[str], thresholds: list[float]) -> None:
    """Print each algorithm's median final return over the seeds."""
    print("\nmedian final return:")
    for name in algorithms:
        finals = [row[6] for row in summary if row[0] == name and (not thresholds or row[2] == thresholds[0])]
        print(f"  {LABELS[name]:>18}: {np.median(finals):.1f}")


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run every algorithm on every seed, write the files of ``--out`` and print the times to each threshold.

    Returns ``{"medians": ..., "medians_by_threshold": ..., "summary": ...}``: the median simulated seconds to
    the first threshold per algorithm, the same per threshold, and the ``summary.csv`` rows.
    Raises ``RuntimeError`` if a seed gives the algorithms different initial θ_0.
    """
    args = parse_args(argv)
    thresholds = list(args.threshold or [])
    metric = resolve_metric(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env: Any = heterogeneous_envs(args.env, args.n_agents) if args.heterogeneous_envs else args.env
    results: list[tuple] = []
    summary: list[tuple] = []
    curves: dict[str, list[list[tuple]]] = {name: [] for name in args.algorithms}
    traces: dict[str, list] = {}
    for seed_index, seed in enumerate(args.seeds):
        initial = None
        trace = args.timeline is not None and seed_index == 0
        for name in args.algorithms:
            model = build_model(name, args, env, seed, trace)
            theta0 = model.get_flat_params()
            if initial is None:
                initial = theta0
            elif not np.array_equal(initial, theta0):
                raise RuntimeError(f"{name}: seed {seed} gave a different initial θ than {args.algorithms[0]}")
            recorder, wall = train_recorded(model, args, seed)
            if trace:
                events = getattr(model, "trace", None) or []
                traces[name] = events if name in SERVER_VERSIONED else [e for e in events if e.round < args.timeline]
            chosen = metric_rows(recorder.rows, metric)
            curves[name].append(chosen)
            results += [(name, seed, *row) for row in recorder.rows]
            summary += summarize_run(name, seed, model, chosen, thresholds, wall)

    write_csv(out / "results.csv", COLUMNS, results)
    write_csv(out / "summary.csv", SUMMARY_COLUMNS, summary)
    plot(curves, out / "returns.png", plot_title(args), thresholds, metric)
    written = ["results.csv", "summary.csv", "returns.png"]
    if args.timeline is not None:
        written += write_timeline(traces, out, args.timeline)
    medians = report_thresholds(summary, args.algorithms, thresholds, len(args.seeds))
    report_finals(summary, args.algorithms, thresholds)
    print(f"wrote {out}/: {', '.join(written)}")
    return {"medians": medians[thresholds[0]] if thresholds else {}, "medians_by_threshold": medians, "summary": summary}


if __name__ == "__main__":
    main()
