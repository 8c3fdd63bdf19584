"""Typed errors that the algorithms catch by class instead of by reading their text.

Each subclasses ``ValueError``, so ``except ValueError`` still catches it, and its message starts with the
argument it blames (``policy:``, ``reward:``, ``observations:``), as every argument error of the library does.
"""

from __future__ import annotations

from typing import Any, Optional


class PolicyError(ValueError):
    """``policy:`` names neither an alias of the algorithm nor a subclass of ``NIGTPolicy`` (at ``load``: the
    file's policy belongs to another library's algorithm)."""


class NonFiniteEnvironmentError(ValueError):
    """An agent's environment returned a NaN or infinite reward or observation (raised by the rollout worker; the
    update is not applied, θ is unchanged).

    :param quantity: ``"reward"`` or ``"observations"``, the start of the message.
    :param value: what the environment returned (a float, or the observation as a list).
    :param agent: the agent i whose environment it was.
    :param round_index: the round of the job's seed.
    :param step: the environment step within the trajectory.
    :param round_label: how the message names the round; default ``round {round_index}``. AFedPG, whose job seeds
        all have round 0, names its server round here (:meth:`at_round`).
    """

    def __init__(self, quantity: str, value: Any, agent: int, round_index: int, step: int, round_label: Optional[str] = None):
        self.quantity, self.value, self.agent, self.round_index, self.step = quantity, value, agent, round_index, step
        self.round_label = round_label
        noun = "reward" if quantity == "reward" else "observation"
        where = round_label or f"round {round_index}"
        super().__init__(
            f"{quantity}: the environment returned a non-finite {noun} {value} (agent {agent}, {where}, step {step}); "
            "training stopped before the update so θ is unchanged"
        )

    def __reduce__(self) -> tuple:  # pickled across worker processes and Ray actors with its fields
        return type(self), (self.quantity, self.value, self.agent, self.round_index, self.step, self.round_label)

    def at_round(self, round_label: str) -> "NonFiniteEnvironmentError":
        """The same error, naming the round as ``round_label``."""
        return type(self)(self.quantity, self.value, self.agent, self.round_index, self.step, round_label)


class UnknownArgumentError(TypeError):
    """A keyword argument that the algorithm does not have (a typo such as ``n_agent`` or another algorithm's
    ``n_steps``); the message names the algorithm, the argument and the closest valid ones. A ``TypeError``, as
    Python raises for an unexpected keyword argument."""
