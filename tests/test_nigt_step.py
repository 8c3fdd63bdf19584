"""Algorithm 1's update (sb3_nigt.core.nigt.NIGTStep) against independent replays: exact rational arithmetic, and a
float64 loop written element by element."""

from __future__ import annotations

import math
import pickle
from fractions import Fraction

import numpy as np
import pytest

from sb3_nigt.core.nigt import NIGTStep


def replay_exact(theta0, gradients, eta, alpha):
    """Algorithm 1 in Fractions (θ̃ uses the exact θ_{t−1}; the step divides by the float norm of the exact d)."""
    theta = [Fraction(x) for x in theta0]
    previous = list(theta)
    direction = [Fraction(x) for x in gradients[0]]  # d_{−1} = g_0
    eta, alpha = Fraction(eta), Fraction(alpha)
    lookaheads = []
    for g in gradients[1:]:
        lookaheads.append([t + (1 - eta) / eta * (t - p) for t, p in zip(theta, previous)])
        direction = [(1 - eta) * d + eta * Fraction(x) for d, x in zip(direction, g)]
        norm = math.sqrt(sum(d * d for d in direction))
        previous = list(theta)
        if norm > 0:
            theta = [t + alpha * d / Fraction(norm) for t, d in zip(theta, direction)]
    return theta, direction, lookaheads


def run(theta0, gradients, eta, alpha, dtype=np.float64):
    state = NIGTStep()
    theta = np.asarray(theta0, dtype=dtype)
    state.start(theta.copy(), np.asarray(gradients[0]))
    lookaheads, norms = [], []
    for g in gradients[1:]:
        lookaheads.append(state.lookahead(theta, eta))
        new, norm = state.step(theta, np.asarray(g, dtype=np.float64), eta, alpha)
        norms.append(norm)
        if new is not None:
            theta = new.astype(dtype)
    return theta, state, lookaheads, norms


RNG = np.random.default_rng(0)
GRADIENTS = [RNG.standard_normal(5) for _ in range(6)]
THETA0 = RNG.standard_normal(5)


@pytest.mark.parametrize("eta", [0.1, 0.5, 1.0, 0.001])
def test_step_matches_exact_arithmetic(eta):
    alpha = 2**-4
    theta, state, lookaheads, _ = run(THETA0, GRADIENTS, eta, alpha)
    theta_ref, direction_ref, lookaheads_ref = replay_exact(THETA0, GRADIENTS, eta, alpha)
    np.testing.assert_allclose(state.direction, [float(d) for d in direction_ref], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(theta, [float(t) for t in theta_ref], rtol=1e-12, atol=1e-14)
    for got, expected in zip(lookaheads, lookaheads_ref):
        np.testing.assert_allclose(got, [float(x) for x in expected], rtol=1e-9, atol=1e-12)


def test_step_is_bit_identical_to_an_elementwise_float64_loop():
    """The same operations, in the same order, one float at a time: every bit agrees (the norm on a 3-4-5 vector,
    where it is exact whatever the summation order)."""
    eta, alpha = 0.25, 0.125
    theta = np.array([0.5, -1.25], dtype=np.float32)
    previous = np.array([0.75, -1.0], dtype=np.float32)
    direction = np.array([6.0, 8.0])
    gradient = np.array([6.0, 8.0])
    state = NIGTStep(direction.copy(), previous.copy())
    lookahead = state.lookahead(theta, eta)
    new, norm = state.step(theta, gradient, eta, alpha)
    for i in range(2):
        t, p = float(theta[i]), float(previous[i])
        assert lookahead[i] == t + ((1.0 - eta) / eta) * (t - p)
        d = (1.0 - eta) * float(direction[i]) + eta * float(gradient[i])
        assert state.direction[i] == d
        assert new[i] == t + alpha * d / 10.0
    assert norm == 10.0
    assert state.previous.dtype == np.float32 and np.array_equal(state.previous, theta)
    assert state.direction.dtype == np.float64 and lookahead.dtype == np.float64 and new.dtype == np.float64


def test_first_step_sets_theta_minus_one_and_d_minus_one():
    state = NIGTStep()
    theta0 = np.array([1.0, 2.0], dtype=np.float32)
    state.start(theta0, np.array([3.0, 4.0], dtype=np.float32))
    assert state.previous is theta0
    assert state.direction.dtype == np.float64 and np.array_equal(state.direction, [3.0, 4.0])
    np.testing.assert_array_equal(state.lookahead(theta0, 0.1), theta0)  # θ̃_0 = θ_0: θ_{−1} = θ_0


def test_start_without_gradient_leaves_d_unset():
    """AFedPG's start: θ_{−1} = θ_0 now, d from its first arriving gradient."""
    state = NIGTStep()
    state.start(np.zeros(3, dtype=np.float32))
    assert state.direction is None and state.previous is not None


def test_zero_direction_takes_no_step():
    state = NIGTStep(np.zeros(3), np.zeros(3, dtype=np.float32))
    theta = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    new, norm = state.step(theta, np.zeros(3), 0.5, 1.0)
    assert new is None and norm == 0.0
    assert np.array_equal(state.previous, theta)  # θ_t still becomes θ_{t−1}


def test_eta_one_forgets_the_past_and_looks_nowhere_ahead():
    state = NIGTStep(np.array([100.0, -7.0]), np.array([5.0, 5.0], dtype=np.float32))
    theta = np.array([1.0, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(state.lookahead(theta, 1.0), theta)
    new, norm = state.step(theta, np.array([0.0, 2.0]), 1.0, 0.5)
    np.testing.assert_array_equal(state.direction, [0.0, 2.0])
    assert norm == 2.0
    np.testing.assert_array_equal(new, [1.0, 1.5])


def test_state_pickles_exactly():
    _, state, _, _ = run(THETA0, GRADIENTS, 0.1, 0.01, dtype=np.float32)
    copy = pickle.loads(pickle.dumps(state))
    assert np.array_equal(copy.direction, state.direction) and np.array_equal(copy.previous, state.previous)
