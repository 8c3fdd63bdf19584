"""Aggregation rules: pure logic with no processes and no clock (docs/algorithms.md).

A rule is told "agent j finished a gradient", decides whether the round goes on and whether agent j restarts,
and forms the aggregate from the per-agent sums ḡ_i and counts M_i.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Mapping, Union

import numpy as np

#: Per-agent sums ḡ_i: an (n, d) array, or a mapping agent → (d,) holding the contributing agents only.
Sums = Union[np.ndarray, Mapping[int, np.ndarray]]


def _rows(sums: Sums, agents) -> list[np.ndarray]:
    return [sums[int(agent)] for agent in agents]


class AggregationRule:
    """Base class of an aggregation rule for one round.

    :param n_agents: n, the number of agents.
    :param batch_size: M (or S), the rule's batch parameter (>= 1).
    :raises ValueError: if ``n_agents`` or ``batch_size`` is < 1.
    """

    #: The most gradients an agent computes in a round (None: as many as the rule wants).
    max_per_agent: "int | None" = None
    #: Whether the round cannot end without a gradient from every agent (Malenia, Synchronized NIGT).
    needs_every_agent = False

    def __init__(self, n_agents: int, batch_size: int):
        if n_agents < 1:
            raise ValueError(f"n_agents: must be >= 1, got {n_agents}")
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        self.n_agents = int(n_agents)
        self.batch_size = int(batch_size)
        self.counts = np.zeros(self.n_agents, dtype=np.int64)  # M_i, int64, shape (n,)

    def add(self, agent: int) -> None:
        """Count one finished gradient of ``agent`` (M_agent += 1)."""
        self.counts[agent] += 1

    def forget(self, agent: int) -> None:
        """Uncount all of ``agent``'s gradients (M_agent = 0): they were lost with the agent before reaching the
        server (docs/backends.md, "Failures")."""
        self.counts[agent] = 0

    def wants_more(self, agent: int) -> bool:
        """Whether ``agent`` immediately starts another trajectory at the same θ."""
        return True

    def done(self) -> bool:
        """Whether the round has collected enough gradients."""
        raise NotImplementedError

    def aggregate(self, sums: Sums) -> np.ndarray:
        """The round's aggregate from the per-agent sums ḡ_i (float64 ``(d,)`` each, for every agent with M_i >= 1,
        as an ``(n, d)`` array or a mapping agent → sum); returns float64 ``(d,)``, agents added in index order."""
        raise NotImplementedError

    def weights(self) -> "np.ndarray | None":
        """w_i, the weight of each of agent i's gradients in the aggregate, once the round is done: the aggregate is
        Σ_i w_i Σ_k g_{i,k}. float64 ``(n,)`` (0 where M_i = 0), or None when the rule is not such a weighted sum
        (the simulated clock then sums each agent's gradients and calls :meth:`aggregate`)."""
        return None


class RennalaAggregation(AggregationRule):
    """AggregateRennala (paper, Algorithm 2): the first M gradients to arrive, from whichever agents.

    Stops when m = Σ_i M_i = M and returns (Σ_i ḡ_i) / M. Fast agents contribute more, which is unbiased in the
    homogeneous setting because all trajectories are i.i.d.
    """

    def __init__(self, n_agents: int, batch_size: int):
        super().__init__(n_agents, batch_size)
        self._total = 0  # Σ_i M_i, kept as events come (O(1) per event, whatever n)

    def add(self, agent: int) -> None:
        super().add(agent)
        self._total += 1

    def forget(self, agent: int) -> None:
        self._total -= int(self.counts[agent])
        super().forget(agent)

    def done(self) -> bool:
        return self._total >= self.batch_size

    def aggregate(self, sums: Sums) -> np.ndarray:
        rows = _rows(sums, np.flatnonzero(self.counts))  # canonical order: agent index
        total = np.zeros(rows[0].shape[0], dtype=np.float64)
        for row in rows:
            total += row
        return total / int(self.counts.sum())

    def weights(self) -> np.ndarray:
        """w_i = 1/M for every agent (M = Σ_i M_i)."""
        return np.where(self.counts > 0, 1.0 / int(self.counts.sum()), 0.0)


class MaleniaAggregation(AggregationRule):
    """AggregateMalenia (paper, Algorithm 3; Malenia SGD, Tyurin & Richtárik 2023): unbiased for heterogeneous agents.

    Every agent keeps sampling until all M_i >= 1 and the harmonic mean of the counts reaches S/n::

        ((1/n) Σ_i 1/M_i)^(−1) >= S/n        ⇔        n² >= S · Σ_i 1/M_i

    (S = ``batch_size``). The aggregate is the equal-weighted mean of the local means, (1/n) Σ_i ḡ_i / M_i,
    an unbiased estimate of ∇J_H(θ) = (1/n) Σ_i ∇J_{H,i}(θ) whatever the agents' speeds.

    The condition is decided exactly (rational arithmetic near the boundary), so it never depends on rounding.
    """

    needs_every_agent = True

    def __init__(self, n_agents: int, batch_size: int):
        super().__init__(n_agents, batch_size)
        self._missing = self.n_agents  # agents with M_i = 0
        self._inverse_sum = 0.0  # Σ_i 1/M_i over the agents with M_i >= 1

    def add(self, agent: int) -> None:
        count = int(self.counts[agent])
        if count == 0:
            self._missing -= 1
            self._inverse_sum += 1.0
        else:
            self._inverse_sum += 1.0 / (count + 1) - 1.0 / count
        super().add(agent)

    def forget(self, agent: int) -> None:
        super().forget(agent)
        self._missing = int(np.count_nonzero(self.counts == 0))
        self._inverse_sum = float(sum(1.0 / int(c) for c in self.counts if c > 0))

    def done(self) -> bool:
        if self._missing:
            return False
        n2, bound = self.n_agents**2, self.batch_size * self._inverse_sum
        if abs(n2 - bound) > 1e-9 * n2:  # far from the boundary: the float decides
            return n2 > bound
        exact = sum(Fraction(1, int(c)) for c in self.counts)
        return n2 >= self.batch_size * exact

    def aggregate(self, sums: Sums) -> np.ndarray:
        agents = range(self.n_agents)  # canonical order: agent index; every agent contributes
        rows = _rows(sums, agents)
        total = np.zeros(rows[0].shape[0], dtype=np.float64)
        for agent, row in zip(agents, rows):
            total += row / int(self.counts[agent])
        return total / self.n_agents

    def weights(self) -> np.ndarray:
        """w_i = 1/(n·M_i)."""
        counts = self.counts.astype(np.float64)
        return np.divide(1.0, self.n_agents * counts, out=np.zeros(self.n_agents), where=counts > 0)


class SynchronizedAggregation(AggregationRule):
    """The synchronized baseline (paper, Section 6 "Synchronized NIGT"): every agent computes exactly one gradient.

    Each agent stops after its first gradient and uploads it at once; the round waits for all n and returns
    (1/n) Σ_i g_i. A round costs max_i (2κ_i + h_i): one straggler delays every round. ``batch_size`` is unused
    (the batch is n).
    """

    max_per_agent = 1
    needs_every_agent = True

    def wants_more(self, agent: int) -> bool:
        return False

    def done(self) -> bool:
        return bool(np.all(self.counts >= 1))

    def aggregate(self, sums: Sums) -> np.ndarray:
        rows = _rows(sums, range(self.n_agents))  # canonical order: agent index; every agent contributes
        total = np.zeros(rows[0].shape[0], dtype=np.float64)
        for row in rows:
            total += row
        return total / self.n_agents

    def weights(self) -> np.ndarray:
        """w_i = 1/n (M_i = 1)."""
        return np.where(self.counts > 0, 1.0 / self.n_agents, 0.0)
