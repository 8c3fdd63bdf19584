"""The backend contract (:class:`sb3_nigt.backends.contract.Backend`, docs/backends.md): one suite that every
registered backend passes.

Every test in the first part runs once per name in ``BACKEND_NAMES``; a new backend (Ray actors,
torch.distributed) joins the suite by adding its name there. The failure tests in the second part run for the
backends in ``FAULTS``, which maps a backend name to an adapter that knows how to reach one of its workers (kill
it, send it a raw message, see what it holds); a backend with workers it can lose opts in by adding one.

The reference of every gradient is :class:`GradientWorker` run directly in this process with one torch thread:
every backend equals it bit for bit, hence every backend equals every other.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import multiprocessing as mp
import os
import pickle
import signal
import time
from collections import Counter
from multiprocessing import shared_memory
from typing import Any, Callable, Optional

import numpy as np
import pytest
import torch as th
from torch.nn.utils import parameters_to_vector

from sb3_nigt import NIGTPolicy
from sb3_nigt.backends import registry
from sb3_nigt.backends.contract import Backend, BackendOptions, WorkerError, WorkerLost, single_threaded_torch
from sb3_nigt.backends.inline import InlineBackend
from sb3_nigt.backends.registry import BACKENDS, LazyBackend, hooks_of, make_backend, register_backend
from sb3_nigt.backends.subprocess import SubprocessBackend
from sb3_nigt.workers.env_factory import EnvFactory
from sb3_nigt.workers.messages import AgentReport, AgentRun
from sb3_nigt.workers.rollout import CHUNK_SIZE, GradientWorker, ObsNorm, TrajectoryStats, UnitResult, WorkUnit

from architecture_recipes import load_recipe
from contract_envs import SleepyEnv

pytestmark = pytest.mark.timeout(60)

#: Whether ray is installed (the "ray" extra): the Ray backend joins the suite only then.
HAVE_RAY = importlib.util.find_spec("ray") is not None

load_recipe("threads backend")  # registers "threads", the recipe of docs/architecture.md

#: Every backend the contract applies to.
BACKEND_NAMES = ["inline", "subprocess", "torch_distributed", "threads"] + (["ray"] if HAVE_RAY else [])

HORIZON, GAMMA, SEED = 5, 0.99, 11
PENDULUM = EnvFactory("Pendulum-v1")


# ------------------------------------------------------------------------------------------------ helpers
def worker_args(net_arch: tuple[int, ...] = (8,), factories: tuple = (PENDULUM,)) -> dict[str, Any]:
    probe = PENDULUM()
    args = dict(env_factories=list(factories), policy_class=NIGTPolicy, observation_space=probe.observation_space,
                action_space=probe.action_space, policy_kwargs={"net_arch": list(net_arch)})
    probe.close()
    return args


def theta(args: dict[str, Any], seed: int) -> np.ndarray:
    """θ of a fresh policy built with torch seed ``seed`` (float32, ``(d,)``); the global RNG is left alone."""
    with th.random.fork_rng(devices=[]):
        th.manual_seed(seed)
        policy = NIGTPolicy(args["observation_space"], args["action_space"], None, **args["policy_kwargs"])
        vector = parameters_to_vector(policy.parameters()).detach().numpy().astype(np.float32)
    return vector + np.float32(0.01 * seed)  # log_std starts equal in every policy: move it too


def unit(agent: int, first: int, count: int, epoch: int = 0, round_index: int = 3, **extra: Any) -> WorkUnit:
    return WorkUnit(round_index, agent, first, count, SEED, extra.pop("env_index", 0), HORIZON, GAMMA, epoch, **extra)


def run(agent: int, first: int = 0, epoch: int = 0, round_index: int = 2, **extra: Any) -> AgentRun:
    return AgentRun(epoch, round_index, agent, first, SEED, 0, HORIZON, GAMMA, **extra)


def reference_units(args: dict[str, Any], work: list[tuple[np.ndarray, WorkUnit]], obs_norm: Optional[ObsNorm] = None) -> list[UnitResult]:
    """``GradientWorker.run_unit`` of each (θ, unit), in this process, one torch thread, no emulated waits."""
    worker = GradientWorker(**args)
    try:
        with single_threaded_torch():
            results = []
            for params, work_unit in work:
                worker.set_params(params, obs_norm)
                results.append(worker.run_unit(dataclasses.replace(work_unit, delay=0.0, min_duration=0.0, upload_delay=0.0)))
            return results
    finally:
        worker.close()


def reference_sum(args: dict[str, Any], params: np.ndarray, agent_run: AgentRun, count: int) -> np.ndarray:
    """``GradientWorker.gradient_sum`` of the run's first ``count`` trajectories, sampled directly."""
    worker = GradientWorker(**args)
    try:
        with single_threaded_torch():
            worker.set_params(params)
            trajectories = [
                worker.sample_batch([(agent_run.agent, k, agent_run.env_index)], agent_run.seed, agent_run.horizon,
                                    round_index=agent_run.round_index)[0]
                for k in range(agent_run.first, agent_run.first + count)
            ]
            return worker.gradient_sum(trajectories, agent_run.gamma)
    finally:
        worker.close()


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def same_stats(a: TrajectoryStats, b: TrajectoryStats) -> bool:
    scalars = ("agent", "index", "episode_return", "episode_length", "n_steps")
    if any(getattr(a, name) != getattr(b, name) for name in scalars):
        return False
    if (a.obs_moments is None) != (b.obs_moments is None):
        return False
    if a.obs_moments is None:
        return True
    return (same_bits(a.obs_moments.mean, b.obs_moments.mean) and same_bits(a.obs_moments.var, b.obs_moments.var)
            and a.obs_moments.count == b.obs_moments.count)


def collect(backend: Backend, done: Callable[[list], bool], seconds: float = 30.0) -> list:
    """Events from ``wait`` until ``done(events)``; fails after ``seconds``."""
    events: list = []
    deadline = time.monotonic() + seconds
    while not done(events):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out after {seconds} s with {events}"
        events.extend(backend.wait(timeout=min(left, 1.0)))
    return events


def results(events: list) -> list[UnitResult]:
    return [e for e in events if isinstance(e, UnitResult)]


def reports(events: list) -> list[AgentReport]:
    return [e for e in events if isinstance(e, AgentReport)]


# ------------------------------------------------------------------------------------- failure adapters
class SubprocessFaults:
    """How the failure tests reach the workers of a :class:`SubprocessBackend`."""

    @staticmethod
    def holding_units(backend: SubprocessBackend) -> int:
        return next(i for i, worker in enumerate(backend.workers) if worker.units)

    @staticmethod
    def units(backend: SubprocessBackend, index: int) -> list[WorkUnit]:
        return list(backend.workers[index].units)

    @staticmethod
    def pid(backend: SubprocessBackend, index: int) -> int:
        return backend.workers[index].process.pid

    @staticmethod
    def alive(backend: SubprocessBackend, index: int) -> bool:
        return backend.workers[index].process.is_alive()

    @staticmethod
    def kill(backend: SubprocessBackend, index: int) -> None:
        os.kill(backend.workers[index].process.pid, signal.SIGKILL)

    @staticmethod
    def send_raw(backend: SubprocessBackend, index: int, message: tuple) -> None:
        backend.workers[index].remote.send(message)

    @staticmethod
    def record_messages(backend: SubprocessBackend, sizes: list[int]) -> None:
        """Record the pickled size of every message the main process sends to a worker."""
        post = backend._post

        def spy(worker: Any, message: Any) -> bool:
            sizes.append(len(pickle.dumps(message)))
            return post(worker, message)

        backend._post = spy  # type: ignore[method-assign]

    @staticmethod
    def resources(backend: SubprocessBackend) -> tuple[list, Optional[str]]:
        return [worker.process for worker in backend.workers], None if backend.memory is None else backend.memory.name

    @staticmethod
    def assert_released(resources: tuple[list, Optional[str]]) -> None:
        processes, memory = resources
        for process in processes:
            assert not process.is_alive(), f"worker pid {process.pid} is still alive"
        assert mp.active_children() == []
        if memory is not None:
            with pytest.raises(FileNotFoundError):
                shared_memory.SharedMemory(name=memory)


class RayFaults:
    """How the failure tests reach the actors of a :class:`~sb3_nigt.backends.ray_actors.RayBackend`."""

    @staticmethod
    def holding_units(backend: Any) -> int:
        return next(i for i, actor in enumerate(backend.actors) if actor.units)

    @staticmethod
    def units(backend: Any, index: int) -> list[WorkUnit]:
        return list(backend.actors[index].units)

    @staticmethod
    def pid(backend: Any, index: int) -> int:
        """The process id of the actor's current incarnation (once Ray has restarted it, or a new actor is built:
        while Ray restarts an actor, calls to it fail with ActorUnavailableError)."""
        import ray

        deadline = time.monotonic() + 45
        while True:
            try:
                return ray.get(backend.actors[index].handle.ready.remote(), timeout=45)
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    @staticmethod
    def alive(backend: Any, index: int) -> bool:
        import ray

        try:
            return RayFaults.pid(backend, index) > 0
        except ray.exceptions.RayError:
            return False

    @staticmethod
    def kill(backend: Any, index: int) -> None:
        os.kill(RayFaults.pid(backend, index), signal.SIGKILL)

    @staticmethod
    def send_raw(backend: Any, index: int, message: tuple) -> None:
        backend._post(backend.actors[index], message)

    @staticmethod
    def record_messages(backend: Any, sizes: list[int]) -> None:
        """Record the pickled size of every command posted to an actor (θ travels beside it as an ObjectRef)."""
        post = backend._post

        def spy(actor: Any, message: Any) -> None:
            theta = getattr(message, "theta", None)
            if theta is not None:
                assert type(theta.handle).__name__ == "ObjectRef"
                message = dataclasses.replace(message, theta=dataclasses.replace(theta, handle=None))
            sizes.append(len(pickle.dumps(message)))
            post(actor, message if theta is None else dataclasses.replace(message, theta=theta))

        backend._post = spy

    @staticmethod
    def resources(backend: Any) -> tuple[list, Optional[str]]:
        return [RayFaults.pid(backend, i) for i in range(len(backend.actors))], None

    @staticmethod
    def assert_released(resources: tuple[list, Optional[str]]) -> None:
        pids, _ = resources
        deadline = time.monotonic() + 20
        for pid in pids:
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                assert time.monotonic() < deadline, f"actor process {pid} is still alive"
                time.sleep(0.1)


#: Backends with workers they can lose, and how the failure tests reach those workers.
FAULTS: dict[str, Any] = {"subprocess": SubprocessFaults, **({"ray": RayFaults} if HAVE_RAY else {})}


def close_and_check(name: str, backend: Backend) -> None:
    """Close the backend; where an adapter knows its resources, check that none is left."""
    resources = FAULTS[name].resources(backend) if name in FAULTS else None
    backend.close()
    if resources is not None:
        FAULTS[name].assert_released(resources)


@pytest.fixture
def started(request) -> Callable[..., Backend]:
    """Factory of started backends (two workers, options as keyword arguments), each closed and checked at the end."""
    made: list[tuple[str, Backend]] = []

    def factory(name: str, args: Optional[dict[str, Any]] = None, **options: Any) -> Backend:
        if name == "ray":
            request.getfixturevalue("ray_runtime")
        options.setdefault("n_workers", 2)
        backend = make_backend(name, args if args is not None else worker_args(), BackendOptions(**options))
        made.append((name, backend))
        backend.start()
        return backend

    yield factory
    for name, backend in made:
        close_and_check(name, backend)


# -------------------------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_units_come_back_once_with_the_reference_bits(started, name):
    args = worker_args()
    backend = started(name, args)
    params = theta(args, 1)
    norm = ObsNorm(np.array([0.1, -0.2, 0.3]), np.array([0.5, 2.0, 4.0]), 5.0, 1e-8)
    backend.cancel(1)
    backend.publish(params, norm)
    units = [unit(0, 0, 3, epoch=1), unit(0, 3, CHUNK_SIZE + 1, epoch=1), unit(1, 0, 1, epoch=1), unit(2, 4, 2, epoch=1)]
    for work_unit in units:
        backend.submit(work_unit)
    events = collect(backend, lambda events: len(events) >= len(units))
    assert all(isinstance(e, UnitResult) for e in events), events
    assert Counter(e.unit for e in events) == Counter(units)  # each once
    with pytest.raises(RuntimeError):  # nothing left: no second copy of any result is coming
        backend.wait(timeout=1.0)
    references = reference_units(args, [(params, e.unit) for e in events], norm)
    for event, reference in zip(events, references):
        assert same_bits(event.gradient, reference.gradient), event.unit
        assert event.gradient.dtype == np.float64 and event.gradient.shape == params.shape
        assert [t.index for t in event.trajectories] == list(event.unit.indices)  # index order
        assert all(t.agent == event.unit.agent for t in event.trajectories)
        assert all(same_stats(a, b) for a, b in zip(event.trajectories, reference.trajectories))
        assert all(t.obs_moments is not None for t in event.trajectories)  # observation statistics were on
        assert event.n_steps == sum(t.n_steps for t in event.trajectories) == HORIZON * event.unit.count


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_agent_slots_compute_at_their_own_theta(started, name):
    args = worker_args()
    backend = started(name, args, agent_slots=2)
    thetas = {-1: theta(args, 1), 0: theta(args, 2), 1: theta(args, 3)}
    backend.publish(thetas[-1], None)
    with pytest.raises(ValueError, match="slot"):  # never published to
        backend.submit(unit(1, 0, 2, slot=0))
    for slot in (0, 1):
        backend.publish(thetas[slot], None, slot=slot)
    with pytest.raises(ValueError, match="slot"):
        backend.publish(thetas[-1], None, slot=2)
    with pytest.raises(ValueError, match="params"):
        backend.publish(thetas[-1][:-1], None, slot=0)
    units = [unit(1, 0, 2, slot=slot) for slot in (-1, 0, 1)]  # the same gradients: only θ differs
    for work_unit in units:
        backend.submit(work_unit)
    events = collect(backend, lambda events: len(events) >= 3)
    assert Counter(e.unit for e in events) == Counter(units)
    references = reference_units(args, [(thetas[e.unit.slot], e.unit) for e in events])
    for event, reference in zip(events, references):
        assert same_bits(event.gradient, reference.gradient), event.unit.slot
    gradients = [e.gradient.tobytes() for e in events]
    assert len(set(gradients)) == 3
    # A slot published again: later work of that slot uses the new θ.
    fresh = theta(args, 4)
    backend.publish(fresh, None, slot=0)
    backend.submit(units[1])
    [event] = collect(backend, lambda events: len(events) >= 1)
    assert same_bits(event.gradient, reference_units(args, [(fresh, units[1])])[0].gradient)


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_cancelled_units_never_produce_an_event(started, name):
    args = worker_args()
    backend = started(name, args)
    old, new = theta(args, 1), theta(args, 2)
    backend.cancel(1)
    backend.publish(old, None)
    doomed = [unit(a, 0, 2, epoch=1) for a in range(3)] + [unit(3, 0, 1, epoch=1, delay=0.3)]
    for work_unit in doomed:
        backend.submit(work_unit)
    time.sleep(0.5)  # some of it is computed (and sent) before the cancel: it must be dropped all the same
    backend.cancel(2)
    backend.submit(unit(5, 0, 1, epoch=1))  # below the live epoch: dropped at once
    with pytest.raises(RuntimeError):  # cancelled work is not pending
        backend.wait(timeout=1.0)
    backend.publish(new, None)
    live = [unit(a, 0, 2, epoch=2) for a in range(2)]
    for work_unit in live:
        backend.submit(work_unit)
    events = collect(backend, lambda events: len(events) >= len(live))
    time.sleep(0.5)  # anything still in transit of epoch 1 arrives now, and must be dropped on receipt
    last = unit(4, 0, 1, epoch=2)
    backend.submit(last)
    events += collect(backend, lambda events: any(isinstance(e, UnitResult) and e.unit == last for e in events))
    assert all(isinstance(e, UnitResult) and e.unit.epoch == 2 for e in events), events
    assert Counter(e.unit for e in events) == Counter(live + [last])
    for event, reference in zip(events, reference_units(args, [(new, e.unit) for e in events])):
        assert same_bits(event.gradient, reference.gradient)
    backend.cancel(1)  # the live epoch never decreases
    backend.submit(unit(6, 0, 1, epoch=1))
    with pytest.raises(RuntimeError):
        backend.wait(timeout=1.0)


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_agent_run_reports_then_sends_the_sum_of_the_flushed_count(started, name):
    args = worker_args()
    backend = started(name, args)
    params = theta(args, 1)
    backend.cancel(1)
    backend.publish(params, None)
    runs = {0: run(0, first=0, epoch=1), 1: run(1, first=3, epoch=1)}
    for agent_run in runs.values():
        backend.start_run(agent_run)

    def enough(events: list) -> bool:
        return all(sum(r.stats.agent == agent for r in reports(events)) >= 3 for agent in runs)

    events = collect(backend, enough)
    assert all(isinstance(e, AgentReport) for e in events), events
    for agent, agent_run in runs.items():
        indices = [r.stats.index for r in events if r.stats.agent == agent]
        assert indices == list(range(agent_run.first, agent_run.first + len(indices)))  # in index order
    d = len(params)
    for report in events:  # small: no gradient vector travels, only per-step data of the trajectory's length
        assert report.epoch == 1 and isinstance(report.stats, TrajectoryStats)
        assert report.stats.obs_moments is None and report.stats.n_steps == HORIZON
        arrays = [value for value in vars(report.stats).values() if isinstance(value, np.ndarray)]
        assert all(array.size <= 4 * HORIZON < d for array in arrays)  # rewards (T,), the last observation
        assert len(pickle.dumps(report)) < 1000 + 200 * HORIZON
    backend.flush(1, 0, 0)  # agent 0 sends nothing
    backend.flush(1, 1, 2)
    backend.flush(1, 1, 2)  # a second flush of the same run is ignored
    after = collect(backend, lambda events: bool(results(events)))
    time.sleep(0.2)
    with pytest.raises(RuntimeError):  # both runs are released: nothing more will come
        backend.wait(timeout=1.0)
    assert len(after) == 1, after  # no report after a flush
    [result] = after
    assert (result.unit.agent, result.unit.first, result.unit.count, result.unit.epoch) == (1, 3, 2, 1)
    assert [t.index for t in result.trajectories] == [3, 4] and result.n_steps == 2 * HORIZON
    assert same_bits(result.gradient, reference_sum(args, params, runs[1], 2))
    for stats, report in zip(result.trajectories, [r for r in events if r.stats.agent == 1]):
        assert same_stats(stats, report.stats)


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_max_gradients_ends_a_run_with_an_early_sum(started, name):
    args = worker_args()
    backend = started(name, args)
    params = theta(args, 1)
    backend.publish(params, None)
    runs = {0: run(0, first=5, max_gradients=1), 1: run(1, first=0, max_gradients=2)}
    for agent_run in runs.values():
        backend.start_run(agent_run)
    events = collect(backend, lambda events: len(results(events)) >= 2)
    with pytest.raises(RuntimeError):  # both runs ended themselves
        backend.wait(timeout=1.0)
    for agent, agent_run in runs.items():
        mine = [e for e in events if (e.stats.agent if isinstance(e, AgentReport) else e.unit.agent) == agent]
        count = agent_run.max_gradients
        assert [type(e) for e in mine] == [AgentReport] * count + [UnitResult]  # its reports, then its sum
        assert [e.stats.index for e in mine[:-1]] == list(range(agent_run.first, agent_run.first + count))
        result = mine[-1]
        assert (result.unit.first, result.unit.count) == (agent_run.first, count)
        assert same_bits(result.gradient, reference_sum(args, params, agent_run, count))
    backend.flush(0, 0, 1)  # the run is over: ignored
    with pytest.raises(RuntimeError):
        backend.wait(timeout=1.0)


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_flush_is_prompt_and_waits_the_upload(started, name):
    # Trajectory 0 takes 0.2 s (emulated), trajectory 1 would take 30 s: the flush must not wait for it. One run:
    # one worker.
    args = worker_args()
    backend = started(name, args, n_workers=1)
    params = theta(args, 1)
    backend.publish(params, None)
    agent_run = run(0, durations=(0.2, 30.0))
    begin = time.monotonic()
    backend.start_run(agent_run)
    [report] = collect(backend, lambda events: bool(events), seconds=10)
    assert report.stats.index == 0 and time.monotonic() - begin >= 0.15
    flushed = time.monotonic()
    backend.flush(0, 0, 1, upload_delay=0.3)
    [result] = collect(backend, lambda events: bool(events), seconds=10)
    assert 0.25 <= time.monotonic() - flushed < 5.0
    assert same_bits(result.gradient, reference_sum(args, params, agent_run, 1))


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_wait_honours_its_timeout_and_refuses_to_wait_for_nothing(started, name):
    args = worker_args()
    backend = started(name, args)
    backend.publish(theta(args, 1), None)
    with pytest.raises(RuntimeError):  # nothing submitted: it must not block
        backend.wait()
    backend.start_run(run(0, durations=(5.0,)))  # nothing finishes for 5 s
    for _ in range(2):
        begin = time.monotonic()
        assert backend.wait(timeout=0.5) == []
        assert 0.4 <= time.monotonic() - begin < 2.0
        backend.submit(unit(1, 0, 1, delay=5.0))
    backend.cancel(1)  # releases the run and the units
    with pytest.raises(RuntimeError):
        backend.wait()


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_cancelled_run_is_released(started, name):
    args = worker_args()
    backend = started(name, args)
    backend.publish(theta(args, 1), None)
    backend.start_run(run(0, epoch=0))
    collect(backend, lambda events: len(events) >= 2)
    backend.cancel(1)
    backend.flush(0, 0, 1)  # a run of a cancelled epoch: ignored
    with pytest.raises(RuntimeError):
        backend.wait(timeout=1.0)
    time.sleep(0.2)
    backend.start_run(run(1, epoch=1))
    events = collect(backend, lambda events: len(events) >= 3)
    assert all(isinstance(e, AgentReport) and e.epoch == 1 and e.stats.agent == 1 for e in events), events
    backend.flush(1, 1, 0)


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_close_is_idempotent_and_a_closed_backend_starts_again(started, name):
    # One worker (started three times): the release of several workers is checked at the end of every other test.
    args = worker_args()
    backend = started(name, args, n_workers=1)
    params = theta(args, 1)
    backend.publish(params, None)
    backend.submit(unit(0, 0, 2))
    [first] = collect(backend, lambda events: bool(events))
    close_and_check(name, backend)
    backend.close()
    backend.start()
    with pytest.raises(ValueError):  # what was published before is gone
        backend.submit(unit(0, 0, 2))
    backend.publish(params, None)
    backend.submit(unit(0, 0, 2))
    [second] = collect(backend, lambda events: bool(events))
    assert same_bits(first.gradient, second.gradient)
    backend.start()  # starting a started backend restarts it
    backend.publish(params, None)
    backend.submit(unit(0, 0, 2))
    [third] = collect(backend, lambda events: bool(events))
    assert same_bits(first.gradient, third.gradient)


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_is_a_registered_backend(name):
    backend = make_backend(name, worker_args(), BackendOptions(n_workers=2))
    assert isinstance(backend, Backend)
    assert isinstance(BACKENDS[name](), Backend)
    assert backend.n_workers >= 1
    backend.close()  # closing a backend that never started is safe
    backend.close()


def test_registry(monkeypatch):
    args = worker_args()
    with pytest.raises(ValueError, match="backend"):
        make_backend("nope", args, BackendOptions())
    with pytest.raises(ValueError, match="backend"):
        make_backend(object(), args, BackendOptions())  # type: ignore[arg-type]
    monkeypatch.setattr(registry, "BACKENDS", dict(BACKENDS))  # restored after the test
    register_backend("contract-probe", InlineBackend)
    assert "contract-probe" in registry.BACKENDS
    assert isinstance(make_backend("contract-probe", args, BackendOptions()), InlineBackend)
    instance = InlineBackend()
    assert make_backend(instance, args, BackendOptions()) is instance  # an instance is bound and used as is


# ------------------------------------------------------------------------------- failures (opt-in: FAULTS)
@pytest.mark.parametrize("name", list(FAULTS))
def test_a_killed_worker_is_replaced_and_its_units_complete_with_the_same_bits(started, name):
    faults = FAULTS[name]
    args = worker_args()
    backend = started(name, args)
    params = theta(args, 1)
    backend.publish(params, None)
    units = [unit(a, 0, 2, delay=0.5) for a in range(4)]
    for work_unit in units:
        backend.submit(work_unit)
    victim = faults.holding_units(backend)
    held, pid = faults.units(backend, victim), faults.pid(backend, victim)
    faults.kill(backend, victim)
    events = collect(backend, lambda events: any(isinstance(e, WorkerLost) for e in events), seconds=20)
    [lost] = [e for e in events if isinstance(e, WorkerLost)]
    assert lost.worker == victim and Counter(lost.units) == Counter(held) and lost.runs == []
    assert faults.pid(backend, victim) != pid and faults.alive(backend, victim)  # replaced
    for work_unit in lost.units:
        backend.submit(work_unit)
    done = results(events)
    done += results(collect(backend, lambda events: len(done) + len(results(events)) >= len(units), seconds=20))
    assert Counter(e.unit for e in done) == Counter(units)  # every unit exactly once
    for event, reference in zip(done, reference_units(args, [(params, e.unit) for e in done])):
        assert same_bits(event.gradient, reference.gradient)
    with pytest.raises(RuntimeError):
        backend.wait(timeout=1.0)


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_hung_worker_is_declared_lost_after_the_timeout(started, name):
    # One worker: the healthy unit can only run on the replacement of the hung one.
    args = worker_args(factories=(PENDULUM, SleepyEnv))
    backend = started(name, args, worker_timeout=1.0, n_workers=1)
    params = theta(args, 1)
    backend.publish(params, None)
    stuck = unit(0, 0, 1, env_index=1)
    begin = time.monotonic()
    backend.submit(stuck)
    events = collect(backend, lambda events: bool(events), seconds=20)
    elapsed = time.monotonic() - begin
    [lost] = events
    assert isinstance(lost, WorkerLost) and lost.units == [stuck] and "hung" in lost.reason
    assert 1.0 <= elapsed < 5.0
    healthy = unit(1, 0, 2)  # the replacement works
    backend.submit(healthy)
    [result] = collect(backend, lambda events: bool(events))
    assert same_bits(result.gradient, reference_units(args, [(params, healthy)])[0].gradient)


@pytest.mark.parametrize("name", list(FAULTS))
def test_max_failures_zero_raises_on_the_first_loss_and_close_releases_everything(started, name):
    faults = FAULTS[name]
    backend = started(name, max_failures=0)
    backend.publish(theta(worker_args(), 1), None)
    for agent in range(2):
        backend.submit(unit(agent, 0, 1, delay=1.0))
    victim = faults.holding_units(backend)
    resources = faults.resources(backend)
    faults.kill(backend, victim)
    with pytest.raises(WorkerError, match="max_failures=0"):
        collect(backend, lambda events: False, seconds=20)
    with pytest.raises(WorkerError):  # and again: the backend is broken until closed
        backend.wait(timeout=0.1)
    backend.close()
    faults.assert_released(resources)


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_worker_rejects_an_unknown_command(started, name):
    faults = FAULTS[name]
    backend = started(name, n_workers=1)  # the unit waits on the worker that received the command
    backend.publish(theta(worker_args(), 1), None)
    faults.send_raw(backend, 0, ("bogus", 1))
    backend.submit(unit(0, 0, 1, delay=2.0))  # pending work, so that wait() waits
    with pytest.raises(ValueError, match="unknown command 'bogus'"):
        collect(backend, lambda events: False, seconds=20)


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_million_parameters_publish_without_blocking(started, name):
    faults = FAULTS[name]
    args = worker_args(net_arch=(1000, 1000))
    backend = started(name, args, agent_slots=1)
    sizes: list[int] = []
    faults.record_messages(backend, sizes)
    first, second = theta(args, 1), theta(args, 2)
    assert first.size > 1_000_000
    backend.publish(first, None)
    busy = [unit(a, 0, 1, delay=1.0) for a in range(4)]  # every worker busy, every queue full
    for work_unit in busy:
        backend.submit(work_unit)
    begin = time.monotonic()
    backend.publish(second, None, slot=0)
    assert time.monotonic() - begin < 0.5
    late = unit(0, 0, 1, slot=0)
    backend.submit(late)
    events = collect(backend, lambda events: len(events) >= 5, seconds=40)
    assert Counter(e.unit for e in events) == Counter(busy + [late])
    work = [(second if e.unit.slot == 0 else first, e.unit) for e in events]
    for event, reference in zip(events, reference_units(args, work)):
        assert same_bits(event.gradient, reference.gradient)
    assert max(sizes) < 10_000, sizes  # θ never travels through a pipe


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(FAULTS))
def test_publishing_many_times_to_busy_workers_never_blocks(started, name):
    # AFedPG publishes to an agent's slot on every arrival. With 10,000 publishes of large observation statistics
    # (2 × 2,000 floats each) while every worker sits in one long unit, nothing may pile up in their pipes.
    args = worker_args()
    backend = started(name, args, agent_slots=1)
    params = theta(args, 1)
    backend.publish(params, None)
    for agent in range(2):
        backend.submit(unit(agent, 0, 1, delay=30.0))  # a long emulated wait: the workers read nothing meanwhile
    statistics = ObsNorm(np.zeros(2000), np.ones(2000), 10.0, 1e-8)
    begin = time.monotonic()
    for _ in range(10_000):
        backend.publish(params, statistics, slot=0)
    assert time.monotonic() - begin < 10.0  # broadcasting every publish blocked until the workers were free (30 s)
    backend.cancel(1)  # abandon the waiting units


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_a_started_backend_pickles_without_its_workers(started, name):
    # A model saved with backend=<instance> pickles the instance: no process, pipe or shared memory goes along. One
    # worker each: the release of several workers is checked at the end of every other test.
    args = worker_args()
    backend = started(name, args, n_workers=1)
    params = theta(args, 1)
    backend.publish(params, None)
    copy = pickle.loads(pickle.dumps(backend))
    assert type(copy) is type(backend)
    close_and_check(name, backend)
    copy = make_backend(copy, args, BackendOptions(n_workers=1))
    try:
        copy.start()
        copy.publish(params, None)
        copy.submit(unit(0, 0, 1))
        [result] = collect(copy, lambda events: bool(events))
    finally:
        close_and_check(name, copy)
    assert same_bits(result.gradient, reference_units(args, [(params, unit(0, 0, 1))])[0].gradient)


def test_optional_hooks_have_declared_defaults():
    for spec in ("inline", "subprocess", InlineBackend(), object()):  # object(): a backend that declares no hook
        hooks = hooks_of(spec)
        assert hooks.is_primary() is True and hooks.arrival_counter is None
        hooks.check_algorithm("AFedPG", clock="real", per_agent_params=True)  # accepts everything
    with pytest.raises(ValueError, match="torch_distributed"):  # a lazy entry reads its class's hooks
        hooks_of("torch_distributed").check_algorithm("AFedPG", clock="simulated", per_agent_params=True)


def test_a_lazy_entry_imports_its_module_when_built(monkeypatch):
    monkeypatch.setattr(registry, "BACKENDS", dict(BACKENDS))
    register_backend("lazy-probe", LazyBackend("sb3_nigt.backends.inline", "InlineBackend"))
    assert isinstance(make_backend("lazy-probe", worker_args(), BackendOptions()), InlineBackend)
    with pytest.raises(ImportError):
        LazyBackend("sb3_nigt.no_such_module", "Nothing")()
