"""Bits do not change: SHA-256 digests of whole runs on the simulated clock, compared with recorded ones.

Every case is a small ``learn`` run through the public API only (constructor arguments, ``learn``, ``save``,
``load``, callbacks and documented attributes), so that it survives any reorganization of the modules. For each
run the test digests

- ``theta``: the final flat θ, float32 bytes of ``parameters_to_vector(model.policy.parameters())``;
- ``momentum``: d_t (``model.momentum_buffer``) as float64 bytes;
- ``time``: ``model.simulated_time_exact`` as its exact decimal-free text (Σ q_r·√r) and ``model.simulated_time``;
- ``counters``: num_timesteps, SB3's update counter, rounds, communications, bytes sent, the per-agent time
  counters, the last round's counts M_i and statistics (and AFedPG's staleness histogram);
- ``episodes``: the episode buffer (return, length, arrival time, agent) of the counted trajectories;
- ``trace`` (cases with ``record_trace=True``) and ``obs_rms`` (VecNormalize cases).

The expected digests live in ``tests/data/digests.json``. They change deliberately only when the engine's
arithmetic changes (a new seeding scheme, another summation order, ...); a refactoring must leave every one of
them equal. To (re)record them, on the commit whose bits are the reference::

    SB3_NIGT_RECORD_DIGESTS=1 pytest tests/test_digests.py          # every case
    SB3_NIGT_RECORD_DIGESTS=1 pytest tests/test_digests.py -k afedpg  # only the cases selected

Recording rewrites the entries of the cases that ran and keeps the others. Without the variable the test compares,
and a failure names the case, the digest that differs, and the readable values (clock, counters) of both runs.

A case with ``same_as`` must also give the digests of another case (listed in ``same_keys``): the subprocess and
Ray backends give the inline bits, a checkpoint written mid-round and resumed gives the uninterrupted run, and the
100-agent vectorized round planner gives the event loop's rounds.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest
from digest_envs import ShortEpisodesEnv
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize
from torch.nn.utils import parameters_to_vector

from sb3_nigt import AFedPG, MaleniaNIGT, RandomTimes, RennalaNIGT, SynchronizedNIGT

DATA = Path(__file__).parent / "data" / "digests.json"
RECORD = os.environ.get("SB3_NIGT_RECORD_DIGESTS", "") not in ("", "0")
# The round statistics a model exposes after each round (those that exist at the recorded commit).
ROUND_STATS = ("round_seconds", "gradients_per_round", "agents_contributing", "contributors", "agents_lost", "steps_per_round",
               "observation_warmup")
BACKEND_KEYS = ("theta", "momentum", "time", "counters", "episodes")
RESUME_KEYS = ("theta", "momentum", "time", "counters")  # SB3 does not save the episode buffer

SMALL = dict(horizon=5, seed=0, policy_kwargs=dict(net_arch=[8]))
THREE = dict(n_agents=3, compute_times=[1, 2, 3], communication_times=[0.5, 0, 0.25], batch_size=4, **SMALL)
SQRT = dict(n_agents=3, compute_times="sqrt", communication_times=[0, 0.3, 0.1], batch_size=4, **SMALL)
SUBPROCESS = dict(backend="subprocess", n_workers=2)
RAY = dict(backend="ray", n_workers=2)


def pendulum() -> Any:
    return "Pendulum-v1"


def short_episodes() -> Any:
    return functools.partial(ShortEpisodesEnv, 8)


def normalized_pendulum() -> Any:
    return VecNormalize(make_vec_env("Pendulum-v1", seed=0), norm_obs=True, norm_reward=False)


@dataclass(frozen=True)
class Case:
    """One run: ``algorithm(policy, env(), **kwargs).learn(steps)``; with ``resume_at``, saved by a callback at that
    environment step (mid-round), loaded, and trained to the same ``steps``."""

    algorithm: type
    kwargs: dict
    steps: int
    env: Callable[[], Any] = pendulum
    same_as: Optional[str] = None
    same_keys: tuple[str, ...] = BACKEND_KEYS
    resume_at: Optional[int] = None
    extra: dict = field(default_factory=dict)


ALGORITHMS = {"rennala": RennalaNIGT, "malenia": MaleniaNIGT, "sync": SynchronizedNIGT, "afedpg": AFedPG}

CASES: dict[str, Case] = {}
for _name, _algorithm in ALGORITHMS.items():
    CASES[f"{_name}-inline-constant"] = Case(_algorithm, THREE, 200)
    CASES[f"{_name}-subprocess2-constant"] = Case(_algorithm, {**THREE, **SUBPROCESS}, 200, same_as=f"{_name}-inline-constant")
    CASES[f"{_name}-inline-resumed-mid-round"] = Case(_algorithm, THREE, 200, same_as=f"{_name}-inline-constant", same_keys=RESUME_KEYS,
                                                       resume_at=47)
CASES.update({
    # Time specifications: per gradient (√i), per step of variable-length episodes, ḣ_i·H, random draws.
    "rennala-inline-sqrt": Case(RennalaNIGT, SQRT, 200),
    "rennala-subprocess2-sqrt": Case(RennalaNIGT, {**SQRT, **SUBPROCESS}, 200, same_as="rennala-inline-sqrt"),
    "rennala-ray2-sqrt": Case(RennalaNIGT, {**SQRT, **RAY}, 200, same_as="rennala-inline-sqrt"),
    "malenia-ray2-constant": Case(MaleniaNIGT, {**THREE, **RAY}, 200, same_as="malenia-inline-constant"),
    "afedpg-ray2-constant": Case(AFedPG, {**THREE, **RAY}, 200, same_as="afedpg-inline-constant"),
    "rennala-inline-per-step": Case(RennalaNIGT, {**SQRT, "horizon": 8, "compute_time_unit": "step"}, 200, env=short_episodes),
    "rennala-subprocess2-per-step": Case(RennalaNIGT, {**SQRT, "horizon": 8, "compute_time_unit": "step", **SUBPROCESS}, 200,
                                         env=short_episodes, same_as="rennala-inline-per-step"),
    "sync-inline-per-step": Case(SynchronizedNIGT, {**THREE, "horizon": 8, "compute_time_unit": "step"}, 200, env=short_episodes),
    "afedpg-inline-per-step": Case(AFedPG, {**SQRT, "horizon": 8, "compute_time_unit": "step"}, 200, env=short_episodes),
    "rennala-inline-horizon": Case(RennalaNIGT, {**SQRT, "horizon": 8, "compute_time_unit": "horizon"}, 200, env=short_episodes),
    "malenia-inline-horizon": Case(MaleniaNIGT, {**SQRT, "horizon": 8, "compute_time_unit": "horizon"}, 200, env=short_episodes),
    "malenia-inline-random-times": Case(MaleniaNIGT, {**THREE, "compute_times": RandomTimes("exponential", mean="sqrt"),
                                                      "communication_times": RandomTimes("lognormal", mean=0.2)}, 200),
    # Outages: an agent gone for good (Rennala goes on), and one down for an interval (Malenia waits for it).
    "rennala-inline-outage": Case(RennalaNIGT, {**THREE, "outages": {1: 2.5, 2: [(1.0, 6.5)]}}, 200),
    "malenia-inline-outage": Case(MaleniaNIGT, {**THREE, "outages": {2: [(3.0, 9.5)]}}, 200),
    # The event trace of every kind of round.
    "rennala-inline-trace": Case(RennalaNIGT, {**SQRT, "record_trace": True}, 100),
    "malenia-inline-trace": Case(MaleniaNIGT, {**THREE, "record_trace": True}, 100),
    "sync-inline-trace": Case(SynchronizedNIGT, {**THREE, "record_trace": True}, 100),
    "afedpg-inline-trace": Case(AFedPG, {**THREE, "record_trace": True}, 100),
    # VecNormalize: the warm-up round, frozen statistics per round, merged moments.
    "rennala-inline-vecnormalize": Case(RennalaNIGT, SQRT, 200, env=normalized_pendulum),
    "rennala-subprocess2-vecnormalize": Case(RennalaNIGT, {**SQRT, **SUBPROCESS}, 200, env=normalized_pendulum,
                                             same_as="rennala-inline-vecnormalize"),
    "afedpg-inline-vecnormalize": Case(AFedPG, THREE, 200, env=normalized_pendulum),
    # 100 agents with constant times, no trace, no outages: the vectorized round planner; with a trace: the event loop.
    "rennala-inline-100-agents-vectorized": Case(RennalaNIGT, dict(n_agents=100, compute_times="sqrt", communication_times=0.25,
                                                                   batch_size=30, **SMALL), 750),
    "rennala-inline-100-agents-event-loop": Case(RennalaNIGT, dict(n_agents=100, compute_times="sqrt", communication_times=0.25,
                                                                   batch_size=30, record_trace=True, **SMALL), 750,
                                                 same_as="rennala-inline-100-agents-vectorized"),
})


# ------------------------------------------------------------------------------------------------- digests
def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_json(value: Any) -> str:
    return sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


def digest_array(array: Any, dtype: str) -> str:
    return sha256(b"None" if array is None else np.ascontiguousarray(np.asarray(array).astype(dtype)).tobytes())


def plain(value: Any) -> Any:
    """A JSON value that identifies ``value`` exactly (floats by their repr, everything else by str)."""
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


def counters(model: Any) -> dict:
    """The model's deterministic counters, in plain JSON values."""
    values = dict(
        num_timesteps=int(model.num_timesteps),
        n_updates=int(model._n_updates),  # SB3's counter (logged as train/n_updates)
        n_rounds=int(model.n_rounds),
        n_communications=int(model.n_communications),
        bytes_sent=int(model.bytes_sent),
        compute_counters=[int(c) for c in model.time_counters.compute],
        communication_counters=[int(c) for c in model.time_counters.communication],
        last_counts=None if model.last_counts is None else [int(c) for c in model.last_counts],
        round_stats={key: plain(model.round_stats[key]) for key in ROUND_STATS if key in model.round_stats},
    )
    if isinstance(model, AFedPG):
        values["staleness_histogram"] = [int(c) for c in model.staleness_histogram]
    return values


def fingerprint(model: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """(digests, readable values) of a trained model."""
    theta = parameters_to_vector(model.policy.parameters()).detach().cpu().numpy()
    time = f"{model.simulated_time_exact}|{model.simulated_time!r}"
    episodes = [[plain(float(ep["r"])), int(ep["l"]), plain(float(ep["t"])), int(ep["agent"])] for ep in model.ep_info_buffer]
    values = counters(model)
    digests = dict(theta=digest_array(theta, "<f4"), momentum=digest_array(model.momentum_buffer, "<f8"),
                   time=sha256(time.encode()), counters=digest_json(values), episodes=digest_json(episodes))
    if model.record_trace:
        digests["trace"] = digest_json([[plain(x) for x in (e.round, e.agent, e.kind, e.index, e.start, e.end, e.status)]
                                        for e in model.trace])
    vec_normalize = model.get_vec_normalize_env()
    if vec_normalize is not None:
        rms = vec_normalize.obs_rms
        digests["obs_rms"] = digest_json([digest_array(rms.mean, "<f8"), digest_array(rms.var, "<f8"), plain(float(rms.count))])
    readable = dict(simulated_time=str(model.simulated_time_exact), **{k: values[k] for k in
                    ("num_timesteps", "n_updates", "n_rounds", "n_communications", "bytes_sent", "last_counts")})
    return digests, readable


# ----------------------------------------------------------------------------------------------------- runs
class SaveMidRound(BaseCallback):
    """Saves the model at the ``at``-th environment step (inside a round's callbacks) and stops training."""

    def __init__(self, at: int, path: Path):
        super().__init__()
        self.at, self.path = at, path

    def _on_step(self) -> bool:
        if self.n_calls == self.at:
            self.model.save(self.path)
            return False
        return True


def run(case: Case, tmp_path: Path) -> Any:
    model = case.algorithm("MlpPolicy", case.env(), **case.kwargs)
    if case.resume_at is None:
        return model.learn(case.steps)
    path = tmp_path / "mid_round.zip"
    model.learn(case.steps, callback=SaveMidRound(case.resume_at, path))
    resumed = case.algorithm.load(path, env=case.env())
    assert resumed.num_timesteps == case.resume_at
    return resumed.learn(case.steps - resumed.num_timesteps, reset_num_timesteps=False)


# ---------------------------------------------------------------------------------------------------- tests
def load_recorded() -> dict:
    return json.loads(DATA.read_text()) if DATA.exists() else {}


def record(name: str, entry: dict) -> None:
    recorded = load_recorded()
    recorded[name] = entry
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(json.dumps(dict(sorted(recorded.items())), indent=1) + "\n")


RECORDED = load_recorded()
COMPUTED: dict[str, dict] = {}


def describe(name: str, key: str, expected: dict, actual: dict) -> str:
    return (f"{name}: the {key} digest differs from the recorded one (tests/data/digests.json).\n"
            f"  recorded: {expected['readable']}\n  this run: {actual['readable']}\n"
            "If the engine's arithmetic changed on purpose, re-record: SB3_NIGT_RECORD_DIGESTS=1 pytest tests/test_digests.py")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(CASES))
def test_digests_are_unchanged(name, request, tmp_path):
    case = CASES[name]
    if case.kwargs.get("backend") == "ray":
        request.getfixturevalue("ray_runtime")  # skipped when ray is not installed
    digests, readable = fingerprint(run(case, tmp_path))
    actual = dict(digests=digests, readable=readable)
    COMPUTED[name] = actual
    if case.same_as is not None:
        reference = COMPUTED.get(case.same_as) or RECORDED.get(case.same_as)
        assert reference is not None, f"{name}: run {case.same_as} first (or record it)"
        for key in case.same_keys:
            assert digests[key] == reference["digests"][key], f"{name}: the {key} digest differs from {case.same_as}'s: " \
                f"{readable} vs {reference['readable']}"
    if RECORD:
        record(name, actual)
        return
    assert name in RECORDED, f"{name}: no recorded digests; record them with SB3_NIGT_RECORD_DIGESTS=1 pytest tests/test_digests.py"
    expected = RECORDED[name]
    assert sorted(digests) == sorted(expected["digests"]), f"{name}: digested {sorted(digests)}, recorded {sorted(expected['digests'])}"
    for key in expected["digests"]:
        assert digests[key] == expected["digests"][key], describe(name, key, expected, actual)
