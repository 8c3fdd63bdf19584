"""The truncated policy gradient g_H (paper, Section 2) against closed forms and a quadrature ground truth."""

from __future__ import annotations

import copy
import functools

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from sb3_nigt import NIGTPolicy
from sb3_nigt.workers.env_factory import EnvFactory
from sb3_nigt.workers.rollout import GradientWorker, TrajectoryStats, WorkUnit, discounted_returns_to_go, policy_gradient

from helpers import ConstantBandit, FixedLengthEnv, identity_reward, logpdf_grad_reference, quadratic_reward


def linear_policy(ds: int, da: int, min_std: float = 1e-3) -> NIGTPolicy:
    """A policy with ``net_arch=[]``: μ and the pre-softplus σ are affine in the observation."""
    obs_space = gym.spaces.Box(-np.inf, np.inf, (ds,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (da,), np.float32)
    return NIGTPolicy(obs_space, act_space, None, net_arch=[], min_std=min_std)


def set_linear_params(policy: NIGTPolicy, w_mean, b_mean, w_std, b_std) -> None:
    with th.no_grad():
        policy.mean_head.weight.copy_(th.as_tensor(w_mean))
        policy.mean_head.bias.copy_(th.as_tensor(b_mean))
        policy.std_head.weight.copy_(th.as_tensor(w_std))
        policy.std_head.bias.copy_(th.as_tensor(b_std))


def make_worker(env_factory, policy: NIGTPolicy, policy_kwargs: dict) -> GradientWorker:
    worker = GradientWorker([env_factory], NIGTPolicy, policy.observation_space, policy.action_space, policy_kwargs)
    worker.set_params(parameters_to_vector(policy.parameters()).detach().numpy())
    return worker


def job(index: int, horizon: int = 5, gamma: float = 0.9, seed: int = 123) -> WorkUnit:
    """Gradient ``index`` of agent 0 in round 0, alone: a unit of one."""
    return WorkUnit(0, 0, index, 1, seed, 0, horizon, gamma)


def run(worker: GradientWorker, unit: WorkUnit) -> tuple[np.ndarray, TrajectoryStats]:
    """g_H of the unit's one trajectory (float64 ``(d,)``) and its statistics."""
    result = worker.run_unit(unit)
    return result.gradient, result.trajectories[0]


# ----------------------------------------------------------------------------------------- returns-to-go
@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.97, 1.0])
def test_discounted_returns_to_go_counts_discount_from_t0(gamma):
    rewards = np.random.default_rng(0).normal(size=9)
    expected = [sum(gamma**h * rewards[h] for h in range(t, len(rewards))) for t in range(len(rewards))]
    got = discounted_returns_to_go(rewards, gamma)
    assert got.dtype == np.float64 and got.shape == rewards.shape
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_discounted_returns_to_go_is_not_the_per_step_restarted_discount():
    # R_t = Σ_{h≥t} γ^h r_h (discount from t = 0), not Σ_{h≥t} γ^(h−t) r_h: the last entry is γ^(T−1) r_{T−1}.
    rewards = np.ones(4)
    got = discounted_returns_to_go(rewards, 0.5)
    assert got[-1] == pytest.approx(0.5**3)
    assert got[0] == pytest.approx(1 + 0.5 + 0.25 + 0.125)


# -------------------------------------------------------------------------------- closed-form gradient
def test_policy_gradient_matches_hand_computed_gaussian_score():
    ds, da, T, gamma, min_std = 3, 2, 6, 0.8, 1e-3
    rng = np.random.default_rng(1)
    policy = linear_policy(ds, da, min_std)
    w_mean, b_mean = rng.normal(size=(da, ds)) * 0.5, rng.normal(size=da) * 0.5
    w_std, b_std = rng.normal(size=(da, ds)) * 0.5, rng.normal(size=da) * 0.5
    set_linear_params(policy, w_mean.astype(np.float32), b_mean.astype(np.float32), w_std.astype(np.float32), b_std.astype(np.float32))
    obs = rng.normal(size=(T, ds)).astype(np.float32)
    u = rng.normal(size=(T, da)).astype(np.float32)
    rewards = rng.normal(size=T)

    g = policy_gradient(policy, obs, u, rewards, gamma)

    n_params = sum(p.numel() for p in policy.parameters())
    assert g.dtype == np.float32 and g.shape == (n_params,)
    params32 = [np.asarray(a, np.float32).astype(np.float64) for a in (w_mean, b_mean, w_std, b_std)]
    expected = logpdf_grad_reference(obs, u, *params32, min_std, discounted_returns_to_go(rewards, gamma))
    np.testing.assert_allclose(g, expected, rtol=2e-4, atol=2e-5)


def test_policy_gradient_is_in_parameters_to_vector_order_for_the_default_network():
    # Directional derivatives of f(θ) = Σ_t R_t log N(u_t; μθ(s_t), σθ(s_t)) in float64 through vector_to_parameters.
    obs_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    act_space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
    th.manual_seed(0)
    policy = NIGTPolicy(obs_space, act_space, None, net_arch=[8, 8])
    rng = np.random.default_rng(2)
    T, gamma = 5, 0.9
    obs = rng.normal(size=(T, 3)).astype(np.float32)
    u = rng.normal(size=(T, 2)).astype(np.float32)
    rewards = rng.normal(size=T)
    g = policy_gradient(policy, obs, u, rewards, gamma).astype(np.float64)

    policy64 = copy.deepcopy(policy).double()
    theta = parameters_to_vector(policy64.parameters()).detach().clone()
    returns = th.as_tensor(discounted_returns_to_go(rewards, gamma))
    obs64, u64 = th.as_tensor(obs, dtype=th.float64), th.as_tensor(u, dtype=th.float64)

    def f(vector: th.Tensor) -> float:
        # The policy's own layers in float64 (SB3's preprocessing would cast the observation to float32).
        with th.no_grad():
            vector_to_parameters(vector, policy64.parameters())
            latent = policy64.latent(obs64)
            mean = policy64.mean_head(latent)
            std = th.nn.functional.softplus(policy64.std_head(latent)) + policy64.min_std
            return float((returns * th.distributions.Normal(mean, std).log_prob(u64).sum(-1)).sum())

    assert g.shape == theta.shape
    eps = 1e-6
    directions = [th.nn.functional.one_hot(th.tensor(i), len(theta)).double() for i in (0, 5, len(theta) // 2, len(theta) - 3, len(theta) - 1)]
    directions.append(th.as_tensor(rng.normal(size=len(theta))))
    for v in directions:
        numeric = (f(theta + eps * v) - f(theta - eps * v)) / (2 * eps)
        assert float(g @ v.numpy()) == pytest.approx(numeric, rel=1e-3, abs=1e-4)


# --------------------------------------------------------------------------------- through GradientWorker
def test_worker_gradient_is_consistent_with_the_sampled_action():
    # Bandit with r = a = 2·tanh(u) and constant observation x = 2: from g we recover u and check r = 2·tanh(u),
    # the W-gradient = x · the bias gradient, and the σ-gradient formula. This checks the worker's NumPy rollout,
    # the action mapping onto the Box bounds and the torch log-probability agree on the same u.
    x, bound, min_std = 2.0, 2.0, 1e-3
    policy = linear_policy(1, 1, min_std)
    w_m, b_m, w_s, b_s = 0.1, -0.2, -0.3, 0.25
    set_linear_params(policy, [[w_m]], [b_m], [[w_s]], [b_s])
    env_factory = functools.partial(ConstantBandit, identity_reward, obs_value=x, bound=bound)
    worker = make_worker(env_factory, policy, {"net_arch": [], "min_std": min_std})
    mu = w_m * x + b_m
    z = w_s * x + b_s
    sigma = np.log1p(np.exp(z)) + min_std
    for k in range(20):
        g, stats = run(worker, job(k))
        r = stats.episode_return
        assert stats.episode_length == 2 and stats.n_steps == 2
        assert g[0] == pytest.approx(x * g[1], rel=1e-5)
        assert g[2] == pytest.approx(x * g[3], rel=1e-5)
        u = mu + g[1] * sigma**2 / r
        assert bound * np.tanh(u) == pytest.approx(r, rel=1e-3, abs=1e-5)
        expected_gs = r * ((u - mu) ** 2 - sigma**2) / sigma**3 / (1 + np.exp(-z))
        assert g[3] == pytest.approx(expected_gs, rel=1e-3, abs=1e-5)


def expected_return(theta: np.ndarray, reward, min_std: float, nodes: int = 201) -> float:
    """J(θ) = E_{u~N(μ,σ)}[r(tanh u)] for the linear bandit policy (x = 1), by Gauss–Hermite quadrature."""
    w_m, b_m, w_s, b_s = theta
    mu, sigma = w_m + b_m, np.log1p(np.exp(w_s + b_s)) + min_std
    xs, ws = np.polynomial.hermite_e.hermegauss(nodes)
    values = np.array([reward(np.tanh(mu + sigma * xi)) for xi in xs])
    return float(values @ ws / np.sqrt(2 * np.pi))


def test_expected_worker_gradient_matches_the_derivative_of_the_expected_return():
    # Bandit rewarding only a_0, r = −(a − 0.5)², a = tanh(u): E[g_H] = ∇J(θ) (unbiasedness). Ground truth: central
    # differences of J computed by 201-node Gauss–Hermite quadrature. 2000 deterministic jobs; 4 standard errors.
    min_std = 1e-3
    theta = np.array([0.2, 0.1, 0.3, 0.2])  # μ = 0.3, pre-softplus σ = 0.5: both gradient parts clearly non-zero
    policy = linear_policy(1, 1, min_std)
    set_linear_params(policy, [[theta[0]]], [theta[1]], [[theta[2]]], [theta[3]])
    theta32 = parameters_to_vector(policy.parameters()).detach().numpy().astype(np.float64)
    worker = make_worker(functools.partial(ConstantBandit, quadratic_reward), policy, {"net_arch": [], "min_std": min_std})

    n = 2000
    grads = np.array([run(worker, job(k, horizon=3, gamma=0.5))[0] for k in range(n)], dtype=np.float64)
    mean, se = grads.mean(axis=0), grads.std(axis=0, ddof=1) / np.sqrt(n)

    eps = 1e-5
    truth = np.array([
        (expected_return(theta32 + eps * e, quadratic_reward, min_std) - expected_return(theta32 - eps * e, quadratic_reward, min_std)) / (2 * eps)
        for e in np.eye(4)
    ])
    assert np.all(np.abs(truth[[1, 3]]) > 8 * se[[1, 3]]), "the test problem must have a clearly non-zero gradient"
    assert np.all(np.abs(mean - truth) < 4 * se), (mean, truth, se)


# ----------------------------------------------------------------------------------- trajectory length
@pytest.mark.parametrize(
    "env_factory, horizon, expected_length",
    [
        (functools.partial(FixedLengthEnv, 5), 50, 5),  # termination before H
        (functools.partial(FixedLengthEnv, 5), 3, 3),  # H before termination
        (EnvFactory("Pendulum-v1"), 17, 17),  # never terminates: H steps
        (functools.partial(gym.make, "Pendulum-v1", max_episode_steps=10), 50, 10),  # truncation before H
    ],
)
def test_trajectory_stops_at_horizon_or_episode_end(env_factory, horizon, expected_length):
    probe = env_factory()
    th.manual_seed(0)
    policy = NIGTPolicy(probe.observation_space, probe.action_space, None, net_arch=[8])
    worker = make_worker(env_factory, policy, {"net_arch": [8]})
    for k in range(3):
        gradient, stats = run(worker, job(k, horizon=horizon))
        assert stats.episode_length == expected_length
        assert stats.n_steps == expected_length
        assert gradient.dtype == np.float64
        assert gradient.shape == (sum(p.numel() for p in policy.parameters()),)
    if isinstance(probe, FixedLengthEnv):
        assert stats.episode_return == pytest.approx(float(expected_length))  # undiscounted, 1 per step


def test_worker_jobs_are_deterministic_in_their_seed():
    policy = linear_policy(1, 1)
    worker = make_worker(functools.partial(ConstantBandit, quadratic_reward), policy, {"net_arch": []})
    a, b, c = run(worker, job(7)), run(worker, job(7)), run(worker, job(8))
    assert np.array_equal(a[0], b[0]) and a[1].episode_return == b[1].episode_return
    assert not np.array_equal(a[0], c[0])


# ---------------------------------------------------------------------------- length-1 trajectories


def test_policy_gradient_of_a_single_step_trajectory():
    policy = linear_policy(1, 1)
    g = policy_gradient(policy, np.ones((1, 1), np.float32), np.full((1, 1), 0.3, np.float32), np.array([2.0]), 0.9)
    params = [p.detach().numpy().astype(np.float64) for p in policy.parameters()]
    np.testing.assert_allclose(g, logpdf_grad_reference([[1.0]], [[0.3]], *params, policy.min_std, [2.0]), rtol=1e-4)


def test_one_step_bandit_episode_through_the_worker():
    policy = linear_policy(1, 1)
    worker = make_worker(functools.partial(ConstantBandit, quadratic_reward, length=1), policy, {"net_arch": []})
    _, stats = run(worker, job(0))
    assert stats.episode_length == 1


def test_horizon_one_is_accepted_and_trains(make_model):
    model = make_model(horizon=1, round_size=2)
    model.learn(6)
    assert model.num_timesteps >= 6
