"""The paper's experiments (Section 6 and App. H), and one of our own, as data (docs/reproduction.md).

Each :class:`Experiment` fixes everything a run needs except the learning rate α, which is tuned per experiment
and per algorithm on the grid 2^-10 … 2^-1 with seeds kept apart from the reported ones.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional

#: α grid of the paper (App. H): 2^-10, 2^-9, …, 2^-1.
ALPHA_GRID: tuple[float, ...] = tuple(2.0**-k for k in range(10, 0, -1))
#: the α grid of the expensive experiments (every other point of the paper's grid).
COARSE_ALPHA_GRID: tuple[float, ...] = tuple(2.0**-k for k in (9, 7, 5, 3))

#: algorithm label → (class key of :data:`sb3_nigt.compare.ALGORITHMS`, extra constructor arguments).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "rennala": ("rennala", {}),
    "malenia": ("malenia", {}),
    "sync": ("sync", {}),
    "afedpg": ("afedpg", {}),
}
LABELS = {"rennala": "Rennala NIGT", "malenia": "Malenia NIGT", "sync": "Synchronized NIGT", "afedpg": "AFedPG",
          "rennala-no-outage": "Rennala NIGT, no outage"}


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
        first is the reference of every ratio.
    :param simulated_seconds: budget of every reported run, in simulated seconds (each n of ``n_agents``).
    :param n_agents: the numbers of agents; one set of runs per n.
    :param compute_times: h_i overriding the scenario's (seconds per gradient), or None.
    :param heterogeneous_envs: App. H.3 agents: agent i observes [(−1)^i · o, i].
    :param outages: ``{agent: [(start, end)]}`` in simulated seconds, for every algorithm but
        ``"rennala-no-outage"``.
    :param batch_size: M = M_init.
    :param momentum: η.
    :param thresholds: returns whose first crossing is timed, fixed before any run (docs/reproduction.md says how).
    :param seeds: reported seeds.
    :param tuning_seeds: seeds of the α tuning runs (never reported).
    :param alpha_grid: α values tried.
    :param tuning_fraction: tuning runs last this fraction of ``simulated_seconds``.
    :param tune_at: the n at which α is tuned (reused for the other n); None: the first of ``n_agents``.
    :param max_steps: a cap on environment steps per run (a safety net; the simulated budget ends runs first).
    :param differences: how this experiment differs from the paper's.
    :param budget_per_agents: scale the budget of n > 10 agents by the agents' compute rate Σ 1/h_i at n = 10
        over that at n (see :meth:`seconds_for`), so that every n gets about the same number of gradients.
    :param expected_ratio: what the claim expects of time(other) / time(reference): ``"faster"`` (above 1),
        ``"alike"`` (near 1) or ``"outage"`` (the reference and its no-outage twin alike, the others slower).
    :param is_smoke: a smoke run (:meth:`smoke`): a pipeline check whose figures are meaningless; ``differences``
        then describes the full experiment it stands for.
    :param times_from: a trace CSV of a real-clock run (``--times-from``): every algorithm's h_i and κ_i are the
        times measured there (:class:`~sb3_nigt.clock.calibration.TraceTimes`, mode ``"replay"``) instead of the
        scenario's; None: the scenario's.
    """

    def seconds_for(self, n_agents: int) -> float:
        """The budget of a run with n agents, in simulated seconds.

        With ``budget_per_agents`` and n > 10: ``simulated_seconds`` × Σ_{i≤10} 1/h_i / Σ_{i≤n} 1/h_i, rounded to
        whole seconds, so that n agents compute about as many gradients as 10 do in ``simulated_seconds``
        (10/n for equal times; for h_i = √i, 1000 s at n = 10 becomes 581, 394 and 270 s at n = 25, 50, 100).
        """
        if not self.budget_per_agents or n_agents <= 10:
            return self.simulated_seconds
        return float(round(self.simulated_seconds * compute_rate(self, 10) / compute_rate(self, n_agents)))

    name: str
    figure: str
    claim: str
    env: str
    scenario: str
    algorithms: tuple[str, ...]
    simulated_seconds: float
    n_agents: tuple[int, ...] = (10,)
    compute_times: Optional[tuple[float, ...]] = None
    heterogeneous_envs: bool = False
    outages: Optional[dict[int, list[tuple[float, float]]]] = None
    batch_size: int = 20
    momentum: float = 0.1
    thresholds: tuple[float, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    tuning_seeds: tuple[int, ...] = (100,)
    alpha_grid: tuple[float, ...] = ALPHA_GRID
    tuning_fraction: float = 0.5
    tune_at: Optional[int] = None
    max_steps: int = 20_000_000
    differences: str = ""
    budget_per_agents: bool = False
    expected_ratio: str = "faster"  # "faster": the reference should need less time; "alike": about the same
    notes: tuple[str, ...] = field(default_factory=tuple)
    is_smoke: bool = False
    times_from: Optional[str] = None

    def runs(self) -> int:
        """Runs in all: tuning (algorithms × α × tuning seeds, at one n) and reported (algorithms × n × seeds)."""
        return len(self.algorithms) * (len(self.alpha_grid) * len(self.tuning_seeds) + len(self.n_agents) * len(self.seeds))

    def smoke(self) -> "Experiment":
        """The same experiment with a tiny budget: two α values, one tuning seed, two seeds, a few rounds, small n."""
        n_agents = tuple(sorted({min(n, 3) for n in self.n_agents} | ({2} if len(self.n_agents) > 1 else set())))
        compute = self.compute_times
        outages = None if self.outages is None else {0: [(1.0, 3.0)]}
        # A few rounds: a round with expensive communication takes tens of seconds (κ_i = √i·d^¼). With h = (1, 10)
        # a Rennala round needs M >= 11 for the slow agent to contribute (the equal-weighted return needs both).
        smoke_seconds = {"expensive-comm": 120.0, "comm": 15.0}.get(self.scenario, 10.0) if compute is None else 45.0
        tiny = Experiment(
            name=self.name, figure=self.figure, claim=self.claim, env=self.env, scenario=self.scenario,
            algorithms=self.algorithms, simulated_seconds=smoke_seconds, n_agents=n_agents,
            compute_times=compute, heterogeneous_envs=self.heterogeneous_envs, outages=outages, batch_size=4 if compute is None else 12,
            momentum=self.momentum, thresholds=self.thresholds, seeds=(0, 1), tuning_seeds=(100,),
            alpha_grid=(2.0**-6, 2.0**-4), tuning_fraction=0.5, tune_at=None, max_steps=5_000,
            expected_ratio=self.expected_ratio, notes=self.notes, budget_per_agents=self.budget_per_agents, is_smoke=True,
            times_from=self.times_from,
        )
        return replace(tiny, differences=f"the full experiment's {self.settings()}. How the full experiment differs "
                                         f"from the paper: {self.differences}")

    def settings(self) -> str:
        """The run's settings in words: budget, n, M, outages, seeds and α grid (the report's header uses them)."""
        outages = "".join(f", agent {agent} away {', '.join(f'{a:g}–{b:g} s' for a, b in windows)}"
                          for agent, windows in (self.outages or {}).items())
        grid = ", ".join(format_alpha(alpha) for alpha in self.alpha_grid)
        return (f"{'this smoke run' if self.is_smoke else 'settings'} (budget {self.simulated_seconds:g} simulated s, "
                f"n = {', '.join(map(str, self.n_agents))}, M = {self.batch_size}{outages}, seeds "
                f"{list(self.seeds)}, α grid {grid})")


# Budgets: chosen so that every experiment takes about an hour or less on 2 cores of this project's machine (the
# estimate of --list is measured there: steps per simulated second and steps per wall second at θ_0).
_COMMON = ("Same θ_0 for every algorithm under a seed; η = 0.1; M = M_init = 20 (not tuned over {20, 30, 50}); "
           "α tuned per algorithm on one tuning seed (100) with half the budget, by the mean training return over "
           "the last quarter of the tuning run; the curve is the mean return of the last 100 training trajectories "
           "(no separate evaluation episodes); horizon = the environment's time limit.")

EXPERIMENTS: dict[str, Experiment] = {}

#: Budget multiplier by scenario: communication lengthens every round (κ_i = √i s, or √i·d^¼ ≈ 8.5√i s for
#: Reacher's d ≈ 5,200), so the same number of rounds takes that much more simulated time. A first run of
#: reacher-expensive-comm with 3000 s reached −25 in 2 of 5 Rennala seeds only (docs/reproduction.md).
_COMM_BUDGET = {"equal": 1.0, "heterogeneous": 1.0, "decreasing": 1.0, "comm": 2.0, "expensive-comm": 10.0 / 3.0}


def _add(experiment: Experiment) -> None:
    EXPERIMENTS[experiment.name] = experiment


#: Humanoid budgets, in simulated seconds (the three took 13 to 88 CPU minutes, 1.2 to 3.7 times their estimates, on
#: a shared machine). By the time model's arithmetic a round of M = 20 gradients takes 2 s with equal times, about
#: 6 s with communication and about 30 s with expensive communication (Humanoid's d = 30,498: d^¼ ≈ 13.2), so these
#: give roughly 250, 500 and 160 Rennala rounds.
_HUMANOID_BUDGET = {"equal": 500.0, "comm": 3000.0, "expensive-comm": 5000.0}

for _scenario, _figure, _claim, _expect in (
    ("equal", "Fig. 1", "with equal times all methods perform alike", "alike"),
    ("comm", "Fig. 2", "with compute = communication times (√i), Rennala NIGT is fastest", "faster"),
    ("expensive-comm", "Fig. 2", "with expensive communication (√i·d^¼), Rennala NIGT's lead grows", "faster"),
):
    _add(Experiment(
        name=f"humanoid-{_scenario}", figure=_figure, claim=_claim, env="Humanoid-v4", scenario=_scenario,
        algorithms=("rennala", "sync", "afedpg"), simulated_seconds=_HUMANOID_BUDGET[_scenario],
        thresholds=(150.0, 250.0, 350.0),
        seeds=(0, 1, 2), alpha_grid=COARSE_ALPHA_GRID, expected_ratio=_expect,
        differences=_COMMON + " Humanoid is the paper's main task but costs ~1 ms per step here: 3 seeds (not 5), "
                              "the coarse α grid 2^-9, 2^-7, 2^-5, 2^-3, and a budget far shorter than the paper's.",
    ))

for _env, _budget, _thresholds in (
    ("Reacher-v4", 3000.0 * _COMM_BUDGET["expensive-comm"], (-25.0, -15.0, -10.0)),
    ("Walker2d-v4", 3000.0 * _COMM_BUDGET["expensive-comm"], (200.0, 300.0, 400.0)),
    ("Hopper-v4", 3000.0 * _COMM_BUDGET["expensive-comm"], (200.0, 400.0, 600.0)),
):
    _add(Experiment(
        name=f"{_env.split('-')[0].lower()}-expensive-comm", figure="Fig. 3",
        claim="with expensive communication Rennala NIGT is fastest; the lead is large on Reacher, small on Walker2d and Hopper",
        env=_env, scenario="expensive-comm", algorithms=("rennala", "sync", "afedpg"), simulated_seconds=_budget,
        thresholds=_thresholds, alpha_grid=ALPHA_GRID if _env == "Reacher-v4" else COARSE_ALPHA_GRID,
        differences=_COMMON + ("" if _env == "Reacher-v4" else " Coarse α grid (2^-9, 2^-7, 2^-5, 2^-3).")
                    + " A budget far shorter than the paper's.",
    ))

#: Budgets at n = 10, in simulated seconds (scaled for larger n by Experiment.seconds_for: × 10/n for equal times;
#: 581, 394 and 270 s at n = 25, 50, 100 for h_i = √i). Equal times compute Σ 1/h_i = 10 gradients per second at
#: n = 10, twice the √i scenario's 5.0, so 500 s gives agents-equal the gradients agents-heterogeneous gets in
#: 1000 s. agents-heterogeneous's first run scaled by 10/n for √i too, which gave n = 100 only 37% of n = 10's
#: gradients (docs/reproduction.md).
_AGENTS_BUDGET = {"equal": 500.0, "heterogeneous": 1000.0}

for _scenario, _figure, _expect in (("equal", "Fig. 4", "alike"), ("heterogeneous", "Fig. 5", "faster")):
    _add(Experiment(
        name=f"agents-{_scenario}", figure=_figure,
        claim=("with equal times the methods stay alike as n grows to 100" if _expect == "alike"
               else "with heterogeneous times (√i) Rennala NIGT stays fastest as n grows to 100"),
        env="Reacher-v4", scenario=_scenario, algorithms=("rennala", "sync", "afedpg"),
        simulated_seconds=_AGENTS_BUDGET[_scenario], n_agents=(10, 25, 50, 100), thresholds=(-25.0, -15.0, -10.0), seeds=(0, 1, 2), alpha_grid=COARSE_ALPHA_GRID,
        tune_at=10, expected_ratio=_expect, budget_per_agents=True,
        differences=_COMMON + " The paper's environment for this figure is not in our sources: Reacher-v4 here. "
                              "α is tuned once, at n = 10, on the coarse grid, and reused for n = 25, 50, 100; 3 seeds; "
                              f"the budget is {_AGENTS_BUDGET[_scenario]:.0f} simulated s at n = 10, scaled for larger n by "
                              "the agents' compute rate Σ 1/h_i so that every n gets about the same number of gradients.",
    ))

for _scenario, _figure in (("comm", "Fig. 6"), ("expensive-comm", "Fig. 7")):
    _add(Experiment(
        name=_scenario, figure=_figure,
        claim="the gap in favour of Rennala NIGT grows with the cost of communication",
        env="Reacher-v4", scenario=_scenario, algorithms=("rennala", "sync", "afedpg"),
        simulated_seconds=3000.0 * _COMM_BUDGET[_scenario],
        thresholds=(-25.0, -15.0, -10.0),
        differences=_COMMON + " The paper's environment for this figure is not in our sources: Reacher-v4 here.",
    ))

_add(Experiment(
    name="decreasing", figure="Fig. 8", claim="with decreasing compute times Rennala NIGT stays fastest",
    env="Reacher-v4", scenario="decreasing", algorithms=("rennala", "sync", "afedpg"), simulated_seconds=1500.0,
    thresholds=(-25.0, -15.0, -10.0),
    differences=_COMMON + " Our reading of 'decreasing': h_i = √(n + 1 − i), a relabelling of √i (docs/algorithms.md); "
                          "with identical agents it should match the heterogeneous scenario.",
))

_add(Experiment(
    name="heterogeneous-envs", figure="App. H.3",
    claim="with heterogeneous environments Malenia NIGT ≫ AFedPG (equal-weighted return)",
    env="Hopper-v4", scenario="heterogeneous", compute_times=(1.0, 10.0), n_agents=(2,), heterogeneous_envs=True,
    algorithms=("malenia", "rennala", "afedpg"), simulated_seconds=6000.0, thresholds=(200.0, 400.0, 600.0),
    alpha_grid=COARSE_ALPHA_GRID,
    differences=_COMMON + " The paper uses Humanoid-v4; Hopper-v4 here (the same construction: agent i observes "
                          "[(−1)^i · o, i]). The curve is the equal-weighted training return, the mean over the two "
                          "agents of each one's last 100 trajectories; coarse α grid.",
))

_add(Experiment(
    name="outage", figure="ours (the paper's 'slow or even disconnected' agent)",
    claim="a disconnected agent does not delay Rennala NIGT",
    env="Reacher-v4", scenario="heterogeneous", algorithms=("rennala", "rennala-no-outage", "sync", "malenia"),
    simulated_seconds=1500.0, outages={0: [(300.0, 900.0)]}, thresholds=(-25.0, -15.0, -10.0),
    alpha_grid=COARSE_ALPHA_GRID, expected_ratio="outage",
    differences="Not in the paper. Agent 0 (the fastest, h = 1 s) is away from 300 to 900 simulated seconds. "
                "Rennala goes on with the other nine; Synchronized NIGT and Malenia wait for it. " + _COMMON,
))


#: For --list's cost estimate only: environment steps per gradient at θ_0 (Reacher always 50) and steps per wall
#: second of RennalaNIGT inline at θ_0 on one core, measured on this project's machine on 2026-11-29
#: (``learn(6000)``, n = 10, h_i = √i, M = 20). Trajectories grow as the policy learns, so the estimate is rough.
ENV_COST: dict[str, tuple[float, float]] = {
    "Reacher-v4": (50.0, 3843.0), "Hopper-v4": (14.0, 2214.0), "Walker2d-v4": (15.0, 2271.0), "Humanoid-v4": (22.0, 1167.0),
}


def compute_times_of(experiment: Experiment, n_agents: int) -> list[float]:
    """h_1, …, h_n of the experiment's agents (seconds per gradient): its ``compute_times`` or its scenario's, read
    by :class:`~sb3_nigt.clock.timing.TimingModel` as the algorithms read them, then rounded to floats; with
    ``times_from``, each agent's mean recorded gradient."""
    from sb3_nigt.clock.timing import TimingModel
    from sb3_nigt.compare import scenario_times

    if experiment.times_from is not None:
        recorded = recorded_times(experiment.times_from).compute.durations[:n_agents]
        return [sum(durations) / len(durations) for durations in recorded]

    compute = list(experiment.compute_times) if experiment.compute_times is not None else scenario_times(experiment.scenario, n_agents)[0]
    model = TimingModel(len(compute) if isinstance(compute, list) else n_agents, compute)
    return [float(model.compute_time(agent)) for agent in range(model.n_agents)]


@functools.lru_cache(maxsize=4)
def recorded_times(path: str) -> Any:
    """The :class:`~sb3_nigt.clock.calibration.TraceTimes` of a trace CSV (read once per path).

    :raises ValueError: for a file that is not a usable trace (see ``TraceTimes.read_csv``).
    """
    from sb3_nigt.clock.calibration import TraceTimes

    return TraceTimes.read_csv(path)


def with_trace_times(experiment: Experiment, path: str) -> Experiment:
    """The experiment on the agents of a recorded real run (``--times-from``): their measured h_i and κ_i, and the
    budget and outage windows scaled by the agents' compute rate, Σ_i 1/h_i of the scenario over that of the trace
    (at the first n), so that a run computes about as many gradients as with the scenario's times.

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
    n = experiment.n_agents[0]
    scale = compute_rate(experiment, n) / compute_rate(replace(experiment, times_from=str(path)), n)
    outages = None if experiment.outages is None else {
        agent: [(a * scale, b * scale) for a, b in windows] for agent, windows in experiment.outages.items()}
    return replace(experiment, times_from=str(path), simulated_seconds=experiment.simulated_seconds * scale, outages=outages)


def compute_rate(experiment: Experiment, n_agents: int) -> float:
    """Σ_i 1/h_i: the gradients n agents compute per simulated second when none waits (communication aside)."""
    return sum(1.0 / h for h in compute_times_of(experiment, n_agents))


def gradients_per_second(experiment: Experiment, algorithm: str, n_agents: int) -> float:
    """Gradients per simulated second, roughly: M / (M / Σ_i 1/h_i + 2 min_i κ_i) for Rennala and Malenia (a round
    of M gradients, plus a broadcast and an upload), Σ_i 1/(h_i + 2κ_i) for AFedPG (every agent cycles),
    n / max_i (h_i + 2κ_i) for Synchronized NIGT (one gradient per agent per round)."""
    from sb3_nigt.compare import scenario_times

    _, communication = scenario_times(experiment.scenario, n_agents)
    agents = range(1, n_agents + 1)
    h = compute_times_of(experiment, n_agents)
    kappa_of = {"sqrt": lambda i: math.sqrt(i), "expensive": lambda i: math.sqrt(i) * 5000 ** 0.25,
                "equal": lambda i: 1.0}
    kappa = [kappa_of[communication](i) if isinstance(communication, str) and communication in kappa_of else 0.0 for i in agents]
    if algorithm == "sync":
        return n_agents / max(hi + 2 * ki for hi, ki in zip(h, kappa))
    if algorithm == "afedpg":  # every agent cycles: download, compute, upload
        return sum(1.0 / (hi + 2 * ki) for hi, ki in zip(h, kappa))
    # Rennala, Malenia: a round of M gradients computed by all agents, plus the fastest agents' broadcast and upload
    m = float(experiment.batch_size)
    return m / (m / sum(1.0 / hi for hi in h) + 2 * min(kappa))


def estimated_cpu_seconds(experiment: Experiment) -> float:
    """A rough estimate of the experiment's CPU seconds (see :data:`ENV_COST`)."""
    steps_per_gradient, steps_per_second = ENV_COST.get(experiment.env, (50.0, 2000.0))
    total = 0.0
    tune_n = experiment.tune_at or experiment.n_agents[0]
    for algorithm in experiment.algorithms:
        total += (gradients_per_second(experiment, algorithm, tune_n) * experiment.seconds_for(tune_n) * experiment.tuning_fraction
                  * len(experiment.alpha_grid) * len(experiment.tuning_seeds))
        for n in experiment.n_agents:
            total += gradients_per_second(experiment, algorithm, n) * experiment.seconds_for(n) * len(experiment.seeds)
    return total * steps_per_gradient / steps_per_second


def format_alpha(alpha: float) -> str:
    """``2^-6`` for powers of two, else the float."""
    exponent = math.log2(alpha)
    return f"2^{exponent:g}" if exponent == int(exponent) else f"{alpha:g}"
