"""Determinism on the simulated clock: θ depends only on (seed, configuration), never on the backend."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from sb3_nigt import RennalaNIGT

from helpers import RandomLengthEnv

CONFIG = dict(n_agents=4, compute_times="sqrt", communication_times=[0.0, 0.3, 0.1, 0.2], round_size=6, horizon=30)
TIMESTEPS = 2000


def train(seed: int = 0, env="Pendulum-v1", timesteps: int = TIMESTEPS, **kwargs) -> RennalaNIGT:
    config = dict(CONFIG)
    config.update(kwargs)
    model = RennalaNIGT("MlpPolicy", env, seed=seed, **config)
    return model.learn(timesteps)


def fingerprint(model: RennalaNIGT) -> dict:
    return dict(
        params=model.get_flat_params(),
        momentum=model.momentum_buffer.copy(),
        simulated_time=model.simulated_time,
        n_rounds=model.n_rounds,
        num_timesteps=model.num_timesteps,
        returns=[(ep["r"], ep["l"], ep["t"]) for ep in model.ep_info_buffer],
    )


def assert_identical(a: dict, b: dict) -> None:
    assert np.array_equal(a["params"], b["params"])  # bit-identical, not approximately equal
    assert np.array_equal(a["momentum"], b["momentum"])
    for key in ("simulated_time", "n_rounds", "num_timesteps", "returns"):
        assert a[key] == b[key], key


@pytest.fixture(scope="module")
def inline_reference() -> dict:
    return fingerprint(train(backend="inline"))


def test_inline_runs_are_reproducible(inline_reference):
    assert inline_reference["n_rounds"] > 10
    assert_identical(inline_reference, fingerprint(train(backend="inline")))


def test_different_seeds_give_different_parameters(inline_reference):
    other = fingerprint(train(seed=1, backend="inline"))
    assert not np.array_equal(inline_reference["params"], other["params"])
    assert inline_reference["returns"] != other["returns"]


@pytest.mark.parametrize("n_workers", [2, 1])
def test_subprocess_backend_is_bit_identical_to_inline(inline_reference, worker_spy, n_workers):
    assert_identical(inline_reference, fingerprint(train(backend="subprocess", n_workers=n_workers)))
    assert len(worker_spy) == n_workers


def test_spawned_workers_are_bit_identical_to_inline(inline_reference):
    # "spawn" starts each worker in a fresh interpreter (nothing preloaded, nothing inherited).
    assert_identical(inline_reference, fingerprint(train(backend="subprocess", n_workers=1, start_method="spawn")))


def test_per_step_times_with_variable_lengths_are_backend_independent():
    # compute_time_unit="step" computes jobs speculatively and their lengths decide the event order: results
    # come back from two workers in any physical order, the outcome must not depend on it.
    env = functools.partial(RandomLengthEnv, 25)
    kwargs = dict(env=env, timesteps=600, compute_time_unit="step")
    inline = fingerprint(train(backend="inline", **kwargs))
    assert len({length for _, length, _ in inline["returns"]}) > 3
    assert_identical(inline, fingerprint(train(backend="subprocess", n_workers=2, **kwargs)))
