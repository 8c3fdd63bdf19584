"""The subprocess transport of the remote driver (``backend="subprocess"``): one worker process per slot, θ in
shared memory with a small notice per worker, so no send can block the main process on a busy worker
(docs/backends.md)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_any
from typing import Any, Callable, Optional

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import CloudpickleWrapper

from sb3_nigt.backends.contract import (
    BackendOptions,
    Event,
    default_start_method,
)
from sb3_nigt.backends.remote import RemoteDriver, RemoteWorker, bounded
from sb3_nigt.workers.loop import serve
from sb3_nigt.workers.messages import Close
from sb3_nigt.workers.rollout import GradientWorker

_MAIN_GUARD_EXIT = 78

MAIN_GUARD_MESSAGE = (
    'backend="subprocess": the worker processes could not start, because the script that creates the model runs '
    "again in each of them (the forkserver and spawn start methods import the main module in every new process). "
    'Put the code that creates and trains the model under `if __name__ == "__main__":`, as with SB3\'s '
    "SubprocVecEnv; or use backend=\"inline\"."
)


def _refuse_if_bootstrapping() -> None:
    """In a process that multiprocessing is still bootstrapping (it is importing the user's main module because the
    script has no ``__main__`` guard), starting workers cannot work: say so and exit with a code the parent
    recognises, instead of the long traceback and the generic "worker died" that would follow."""
    if getattr(mp.current_process(), "_inheriting", False):
        import sys

        print(f"sb3_nigt: {MAIN_GUARD_MESSAGE}", file=sys.stderr, flush=True)
        os._exit(_MAIN_GUARD_EXIT)


def _worker_main(remote: Connection, parent_remote: Connection, wrapped_args: CloudpickleWrapper, live: Any,
                 shm_name: str, n_slots: int, n_params: int, heartbeat: Optional[float]) -> None:
    """Entry point of a worker process: one torch thread, SIGINT left to the main process, and a
    :class:`WorkerLoop` over the pipe, with θ read from the shared-memory slot each command names."""
    import torch as th

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    th.set_num_threads(1)
    parent_remote.close()
    memory: Optional[shared_memory.SharedMemory] = None

    def build() -> tuple[GradientWorker, Callable[[int, Any], np.ndarray]]:
        nonlocal memory
        memory = shared_memory.SharedMemory(name=shm_name)
        slots = np.ndarray((n_slots, n_params), dtype=np.float32, buffer=memory.buf)
        return GradientWorker(**wrapped_args.var), lambda slot, _handle: np.array(slots[slot + 1])

    def receive(timeout: Optional[float]) -> Any:
        if timeout is not None and not remote.poll(timeout):
            return None
        return remote.recv()

    try:
        serve(build, remote.send, receive, lambda: int(live.value), heartbeat)
    finally:
        if memory is not None:
            memory.close()
        remote.close()


class _Worker(RemoteWorker):
    """The main process's handle on one worker process and the work it holds."""

    def __init__(self, process: Any, remote: Connection):
        super().__init__()
        self.process = process
        self.remote = remote

    def readable(self) -> bool:
        """Whether a message (or the end of the pipe) is waiting."""
        try:
            return self.remote.poll()
        except (OSError, EOFError):
            return True

    def kill(self) -> None:
        """Kill the process (if alive) and close the pipe."""
        try:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=5)
        except (OSError, ValueError, AssertionError):
            pass
        try:
            self.remote.close()
        except OSError:
            pass


class SubprocessBackend(RemoteDriver):
    """Runs work in local worker processes (``backend="subprocess"``), as SB3's SubprocVecEnv does.

    θ is written once per round to shared memory; each worker gets a small notice and copies it when it next
    needs it. Each worker keeps up to ``prefetch`` units queued; agent i's runs live on worker i mod
    ``n_workers``. The main process waits for any worker with ``multiprocessing.connection.wait``, watching
    every worker's pipe and process sentinel, so a worker that dies (even an idle one) is seen at once; a busy
    worker that shows no sign of progress (no message, no heartbeat) for ``worker_timeout`` seconds is declared
    hung and killed. A lost worker is replaced and its live work reported (:class:`WorkerLost`) so that the
    collector can resubmit it. Events of cancelled epochs, and reports of flushed runs, are dropped on receipt.

    :param prefetch: units queued per worker.
    """

    _RUNTIME = RemoteDriver._RUNTIME + ("shared_live", "memory", "slots", "ctx")

    def __init__(self, prefetch: int = 2) -> None:
        super().__init__(prefetch)
        self.start_method = default_start_method()

    def _reset_runtime(self) -> None:
        super()._reset_runtime()
        self.workers: list[_Worker] = []
        self.shared_live: Any = None  # the live epoch, in shared memory: workers read it while they compute
        self.memory: Optional[shared_memory.SharedMemory] = None
        self.slots: Optional[np.ndarray] = None
        self.ctx: Any = None

    def bind(self, worker_args: dict[str, Any], options: BackendOptions) -> None:
        super().bind(worker_args, options)
        self.start_method = options.start_method or default_start_method()

    # ---------------------------------------------------------------------------------------- processes
    def _spawn(self) -> _Worker:
        assert self.memory is not None and self.slots is not None
        remote, work_remote = self.ctx.Pipe()
        process = self.ctx.Process(
            target=_worker_main,
            args=(work_remote, remote, CloudpickleWrapper(self.worker_args), self.shared_live, self.memory.name,
                  self.slots.shape[0], self.slots.shape[1], self._heartbeat()),
            daemon=True,
        )
        try:
            process.start()
        except BaseException:
            remote.close()
            raise
        finally:
            work_remote.close()
        return _Worker(process, remote)

    def start(self) -> None:
        """Start the worker processes.

        :raises RuntimeError: naming the ``if __name__ == "__main__":`` guard, when the workers re-run a script that
            has none.
        """
        _refuse_if_bootstrapping()
        self.close()
        try:
            self.ctx = mp.get_context(self.start_method)
            if self.start_method == "forkserver":
                # Import torch and the library once in the fork server instead of once per worker (seconds each).
                self.ctx.set_forkserver_preload(["sb3_nigt.backends.subprocess"])
            self.live, self.shared_live = 0, self.ctx.RawValue("q", 0)
            self.n_params = self._count_params()
            n_slots = 1 + self.options.agent_slots
            self.memory = shared_memory.SharedMemory(create=True, size=max(1, n_slots * self.n_params * 4))
            self.slots = np.ndarray((n_slots, self.n_params), dtype=np.float32, buffer=self.memory.buf)
            self.published, self.failures, self.broken = {}, 0, None
            for _ in range(self.n_workers):
                self.workers.append(self._spawn())
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------------------------------- transport
    def _post(self, worker: _Worker, message: Any) -> bool:
        """Send a small message; False if the worker is gone (its loss is then reported by :meth:`wait`)."""
        try:
            worker.remote.send(message)
            return True
        except (BrokenPipeError, ConnectionResetError, OSError):
            return False

    def _store(self, slot: int, params: np.ndarray) -> None:
        assert self.slots is not None
        self.slots[slot + 1] = params  # no worker reads this slot now: its live work was cancelled or answered

    def _announce(self, epoch: int) -> None:
        if self.shared_live is not None:
            self.shared_live.value = epoch

    def _stop(self, index: int, reason: Optional[str]) -> str:
        worker = self.workers[index]
        pid = worker.process.pid
        worker.kill()
        if reason is None:
            if worker.process.exitcode == _MAIN_GUARD_EXIT:
                self.broken = MAIN_GUARD_MESSAGE
                raise RuntimeError(MAIN_GUARD_MESSAGE)
            reason = f"process {pid} died (exit code {worker.process.exitcode})"
        return reason

    def _renew(self, index: int, action: str) -> None:
        self.workers[index] = self._spawn()

    def _poll(self, step: float, deadline: Optional[float]) -> list[Event]:
        """Wait on every worker's pipe and process sentinel (idle ones too: a death or an error is seen at once)."""
        handles: dict[Any, tuple[int, bool]] = {}
        for i, worker in enumerate(self.workers):
            handles[worker.remote] = (i, True)
            handles[worker.process.sentinel] = (i, False)
        events: list[Event] = []
        seen: set[int] = set()
        for handle in wait_any(list(handles), timeout=bounded(step, deadline)):
            index, pipe = handles[handle]
            if index not in seen:
                seen.add(index)
                readable = pipe or self.workers[index].readable()
                events.extend(self._receive(index) if readable else [self._lose(index)])
        return events

    def _receive(self, index: int) -> list[Event]:
        """Read what the worker sent (at most 64 messages, so that a chatty worker cannot starve the others)."""
        worker = self.workers[index]
        events: list[Event] = []
        for _ in range(64):
            try:
                message = worker.remote.recv()
            except (EOFError, OSError):
                return events + [self._lose(index)]
            events.extend(self._handle(index, [message]))
            if not worker.readable():
                break
        return events

    def close(self) -> None:
        """Stop every worker: ask politely, then terminate, then kill; unlink the shared memory. Safe to call
        more than once, and after a failure."""
        workers, self.workers = self.workers, []
        try:
            self._announce(2**62)  # running work is abandoned at once
            for worker in workers:
                self._post(worker, Close())
            for worker in workers:  # a worker blocked sending to us gets a broken pipe and exits
                try:
                    worker.remote.close()
                except OSError:
                    pass
            _join(workers, time.monotonic() + 2)
        finally:
            self.queue.clear()
            self.slots = None
            self.published = {}
            self.broken = None
            self._unlink()

    def _unlink(self) -> None:
        if self.memory is not None:
            memory, self.memory = self.memory, None
            try:
                memory.close()
            except BufferError:  # a view of it is still alive somewhere: unlinking still frees the name
                pass
            try:
                memory.unlink()
            except FileNotFoundError:
                pass


def _join(workers: list[_Worker], deadline: float) -> None:
    """Wait for the processes until ``deadline``, terminate what is left, then kill it."""
    for worker in workers:
        try:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=1)
        except (OSError, ValueError, AssertionError):
            pass
        worker.kill()
