"""Backends that physically compute gradients: in the main process or in worker processes.

One interface: ``set_params`` broadcasts θ, ``submit`` queues a :class:`~sb3_nigt.common.estimator.Job`,
``wait`` returns at least one finished :class:`~sb3_nigt.common.estimator.JobResult`, ``cancel`` abandons the
work of ended rounds, and ``close`` releases everything.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import traceback
from collections import deque
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait as wait_any
from typing import Any, Iterator, Optional

import numpy as np
import torch as th
from stable_baselines3.common.vec_env.base_vec_env import CloudpickleWrapper

from sb3_nigt.common.estimator import GradientWorker, Job, JobCancelled, JobResult


class WorkerError(RuntimeError):
    """A worker process died or failed with an exception that could not be re-raised as is."""


@contextmanager
def single_threaded_torch() -> Iterator[None]:
    """Run torch with one intra-op thread (as every worker does), so inline results are bit-identical."""
    previous = th.get_num_threads()
    th.set_num_threads(1)
    try:
        yield
    finally:
        th.set_num_threads(previous)


class InlineBackend:
    """Computes jobs one at a time in the main process, in submission order (``backend="inline"``)."""

    n_workers = 1

    def __init__(self, worker_args: dict[str, Any]):
        self.worker_args = worker_args
        self.worker: Optional[GradientWorker] = None
        self.queue: deque[Job] = deque()
        self.live_round = 0

    def start(self) -> None:
        self.worker = GradientWorker(**self.worker_args)

    def set_params(self, params: np.ndarray, obs_norm: Optional[tuple]) -> None:
        assert self.worker is not None
        self.worker.set_params(params, obs_norm)

    def submit(self, job: Job) -> None:
        self.queue.append(job)

    def pending(self) -> int:
        return len(self.queue)

    def wait(self, needed: Optional[tuple[int, int]] = None) -> list[JobResult]:
        """Run one queued job (the ``needed`` one first if it is queued) and return its result."""
        assert self.worker is not None
        if not self.queue:
            raise RuntimeError("wait() called with no job submitted")
        job = next((j for j in self.queue if j.key == needed), self.queue[0]) if needed is not None else self.queue[0]
        self.queue.remove(job)
        with single_threaded_torch():
            return [self.worker.run(job)]

    def cancel(self, live_round: int) -> None:
        """Abandon every job of a round before ``live_round``."""
        self.live_round = live_round
        self.queue = deque(j for j in self.queue if j.round_index >= live_round)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        self.queue.clear()


def _worker_main(remote: Connection, parent_remote: Connection, wrapped_args: CloudpickleWrapper, live_round: Any) -> None:
    """Entry point of a worker process: one intra-op torch thread, SIGINT left to the main process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    th.set_num_threads(1)
    parent_remote.close()
    worker = None
    try:
        worker = GradientWorker(**wrapped_args.var)
        while True:
            try:
                message = remote.recv()
            except (EOFError, KeyboardInterrupt):
                break
            command = message[0]
            if command == "params":
                worker.set_params(message[1], message[2])
            elif command == "job":
                job: Job = message[1]
                cancelled = lambda: live_round.value > job.round_index  # noqa: E731
                try:
                    if cancelled():
                        raise JobCancelled()
                    remote.send(("result", worker.run(job, cancelled)))
                except JobCancelled:
                    remote.send(("cancelled", job))
                except Exception as exc:  # sent to the main process, which re-raises it
                    remote.send(("error", job, _picklable(exc), traceback.format_exc()))
            elif command == "close":
                break
    except Exception as exc:  # failure while building the worker
        try:
            remote.send(("error", None, _picklable(exc), traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass
    finally:
        if worker is not None:
            worker.close()
        remote.close()


def _picklable(exc: BaseException) -> Optional[BaseException]:
    try:
        import pickle

        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return None


def default_start_method() -> str:
    """forkserver where available, else spawn: SB3's SubprocVecEnv convention (fork after torch can hang)."""
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


class SubprocessBackend:
    """Computes jobs in ``n_workers`` local worker processes (``backend="subprocess"``).

    θ travels once per round per worker as a float32 NumPy array (not a pickled tensor). Each worker keeps up to
    ``prefetch`` jobs queued so it never idles while the main process reacts; the main process waits for any
    worker with ``multiprocessing.connection.wait``. A shared round counter lets workers abandon a trajectory of
    an ended round within 64 environment steps.

    :param worker_args: arguments of :class:`GradientWorker` (sent with cloudpickle).
    :param n_workers: number of processes (>= 1).
    :param start_method: ``"forkserver"``, ``"spawn"`` or ``"fork"``; default: forkserver where available.
    :param prefetch: jobs queued per worker.
    :param pin_agents: run agent i's jobs on worker ``i % n_workers`` only (the real clock's emulated times: a
        sleeping agent must never hold up another agent's work).
    """

    def __init__(self, worker_args: dict[str, Any], n_workers: int, start_method: Optional[str] = None, prefetch: int = 2,
                 pin_agents: bool = False):
        self.worker_args = worker_args
        self.n_workers = int(n_workers)
        self.start_method = start_method or default_start_method()
        self.prefetch = prefetch
        self.pin_agents = pin_agents
        self.processes: list[Any] = []
        self.remotes: list[Connection] = []
        self.in_flight: list[int] = []
        self.queue: deque[Job] = deque()
        self.live_round: Any = None

    def start(self) -> None:
        ctx = mp.get_context(self.start_method)
        if self.start_method == "forkserver":
            # Import torch and the library once in the fork server instead of once per worker (seconds each).
            # No effect if the program's fork server is already running.
            ctx.set_forkserver_preload(["sb3_nigt.common.backends"])
        self.live_round = ctx.RawValue("q", 0)
        wrapped = CloudpickleWrapper(self.worker_args)
        try:
            for _ in range(self.n_workers):
                remote, work_remote = ctx.Pipe()
                process = ctx.Process(target=_worker_main, args=(work_remote, remote, wrapped, self.live_round), daemon=True)
                process.start()
                work_remote.close()
                self.processes.append(process)
                self.remotes.append(remote)
                self.in_flight.append(0)
        except BaseException:
            self.close()
            raise

    def set_params(self, params: np.ndarray, obs_norm: Optional[tuple]) -> None:
        params = np.ascontiguousarray(params, dtype=np.float32)
        for remote in self.remotes:
            remote.send(("params", params, obs_norm))

    def submit(self, job: Job) -> None:
        self.queue.append(job)
        self._dispatch()

    def pending(self) -> int:
        return len(self.queue) + sum(self.in_flight)

    def _dispatch(self) -> None:
        if self.pin_agents:
            waiting: deque[Job] = deque()
            for job in self.queue:
                worker = job.agent % self.n_workers
                if self.in_flight[worker] < self.prefetch:
                    self.remotes[worker].send(("job", job))
                    self.in_flight[worker] += 1
                else:
                    waiting.append(job)
            self.queue = waiting
            return
        while self.queue:
            worker = int(np.argmin(self.in_flight))
            if self.in_flight[worker] >= self.prefetch:
                return
            self.remotes[worker].send(("job", self.queue.popleft()))
            self.in_flight[worker] += 1

    def wait(self, needed: Optional[tuple[int, int]] = None) -> list[JobResult]:
        """Block until at least one worker answers; return the finished results (possibly none if cancelled).

        :raises WorkerError: if a worker died.
        :raises Exception: the worker's own exception (e.g. ``ValueError`` for a NaN reward), re-raised here.
        """
        busy = [remote for remote, n in zip(self.remotes, self.in_flight) if n > 0]
        if not busy:
            raise RuntimeError("wait() called with no job submitted")
        results = []
        for remote in wait_any(busy):
            worker = self.remotes.index(remote)
            try:
                message = remote.recv()
            except (EOFError, ConnectionResetError) as exc:
                raise WorkerError(f"worker process {worker} (pid {self.processes[worker].pid}) died") from exc
            if message[0] == "error":
                _, job, exc, text = message
                if exc is not None:
                    raise exc from WorkerError(f"in worker process {worker}:\n{text}")
                raise WorkerError(f"worker process {worker} failed:\n{text}")
            self.in_flight[worker] -= 1
            if message[0] == "result":
                results.append(message[1])
        self._dispatch()
        return results

    def cancel(self, live_round: int) -> None:
        """Abandon every job of a round before ``live_round``: queued ones are dropped, running ones stop."""
        self.live_round.value = live_round
        self.queue = deque(j for j in self.queue if j.round_index >= live_round)

    def close(self) -> None:
        """Stop every worker: ask politely, then terminate stragglers. Safe to call more than once."""
        if self.live_round is not None:
            self.live_round.value = 2**62  # running jobs abandon their trajectory at once
        for remote in self.remotes:
            try:
                remote.send(("close",))
            except (BrokenPipeError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=2)
            if process.is_alive():
                process.terminate()
                process.join(timeout=2)
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
                process.join()
        for remote in self.remotes:
            remote.close()
        self.processes, self.remotes, self.in_flight = [], [], []
        self.queue.clear()
