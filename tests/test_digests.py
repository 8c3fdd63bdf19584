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
- ``trace`` (cases with ``record_trace=True``; the events in sorted order) and ``obs_rms`` (VecNormalize cases).

The expected digests live in ``tests/data/digests.json``. They change deliberately only when the engine's
arithmetic changes (a new seeding scheme, another summation order, ...); a refactoring must leave every one of
them equal. To (re)record them, on the commit whose bits are the reference::

    SB3_NIGT_RECORD_DIGESTS=1 pytest tests/test_digests.py          # every case
    SB3_NIGT_RECORD_DIGESTS=1 pytest tests/test_digests.py -k afedpg  # only the cases selected

Recording rewrites the entries of the cases that ran and keeps the others. Without the variable the test compares,
and a failure names the case, the digests that differ, and the readable values (clock, counters) of both runs.

The clock, counters and trace are exact, the same on every machine. θ, d_t, episode returns and VecNormalize
statistics are floating-point results whose last bits depend on the kernels torch, MKL and numpy pick for the
CPU (``ATEN_CPU_CAPABILITY=default`` already changes them), so they are recorded per platform (``PLATFORM``: torch
version and CPU capability, numpy version and SIMD target, CPU vendor). On a platform without a recording the test
warns and checks the exact digests and the equalities between cases; recording there adds that platform's float
digests next to the others (they are kept while the exact digests and this platform's float ones are unchanged).

A case with ``same_as`` must also give the digests of another case (listed in ``same_keys``): the subprocess and
Ray backends give the inline bits, a checkpoint written mid-round and resumed gives the uninterrupted run, and the
100-agent vectorized round planner gives the event loop's rounds.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize
from torch.nn.utils import parameters_to_vector

from sb3_nigt import AFedPG, MaleniaNIGT, RandomTimes, RennalaNIGT, SynchronizedNIGT

from digest_envs import ShortEpisodesEnv
from helpers import SaveAndStop

DATA = Path(__file__).parent / "data" / "digests.json"
RECORD = os.environ.get("SB3_NIGT_RECORD_DIGESTS", "") not in ("", "0")
# The round statistics a model exposes after each round (those that exist at the recorded commit).
ROUND_STATS = ("round_seconds", "gradients_per_round", "agents_contributing", "contributors", "agents_lost", "steps_per_round",
               "observation_warmup")
BACKEND_KEYS = ("theta", "momentum", "time", "counters", "episodes")
RESUME_KEYS = ("theta", "momentum", "time", "counters")  # SB3 does not save the episode buffer
# Digests of floating-point results: torch and numpy pick their kernels (and so the rounding) by CPU and version, so
# these are recorded per platform; the exact ones (clock, counters, trace) hold everywhere.
FLOAT_KEYS = ("theta", "momentum", "episodes", "obs_rms")

SMALL = dict(horizon=5, seed=0, policy_kwargs=dict(net_arch=[8]))
THREE = dict(n_agents=3, compute_times=[1, 2, 3], communication_times=[0.5, 0, 0.25], round_size=4, **SMALL)
SQRT = dict(n_agents=3, compute_times="sqrt", communication_times=[0, 0.3, 0.1], round_size=4, **SMALL)
SUBPROCESS = dict(backend="subprocess", n_workers=2)
RAY = dict(backend="ray", n_workers=2)


def platform_key() -> str:
    """What decides the floating-point rounding here: torch's CPU kernels, numpy's SIMD target, the CPU vendor (MKL)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
        numpy_simd = ([target for target in __cpu_dispatch__ if __cpu_features__.get(target)] or ["baseline"])[-1]
    except ImportError:  # numpy < 2
        numpy_simd = "unknown"
    vendor = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as cpuinfo:
            vendor = next((line.split(":")[1].strip() for line in cpuinfo if line.startswith("vendor_id")), "unknown")
    return f"torch {torch.__version__} {torch.backends.cpu.get_cpu_capability()}, numpy {np.__version__} {numpy_simd}, {vendor}"


PLATFORM = platform_key()


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
    # Simultaneous finishes go to the lower agent index (3 × 0.1 s = 0.3 s exactly).
    "rennala-inline-ties": Case(RennalaNIGT, dict(n_agents=3, compute_times=[0.1, 0.3, 0.2], round_size=5, **SMALL), 200),
    # 100 agents with constant times, no trace, no outages: the vectorized round planner; with a trace: the event loop.
    "rennala-inline-100-agents-vectorized": Case(RennalaNIGT, dict(n_agents=100, compute_times="sqrt", communication_times=0.25,
                                                                   round_size=30, **SMALL), 750),
    "rennala-inline-100-agents-event-loop": Case(RennalaNIGT, dict(n_agents=100, compute_times="sqrt", communication_times=0.25,
                                                                   round_size=30, record_trace=True, **SMALL), 750,
                                                 same_as="rennala-inline-100-agents-vectorized"),
    "rennala-inline-100-agents-ties-vectorized": Case(RennalaNIGT, dict(n_agents=100, compute_times=[0.1, 0.3, 0.2, 0.6] * 25,
                                                                        round_size=50, **SMALL), 1000),
    "rennala-inline-100-agents-ties-event-loop": Case(RennalaNIGT, dict(n_agents=100, compute_times=[0.1, 0.3, 0.2, 0.6] * 25,
                                                                        round_size=50, record_trace=True, **SMALL), 1000,
                                                      same_as="rennala-inline-100-agents-ties-vectorized"),
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
    if model.record_trace:  # the events as a set: the order in which the engine emits them is not promised
        events = sorted((e.round, e.agent, e.kind, e.index, float(e.start), float(e.end), e.status, str(e.start), str(e.end))
                        for e in model.trace)
        digests["trace"] = digest_json([[plain(x) for x in event] for event in events])
    vec_normalize = model.get_vec_normalize_env()
    if vec_normalize is not None:
        rms = vec_normalize.obs_rms
        digests["obs_rms"] = digest_json([digest_array(rms.mean, "<f8"), digest_array(rms.var, "<f8"), plain(float(rms.count))])
    readable = dict(simulated_time=str(model.simulated_time_exact), **{k: values[k] for k in
                    ("num_timesteps", "n_updates", "n_rounds", "n_communications", "bytes_sent")},
                    last_counts=" ".join(str(c) for c in values["last_counts"] or []))
    return digests, readable


# ----------------------------------------------------------------------------------------------------- runs
def run(case: Case, tmp_path: Path) -> Any:
    model = case.algorithm("MlpPolicy", case.env(), **case.kwargs)
    if case.resume_at is None:
        return model.learn(case.steps)
    path = tmp_path / "mid_round.zip"
    model.learn(case.steps, callback=SaveAndStop(case.resume_at, path))
    resumed = case.algorithm.load(path, env=case.env())
    assert resumed.num_timesteps == case.resume_at
    return resumed.learn(case.steps - resumed.num_timesteps, reset_num_timesteps=False)


# ---------------------------------------------------------------------------------------------------- tests
def load_recorded() -> dict:
    return json.loads(DATA.read_text()) if DATA.exists() else {}


def record(name: str, actual: dict) -> None:
    """Writes ``name``'s digests: the exact ones, and the float ones under this platform. The other platforms'
    float digests are kept only while the exact ones and this platform's float ones are unchanged."""
    recorded = load_recorded()
    old = recorded.get(name, {})
    exact = {key: value for key, value in actual["digests"].items() if key not in FLOAT_KEYS}
    floats = {key: value for key, value in actual["digests"].items() if key in FLOAT_KEYS}
    platforms = dict(old.get("float", {})) if old.get("exact") == exact and old.get("float", {}).get(PLATFORM, floats) == floats else {}
    platforms[PLATFORM] = floats
    recorded[name] = dict(exact=exact, float=dict(sorted(platforms.items())), readable=actual["readable"])
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(json.dumps(dict(sorted(recorded.items())), indent=1) + "\n")


def recorded_digests(name: str) -> Optional[dict]:
    """The recorded digests of ``name`` that apply here (the float ones only if recorded on this platform)."""
    entry = RECORDED.get(name)
    if entry is None:
        return None
    return dict(digests={**entry["exact"], **entry["float"].get(PLATFORM, {})}, readable=entry["readable"])


RECORDED = load_recorded()
COMPUTED: dict[str, dict] = {}


def describe(name: str, keys: list[str], expected: dict, actual: dict) -> str:
    same = [key for key in expected["digests"] if key not in keys]
    return (f"{name}: the {', '.join(keys)} digest(s) differ from the recorded ones (tests/data/digests.json); "
            f"equal: {', '.join(same) or 'none'}.\n"
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
        reference = COMPUTED.get(case.same_as) or recorded_digests(case.same_as)
        assert reference is not None, f"{name}: run {case.same_as} first (or record it)"
        # A reference read from the file may lack the float digests (recorded on another platform), never the others.
        missing = [key for key in case.same_keys if key not in reference["digests"] and key not in FLOAT_KEYS]
        assert not missing, f"{name}: {case.same_as} has no {missing} digest to compare with"
        differ = [key for key in case.same_keys if key in reference["digests"] and digests[key] != reference["digests"][key]]
        assert not differ, f"{name}: the {', '.join(differ)} digest(s) differ from {case.same_as}'s: {readable} vs {reference['readable']}"
    if RECORD:
        record(name, actual)
        return
    expected = recorded_digests(name)
    assert expected is not None, f"{name}: no recorded digests; record them with SB3_NIGT_RECORD_DIGESTS=1 pytest tests/test_digests.py"
    exact = sorted(key for key in digests if key not in FLOAT_KEYS)
    assert exact == sorted(RECORDED[name]["exact"]), f"{name}: digested {exact}, recorded {sorted(RECORDED[name]['exact'])}"
    if PLATFORM not in RECORDED[name]["float"]:
        warnings.warn(f"{name}: θ, d_t and episode digests were recorded on {sorted(RECORDED[name]['float'])}, not on this "
                      f"platform ({PLATFORM}): only the exact digests (clock, counters, trace) and the equalities between "
                      "backends are checked here", stacklevel=1)
    differ = [key for key in expected["digests"] if digests[key] != expected["digests"][key]]
    assert not differ, describe(name, differ, expected, actual)
