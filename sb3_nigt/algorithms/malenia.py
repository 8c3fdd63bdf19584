"""Malenia NIGT (paper, Algorithm 1 with AggregateMalenia, Algorithm 3): heterogeneous agents."""

from __future__ import annotations

from sb3_nigt.algorithms.base import NIGTAlgorithm
from sb3_nigt.core.aggregation import AggregationRule, MaleniaAggregation


class MaleniaNIGT(NIGTAlgorithm):
    """Malenia NIGT: asynchronous NIGT that stays unbiased when every agent has its own environment.

    Tyurin, Spiridonov, Rudenko, "Asynchronous Policy Gradient Aggregation for Efficient Distributed
    Reinforcement Learning", ICLR 2026 (arXiv 2509.24305), Algorithms 1 and 3. The goal is
    J(θ) = (1/n) Σ_i J_i(θ), where agent i samples from its own environment. Each round broadcasts θ̃_t; every
    agent samples trajectories at θ̃_t and accumulates ḡ_i and M_i; the round goes on until every M_i >= 1 and
    ((1/n) Σ_i 1/M_i)^(−1) >= S/n (S = ``round_size``); the aggregate is (1/n) Σ_i ḡ_i/M_i. Fast agents still
    compute more gradients (which lowers their variance) but every agent's environment weighs 1/n.

    Unlike RennalaNIGT, a round waits for the slowest agent's first gradient; with equal speeds and S = n the
    two rules coincide.

    ``env`` is usually one environment per agent: a list of env ids, of ``(env id, env_kwargs)`` pairs or of
    callables, or a VecEnv whose sub-env i is agent i's environment (:func:`sb3_nigt.envs.heterogeneous_envs`
    builds the paper's App. H.3 task). ``n_agents`` defaults to the number of environments. The logger adds
    ``rollout/ep_rew_mean_agent_{i}`` (agent i's return on its own environment) and
    ``rollout/ep_rew_mean_equal_weight`` (their mean, the objective J).

    Every argument is documented in :class:`~sb3_nigt.algorithms.base.NIGTAlgorithm`; here ``round_size`` is S.

    Example::

        from sb3_nigt import MaleniaNIGT
        from sb3_nigt.envs import heterogeneous_envs

        model = MaleniaNIGT("MlpPolicy", heterogeneous_envs("Pendulum-v1", 2), compute_times=[1.0, 10.0],
                            round_size=4, seed=0)
        model.learn(20_000)
    """

    def _make_rule(self, round_size: int) -> AggregationRule:
        return MaleniaAggregation(self.n_agents, round_size)
