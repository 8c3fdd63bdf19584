"""Workers (and their environments) stay up from one ``learn()`` call to the next (docs/backends.md, "The workers'
lifetime"): the same processes serve every call; ``close()``, garbage collection, interpreter exit, an exception
and SIGTERM end them; ``set_env``, ``load`` and a change of the worker settings get new ones; and splitting a run
into several ``learn()`` calls changes no bit."""

from __future__ import annotations

import gc
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback

from sb3_nigt import AFedPG, RennalaNIGT
from sb3_nigt.algorithms.live_workers import LiveWorkers, same_key, worker_key
from sb3_nigt.backends.contract import BackendOptions

from helpers import assert_no_worker_alive, processes_marked
from lifetime_envs import CountedEnv

TINY = dict(n_agents=2, round_size=2, horizon=10, seed=0, policy_kwargs=dict(net_arch=[8]))
ROUND = 2 * 10  # environment steps of one round (M trajectories of H steps)
SUBPROCESS = dict(backend="subprocess", n_workers=2)


def pids(model) -> list[int]:
    return [worker.process.pid for worker in model._workers.backend.workers]


# ------------------------------------------------------------------------------------------ reuse
def test_subprocess_workers_are_the_same_processes_in_every_learn_call(worker_spy):
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", **TINY, **SUBPROCESS)
    model.learn(2 * ROUND)
    first = pids(model)
    assert len(first) == 2 and all(process.is_alive() for process in worker_spy)
    model.learn(ROUND, reset_num_timesteps=False)
    model.learn(ROUND)  # a reset of the step counter keeps the workers too
    assert pids(model) == first
    assert len(worker_spy) == 2  # started once
    model.close()
    assert_no_worker_alive(worker_spy)
    model.close()  # twice is fine


def test_inline_workers_keep_their_environments_across_calls():
    before = CountedEnv.built
    model = RennalaNIGT("MlpPolicy", CountedEnv, **TINY)  # the factory is called in this process
    model.learn(2 * ROUND)
    built = CountedEnv.built
    assert built > before  # the workers' environments were built in this process
    worker = model._workers.backend.worker
    model.learn(2 * ROUND, reset_num_timesteps=False)
    assert CountedEnv.built == built  # no environment was built again
    assert model._workers.backend.worker is worker
    model.close()
    assert model._workers.backend is None


def test_learn_after_close_starts_new_workers_and_continues_the_run(worker_spy):
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", **TINY, **SUBPROCESS)
    model.learn(2 * ROUND)
    first = pids(model)
    model.close()
    model.learn(2 * ROUND, reset_num_timesteps=False)
    assert set(pids(model)).isdisjoint(first)
    reference = RennalaNIGT("MlpPolicy", "Pendulum-v1", **TINY).learn(4 * ROUND)
    np.testing.assert_array_equal(model.get_flat_params(), reference.get_flat_params())
    assert model.simulated_time_exact == reference.simulated_time_exact


# ------------------------------------------------------------------------------------------ determinism
def make_timed(algorithm, backend: dict):
    kwargs = dict(TINY, compute_times=[1.0, 2.5], communication_times=[0.1, 0.3], **backend)
    if not algorithm.uses_round_size:
        kwargs.pop("round_size")
    return algorithm("MlpPolicy", "Pendulum-v1", **kwargs)


@pytest.mark.parametrize("backend", [dict(backend="inline"), SUBPROCESS], ids=["inline", "subprocess"])
@pytest.mark.parametrize("algorithm", [RennalaNIGT, AFedPG], ids=lambda cls: cls.__name__)
def test_two_learn_calls_give_the_bits_of_one(algorithm, backend):
    whole = make_timed(algorithm, backend).learn(6 * ROUND)
    split = make_timed(algorithm, backend)
    split.learn(3 * ROUND)
    split.learn(3 * ROUND, reset_num_timesteps=False)
    np.testing.assert_array_equal(split.get_flat_params(), whole.get_flat_params())
    assert split.simulated_time_exact == whole.simulated_time_exact
    assert split.time_counters == whole.time_counters
    assert split.num_timesteps == whole.num_timesteps == 6 * ROUND
    assert split.n_rounds == whole.n_rounds


# ------------------------------------------------------------------------------------------ what ends them
def test_garbage_collection_closes_the_workers(worker_spy):
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", **TINY, **SUBPROCESS)
    model.learn(ROUND)
    assert all(process.is_alive() for process in worker_spy)
    del model
    gc.collect()  # models hold reference cycles: the collector, not the reference count, frees them
    assert_no_worker_alive(worker_spy)  # closed and joined by the finalizer, not merely left to notice


class RaisesOnce(BaseCallback):
    def _on_step(self) -> bool:
        raise RuntimeError("a callback failed")


def test_an_exception_in_learn_closes_the_workers_and_the_next_call_starts_fresh(worker_spy):
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", **TINY, **SUBPROCESS)
    model.learn(ROUND)
    first = list(worker_spy)
    with pytest.raises(RuntimeError, match="a callback failed"):
        model.learn(ROUND, callback=RaisesOnce(), reset_num_timesteps=False)
    assert not model._workers.alive
    assert_no_worker_alive(first)
    model.learn(2 * ROUND, reset_num_timesteps=False)
    assert len(worker_spy) == 4 and set(pids(model)).isdisjoint(p.pid for p in first)


# ------------------------------------------------------------------------------------------ what rebuilds them
def test_set_env_closes_the_workers_and_the_next_learn_builds_the_new_environments(worker_spy):
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", **TINY, **SUBPROCESS)
    model.learn(ROUND)
    first = list(worker_spy)
    model.set_env(CountedEnv())
    assert_no_worker_alive(first)  # closed at once, not at the next learn
    model.learn(ROUND, reset_num_timesteps=False)
    assert set(pids(model)).isdisjoint(p.pid for p in first)
    model.close()


def test_a_change_of_worker_settings_rebuilds_the_workers(worker_spy):
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", **TINY, **SUBPROCESS)
    model.learn(ROUND)
    model.n_workers = 1
    model.learn(ROUND, reset_num_timesteps=False)
    assert len(pids(model)) == 1 and len(worker_spy) == 3
    assert not any(process.is_alive() for process in worker_spy[:2])
    model.backend = "inline"  # another backend: the processes go
    model.learn(ROUND, reset_num_timesteps=False)
    assert_no_worker_alive(worker_spy)


def test_a_backend_instance_shared_with_another_model_is_not_reused_once_rebound():
    from sb3_nigt.backends.inline import InlineBackend

    shared = InlineBackend()
    first = RennalaNIGT("MlpPolicy", "Pendulum-v1", backend=shared, **TINY)
    first.learn(2 * ROUND)
    other = RennalaNIGT("MlpPolicy", CountedEnv, backend=shared, **TINY)
    other.learn(2 * ROUND)  # binds and restarts the shared instance with its own environments
    first.learn(2 * ROUND, reset_num_timesteps=False)
    reference = RennalaNIGT("MlpPolicy", "Pendulum-v1", **TINY).learn(4 * ROUND)
    np.testing.assert_array_equal(first.get_flat_params(), reference.get_flat_params())


def test_worker_keys_compare_what_workers_are_built_from():
    args = dict(env_factories=[CountedEnv], policy_kwargs=dict(net_arch=[8]), buffers={}, step_data=False,
                array=np.arange(3.0))
    key = worker_key("subprocess", args, BackendOptions(n_workers=2))
    assert same_key(key, worker_key("subprocess", dict(args, array=np.arange(3.0)), BackendOptions(n_workers=2)))
    assert not same_key(key, worker_key("subprocess", dict(args, step_data=True), BackendOptions(n_workers=2)))
    assert not same_key(key, worker_key("subprocess", dict(args, env_factories=[CountedEnv, CountedEnv]), BackendOptions(n_workers=2)))
    assert not same_key(key, worker_key("subprocess", args, BackendOptions(n_workers=3)))
    assert not same_key(key, worker_key("ray", args, BackendOptions(n_workers=2)))
    assert not LiveWorkers().alive


# ------------------------------------------------------------------------------------------ save and load
def test_save_with_live_workers_round_trips_exactly_and_does_not_store_them(tmp_path, worker_spy):
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", **TINY, **SUBPROCESS)
    model.learn(2 * ROUND)
    model.save(tmp_path / "live.zip")
    assert all(process.is_alive() for process in worker_spy)  # saving leaves the workers up
    with zipfile.ZipFile(tmp_path / "live.zip") as archive:
        data = archive.read("data").decode()
    assert '"_workers"' not in data and "LiveWorkers" not in data and "SubprocessBackend" not in data

    loaded = RennalaNIGT.load(tmp_path / "live.zip", env="Pendulum-v1", **SUBPROCESS)
    assert loaded.__dict__.get("_workers") is None  # a new model: its own workers, at its first learn
    loaded.learn(2 * ROUND, reset_num_timesteps=False)
    model.learn(2 * ROUND, reset_num_timesteps=False)
    assert set(pids(loaded)).isdisjoint(pids(model))
    np.testing.assert_array_equal(loaded.get_flat_params(), model.get_flat_params())
    assert loaded.simulated_time_exact == model.simulated_time_exact

    buffer = io.BytesIO()  # a file-like target too
    model.save(buffer)
    assert b"SubprocessBackend" not in buffer.getvalue()


# ------------------------------------------------------------------------------------------ other processes
def _script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from lifetime_envs import StallsOnSignalEnv
        from sb3_nigt import RennalaNIGT
        if __name__ == "__main__":
            model = RennalaNIGT("MlpPolicy", StallsOnSignalEnv, n_agents=2, round_size=2, horizon=5, seed=0,
                                backend="subprocess", n_workers=2, policy_kwargs=dict(net_arch=[8]))
            model.learn(20)
            print("learned", flush=True)
    """) + textwrap.indent(textwrap.dedent(body), " " * 4))
    return script


def _run_until_gone(tmp_path: Path, body: str, send_sigterm: bool, stall: bool = True) -> subprocess.CompletedProcess:
    marker = f"SB3_NIGT_TEST_{uuid.uuid4().hex}"
    flag = tmp_path / "stall"
    env = dict(os.environ, SB3_NIGT_MARKER=marker, SB3_NIGT_STALL=str(flag))
    process = subprocess.Popen([sys.executable, str(_script(tmp_path, body))], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "learned"
        assert len(processes_marked(marker)) >= 3  # the script and its two workers stay up after learn
        if send_sigterm:
            if stall:
                flag.touch()  # the next learn's workers hang inside env.step: only the main process can end them
            assert process.stdout.readline().strip() == "waiting"
            time.sleep(2)
            process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        deadline = time.monotonic() + 10
        while processes_marked(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_marked(marker) == []
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)
    finally:
        if process.poll() is None:
            process.kill()
        for pid in processes_marked(marker):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(120)
def test_interpreter_exit_closes_the_workers(tmp_path):
    done = _run_until_gone(tmp_path, "print('exiting', flush=True)\n", send_sigterm=False)
    assert done.returncode == 0, done.stderr
    assert "leaked" not in done.stderr  # the shared memory was unlinked, not left to the resource tracker


@pytest.mark.timeout(120)
def test_sigterm_in_a_later_learn_call_leaves_no_process_behind(tmp_path):
    body = "print('waiting', flush=True)\nmodel.learn(10**9, reset_num_timesteps=False)\n"
    done = _run_until_gone(tmp_path, body, send_sigterm=True)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr


@pytest.mark.timeout(120)
def test_sigterm_between_learn_calls_leaves_no_process_behind(tmp_path):
    # No learn() runs: SIGTERM's default action ends the script at once (no atexit); the idle workers see their
    # pipes close and exit.
    done = _run_until_gone(tmp_path, "print('waiting', flush=True)\ntime.sleep(600)\n", send_sigterm=True, stall=False)
    assert done.returncode == -signal.SIGTERM


# ------------------------------------------------------------------------------------------ Ray
def test_ray_actors_are_the_same_in_every_learn_call(ray_runtime):
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", backend="ray", n_workers=2, **TINY)
    model.learn(2 * ROUND)
    actors = [worker.handle for worker in model._workers.backend.workers]
    model.learn(2 * ROUND, reset_num_timesteps=False)
    assert [worker.handle for worker in model._workers.backend.workers] == actors
    reference = RennalaNIGT("MlpPolicy", "Pendulum-v1", **TINY).learn(4 * ROUND)
    np.testing.assert_array_equal(model.get_flat_params(), reference.get_flat_params())
    model.close()
    assert not model._workers.alive
