"""Evaluation of the current policy at fixed simulated times, on every agent's environment (docs/reproduction.md).

A run's curves come from evaluation episodes of the current θ, not from its training trajectories (whose mean over
the last 100 lags θ: for a slow agent that window spans a large part of the run). At every time t_k of
:meth:`~sb3_nigt.experiments.registry.Experiment.eval_times` the policy θ(t_k) — the parameters after every update
made at or before t_k, except at the budget, where training stops before the update of a round that ends exactly
then — plays ``eval_episodes`` episodes on a separately built copy of each agent's environment, through SB3's
:func:`~stable_baselines3.common.evaluation.evaluate_policy`.

By default the episodes sample their actions from π_θ itself, so that the mean is an unbiased estimate of the
paper's objective J(θ) (Eq. 1), the quantity the algorithms climb. The deterministic (mean-action) return SB3 reports
by default is another quantity: on Reacher it hardly moved in a whole run while J(θ) rose (docs/reproduction.md,
"What the first faithful run taught us"). The sampling noise comes from torch's generator, seeded per run, time and
environment column inside :func:`torch.random.fork_rng`, so an evaluation never touches the training's randomness and
a recovered run evaluates bit for bit as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_nigt.experiments.registry import Experiment

#: The column label of an evaluation on the one environment every agent shares.
SHARED = "all"
#: The column label of the equal-weighted mean over the agents' environments (the paper's J, App. H.3).
MEAN = "mean"


def eval_env_labels(experiment: Experiment, n_agents: int) -> list[str]:
    """The evaluation columns of a run: ``["all"]`` for one shared environment, else ``agent0`` … ``agent{n-1}``."""
    return [f"agent{i}" for i in range(n_agents)] if experiment.heterogeneous_envs else [SHARED]


def eval_env_factories(experiment: Experiment, n_agents: int) -> list[Callable[[], Any]]:
    """One environment factory per evaluation column (:func:`eval_env_labels`), built like the agents' own."""
    import gymnasium as gym

    from sb3_nigt.envs import heterogeneous_envs

    if experiment.heterogeneous_envs:
        return list(heterogeneous_envs(experiment.env, n_agents))
    return [lambda: gym.make(experiment.env)]


def eval_seed(run_seed: int, index: int) -> int:
    """The seed of the evaluation episodes at time index ``index`` of a run with seed ``run_seed``: the same for
    every algorithm under a seed, so that paired comparisons meet the same starting states."""
    return 1_000_003 * int(run_seed) + 7919 * int(index) + 17


class Evaluator(BaseCallback):
    """Evaluates the current θ at fixed simulated times and stops training at the budget.

    :param times: the evaluation times t_0 < t_1 < … (simulated seconds); the last is the budget.
    :param factories: one environment factory per evaluation column.
    :param labels: the columns' labels (:func:`eval_env_labels`).
    :param episodes: episodes per environment and time (>= 1).
    :param seed: the run's seed (:func:`eval_seed`).
    :param deterministic: play the mean action (SB3's default) instead of sampling from π_θ (the paper's J(θ)).
    :param report: called as ``report(index, seconds, returns)`` after each evaluation (``returns``: column →
        mean return); returning True stops training (a pruned tuning trial).

    ``rows`` holds ``(seconds, env steps, communications, column, mean return)``, one per column and time, plus
    the ``"mean"`` column (equal-weighted) where there are several environments.

    :raises ValueError: ``times:`` empty or not increasing, ``episodes:`` < 1, or ``labels:`` not matching
        ``factories``.
    """

    def __init__(self, times: list[float], factories: list[Callable[[], Any]], labels: list[str], episodes: int,
                 seed: int, report: Optional[Callable[[int, float, dict[str, float]], bool]] = None,
                 deterministic: bool = False) -> None:
        super().__init__()
        if not times or any(b <= a for a, b in zip(times, times[1:])):
            raise ValueError(f"times: must be a non-empty increasing list of simulated seconds, got {times!r}")
        if episodes < 1:
            raise ValueError(f"episodes: must be >= 1, got {episodes!r}")
        if len(labels) != len(factories):
            raise ValueError(f"labels: one per factory ({len(factories)}), got {len(labels)}")
        self.times, self.labels, self.episodes, self.seed, self.report = list(times), list(labels), episodes, seed, report
        self.deterministic = bool(deterministic)
        self.envs = [DummyVecEnv([factory]) for factory in factories]
        self.next = 0
        self.stopped = False
        self.rows: list[tuple[float, int, int, str, float]] = []

    def _evaluate(self) -> None:
        index = self.next
        returns: dict[str, float] = {}
        for column, (label, env) in enumerate(zip(self.labels, self.envs)):
            seed = eval_seed(self.seed, index)
            env.seed(seed)
            with torch.random.fork_rng(devices=[]):  # the action noise: its own stream, the global one untouched
                torch.manual_seed(seed + 104_729 * column)
                mean, _ = evaluate_policy(self.model, env, n_eval_episodes=self.episodes,
                                          deterministic=self.deterministic, warn=False)
            returns[label] = float(mean)  # type: ignore[arg-type]
        if len(returns) > 1:
            returns[MEAN] = math.fsum(returns.values()) / len(returns)
        seconds = self.times[index]
        steps, communications = int(self.model.num_timesteps), int(getattr(self.model, "n_communications", 0))
        self.rows += [(seconds, steps, communications, label, value) for label, value in returns.items()]
        self.next += 1
        if self.report is not None and self.report(index, seconds, returns):
            self.stopped = True

    def _catch_up(self, now: float, inclusive: bool) -> None:
        while not self.stopped and self.next < len(self.times) and (
                self.times[self.next] < now or (inclusive and self.times[self.next] <= now)):
            self._evaluate()

    def _on_training_start(self) -> None:
        self._catch_up(0.0, inclusive=True)  # θ_0, the same for every algorithm under a seed

    def _on_step(self) -> bool:
        now = float(self.model.simulated_time)  # type: ignore[attr-defined]
        self._catch_up(now, inclusive=False)  # θ has every update made before now (this round's comes after)
        return not self.stopped and now < self.times[-1]

    def _on_training_end(self) -> None:
        if float(self.model.simulated_time) >= self.times[-1]:  # type: ignore[attr-defined]
            self._catch_up(self.times[-1], inclusive=True)  # the budget itself, with the last θ
        for env in self.envs:
            env.close()
