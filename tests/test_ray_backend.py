"""The Ray backend (``backend="ray"``, sb3_nigt/backends/ray_actors.py, docs/ray.md) driven by the algorithms.

The contract itself (units, runs, flushes, cancellation, killed and hung actors, ...) is checked by
tests/test_backend_contract.py, where "ray" is one of BACKEND_NAMES and FAULTS. Here: whole ``learn`` runs give
θ bit-identical to the inline backend on the simulated clock, with and without a killed actor (restarted by Ray
under the same handle; replaced by a new actor once its restarts are exhausted); the real clock
counts M per round; a user's exception comes back as its own type; the backend's own runtime listens on the
loopback only. One local Ray runtime (loopback, no dashboard) serves the whole module.
"""

from __future__ import annotations

import functools
import os
import pickle
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason='the Ray backend needs ray: pip install "sb3-nigt[ray]"')

from sb3_nigt import MaleniaNIGT, RennalaNIGT  # noqa: E402
from sb3_nigt.backends import ray_actors as ray_backend  # noqa: E402
from sb3_nigt.backends.contract import BackendOptions, WorkerLost  # noqa: E402
from sb3_nigt.backends.ray_actors import RayBackend  # noqa: E402
from sb3_nigt.backends.registry import make_backend  # noqa: E402
from sb3_nigt.workers.rollout import UnitResult, WorkUnit  # noqa: E402

from fault_envs import FaultyEnv  # noqa: E402
from helpers import RoundRecorder  # noqa: E402
from step_envs import InfoEnv  # noqa: E402

pytestmark = pytest.mark.timeout(90)

SMALL = dict(horizon=5, seed=0, policy_kwargs=dict(net_arch=[8]))


@pytest.fixture(autouse=True)
def _ray(request):
    """Every test here runs in the session's Ray runtime (conftest.py), except those marked ``own_runtime``, which
    start a runtime of their own in a fresh process (and so may run beside the session's Ray tests under xdist)."""
    yield None if request.node.get_closest_marker("own_runtime") else request.getfixturevalue("ray_runtime")


def faulty(mode: str = "none", marker=None, **kwargs):
    return functools.partial(FaultyEnv, mode, None if marker is None else str(marker), **kwargs)


# ------------------------------------------------------------------------------------- the simulated clock
def test_a_runtime_the_backend_did_not_start_is_left_running():
    # Rennala on Ray gives the inline bits (θ, d_t, the clock, the counters, the episodes): tests/test_digests.py,
    # case rennala-ray2-sqrt. Here: the shared runtime, started by the tests, outlives the model's actors.
    kwargs = dict(n_agents=3, compute_times=[1, 2, 3], round_size=4, **SMALL)
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", backend="ray", n_workers=1, **kwargs).learn(40)
    assert model.num_timesteps >= 40
    model.close()
    assert ray.is_initialized()


def test_malenia_with_one_environment_per_agent_on_ray_gives_the_inline_bits():
    envs = [("Pendulum-v1", {"g": 9.81}), ("Pendulum-v1", {"g": 3.7})]
    kwargs = dict(compute_times=[1, 3], round_size=4, **SMALL)
    inline = MaleniaNIGT("MlpPolicy", envs, **kwargs).learn(80)
    model = MaleniaNIGT("MlpPolicy", envs, backend="ray", n_workers=2, **kwargs).learn(80)
    assert model.heterogeneous and model.n_agents == 2
    np.testing.assert_array_equal(model.get_flat_params(), inline.get_flat_params())
    assert model.simulated_time_exact == inline.simulated_time_exact


@pytest.mark.timeout(120)
def test_an_actor_killed_mid_round_changes_no_bit(tmp_path):
    # The environment SIGKILLs the actor's process at its 47th step (once: the marker file is removed first); Ray
    # restarts the actor under the same handle, and the lost units are recomputed with the same job seeds.
    kwargs = dict(n_agents=3, compute_times=[1, 2, 3], round_size=6, **SMALL)
    reference = RennalaNIGT("MlpPolicy", faulty(), **kwargs).learn(300)
    marker = tmp_path / "kill"
    marker.touch()
    backend = RayBackend()
    model = RennalaNIGT("MlpPolicy", faulty("kill", marker, at_step=47), backend=backend, n_workers=2, **kwargs)
    recorder = RoundRecorder()
    with pytest.warns(RuntimeWarning, match="lost"):
        model.learn(300, callback=recorder)
    assert not marker.exists()  # the actor really died
    assert (backend.restarts, backend.replacements) == (1, 0)  # restarted by Ray, not replaced
    assert [r["gradients_per_round"] for r in recorder.rounds] == [6] * len(recorder.rounds)
    assert model.num_timesteps == reference.num_timesteps
    np.testing.assert_array_equal(model.get_flat_params(), reference.get_flat_params())
    assert model.simulated_time_exact == reference.simulated_time_exact


def drain(backend, units, lost):
    """Wait for every unit's result (resubmitting the units of each WorkerLost, which is recorded in ``lost``)."""
    done: dict[WorkUnit, np.ndarray] = {}
    deadline = time.monotonic() + 60
    while len(done) < len(units):
        assert time.monotonic() < deadline, (done, lost)
        for event in backend.wait(timeout=1.0):
            if isinstance(event, WorkerLost):
                lost.append(event)
                for work_unit in event.units:
                    backend.submit(work_unit)
            else:
                assert isinstance(event, UnitResult) and event.unit not in done
                done[event.unit] = event.gradient
    return done


def test_ray_kill_of_a_busy_actor_is_restarted_by_ray_then_replaced_once_its_restarts_are_exhausted():
    # max_restarts=1: the first ray.kill(no_restart=False) is answered by Ray's restart of the actor (same handle,
    # a new incarnation); the second exhausts its restarts, Ray reports it dead, and the backend creates a new actor.
    # One actor holding two units per round: one actor start fewer.
    factory = faulty()
    env = factory()
    from sb3_nigt import NIGTPolicy
    from sb3_nigt.backends.contract import single_threaded_torch
    from sb3_nigt.workers.rollout import GradientWorker

    args = dict(env_factories=[factory], policy_class=NIGTPolicy, observation_space=env.observation_space,
                action_space=env.action_space, policy_kwargs={"net_arch": [8]})
    params = np.linspace(-0.5, 0.5, sum(p.numel() for p in NIGTPolicy(env.observation_space, env.action_space, None, net_arch=[8]).parameters()),
                         dtype=np.float32)
    backend = make_backend(RayBackend(actor_options={"max_restarts": 1}), args, BackendOptions(n_workers=1, max_failures=1))
    backend.start()
    done: dict[WorkUnit, np.ndarray] = {}
    try:
        backend.publish(params, None)
        victim = 0
        for round_ in range(2):
            units = [WorkUnit(round_, agent, 0, 2, 7, 0, 5, 0.99, delay=0.5) for agent in range(2)]
            for work_unit in units:
                backend.submit(work_unit)
            actor = backend.actors[victim]
            held, handle, incarnation = list(actor.units), actor.handle, actor.incarnation
            assert held and incarnation is not None
            ray.kill(handle, no_restart=False)
            lost: list[WorkerLost] = []
            done.update(drain(backend, units, lost))
            assert [(e.worker, sorted(u.agent for u in e.units)) for e in lost] == [(victim, sorted(u.agent for u in held))]
            assert "died" in lost[0].reason
            actor = backend.actors[victim]
            assert actor.incarnation not in (None, incarnation)  # the lost units were recomputed there
            if round_ == 0:  # restarted by Ray: the same handle and actor id, a new incarnation
                assert actor.handle is handle and actor.handle._actor_id == handle._actor_id
                assert (backend.restarts, backend.replacements) == (1, 0)
            else:  # its one restart used: dead for good, replaced by a new actor
                assert actor.handle._actor_id != handle._actor_id
                assert (backend.restarts, backend.replacements) == (1, 1)
    finally:
        backend.close()
    assert len(done) == 4
    worker = GradientWorker(**args)
    with single_threaded_torch():
        worker.set_params(params)
        for work_unit, gradient in done.items():
            expected = worker.run_unit(WorkUnit(work_unit.round_index, work_unit.agent, 0, 2, 7, 0, 5, 0.99)).gradient
            assert expected.tobytes() == gradient.tobytes()
    worker.close()


# ------------------------------------------------------------------------------------------ the real clock
def test_real_clock_rennala_on_ray_counts_m_per_round():
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, round_size=4, clock="real", backend="ray",
                        n_workers=2, **SMALL)
    recorder = RoundRecorder()
    model.learn(100, callback=recorder)
    assert len(recorder.rounds) >= 3
    assert [int(np.sum(r["counts"])) for r in recorder.rounds] == [4] * len(recorder.rounds)
    assert model.num_timesteps == 5 * sum(int(np.sum(r["counts"])) for r in recorder.rounds)
    assert np.isfinite(model.get_flat_params()).all()


@pytest.mark.timeout(120)
def test_an_actor_killed_on_the_real_clock_keeps_every_count_right(tmp_path):
    marker = tmp_path / "kill"
    marker.touch()
    # Ray fails the killed actor's outstanding poll once it has restarted it (1-2 s here): 50 ms of emulated time
    # per trajectory keeps the run going for seconds after the kill, so that the loss is seen during learn.
    backend = RayBackend()
    model = RennalaNIGT("MlpPolicy", faulty("kill", marker, at_step=30), n_agents=2, compute_times=[1, 1],
                        round_size=4, clock="real", time_scale=0.05, backend=backend, n_workers=2, **SMALL)
    recorder = RoundRecorder()
    deadline = time.monotonic() + 60
    with pytest.warns(RuntimeWarning, match="lost"):
        model.learn(400, callback=recorder)
        # Ray notices the death once it has restarted the actor, seconds later on a busy machine: train on (the
        # workers stay up between learn calls) until the loss is seen, for at most a minute.
        while backend.restarts + backend.replacements == 0 and time.monotonic() < deadline:
            model.learn(100, callback=recorder, reset_num_timesteps=False)
    assert not marker.exists()  # the actor really died
    assert (backend.restarts, backend.replacements) == (1, 0)  # restarted by Ray under the same handle
    counts = [int(np.sum(r["counts"])) for r in recorder.rounds]
    assert counts and counts == [4] * len(counts)
    # Every counted gradient was summed: the steps match the counts (FaultyEnv episodes last 5 steps).
    assert model.num_timesteps == 5 * sum(counts)
    assert np.isfinite(model.get_flat_params()).all()


def test_real_clock_with_emulated_times_on_ray_favours_the_fast_agent():
    # h = (1, 6) x 30 ms of emulated time, one actor per agent (pinned): the fast agent contributes more.
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, compute_times=[1, 6], round_size=6, clock="real",
                        backend="ray", time_scale=0.03, **SMALL)
    recorder = RoundRecorder()
    model.learn(150, callback=recorder)
    assert [int(np.sum(r["counts"])) for r in recorder.rounds] == [6] * len(recorder.rounds)
    total = np.sum([r["counts"] for r in recorder.rounds], axis=0)
    assert total[0] > total[1], total


# -------------------------------------------------------------------------------------- errors, arguments
def test_a_user_exception_in_an_actor_comes_back_as_its_own_type():
    model = RennalaNIGT("MlpPolicy", lambda: InfoEnv(length=5, nan_at=1), n_agents=2, round_size=2, horizon=10,
                        seed=0, backend="ray", n_workers=1)
    before = model.get_flat_params().copy()
    with pytest.raises(ValueError, match=r"^observations: .*non-finite"):
        model.learn(20)
    assert np.array_equal(model.get_flat_params(), before)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="prefetch"):
        RayBackend(prefetch=0)
    with pytest.raises(ValueError, match="actor_options"):
        RayBackend(actor_options=["num_cpus", 1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="init_kwargs"):
        RayBackend(init_kwargs="num_cpus=2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start_timeout"):
        RayBackend(start_timeout=0)
    with pytest.raises(ValueError, match="actor_options: max_task_retries"):
        RayBackend(actor_options={"max_task_retries": 3})
    with pytest.raises(ValueError, match="actor_options: max_restarts"):
        RayBackend(actor_options={"max_restarts": -2})
    assert RayBackend(actor_options={"max_restarts": 3}).actor_options["max_restarts"] == 3


def test_a_pickled_backend_keeps_its_configuration_only():
    backend = RayBackend(address="auto", actor_options={"num_cpus": 0.5}, init_kwargs={"namespace": "x"}, prefetch=3)
    backend.bind({"env_factories": []}, BackendOptions(n_workers=3))
    copy = pickle.loads(pickle.dumps(backend))
    assert (copy.address, copy.actor_options, copy.init_kwargs, copy.prefetch) == ("auto", {"num_cpus": 0.5}, {"namespace": "x"}, 3)
    assert copy.actors == [] and copy.worker_args == {} and not copy.owns_runtime


def test_a_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "sb3-nigt\[ray\]"'):
        ray_backend._import_ray()


def test_actor_options_default_to_a_share_of_the_cpus_and_keep_the_callers_blas_threads(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    backend = RayBackend(actor_options={"runtime_env": {"env_vars": {"FOO": "1"}}})
    backend.bind({}, BackendOptions(n_workers=8))
    options = backend._actor_options(ray)
    cpus = ray.cluster_resources()["CPU"]
    assert options["num_cpus"] == min(1.0, cpus / 8)
    assert options["max_restarts"] == -1 and options["max_task_retries"] == 0 and options["max_concurrency"] >= 4
    assert RayBackend(actor_options={"max_restarts": 5})._actor_options(ray)["max_restarts"] == 5
    assert options["runtime_env"]["env_vars"]["FOO"] == "1"
    assert options["runtime_env"]["env_vars"]["OPENBLAS_NUM_THREADS"] == "3"
    assert RayBackend(actor_options={"num_cpus": 2})._actor_options(ray)["num_cpus"] == 2


# ---------------------------------------------------------------------------------------- the connection
@pytest.mark.timeout(120)
@pytest.mark.own_runtime
def test_its_own_local_runtime_listens_on_the_loopback_and_is_shut_down_at_close():
    # In a fresh process (this one's runtime is already up): RayBackend() with no address starts Ray itself. The
    # same process first checks that importing sb3_nigt (and its registry, which names "ray") does not import ray.
    code = textwrap.dedent("""
        import sys, sb3_nigt
        from sb3_nigt.backends.registry import BACKENDS
        assert "ray" in BACKENDS
        print("ray imported by sb3_nigt", "ray" in sys.modules)

        import gymnasium as gym, ray
        from sb3_nigt import NIGTPolicy
        from sb3_nigt.backends.contract import BackendOptions
        from sb3_nigt.backends.registry import make_backend
        from sb3_nigt.workers.env_factory import EnvFactory
        from sb3_nigt.backends.ray_actors import RayBackend

        if __name__ == "__main__":
            factory = EnvFactory("Pendulum-v1")
            env = factory()
            args = dict(env_factories=[factory], policy_class=NIGTPolicy, observation_space=env.observation_space,
                        action_space=env.action_space, policy_kwargs={"net_arch": [8]})
            backend = make_backend(RayBackend(init_kwargs={"num_cpus": 1}), args, BackendOptions(n_workers=1))
            backend.start()
            print("nodes", sorted(node["NodeManagerAddress"] for node in ray.nodes()))
            print("gcs", ray.get_runtime_context().gcs_address)
            backend.close()
            print("initialized", ray.is_initialized())
            backend.close()
    """)
    env = {key: value for key, value in os.environ.items() if key != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    result = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True, timeout=110, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["ray"] == "imported by sb3_nigt False", "ray was imported"
    assert lines["nodes"] == "['127.0.0.1']", result.stdout
    assert lines["gcs"].startswith("127.0.0.1:"), result.stdout
    assert lines["initialized"] == "False"
