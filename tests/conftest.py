"""Shared fixtures: small models, a collector factory and a spy on subprocess workers."""

from __future__ import annotations

import multiprocessing as mp
import os
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


def pytest_configure(config) -> None:
    # Subprocess workers start from a forkserver (the library's default). Preloading the library there makes a
    # worker start in a fraction of a second instead of re-importing torch each time (several seconds on two
    # busy cores). test_determinism.py also runs one "spawn" configuration, which preloads nothing.
    mp.set_forkserver_preload(["sb3_nigt.backends.subprocess"])


@pytest.fixture(scope="session")
def ray_runtime() -> Any:
    """One local Ray runtime (loopback, two CPUs, no dashboard) for every Ray test of the session, shut down at its
    end: starting one takes several seconds. The actors import this folder's modules (contract_envs, fault_envs) by
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
