"""The torch_distributed backend (docs/torch_distributed.md): two gloo ranks on loopback, started with
``torch.multiprocessing.spawn`` on a free port.

Two spawns serve every test (processes start slowly on a loaded machine): the first trains Rennala and Malenia on
both ranks, writes a checkpoint mid-round (rank 0), goes on training, and then rank 1 is killed (``os._exit``) in the
middle of training; the second is a fresh pair of ranks that
resumes from the checkpoint. Each rank writes what it saw to a pickle; the tests compare it with the inline
backend computed here.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as torch_mp
from stable_baselines3.common.callbacks import BaseCallback

from sb3_nigt import AFedPG, MaleniaNIGT, RennalaNIGT, SynchronizedNIGT
from sb3_nigt.backends.torch_distributed import DEFAULT_MASTER_ADDR, TorchDistributedBackend, default_store

from helpers import SaveAndStop

pytestmark = pytest.mark.timeout(300)

WORLD = 2
KWARGS = dict(n_agents=3, compute_times=[1, 2, 3], communication_times=[0.5, 0, 0.25], round_size=4, horizon=5, seed=0,
              policy_kwargs=dict(net_arch=[8]))
TOTAL = 100
STOP_AT = 43  # mid-round: the checkpoint holds a pending round
DIE_AT = 57  # rank 1 is killed here, after the checkpoint and before the end
STEP_KWARGS = dict(KWARGS, compute_times=[0.1, 0.2, 0.3], compute_time_unit="step")
ALGORITHMS = {"rennala": RennalaNIGT, "malenia": MaleniaNIGT}
REAL = {"rennala": RennalaNIGT, "malenia": MaleniaNIGT, "synchronized": SynchronizedNIGT}
REAL_KWARGS = dict(n_agents=3, round_size=4, horizon=5, seed=0, policy_kwargs=dict(net_arch=[8]), clock="real")
# Malenia's real-clock rounds have no fixed size: an agent on a rank that the machine starves holds the round open while
# the others keep sampling, so a step budget may end after 2 rounds. It runs REAL_ROUNDS rounds instead (stopped by
# StopAfterRounds, the budget far out of reach); Rennala's and Synchronized NIGT's rounds are M and n trajectories,
# so TOTAL steps give them a known number of rounds.
REAL_ROUNDS = 4


class CheckpointThenDie(BaseCallback):
    """Saves the model at environment step ``at`` (rank 0 writes the file) and goes on; ``die`` is called at step
    ``die_at`` (None: never), in the middle of training: the rank is killed."""

    def __init__(self, at: int, path: Path, die_at: Any = None, die: Callable[[], None] = lambda: None):
        super().__init__()
        self.at, self.path, self.die_at, self.die = at, path, die_at, die
        self.saved: dict[str, Any] = {}

    def _on_step(self) -> bool:
        if self.n_calls == self.at:
            self.model.save(self.path)
            self.saved = dict(model_state(self.model))
        if self.n_calls == self.die_at:
            self.die()
        return True


class StopAfterRounds(BaseCallback):
    """Stops training at the last environment step of round ``rounds`` (before that round's update). Every rank
    replays the same rounds, so every rank stops at the same step."""

    def __init__(self, rounds: int):
        super().__init__()
        self.rounds, self.steps = rounds, 0

    def _on_rollout_start(self) -> None:
        self.steps = 0

    def _on_step(self) -> bool:
        self.steps += 1
        return not (self.model.n_rounds >= self.rounds and self.steps == self.model.round_stats["steps_per_round"])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_address(port: int) -> str:
    """The local address of the TCP socket listening on ``port`` (from /proc/net/tcp; "" if none)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, state = fields[1], fields[3]
            if state == "0A" and int(address.split(":")[1], 16) == port:
                return address
    return ""


def model_state(model: Any) -> dict[str, Any]:
    return dict(theta=model.get_flat_params(), momentum=np.array(model.momentum_buffer), clock=model.simulated_time_exact,
                steps=model.num_timesteps, rounds=model.n_rounds)


# --------------------------------------------------------------------------------------------- rank tasks
def first_run(rank: int, out: Path) -> dict[str, Any]:
    """Rennala and Malenia on both ranks, the per-step clock, the checkpoint, rank 0's duties, then a dead rank."""
    seen: dict[str, Any] = {}
    for name, algorithm in ALGORITHMS.items():
        backend = TorchDistributedBackend(timeout=20)  # the first start initializes the group with this timeout
        model = algorithm("MlpPolicy", "Pendulum-v1", backend=backend, verbose=1, **KWARGS).learn(TOTAL)
        seen[name] = dict(model_state(model), collectives=backend.collectives, formats=len(model.logger.output_formats))
    backend = TorchDistributedBackend()
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", backend=backend, **STEP_KWARGS).learn(TOTAL)
    seen["per_step"] = dict(model_state(model), collectives=backend.collectives)
    for name, algorithm in REAL.items():  # the real clock: counted with TCPStore.add, one collective per round
        backend = TorchDistributedBackend()
        model = algorithm("MlpPolicy", "Pendulum-v1", backend=backend, **REAL_KWARGS)
        if name == "malenia":
            model.learn(10**5, callback=StopAfterRounds(REAL_ROUNDS))
        else:
            model.learn(TOTAL)
        seen[f"real_{name}"] = dict(model_state(model), collectives=backend.collectives, counts=model.last_counts.copy())
    store = default_store()
    assert store is not None
    seen["store"] = dict(host=store.host, port=store.port, listening=listening_address(store.port) if rank == 0 else "",
                         master_addr=os.environ.get("MASTER_ADDR"), gloo=os.environ.get("GLOO_SOCKET_IFNAME"))
    # Rank 0's duties: every rank stops at the same step and saves; only rank 0 writes a file.
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", backend="torch_distributed", **KWARGS)
    model.learn(TOTAL, callback=SaveAndStop(STOP_AT, out / f"stopped-{rank}.zip"))
    model.save(out / f"written-by-rank-{rank}.zip")
    dist.barrier()
    # The checkpoint, then a killed rank: rank 0 writes a checkpoint mid-round at STOP_AT and training goes on;
    # DIE_AT steps in, rank 1 is killed (os._exit, after writing what it saw); rank 0's next collective raises
    # instead of hanging. The "resumed" task then restarts both ranks from the checkpoint, as torchrun would.
    def die() -> None:
        seen["saved"] = callback.saved
        with open(out / f"first-{rank}.pkl", "wb") as file:
            pickle.dump(seen, file)
        os._exit(1)

    callback = CheckpointThenDie(STOP_AT, out / "checkpoint.zip", DIE_AT if rank == 1 else None, die)
    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", backend="torch_distributed", **KWARGS)
    begin = time.monotonic()
    try:
        model.learn(TOTAL, callback=callback)
        seen["dead"] = dict(raised=None)
    except Exception as exc:  # gloo: connection closed by the peer, or the group's timeout
        seen["dead"] = dict(raised=type(exc).__name__, seconds=time.monotonic() - begin, steps=model.num_timesteps)
    seen["saved"] = callback.saved
    return seen


def resumed_run(rank: int, out: Path) -> dict[str, Any]:
    """A fresh pair of ranks resumes from rank 0's checkpoint (torchrun --max-restarts does the same)."""
    model = RennalaNIGT.load(out / "checkpoint.zip", env="Pendulum-v1")
    steps = model.num_timesteps
    model.learn(TOTAL - steps, reset_num_timesteps=False)
    return dict(model_state(model), loaded_steps=steps, backend=model.backend)


TASKS: dict[str, Callable[[int, Path], dict[str, Any]]] = {"first": first_run, "resumed": resumed_run}


def rank_main(rank: int, world: int, port: int, out: str, task: str) -> None:
    """Entry point of a spawned rank: torchrun's environment variables (no MASTER_ADDR: the default), the task,
    its findings to ``{task}-{rank}.pkl``; the process group is destroyed where the rank still has it."""
    for key in ("MASTER_ADDR", "GLOO_SOCKET_IFNAME"):
        os.environ.pop(key, None)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_PORT=str(port))
    try:
        seen = TASKS[task](rank, Path(out))
        with open(Path(out) / f"{task}-{rank}.pkl", "wb") as file:
            pickle.dump(seen, file)
    finally:
        if dist.is_initialized() and not (task == "first" and rank == 1):
            dist.destroy_process_group()


def spawn(task: str, out: Path, exit_codes: tuple[int, ...] = (0,) * WORLD) -> list[dict[str, Any]]:
    """Run ``task`` on 2 ranks and join every process (bounded; a rank still alive after is killed). The ranks'
    exit codes must be ``exit_codes`` (the first task kills rank 1)."""
    context = torch_mp.start_processes(rank_main, args=(WORLD, free_port(), str(out), task), nprocs=WORLD, join=False,
                                       daemon=True, start_method="spawn")
    deadline = time.monotonic() + 240
    for process in context.processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in context.processes:
        if process.is_alive():
            process.kill()
            process.join()
    assert tuple(process.exitcode for process in context.processes) == exit_codes
    return [pickle.loads((out / f"{task}-{rank}.pkl").read_bytes()) for rank in range(WORLD)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("torch_distributed")
    first = spawn("first", out, exit_codes=(0, 1))
    resumed = spawn("resumed", out)
    return dict(out=out, first=first, resumed=resumed)


def inline(algorithm: type, kwargs: dict[str, Any] = KWARGS) -> Any:
    return algorithm("MlpPolicy", "Pendulum-v1", **kwargs).learn(TOTAL)


def assert_same(state: dict[str, Any], model: Any) -> None:
    np.testing.assert_array_equal(state["theta"], model.get_flat_params())
    np.testing.assert_array_equal(state["momentum"], model.momentum_buffer)
    assert state["clock"] == model.simulated_time_exact
    assert state["steps"] == model.num_timesteps and state["rounds"] == model.n_rounds


# ------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_two_ranks_end_bit_identical_to_each_other_and_to_inline(ranks, name):
    reference = inline(ALGORITHMS[name])
    for seen in ranks["first"]:
        assert_same(seen[name], reference)
    assert ranks["first"][0][name]["theta"].tobytes() == ranks["first"][1][name]["theta"].tobytes()


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_one_collective_per_round_with_constant_times(ranks, name):
    for seen in ranks["first"]:
        assert seen[name]["rounds"] >= 3
        assert seen[name]["collectives"] == seen[name]["rounds"]


def test_per_step_times_stay_exact_with_a_collective_per_speculative_fetch(ranks):
    reference = inline(RennalaNIGT, STEP_KWARGS)
    for seen in ranks["first"]:
        assert_same(seen["per_step"], reference)
        assert seen["per_step"]["collectives"] >= seen["per_step"]["rounds"]


def test_rank_zero_logs_and_saves_the_others_write_nothing(ranks):
    first = ranks["first"]
    assert first[0]["rennala"]["formats"] >= 1  # verbose=1: stdout
    assert first[1]["rennala"]["formats"] == 0
    assert (ranks["out"] / "written-by-rank-0.zip").exists()
    assert not (ranks["out"] / "written-by-rank-1.zip").exists()


def test_a_run_killed_mid_training_resumes_from_its_checkpoint_on_fresh_ranks_bit_exactly(ranks):
    reference = inline(RennalaNIGT)
    assert all(seen["saved"]["steps"] == STOP_AT for seen in ranks["first"])
    for seen in ranks["resumed"]:
        assert seen["loaded_steps"] == STOP_AT and seen["backend"] == "torch_distributed"
        assert_same(seen, reference)


def test_the_default_address_is_loopback_and_the_store_listens_there_only(ranks):
    assert DEFAULT_MASTER_ADDR == "127.0.0.1"
    for seen in ranks["first"]:
        store = seen["store"]
        assert store["master_addr"] is None and store["host"] == "127.0.0.1"
        assert store["gloo"] in ("lo", "lo0")
    listening = ranks["first"][0]["store"]["listening"]
    port = ranks["first"][0]["store"]["port"]
    assert listening == f"0100007F:{port:04X}", listening  # 127.0.0.1, not 0.0.0.0 (torch's default)


def test_a_dead_rank_makes_the_collective_raise_instead_of_hanging(ranks):
    dead = ranks["first"][0]["dead"]
    assert dead["raised"] is not None
    assert STOP_AT < dead["steps"] < TOTAL  # killed mid-training, after the checkpoint
    assert dead["seconds"] < 60  # the group's timeout is 20 s


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_clock_over_two_ranks_ends_identical_on_both_with_one_collective_per_round(ranks, name):
    first, second = (seen[f"real_{name}"] for seen in ranks["first"])
    assert first["theta"].tobytes() == second["theta"].tobytes()
    np.testing.assert_array_equal(first["momentum"], second["momentum"])
    assert first["clock"] == second["clock"] and first["steps"] == second["steps"] and first["rounds"] == second["rounds"]
    np.testing.assert_array_equal(first["counts"], second["counts"])
    for seen in (first, second):
        assert seen["rounds"] >= 3 and seen["collectives"] == seen["rounds"]
        assert seen["rounds"] == REAL_ROUNDS if name == "malenia" else seen["steps"] >= TOTAL
        assert np.all(seen["counts"] >= 1) if name != "rennala" else seen["counts"].sum() == REAL_KWARGS["round_size"]
    if name == "rennala":  # exactly M trajectories of H steps in every round (Pendulum never ends before H)
        assert first["steps"] == first["rounds"] * REAL_KWARGS["round_size"] * REAL_KWARGS["horizon"]
    if name == "synchronized":
        assert np.all(first["counts"] == 1)


def test_afedpg_is_refused_naming_the_backend():
    with pytest.raises(ValueError, match="backend: 'torch_distributed'.*AFedPG"):
        AFedPG("MlpPolicy", "Pendulum-v1", n_agents=2, horizon=5, seed=0, backend="torch_distributed")
    with pytest.raises(ValueError, match="backend: 'torch_distributed'"):
        AFedPG("MlpPolicy", "Pendulum-v1", n_agents=2, horizon=5, seed=0, backend=TorchDistributedBackend())


def test_bad_arguments_are_refused_naming_them():
    with pytest.raises(ValueError, match="local:"):
        TorchDistributedBackend(local="ray")
    with pytest.raises(ValueError, match="timeout:"):
        TorchDistributedBackend(timeout=0)


def test_the_backend_pickles_as_its_configuration():
    backend = TorchDistributedBackend(local="subprocess", timeout=7.5)
    backend.collectives = 3
    copy = pickle.loads(pickle.dumps(backend))
    assert (copy.local_kind, copy.timeout, copy.init_method, copy.collectives) == ("subprocess", 7.5, None, 0)
