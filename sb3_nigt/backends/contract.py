"""The contract every backend implements (docs/backends.md), its optional hooks, and what it reports.

The collector (the clock) decides *what* is computed; a backend decides *where*. Two kinds of work travel: a
:class:`~sb3_nigt.workers.rollout.WorkUnit` (the simulated clock) and an
:class:`~sb3_nigt.workers.messages.AgentRun` (the real clock, the paper's agent-side accumulation).
"""

from __future__ import annotations

import multiprocessing as mp
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol, Union, runtime_checkable

import numpy as np
import torch as th

from sb3_nigt.workers.messages import AgentReport, AgentRun
from sb3_nigt.workers.rollout import ObsNorm, UnitResult, WorkUnit


class WorkerError(RuntimeError):
    """Worker processes failed too many times in a row, or a worker could not be built."""


@dataclass
class WorkerLost:
    """A worker died (killed, crashed, out of memory) or hung past the timeout, and was replaced.

    :param worker: the worker's number.
    :param reason: what happened.
    :param units: the units of live epochs it held, unanswered, in the order they were submitted: resubmit them.
    :param runs: the agent runs of live epochs it held (running, or flushed with their sum not yet received);
        their counted but unsent gradients are lost.
    """

    worker: int
    reason: str
    units: list[WorkUnit] = field(default_factory=list)
    runs: list[AgentRun] = field(default_factory=list)


Event = Union[UnitResult, AgentReport, WorkerLost]


@dataclass
class BackendOptions:
    """How a backend is built (from the algorithm's arguments).

    :param n_workers: worker processes (None: the backend's default).
    :param start_method: multiprocessing start method.
    :param pin_agents: run agent i only on worker ``i % n_workers`` (emulated times on the real clock).
    :param agent_slots: how many per-agent θ slots to publish to (AFedPG: n), besides the round's broadcast.
    :param worker_timeout: seconds without a sign of progress from a busy worker before it is declared hung;
        None: never. Workers send a heartbeat while they sleep and every 64 environment steps, so only a
        worker stuck inside one stretch of 64 steps (or one batched backward pass) that long is declared hung.
    :param max_failures: a loss that makes more than this many worker losses in a row (no result or report in
        between) raises :class:`WorkerError` instead of replacing the worker.
    """

    n_workers: Optional[int] = None
    start_method: Optional[str] = None
    pin_agents: bool = False
    agent_slots: int = 0
    worker_timeout: Optional[float] = 300.0
    max_failures: int = 3


@runtime_checkable
class Backend(Protocol):
    """The contract every backend implements (inline, local processes, Ray actors, torch.distributed ranks).
    ``tests/test_backend_contract.py`` checks it; a new backend joins by adding its name there. The optional hooks
    are :class:`BackendHooks`.

    Life cycle: :meth:`bind` (once, before the first start), then :meth:`start` … :meth:`close`; a model starts
    its backend at its first ``learn`` and keeps it started for the next calls until its ``close()``, its
    collection, interpreter exit or a failed ``learn`` (:mod:`sb3_nigt.algorithms.live_workers`); a closed backend
    can be started again (everything published or queued before is gone).

    Bits: a unit's gradient is bit-identical to :meth:`GradientWorker.run_unit` at the published θ run with one
    torch thread, and a flushed run's to :meth:`GradientWorker.gradient_sum` of its first ``count``
    trajectories, whoever computes them: workers use one torch thread and job seeds are (seed, round, agent,
    index).

    Ordering: a run's reports arrive in index order, before its sum; nothing else is ordered (the results of
    different units can arrive in any order). Callers add results in their own canonical order.

    Cancellation: :meth:`cancel` raises the live epoch. Once it returns, :meth:`wait` returns no
    :class:`UnitResult` or :class:`AgentReport` of a lower epoch, even one that was already computed or in
    transit (the backend drops it on receipt; callers may still check the epoch), and :class:`WorkerLost` lists
    no such work. Work of lower epochs is dropped if queued and abandoned if running (within 64 environment
    steps or 10 ms of an emulated wait); it may use a worker briefly but never counts as pending.

    Flush: after :meth:`flush` returns, no further report of that run is returned (a report already sent is
    dropped); its sum is the only event still to come, and only if ``count`` > 0.

    Errors: :meth:`wait` re-raises an exception raised by the user's code in a worker (e.g. ``ValueError`` for a
    NaN reward) as is; a worker that dies or hangs past ``worker_timeout`` is replaced and reported as a
    :class:`WorkerLost` event; after ``max_failures`` losses in a row :class:`WorkerError` is raised (then and
    by every later :meth:`wait`, until :meth:`close`). :meth:`wait` never blocks forever on a dead worker.
    """

    n_workers: int

    def bind(self, worker_args: dict[str, Any], options: BackendOptions) -> None:
        """Receive what workers are built from (:class:`GradientWorker` arguments) and the options."""

    def start(self) -> None:
        """Start the workers; the published θ starts empty. Starting a started backend restarts it."""

    def publish(self, params: np.ndarray, obs_norm: Optional[ObsNorm], slot: int = -1) -> None:
        """Make θ (float32 ``(d,)``) and its observation statistics the parameters of work of ``slot`` (-1: the
        round's broadcast; ``i`` in ``0 .. agent_slots − 1``: agent i's own slot) submitted from now on. Never
        blocks on a worker. Work of that slot submitted earlier and still pending may run at either θ: cancel it
        first, or wait for its result (the collector does).

        :raises ValueError: for a slot out of range or a vector of the wrong size.
        """

    def submit(self, unit: WorkUnit) -> None:
        """Queue a unit; its :class:`UnitResult` comes back from :meth:`wait`, once.

        :raises ValueError: when θ was never published to the unit's slot.
        """

    def start_run(self, run: AgentRun) -> None:
        """Start an agent run at the broadcast θ (it replaces a run of the same agent); each finished trajectory
        comes back as an :class:`AgentReport`.

        :raises ValueError: when no broadcast θ was published.
        """

    def flush(self, epoch: int, agent: int, count: int, upload_delay: float = 0.0) -> None:
        """End agent ``agent``'s run of ``epoch``: it sends the sum of its first ``count`` trajectories (at most
        the number reported), ``upload_delay`` seconds later, as a :class:`UnitResult` (whose unit has ``first``
        and ``count``), and drops the rest; with ``count`` 0 it sends nothing and the run is released at once.
        Ignored for a run that is not live (cancelled, lost, ended by ``max_gradients``, already flushed)."""

    def wait(self, timeout: Optional[float] = None) -> list[Event]:
        """Block until at least one event, or ``timeout`` seconds (then possibly none). A backend that computes
        in the caller's thread may overrun ``timeout`` by one piece of work, never by an emulated wait.

        :raises RuntimeError: when no work of a live epoch is pending (nothing submitted, or all returned).
        """

    def cancel(self, epoch: int) -> None:
        """Abandon all work of epochs below ``epoch`` (the live epoch never decreases)."""

    def close(self) -> None:
        """Stop every worker and release every resource; safe to call twice and after a failure."""


class BackendHooks:
    """The optional hooks of a backend, with their defaults (every built-in backend derives from this class; a
    backend that does not gets these defaults through :func:`~sb3_nigt.backends.registry.hooks_of`).

    :cvar arrival_counter: a backend that counts the real clock's arrivals itself (torch_distributed, through the
        process group's ``TCPStore``) sets this to a method ``arrival_counter(rule, round_index, epoch, time_scale)``
        returning the round's counter; None (the default): arrivals are counted in the main process, from the
        events of :meth:`Backend.wait`.
    """

    arrival_counter: Optional[Callable[..., Any]] = None

    @staticmethod
    def check_algorithm(algorithm: str, clock: str, per_agent_params: bool) -> None:
        """Refuse what this backend cannot run; called by the algorithms' constructor. Default: accept all.

        :param algorithm: the algorithm's class name.
        :param clock: ``"simulated"`` or ``"real"``.
        :param per_agent_params: whether each agent works at a θ of its own (AFedPG).
        :raises ValueError: naming the backend, for a combination it cannot run.
        """

    @staticmethod
    def is_primary() -> bool:
        """Whether this process owns logging and saving. Default: True (every backend but the ranks other than 0 of
        torch_distributed)."""
        return True


def default_start_method() -> str:
    """forkserver where available, else spawn: SB3's SubprocVecEnv convention (fork after torch can hang)."""
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


@contextmanager
def single_threaded_torch() -> Iterator[None]:
    """Run torch with one intra-op thread (as every worker does), so inline results are bit-identical."""
    previous = th.get_num_threads()
    th.set_num_threads(1)
    try:
        yield
    finally:
        th.set_num_threads(previous)


def check_slot(slot: int, agent_slots: int) -> None:
    """:raises ValueError: unless ``slot`` is -1 (the broadcast) or an agent slot in ``0 .. agent_slots − 1``."""
    if not -1 <= slot < agent_slots:
        raise ValueError(f"slot: must be -1 (the broadcast) or an agent slot in 0..{agent_slots - 1} "
                         f"(BackendOptions.agent_slots={agent_slots}), got {slot}")


def check_params(params: np.ndarray, n_params: int) -> np.ndarray:
    """θ as a new float32 ``(d,)`` array. :raises ValueError: for another shape."""
    params = np.array(params, dtype=np.float32)
    if params.shape != (n_params,):
        raise ValueError(f"params: expected shape ({n_params},), got {params.shape}")
    return params
