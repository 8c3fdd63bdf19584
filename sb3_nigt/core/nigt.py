"""Algorithm 1's update as one small pure object: the lookahead θ̃_t, the first step and the normalized momentum step.

Tyurin, Spiridonov, Rudenko (ICLR 2026, arXiv 2509.24305), Algorithm 1, after Cutkosky & Mehta (2020) and
Fatkhullin et al. (2023), in ascent form::

    θ_{−1} = θ_0;  d_{−1} = g_0                           # the first step (g_0 = Aggregate(θ_0, M_init))
    θ̃_t     = θ_t + ((1 − η)/η) (θ_t − θ_{t−1})          # lookahead (implicit gradient transport)
    d_t     = (1 − η) d_{t−1} + η g_t                     # momentum, η the weight of the new gradient
    θ_{t+1} = θ_t + α d_t / ‖d_t‖                         # normalized ascent step; ‖d_t‖ = 0 ⇒ no step

NumPy only: no SB3, no torch, no processes, no clock. The caller owns θ_t (the policy's float32 parameters) and
the aggregate g_t; η and α are passed at every call, so AFedPG can use its own η_k per update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class NIGTStep:
    """The state of Algorithm 1 between updates: d_t and θ_{t−1}.

    :param direction: d_t (d_{−1} before the first update), float64 ``(d,)``; None until the first step sets it.
    :param previous: θ_{t−1}, as the caller gave θ (the policy's float32 ``(d,)``); None until the first step.
    """

    direction: Optional[np.ndarray] = None
    previous: Optional[np.ndarray] = None

    def start(self, theta: np.ndarray, gradient: Optional[np.ndarray] = None) -> None:
        """The first step: θ_{−1} = θ_0 and, when ``gradient`` is given, d_{−1} = g_0.

        :param theta: θ_0, shape ``(d,)``; kept as given (the caller passes its own copy).
        :param gradient: g_0 = Aggregate(θ_0, M_init), shape ``(d,)``, stored as float64; None leaves d unset
            (AFedPG forms d from its first arriving gradient).
        """
        self.previous = theta
        if gradient is not None:
            self.direction = gradient.astype(np.float64)

    def lookahead(self, theta: np.ndarray, eta: float) -> np.ndarray:
        """θ̃_t = θ_t + ((1 − η)/η)(θ_t − θ_{t−1}), float64 ``(d,)``.

        :param theta: θ_t, shape ``(d,)`` (float32 from the policy).
        :param eta: η ∈ (0, 1]; η = 1 gives θ̃_t = θ_t.
        """
        assert self.previous is not None, "the first step sets θ_{−1}"
        theta = theta.astype(np.float64)
        return theta + ((1.0 - eta) / eta) * (theta - self.previous)

    def step(self, theta: np.ndarray, gradient: np.ndarray, eta: float, alpha: float) -> tuple[Optional[np.ndarray], float]:
        """d_t = (1 − η) d_{t−1} + η g_t, then θ_{t+1} = θ_t + α d_t/‖d_t‖; θ_t becomes θ_{t−1} of the next update.

        :param theta: θ_t, shape ``(d,)`` (float32 from the policy).
        :param gradient: g_t, float64 ``(d,)``.
        :param eta: η ∈ (0, 1] of this update.
        :param alpha: α >= 0, the step length.
        :return: ``(θ_{t+1}, ‖d_t‖)``: θ_{t+1} as float64 ``(d,)``, or None when ‖d_t‖ = 0 (no step: θ_{t+1} = θ_t).
        """
        assert self.direction is not None, "the first step sets d_{−1}"
        self.direction = (1.0 - eta) * self.direction + eta * gradient
        self.previous = theta.copy()
        norm = float(np.linalg.norm(self.direction))
        if norm > 0:
            return theta.astype(np.float64) + alpha * self.direction / norm, norm
        return None, norm
