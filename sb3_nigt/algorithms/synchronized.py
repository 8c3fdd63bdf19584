"""Synchronized NIGT: the paper's synchronous baseline (Algorithm 1 with one gradient per agent per round)."""

from __future__ import annotations

from sb3_nigt.algorithms.base import NIGTAlgorithm
from sb3_nigt.core.aggregation import AggregationRule, SynchronizedAggregation


class SynchronizedNIGT(NIGTAlgorithm):
    """Synchronized NIGT: every round, each of the n agents computes exactly one gradient at θ̃_t; the server waits
    for all of them, averages, and takes the NIGT step.

    The baseline of Tyurin, Spiridonov, Rudenko, "Asynchronous Policy Gradient Aggregation for Efficient
    Distributed Reinforcement Learning", ICLR 2026 (arXiv 2509.24305), Section 6: the NIGT outer loop
    (Algorithm 1) with Aggregate(θ̃_t) = (1/n) Σ_i g_H(τ_i, θ̃_t). Each agent uploads as soon as its one gradient is
    done, so a round costs max_i (2κ_i + h_i) and the slowest agent sets the pace (h = (1, 2, 4), κ = 0: 4 simulated
    seconds per round; h = (1, 10), κ = (5, 0): 11 s; docs/time.md). A round is n gradients: ``round_size`` is
    not used (giving it warns), and ``initial_round_size`` only sizes the observation warm-up round (fresh
    VecNormalize statistics, docs/time.md). Each environment weighs 1/n, so it is unbiased with heterogeneous environments too.

    Every argument is documented in :class:`~sb3_nigt.algorithms.base.NIGTAlgorithm`.

    Example::

        from sb3_nigt import SynchronizedNIGT

        model = SynchronizedNIGT("MlpPolicy", "Pendulum-v1", n_agents=10, compute_times="sqrt", seed=0)
        model.learn(20_000)
    """

    uses_round_size = False
    _round_size_note = "a round is one gradient per agent, n in all"

    def _make_rule(self, round_size: int) -> AggregationRule:
        return SynchronizedAggregation(self.n_agents, 1)
