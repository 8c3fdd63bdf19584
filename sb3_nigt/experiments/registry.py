"""The paper's experiments (Section 6 and App. H), and two of our own, as data (docs/reproduction.md).

Each :class:`Experiment` fixes everything a run needs except the learning rate α and the round size (M for Rennala
NIGT, S for Malenia NIGT), which are tuned per experiment, per algorithm and per n on the paper's grids
(α ∈ 2^-10 … 2^-1, M, S ∈ {20, 30, 50}) with tuning seeds kept apart from the reported ones
(:mod:`sb3_nigt.experiments.tuning`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Optional

#: α grid of the paper (App. H): 2^-10, 2^-9, …, 2^-1.
ALPHA_GRID: tuple[float, ...] = tuple(2.0**-k for k in range(10, 0, -1))
#: M = M_init grid of the paper (App. H), used as Rennala NIGT's M and Malenia NIGT's S.
ROUND_SIZE_GRID: tuple[int, ...] = (20, 30, 50)

#: algorithm label → (class key of :data:`sb3_nigt.compare.ALGORITHMS`, extra constructor arguments).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "rennala": ("rennala", {}),
    "malenia": ("malenia", {}),
    "sync": ("sync", {}),
    "afedpg": ("afedpg", {}),
}
LABELS = {"rennala": "Rennala NIGT", "malenia": "Malenia NIGT", "sync": "Synchronized NIGT", "afedpg": "AFedPG",
          "rennala-no-outage": "Rennala NIGT, no outage"}
#: The algorithms whose round size (M, or S for Malenia NIGT) is tuned; the others have none (Synchronized NIGT's
#: batch is n, AFedPG updates per gradient) and keep M_init = the grid's smallest value for their warm-up round.
ROUND_SIZE_TUNED = ("rennala", "malenia", "rennala-no-outage")


@dataclass(frozen=True)
class DecreasingTimes:
    """Compute times that decrease during the run (our reading of Fig. 8), in the time model's callable form.

    h_i(t) = 1 + (i − 1)/4 · 2^(−k), k = min(⌊t / ``period``⌋, ``phases`` − 1), agents i = 1..n: at the start the
    agents take 1, 1.25, …, 1 + (n − 1)/4 seconds per gradient (3.25 s at n = 10, close to √10 ≈ 3.16 of Fig. 5);
    every ``period`` seconds each agent's excess over 1 s halves, so the slow agents catch up and the spread of
    times shrinks from ×3.25 to ×1.28 (n = 10, 4 phases). Every value is a dyadic rational, read exactly by
    :class:`~sb3_nigt.clock.timing.TimingModel` (a float prints as its exact decimal).

    :param period: seconds per phase (> 0).
    :param phases: number of phases (>= 1); the last lasts until the run ends.
    :raises ValueError: ``period:`` or ``phases:`` out of range.
    """

    period: float
    phases: int = 4

    def __post_init__(self) -> None:
        if not (math.isfinite(self.period) and self.period > 0):
            raise ValueError(f"period: must be a finite number of seconds > 0, got {self.period!r}")
        if self.phases < 1:
            raise ValueError(f"phases: must be an integer >= 1, got {self.phases!r}")

    def exact(self, agent: int, start: float) -> Fraction:
        """h of ``agent`` (from 0) for a gradient starting at ``start`` simulated seconds, as an exact rational."""
        phase = min(int(start // self.period), self.phases - 1)
        return 1 + Fraction(agent, 4) / 2**phase

    def __call__(self, agent: int, start: float, counter: int) -> float:
        """The time model's callable form: seconds per gradient (the counter is not used)."""
        return float(self.exact(agent, start))


@dataclass(frozen=True)
class Experiment:
    """One experiment: an environment, agents with their times, the algorithms compared, budgets and seeds.

    :param name: the command-line name.
    :param figure: where the paper shows it.
    :param claim: the paper's claim this experiment checks.
    :param env: gymnasium id.
    :param scenario: compute/communication times, a key of :data:`sb3_nigt.compare.SCENARIOS` (h_i, κ_i in
        seconds; docs/algorithms.md).
    :param algorithms: labels of :data:`VARIANTS` (plus ``"rennala-no-outage"`` when ``outages`` is set); the
        first is the reference of every comparison.
    :param simulated_seconds: budget of every run (tuning and reported, every n), in simulated seconds.
    :param n_agents: the numbers of agents; one tuning and one set of reported runs per n.
    :param compute_times: h_i overriding the scenario's (seconds per gradient), or None.
    :param compute_schedule: h_i(t) overriding both (the time model's callable form), or None.
    :param heterogeneous_envs: App. H.3 agents: agent i observes [(−1)^i · o, i].
    :param outages: ``{agent: [(start, end)]}`` in simulated seconds, for every algorithm but
        ``"rennala-no-outage"`` (reported runs only: tuning runs have every agent).
    :param momentum: η (not tuned: the paper found 0.1 best on Humanoid).
    :param thresholds: returns whose first crossing by the evaluation curve is timed, fixed before any run.
    :param return_margin: "alike" tolerance on final return and area per second, in return units; None: a quarter
        of the span of ``thresholds`` (fixed with them).
    :param seeds: reported seeds (at least 5; extended to ``max_seeds`` where an interval straddles a boundary).
    :param max_seeds: the reported seeds when an interval straddles its verdict's boundary.
    :param tuning_seeds: seeds of the tuning runs (never reported); each study uses the first.
    :param alpha_grid: α values tried.
    :param round_size_grid: M (Rennala NIGT) or S (Malenia NIGT) values tried; the other algorithms use its first
        value as M_init.
    :param eval_points: evaluations at k · budget / ``eval_points`` simulated seconds, k = 0 … ``eval_points``.
    :param eval_episodes: evaluation episodes per agent environment and evaluation time.
    :param eval_deterministic: evaluate the mean action (SB3's default) instead of actions sampled from π_θ (the
        default: the paper's objective J(θ), Eq. 1; see :mod:`sb3_nigt.experiments.evaluation`).
    :param max_steps: a cap on environment steps per run (a safety net; the simulated budget ends runs first).
    :param differences: how this experiment differs from the paper's.
    :param expected_ratio: what the claim expects of the other algorithms against the reference: ``"faster"``
        (the reference better), ``"alike"`` or ``"outage"`` (the reference and its no-outage twin alike, the
        others worse).
    :param is_smoke: a smoke run (:meth:`smoke`): a pipeline check whose figures are meaningless; ``differences``
        then describes the full experiment it stands for.
    :param times_from: a trace CSV of a real-clock run (``--times-from``): every algorithm's h_i and κ_i are the
        times measured there (:class:`~sb3_nigt.clock.calibration.TraceTimes`, mode ``"replay"``) instead of the
        scenario's, over the same budget in simulated seconds; None: the scenario's.
    """

    name: str
    figure: str
    claim: str
    env: str
    scenario: str
    algorithms: tuple[str, ...]
    simulated_seconds: float
    n_agents: tuple[int, ...] = (10,)
    compute_times: Optional[tuple[float, ...]] = None
    compute_schedule: Optional[DecreasingTimes] = None
    heterogeneous_envs: bool = False
    outages: Optional[dict[int, list[tuple[float, float]]]] = None
    momentum: float = 0.1
    thresholds: tuple[float, ...] = ()
    return_margin: Optional[float] = None
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    max_seeds: int = 10
    tuning_seeds: tuple[int, ...] = (100,)
    alpha_grid: tuple[float, ...] = ALPHA_GRID
    round_size_grid: tuple[int, ...] = ROUND_SIZE_GRID
    eval_points: int = 20
    eval_episodes: int = 10
    eval_deterministic: bool = False
    max_steps: int = 50_000_000
    differences: str = ""
    expected_ratio: str = "faster"
    notes: tuple[str, ...] = field(default_factory=tuple)
    is_smoke: bool = False
    times_from: Optional[str] = None

    def seconds_for(self, n_agents: int) -> float:
        """The budget of a run with n agents, in simulated seconds: the same for every n."""
        return self.simulated_seconds

    def eval_times(self, n_agents: int) -> list[float]:
        """The evaluation times k · budget / ``eval_points``, k = 0 … ``eval_points`` (simulated seconds): the same
        for every algorithm of the experiment."""
        budget = self.seconds_for(n_agents)
        return [budget * k / self.eval_points for k in range(self.eval_points + 1)]

    def margin(self) -> float:
        """The "alike" tolerance on returns (``return_margin``, or a quarter of the thresholds' span)."""
        if self.return_margin is not None:
            return self.return_margin
        return (max(self.thresholds) - min(self.thresholds)) / 4 if len(self.thresholds) > 1 else 1.0

    def round_sizes(self, algorithm: str) -> tuple[int, ...]:
        """The round sizes tuned for ``algorithm``: the grid for Rennala and Malenia NIGT, else its first value."""
        return self.round_size_grid if algorithm in ROUND_SIZE_TUNED else self.round_size_grid[:1]

    def trials(self, algorithm: str) -> int:
        """Tuning trials of one study (one algorithm at one n): α values × round sizes."""
        return len(self.alpha_grid) * len(self.round_sizes(algorithm))

    def runs(self) -> int:
        """Runs in all: tuning trials (per algorithm and n, some pruned early) and reported runs."""
        return sum(len(self.n_agents) * (self.trials(a) + len(self.seeds)) for a in self.algorithms)

    def smoke(self) -> "Experiment":
        """The same experiment with a tiny budget: two α values, two round sizes, two seeds, a few rounds, small n."""
        n_agents = tuple(sorted({min(n, 3) for n in self.n_agents} | ({2} if len(self.n_agents) > 1 else set())))
        compute = self.compute_times
        outages = None if self.outages is None else {0: [(1.0, 3.0)]}
        # A few rounds: a round with expensive communication takes tens of seconds (κ_i = √i·d^¼). With h = (1, 10)
        # a Rennala round needs M >= 11 for the slow agent to contribute (the equal-weighted return needs both).
        smoke_seconds = {"expensive-comm": 120.0, "comm": 15.0}.get(self.scenario, 10.0) if compute is None else 45.0
        schedule = None if self.compute_schedule is None else DecreasingTimes(smoke_seconds / 4)
        tiny = Experiment(
            name=self.name, figure=self.figure, claim=self.claim, env=self.env, scenario=self.scenario,
            algorithms=self.algorithms, simulated_seconds=smoke_seconds, n_agents=n_agents,
            compute_times=compute, compute_schedule=schedule, heterogeneous_envs=self.heterogeneous_envs,
            outages=outages, momentum=self.momentum, thresholds=self.thresholds, return_margin=self.return_margin,
            seeds=(0, 1), max_seeds=2, tuning_seeds=(100,), alpha_grid=(2.0**-6, 2.0**-4),
            round_size_grid=(4, 6) if compute is None else (12, 14), eval_points=4, eval_episodes=1,
            eval_deterministic=self.eval_deterministic, max_steps=5_000,
            expected_ratio=self.expected_ratio, notes=self.notes, is_smoke=True, times_from=self.times_from,
        )
        return replace(tiny, differences=f"the full experiment's {self.settings()}. How the full experiment differs "
                                         f"from the paper: {self.differences}")

    def settings(self) -> str:
        """The run's settings in words: budget, n, grids, outages and seeds (the report's header uses them)."""
        outages = "".join(f", agent {agent} away {', '.join(f'{a:g}–{b:g} s' for a, b in windows)}"
                          for agent, windows in (self.outages or {}).items())
        grid = ", ".join(format_alpha(alpha) for alpha in self.alpha_grid)
        return (f"{'this smoke run' if self.is_smoke else 'settings'} (budget {self.simulated_seconds:g} simulated s, "
                f"n = {', '.join(map(str, self.n_agents))}, M/S grid {list(self.round_size_grid)}{outages}, seeds "
                f"{list(self.seeds)}, α grid {grid})")


_COMMON = ("Same θ_0 for every algorithm under a seed; η = 0.1 (not tuned over {0.001, 0.01, 0.1}: the paper found "
           "0.1 best on Humanoid, and a third grid axis would triple the tuning cost); α on the full grid and M "
           "(Rennala NIGT) or S (Malenia NIGT) over {20, 30, 50}, tuned per algorithm and per n on one tuning seed "
           "(100) with successive halving over simulated seconds (Optuna), the three best trials of its first rung "
           "then run to the whole budget; curves and verdicts from evaluation "
           "episodes of the current θ at 21 fixed times, actions sampled from π_θ (an estimate of J(θ)); horizon = "
           "the environment's time limit.")

EXPERIMENTS: dict[str, Experiment] = {}

#: Budget multiplier by scenario: communication lengthens every round (κ_i = √i s, or √i·d^¼ ≈ 8.5√i s for
#: Reacher's d ≈ 5,200), so the same number of rounds takes that much more simulated time. A first run of
#: reacher-expensive-comm with 3000 s reached −25 in 2 of 5 Rennala seeds only (docs/reproduction.md).
_COMM_BUDGET = {"equal": 1.0, "heterogeneous": 1.0, "decreasing": 1.0, "comm": 2.0, "expensive-comm": 10.0 / 3.0}


def _add(experiment: Experiment) -> None:
    EXPERIMENTS[experiment.name] = experiment


#: Humanoid budgets, in simulated seconds. By the time model's arithmetic a round of M = 20 gradients takes 2 s with
#: equal times, about 6 s with communication and about 30 s with expensive communication (Humanoid's d = 30,498:
#: d^¼ ≈ 13.2), so these give roughly 250, 500 and 160 Rennala rounds at M = 20.
_HUMANOID_BUDGET = {"equal": 500.0, "comm": 3000.0, "expensive-comm": 5000.0}

for _scenario, _figure, _claim, _expect in (
    ("equal", "Fig. 1", "with equal times all methods perform alike", "alike"),
    ("comm", "Fig. 2", "with compute = communication times (√i), Rennala NIGT is fastest", "faster"),
    ("expensive-comm", "Fig. 2", "with expensive communication (√i·d^¼), Rennala NIGT's lead grows", "faster"),
):
    _add(Experiment(
        name=f"humanoid-{_scenario}", figure=_figure, claim=_claim, env="Humanoid-v4", scenario=_scenario,
        algorithms=("rennala", "sync", "afedpg"), simulated_seconds=_HUMANOID_BUDGET[_scenario],
        thresholds=(150.0, 250.0, 350.0), expected_ratio=_expect,
        differences=_COMMON + " A budget far shorter than the paper's.",
    ))

for _env, _thresholds in (("Reacher-v4", (-25.0, -15.0, -10.0)), ("Walker2d-v4", (200.0, 300.0, 400.0)),
                          ("Hopper-v4", (200.0, 400.0, 600.0))):
    _add(Experiment(
        name=f"{_env.split('-')[0].lower()}-expensive-comm", figure="Fig. 3",
        claim="with expensive communication Rennala NIGT is fastest; the lead is large on Reacher, small on Walker2d and Hopper",
        env=_env, scenario="expensive-comm", algorithms=("rennala", "sync", "afedpg"),
        simulated_seconds=3000.0 * _COMM_BUDGET["expensive-comm"], thresholds=_thresholds,
        differences=_COMMON + " A budget far shorter than the paper's.",
    ))

#: One budget for every n (simulated seconds). Equal times compute Σ 1/h_i = 10 gradients per second at n = 10,
#: twice the √i scenario's 5.0, so 500 s gives agents-equal the gradients agents-heterogeneous gets in 1000 s at n = 10;
#: larger n compute more gradients in the same time, as in the paper's figures (x axis: time).
_AGENTS_BUDGET = {"equal": 500.0, "heterogeneous": 1000.0}

for _scenario, _figure, _expect in (("equal", "Fig. 4", "alike"), ("heterogeneous", "Fig. 5", "faster")):
    _add(Experiment(
        name=f"agents-{_scenario}", figure=_figure,
        claim=("with equal times the methods stay alike as n grows to 100" if _expect == "alike"
               else "with heterogeneous times (√i) Rennala NIGT stays fastest as n grows to 100"),
        env="Reacher-v4", scenario=_scenario, algorithms=("rennala", "sync", "afedpg"),
        simulated_seconds=_AGENTS_BUDGET[_scenario], n_agents=(10, 25, 50, 100), thresholds=(-25.0, -15.0, -10.0),
        expected_ratio=_expect,
        differences=_COMMON + " The paper's environment for this figure is not in our sources: Reacher-v4 here. "
                              f"One budget, {_AGENTS_BUDGET[_scenario]:.0f} simulated s, for every n; α and M "
                              "tuned at every n.",
    ))

for _scenario, _figure in (("comm", "Fig. 6"), ("expensive-comm", "Fig. 7")):
    _add(Experiment(
        name=_scenario, figure=_figure,
        claim="the gap in favour of Rennala NIGT grows with the cost of communication",
        env="Reacher-v4", scenario=_scenario, algorithms=("rennala", "sync", "afedpg"),
        simulated_seconds=3000.0 * _COMM_BUDGET[_scenario], thresholds=(-25.0, -15.0, -10.0),
        differences=_COMMON + " The paper's environment for this figure is not in our sources: Reacher-v4 here.",
    ))

_DECREASING_BUDGET = 1500.0
_add(Experiment(
    name="decreasing", figure="Fig. 8", claim="with decreasing compute times Rennala NIGT stays fastest",
    env="Reacher-v4", scenario="decreasing", compute_schedule=DecreasingTimes(_DECREASING_BUDGET / 4),
    algorithms=("rennala", "sync", "afedpg"), simulated_seconds=_DECREASING_BUDGET, thresholds=(-25.0, -15.0, -10.0),
    differences=_COMMON + " Our reading of 'decreasing': compute times that decrease during the run, "
                          "h_i(t) = 1 + (i − 1)/4 · 2^(−⌊4t/T⌋) (the slow agents catch up every quarter of the "
                          "budget T), not h_i = √(n + 1 − i), which is Fig. 5's √i with the agents relabelled.",
))

_H3 = ("agent i observes [(−1)^i · o, i]; S (Malenia NIGT's round size) tuned over {20, 30, 50} like M; the curves "
       "are the evaluation returns on each agent's environment and their equal-weighted mean, the paper's J.")
_add(Experiment(
    name="heterogeneous-envs", figure="App. H.3",
    claim="with heterogeneous environments Malenia NIGT ≫ AFedPG (equal-weighted return)",
    env="Humanoid-v4", scenario="heterogeneous", compute_times=(1.0, 10.0), n_agents=(2,), heterogeneous_envs=True,
    algorithms=("malenia", "rennala", "afedpg"), simulated_seconds=18000.0, thresholds=(150.0, 250.0, 350.0),
    differences=_COMMON + " The paper's task (Humanoid-v4, h = (1, 10)): " + _H3 + " 18,000 simulated s: at S = 20 a "
                          "Malenia NIGT round lasts 60 s (h = (1, 10)), so at least 300 updates.",
))

_add(Experiment(
    name="heterogeneous-envs-hopper", figure="App. H.3 (ours, on Hopper)",
    claim="with heterogeneous environments Malenia NIGT ≫ AFedPG (equal-weighted return)",
    env="Hopper-v4", scenario="heterogeneous", compute_times=(1.0, 10.0), n_agents=(2,), heterogeneous_envs=True,
    algorithms=("malenia", "rennala", "afedpg"), simulated_seconds=18000.0, thresholds=(200.0, 400.0, 600.0),
    differences=_COMMON + " Our extra: App. H.3's construction on Hopper-v4 instead of the paper's Humanoid-v4; "
                          + _H3,
))

_add(Experiment(
    name="outage", figure="ours",
    claim="a disconnected agent does not delay Rennala NIGT",
    env="Reacher-v4", scenario="heterogeneous", algorithms=("rennala", "rennala-no-outage", "sync", "malenia"),
    simulated_seconds=1500.0, outages={0: [(300.0, 900.0)]}, thresholds=(-25.0, -15.0, -10.0),
    expected_ratio="outage",
    differences="Not in the paper. Agent 0 (the fastest, h = 1 s) is away from 300 to 900 simulated seconds. "
                "Rennala goes on with the other nine; Synchronized NIGT and Malenia wait for it. " + _COMMON,
))


def format_alpha(alpha: float) -> str:
    """``2^-6`` for powers of two, else the float."""
    exponent = math.log2(alpha)
    return f"2^{exponent:g}" if exponent == int(exponent) else f"{alpha:g}"


@functools.lru_cache(maxsize=4)
def recorded_times(path: str) -> Any:
    """The :class:`~sb3_nigt.clock.calibration.TraceTimes` of a trace CSV (read once per path).

    :raises ValueError: for a file that is not a usable trace (see ``TraceTimes.read_csv``).
    """
    from sb3_nigt.clock.calibration import TraceTimes

    return TraceTimes.read_csv(path)


def with_trace_times(experiment: Experiment, path: str) -> Experiment:
    """The experiment on the agents of a recorded real run (``--times-from``): their measured h_i and κ_i replace
    the scenario's; the budget stays the experiment's, in simulated seconds.

    :raises ValueError: starting ``--times-from:`` for a file that is not a usable trace, or a trace with fewer
        agents than the experiment's largest n.
    """
    try:
        recorded = recorded_times(str(path))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--times-from: {path}: {exc}") from None
    if recorded.n_agents < max(experiment.n_agents):
        raise ValueError(f"--times-from: {path} records {recorded.n_agents} agents; the experiment {experiment.name} needs "
                         f"{max(experiment.n_agents)} (n = {', '.join(map(str, experiment.n_agents))})")
    return replace(experiment, times_from=str(path))
