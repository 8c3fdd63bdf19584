"""Shared fixtures: small models, a collector factory and a spy on subprocess workers."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Optional

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from torch.nn.utils import parameters_to_vector

from sb3_nigt import NIGTPolicy, RennalaNIGT
from sb3_nigt.algorithms.config import RENAMED
from sb3_nigt.algorithms.live_workers import close_all
from sb3_nigt.backends.contract import BackendOptions
from sb3_nigt.backends.inline import InlineBackend
from sb3_nigt.backends.subprocess import SubprocessBackend
from sb3_nigt.clock.rounds import Collector
from sb3_nigt.clock.timing import TimingModel
from sb3_nigt.workers.env_factory import EnvFactory

#: The SB3 log folder this process made for the run (pytest_configure), if it made one.
_OWN_LOGDIR: list[str] = [""]


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "own_runtime: a Ray test that starts its own Ray runtime (in a fresh process), "
                                       "not the session's")
    # Subprocess workers start from a forkserver (the library's default). Preloading the library there makes a
    # worker start in a fraction of a second instead of re-importing torch each time (several seconds on two
    # busy cores). test_determinism.py also runs one "spawn" configuration, which preloads nothing.
    mp.set_forkserver_preload(["sb3_nigt.backends.subprocess"])
    # A model whose logger is not set makes a fresh folder in the temporary directory on every learn() (SB3's
    # configure(); thousands per suite run). Point them all at one folder that the run removes at the end; xdist's
    # processes inherit the variable from the controller, which owns the folder.
    if "SB3_LOGDIR" not in os.environ:
        os.environ["SB3_LOGDIR"] = _OWN_LOGDIR[0] = tempfile.mkdtemp(prefix="sb3-nigt-tests-")


def pytest_unconfigure(config) -> None:
    if _OWN_LOGDIR[0]:
        shutil.rmtree(_OWN_LOGDIR[0], ignore_errors=True)
        os.environ.pop("SB3_LOGDIR", None)


#: A Ray test's id names Ray standing alone (the Ray cases of the backend contract and of the digests, docs/ray.md,
#: tests/test_ray_backend.py, tests that take ``ray_runtime``): "ray2" and "on_ray" count, "array" does not.
RAY_IN_ID = re.compile(r"(?<![a-z])ray(?![a-z])")
#: Ray tests that start a runtime of their own in a fresh process (marked ``own_runtime``): they may run anywhere.
OWN_RUNTIME = ("test_its_own_local_runtime_listens_on_the_loopback_and_is_shut_down_at_close",)
#: Modules whose tests share a module-scoped fixture (checked at collection: see pytest_collection_modifyitems).
SHARED_MODULES = ("tests/test_architecture.py", "tests/test_determinism.py", "tests/test_experiments.py",
                  "tests/test_main_guard.py", "tests/test_torch_distributed.py")


def xdist_group(nodeid: str) -> Optional[str]:
    """The group of a test for ``make test`` (two pytest-xdist processes, ``--dist loadgroup``): the tests of a group
    run in one process, so what they share is set up once. The Ray tests form one group ("ray"): one Ray runtime,
    started the first time one of them asks for it and kept for the rest (two runtimes side by side on two cores
    made Ray's restart and failure detection miss the tests' time bounds);
    a module of SHARED_MODULES: its tests (the fixture runs once); None: the test runs anywhere. The controller of
    xdist knows the ids only, so the group is read from the id."""
    nodeid = nodeid.split("@", 1)[0]
    path, _, name = nodeid.partition("::")
    if RAY_IN_ID.search(nodeid.lower()) and name.split("[", 1)[0] not in OWN_RUNTIME:
        return "ray"
    return path if path in SHARED_MODULES else None


def pytest_xdist_make_scheduler(config, log) -> Any:
    """``--dist loadgroup`` with the groups of :func:`xdist_group` (pytest-xdist's own loadgroup reads
    ``xdist_group`` marks through ``item._nodeid``, which pytest >= 9.2 no longer has)."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid) or nodeid

    return GroupScheduling(config, log)


def pytest_collection_modifyitems(config, items) -> None:
    """Keep :func:`xdist_group` honest: a test that takes the session's Ray runtime is in a Ray group, a Ray
    test marked ``own_runtime`` is not, and a test that uses a module-scoped fixture is in its module's group."""
    for item in items:
        group = xdist_group(item.nodeid)
        if "ray_runtime" in getattr(item, "fixturenames", ()) and group not in ("ray", "ray-contract"):
            raise pytest.UsageError(f"{item.nodeid} uses the Ray runtime: its id must name Ray (conftest.RAY_IN_ID)")
        if item.get_closest_marker("own_runtime") is not None and group is not None:
            raise pytest.UsageError(f"{item.nodeid} is marked own_runtime: add its name to conftest.OWN_RUNTIME")
        fixtures = getattr(item, "_fixtureinfo", None)
        shared = fixtures is not None and any(d.scope == "module" for defs in fixtures.name2fixturedefs.values() for d in defs)
        if shared and group is None:
            raise pytest.UsageError(f"{item.nodeid} uses a module-scoped fixture: add its module to conftest.SHARED_MODULES")


@pytest.fixture(scope="session")
def ray_runtime() -> Any:
    """One local Ray runtime (loopback, two CPUs, no dashboard) for every Ray test of the session (under xdist: of
    the process), shut down at its end: starting one takes several seconds. The actors import this folder's modules (contract_envs, fault_envs) by
    name, as subprocess workers do."""
    ray = pytest.importorskip("ray", reason='the Ray backend needs ray: pip install "sb3-nigt[ray]"')
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 job_config=ray.job_config.JobConfig(code_search_path=[os.path.dirname(os.path.abspath(__file__))]))
    yield ray
    if started_here:
        ray.shutdown()


@pytest.fixture(autouse=True)
def _close_models_workers() -> Any:
    """Models keep their workers between learn() calls until they are closed or collected (and models hold
    reference cycles, so collection waits for the garbage collector): close every model's workers after each
    test, so that no test sees another's processes."""
    yield
    close_all()


# Small settings that keep every test fast on 2 shared cores.
SMALL = dict(round_size=4, horizon=20, n_agents=2, seed=0)


@pytest.fixture
def make_model() -> Callable[..., RennalaNIGT]:
    """Factory of a small RennalaNIGT on Pendulum-v1 (inline backend, simulated clock); kwargs override (an old
    argument name given replaces its new one, so that only the old name's FutureWarning is raised)."""

    def factory(env: Any = "Pendulum-v1", **kwargs: Any) -> RennalaNIGT:
        config = dict(SMALL)
        for old, new in RENAMED.items():
            if old in kwargs:
                config.pop(new, None)
        config.update(kwargs)
        return RennalaNIGT("MlpPolicy", env, **config)

    return factory


@pytest.fixture
def make_collector() -> Callable[..., tuple[Collector, np.ndarray]]:
    """Factory of an inline :class:`Collector` plus the initial θ of a fresh policy for it."""
    collectors: list[Collector] = []

    def factory(
        compute_times: Any,
        communication_times: Any = 0.0,
        n_agents: Optional[int] = None,
        env_factory: Callable[[], gym.Env] = EnvFactory("Pendulum-v1"),
        horizon: int = 5,
        compute_time_unit: str = "gradient",
        seed: int = 0,
        gamma: float = 0.99,
        policy_kwargs: Optional[dict] = None,
    ) -> tuple[Collector, np.ndarray]:
        if n_agents is None:
            n_agents = len(compute_times)
        probe = env_factory()
        policy_kwargs = dict(net_arch=[8]) if policy_kwargs is None else policy_kwargs
        th.manual_seed(seed)
        policy = NIGTPolicy(probe.observation_space, probe.action_space, None, **policy_kwargs)
        worker_args = dict(
            env_factories=[env_factory], policy_class=NIGTPolicy, observation_space=probe.observation_space,
            action_space=probe.action_space, policy_kwargs=policy_kwargs,
        )
        probe.close()
        timing = TimingModel(n_agents, compute_times, communication_times, compute_time_unit,
                             n_params=sum(p.numel() for p in policy.parameters()), seed=seed)
        backend = InlineBackend()
        backend.bind(worker_args, BackendOptions())
        collector = Collector(backend, timing, "simulated", horizon, gamma, seed, [0] * n_agents)
        collector.start()
        collectors.append(collector)
        params = parameters_to_vector(policy.parameters()).detach().numpy().astype(np.float32)
        return collector, params

    yield factory
    for collector in collectors:
        collector.close()


@pytest.fixture
def worker_spy(monkeypatch) -> list:
    """Records every worker ``multiprocessing.Process`` that a :class:`SubprocessBackend` starts."""
    started: list = []
    original = SubprocessBackend.start

    def start(self) -> None:
        try:
            original(self)
        finally:
            started.extend(worker.process for worker in self.workers)

    monkeypatch.setattr(SubprocessBackend, "start", start)
    return started
