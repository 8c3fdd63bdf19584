"""Rennala NIGT (paper, Algorithm 1 with AggregateRennala, Algorithm 2): homogeneous agents."""

from __future__ import annotations

from sb3_nigt.algorithms.base import NIGTAlgorithm
from sb3_nigt.core.aggregation import AggregationRule, RennalaAggregation


class RennalaNIGT(NIGTAlgorithm):
    """Rennala NIGT: asynchronous NIGT whose rounds take the first M gradients from whichever agents finish.

    Tyurin, Spiridonov, Rudenko, "Asynchronous Policy Gradient Aggregation for Efficient Distributed
    Reinforcement Learning", ICLR 2026 (arXiv 2509.24305), Algorithms 1 and 2. Each round broadcasts θ̃_t to
    all n agents; each agent samples trajectories of at most H steps at θ̃_t and accumulates g_H locally; the
    round ends when M gradients have arrived in total (in-flight work is abandoned) and the aggregate is
    (Σ_i ḡ_i)/M. Fast agents contribute more (M_i grows with 1/h_i); stragglers never block a round.

    Rennala assumes homogeneous agents (one shared environment). Given one environment per agent it still runs,
    but warns: its aggregate then estimates a speed-weighted mean of the agents' gradients; use MaleniaNIGT.

    Every argument is documented in :class:`~sb3_nigt.algorithms.base.NIGTAlgorithm`.

    Example::

        from sb3_nigt import RennalaNIGT

        model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=10, compute_times="sqrt", seed=0)
        model.learn(20_000)
        print(model.simulated_time)
    """

    speed_weighted = True

    def _make_rule(self, round_size: int) -> AggregationRule:
        return RennalaAggregation(self.n_agents, round_size)
