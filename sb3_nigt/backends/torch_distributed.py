"""A torch.distributed backend (``backend="torch_distributed"``): decentralized AllReduce over ranks
(docs/torch_distributed.md).

Every rank runs the same script (``torchrun``) and so the same collector. On the simulated clock the collector's
round plan is deterministic, so every rank submits the very same units in the very same order; each rank computes
only its own agents' units (agent i lives on rank i mod world size) with a local backend (inline or subprocess),
and the first ``wait`` after a batch of submits exchanges every unit's result in **one** collective
(``all_gather_object``). Every rank then holds every unit's :class:`~sb3_nigt.workers.rollout.UnitResult`,
bit for bit what the inline backend computes, and the collector, adding each agent's units in index order, ends
every round with the same θ on every rank.

On the real clock the round is :class:`~sb3_nigt.clock.real.RealRound`'s, as on every backend; this backend only
supplies its :class:`StoreCounter` (:meth:`TorchDistributedBackend.arrival_counter`): each rank runs its own agents
and counts their finished trajectories with atomic ``TCPStore.add`` calls on the process group's store (no
server); a round ends with one collective that combines the ranks' tallies (sums, counts and statistics).

What is not here: AFedPG (no AllReduce: refused), emulated times (``time_scale``) over ranks, and agent runs
driven directly through :meth:`~TorchDistributedBackend.start_run` on more than one rank (at world size 1 they go
straight to the local backend).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pickle
import socket
import time
import traceback
import uuid
import warnings
from collections import deque
from typing import Any, Optional

import torch as th
import torch.distributed as dist

from sb3_nigt.backends.contract import Backend, BackendOptions, Event, WorkerLost
from sb3_nigt.backends.inline import InlineBackend
from sb3_nigt.backends.registry import register_backend
from sb3_nigt.backends.subprocess import SubprocessBackend
from sb3_nigt.clock.real import Tally
from sb3_nigt.core.aggregation import AggregationRule, RennalaAggregation
from sb3_nigt.workers.messages import AgentRun
from sb3_nigt.workers.rollout import ObsNorm, UnitResult, WorkUnit

#: The address rank 0's store binds to, and every rank connects to, when ``MASTER_ADDR`` is not set: loopback.
DEFAULT_MASTER_ADDR = "127.0.0.1"

#: Seconds a collective (and the rendezvous) may wait for the other ranks before it raises.
DEFAULT_TIMEOUT = 300.0

_STORE: Optional[dist.TCPStore] = None  # the store this module created for the default group, if it did
_GLOO_GROUPS: dict[int, Any] = {}  # id(default group) → a gloo group for CPU objects, where the default is NCCL


def _env_int(name: str, default: Optional[int]) -> Optional[int]:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}: the environment variable must be an integer, got {text!r}") from None


def distributed_rank() -> int:
    """This process's rank: the default process group's if it is initialized, else ``RANK`` (default 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    rank = _env_int("RANK", 0)
    assert rank is not None
    return rank


def distributed_world_size() -> int:
    """The number of ranks: the default process group's if it is initialized, else ``WORLD_SIZE`` (default 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    world = _env_int("WORLD_SIZE", 1)
    assert world is not None
    return world


def is_loopback(address: str) -> bool:
    """Whether ``address`` (an IP address or a host name) is a loopback address (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(address, None))
        except (OSError, ValueError):
            return False


def _loopback_interface() -> Optional[str]:
    """The loopback network interface's name (``lo`` on Linux, ``lo0`` on macOS), or None."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((name for name in names if name in ("lo", "lo0")), None)


def _bound_store(address: str, port: int, world_size: int, is_master: bool, timeout: datetime.timedelta) -> dist.TCPStore:
    """torch's ``TCPStore``; on the master it listens on ``address`` only (not on every interface, torch's
    default), through a socket bound here and handed to the store with ``master_listen_fd``."""
    if not is_master:
        return dist.TCPStore(address, port, world_size, False, timeout)
    family, kind, proto, _, where = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(where)
        listener.listen(128)
    except OSError as exc:
        listener.close()
        raise ValueError(f"MASTER_ADDR: rank 0 cannot listen on {address}:{port} ({exc})") from exc
    bound_port = listener.getsockname()[1]
    return dist.TCPStore(address, bound_port, world_size, True, timeout, master_listen_fd=listener.detach())


def init_process_group_from_env(timeout: float = DEFAULT_TIMEOUT, init_method: Optional[str] = None) -> None:
    """Initialize the default process group, as ``torchrun`` expects, unless it already is.

    Reads ``RANK`` (default 0), ``WORLD_SIZE`` (default 1), ``MASTER_ADDR`` (default :data:`DEFAULT_MASTER_ADDR`,
    loopback) and ``MASTER_PORT`` (required when ``WORLD_SIZE`` > 1; at world size 1 a free port is taken). Rank
    0's ``TCPStore`` listens on ``MASTER_ADDR`` only; under torchrun (``TORCHELASTIC_USE_AGENT_STORE=True``) the
    store is torchrun's agent's and every rank connects to it. With a loopback address gloo's own sockets are also
    kept on the loopback interface (``GLOO_SOCKET_IFNAME``, unless it is set). The process-group backend is gloo, or
    ``cpu:gloo,cuda:nccl`` where CUDA is present (this backend's collectives carry CPU objects: gloo).

    :param timeout: seconds the rendezvous and every collective may wait for the other ranks (> 0).
    :param init_method: a torch ``init_method`` URL (``"tcp://host:port"``, ``"env://"``, ``"file://..."``)
        instead of the store built here; then torch binds as it does by default.
    :raises ValueError: naming the environment variable for a bad ``RANK``, ``WORLD_SIZE`` or ``MASTER_PORT``, or
        ``timeout`` for a non-positive timeout.
    """
    global _STORE
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    if dist.is_initialized():
        return
    if not timeout > 0:
        raise ValueError(f"timeout: must be a number of seconds > 0, got {timeout!r}")
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    assert rank is not None and world is not None
    if world < 1:
        raise ValueError(f"WORLD_SIZE: must be >= 1, got {world}")
    if not 0 <= rank < world:
        raise ValueError(f"RANK: must be in 0..{world - 1} (WORLD_SIZE={world}), got {rank}")
    backend = "cpu:gloo,cuda:nccl" if th.cuda.is_available() else "gloo"
    delta = datetime.timedelta(seconds=float(timeout))
    if init_method is not None:
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world, timeout=delta)
        return
    address = os.environ.get("MASTER_ADDR") or DEFAULT_MASTER_ADDR
    port = _env_int("MASTER_PORT", None)
    if port is None:
        if world > 1:
            raise ValueError(f"MASTER_PORT: must be set when WORLD_SIZE={world} > 1 (torchrun sets it)")
        port = 0
    if not 0 <= port < 65536:
        raise ValueError(f"MASTER_PORT: must be a TCP port in 0..65535, got {port}")
    if is_loopback(address) and not os.environ.get("GLOO_SOCKET_IFNAME"):
        interface = _loopback_interface()
        if interface is not None:
            os.environ["GLOO_SOCKET_IFNAME"] = interface
    # Under torchrun the agent already hosts the store on MASTER_PORT: every rank is a client (as torch's env://).
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = _bound_store(address, port, world, rank == 0 and not agent_store, delta)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=delta)
    _STORE = store


def default_store() -> Optional[dist.TCPStore]:
    """The ``TCPStore`` of the default group: the one :func:`init_process_group_from_env` made, else torch's own
    (``_get_default_store``), else None."""
    if _STORE is not None and dist.is_initialized():
        return _STORE
    if dist.is_available() and dist.is_initialized():
        try:
            store = dist.distributed_c10d._get_default_store()
        except (RuntimeError, ValueError):
            return None
        while hasattr(store, "underlying_store"):
            store = store.underlying_store
        return store if isinstance(store, dist.TCPStore) else None
    return None


def _cpu_group() -> Any:
    """The group the backend's collectives use: the default group when it has gloo, else a gloo group made once
    (``new_group`` is itself collective: every rank gets here at the same ``start``)."""
    default = dist.group.WORLD
    if "gloo" in str(dist.get_backend()):
        return None
    key = id(default)
    if key not in _GLOO_GROUPS:
        _GLOO_GROUPS[key] = dist.new_group(backend="gloo")
    return _GLOO_GROUPS[key]


def _shareable(error: Optional[BaseException]) -> Optional[BaseException]:
    """``error`` if it pickles (to travel in a collective), else a ``RuntimeError`` with its traceback's text."""
    if error is None:
        return None
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError("".join(traceback.format_exception(error)))


LOCAL_BACKENDS = ("inline", "subprocess")


class TorchDistributedBackend:
    """Decentralized AllReduce over torch.distributed ranks (``backend="torch_distributed"``).

    Every rank runs the same collector. Units are recorded in submission order on every rank; agent i's units are
    computed on rank i mod world size by a local backend; the first :meth:`wait` after a batch of submits
    waits for this rank's units, then exchanges all of the batch's results in one ``all_gather_object``
    (:attr:`collectives` counts them) and returns every unit's :class:`UnitResult`, in submission order, on every
    rank. Gradients travel as float64 ``(d,)`` vectors, pickled: bit for bit. On the real clock the round driver
    counts through :meth:`arrival_counter` instead (``TCPStore.add``, one collective per round).

    :param local: the backend that computes this rank's units: ``"inline"`` (default) or ``"subprocess"``
        (``n_workers`` local processes, for several cores per rank).
    :param init_method: a torch ``init_method`` URL used if the default process group is not initialized; None:
        the environment variables ``torchrun`` sets (:func:`init_process_group_from_env`).
    :param timeout: seconds the rendezvous and each collective wait for the other ranks before raising (a dead
        or stuck rank): > 0. Applies when this backend initializes the group.
    :raises ValueError: for an unknown ``local`` or a non-positive ``timeout``.
    """

    def __init__(self, local: str = "inline", init_method: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        if local not in LOCAL_BACKENDS:
            raise ValueError(f"local: must be one of {LOCAL_BACKENDS}, got {local!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout: must be a number of seconds > 0, got {timeout!r}")
        self.local_kind = local
        self.init_method = init_method
        self.timeout = float(timeout)
        self.local: Backend = InlineBackend() if local == "inline" else SubprocessBackend()
        self.n_workers = 1  # this rank's local workers, known once bound
        self.collectives = 0  # collective calls made (all_gather_object), over the backend's life
        self.rank, self.world_size = 0, 1
        self.group: Any = None
        self.started = False
        self.nonce: Optional[str] = None  # the real clock's store-key prefix, agreed at its first round
        self._reset()

    def _reset(self) -> None:
        self.live = 0
        self.published: set[int] = set()
        self.sequence = 0
        self.batch: dict[int, WorkUnit] = {}  # sequence number → unit, every rank's units, submission order
        self.mine: dict[WorkUnit, deque[int]] = {}  # this rank's units not yet computed → their sequence numbers
        self.done: dict[int, UnitResult] = {}  # this rank's computed units of the batch
        self.error: Optional[BaseException] = None

    _CONFIG = ("local_kind", "init_method", "timeout")

    def __getstate__(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self._CONFIG}

    def __setstate__(self, state: dict[str, Any]) -> None:
        TorchDistributedBackend.__init__(self, state["local_kind"], state["init_method"], state["timeout"])

    # ------------------------------------------------------------------------------------- algorithm hooks
    @staticmethod
    def check_algorithm(algorithm: str, clock: str, per_agent_params: bool) -> None:
        """Refuse what this backend cannot run; called by the algorithms' constructor.

        :raises ValueError: for AFedPG (``per_agent_params``: one server update per arrival, no round to reduce).
        """
        if per_agent_params:
            raise ValueError(
                f"backend: 'torch_distributed' combines each round's gradients with one AllReduce-style collective; "
                f"{algorithm} updates its server on every single arrival, at a θ of its own per agent, so it has no "
                "AllReduce to distribute. Use backend='inline' or 'subprocess'"
            )

    @staticmethod
    def is_primary() -> bool:
        """Whether this process is rank 0, which owns logging and saving (other ranks write nothing)."""
        return distributed_rank() == 0

    # ---------------------------------------------------------------------------------------------- life
    def bind(self, worker_args: dict[str, Any], options: BackendOptions) -> None:
        self.local.bind(worker_args, options)
        self.n_workers = int(getattr(self.local, "n_workers", 1) or 1)  # this rank's local workers

    def start(self) -> None:
        """Join (or initialize) the default process group and start the local backend.

        :raises ValueError: for bad ``RANK``, ``WORLD_SIZE`` or ``MASTER_PORT`` environment variables.
        :raises RuntimeError / DistBackendError: when the other ranks do not join within ``timeout``.
        """
        self.close()
        init_process_group_from_env(self.timeout, self.init_method)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.group = _cpu_group()
        self.local.start()
        self._reset()
        self.nonce = None
        self.started = True

    def _started(self) -> None:
        if not self.started:
            raise RuntimeError("the backend is not started: call start() first")

    def _owns(self, agent: int) -> bool:
        return agent % self.world_size == self.rank

    # ---------------------------------------------------------------------------------------------- work
    def publish(self, params: Any, obs_norm: Optional[ObsNorm], slot: int = -1) -> None:
        self._started()
        self.local.publish(params, obs_norm, slot)  # every rank publishes the same θ; the local backend checks it
        self.published.add(slot)

    def submit(self, unit: WorkUnit) -> None:
        self._started()
        if unit.slot not in self.published:
            raise ValueError(f"submit: θ was never published to slot {unit.slot}")
        if unit.epoch < self.live:
            return
        number = self.sequence
        self.sequence += 1
        self.batch[number] = unit
        if self._owns(unit.agent):
            self.mine.setdefault(unit, deque()).append(number)
            self.local.submit(unit)

    def _single(self, what: str) -> None:
        if self.world_size > 1:
            raise ValueError(f"{what}: agent runs driven one by one are not supported by the 'torch_distributed' backend "
                             f"at world size {self.world_size} > 1 (the real clock runs this rank's agents on its local backend)")

    def start_run(self, run: AgentRun) -> None:
        """World size 1 only: the run goes to the local backend.

        :raises ValueError: at world size > 1."""
        self._started()
        self._single("start_run")
        self.local.start_run(run)

    def flush(self, epoch: int, agent: int, count: int, upload_delay: float = 0.0) -> None:
        """World size 1 only (see :meth:`start_run`)."""
        if not self.started:
            return
        self._single("flush")
        self.local.flush(epoch, agent, count, upload_delay)

    def wait(self, timeout: Optional[float] = None) -> list[Event]:
        """Block until events are ready; see :class:`Backend`.

        With units in the batch: wait for this rank's, then one collective returns all of them (in submission
        order) on every rank. If ``timeout`` expires before this rank's units are done, ``[]`` is returned
        without a collective (the batch stays pending); the collective itself waits for the other ranks (at
        most the process group's timeout) whatever ``timeout`` says.

        :raises RuntimeError: when nothing live is pending.
        :raises Exception: an exception raised while computing a unit on any rank (e.g. ``ValueError`` for a NaN
            reward) is raised on every rank, after the collective, so no rank is left waiting.
        """
        self._started()
        if not self.batch:
            return self.local.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        passed: list[Event] = []
        while self.mine and self.error is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                events = self.local.wait(left)
            except Exception as exc:  # shared with every rank in the collective, then raised everywhere
                self.error = exc
                break
            for event in events:
                if isinstance(event, UnitResult) and self.mine.get(event.unit):
                    numbers = self.mine[event.unit]
                    self.done[numbers.popleft()] = event
                    if not numbers:
                        del self.mine[event.unit]
                elif isinstance(event, WorkerLost):
                    lost = [u for u in event.units if u in self.mine]
                    if lost:
                        warnings.warn(f"rank {self.rank}: local worker {event.worker} lost ({event.reason}); its units are "
                                      "computed again", RuntimeWarning, stacklevel=2)
                        for unit in lost:
                            self.local.submit(unit)
                    if event.runs:
                        passed.append(WorkerLost(event.worker, event.reason, [], event.runs))
                else:
                    passed.append(event)  # an agent run's report or sum (world size 1)
            if self.mine and deadline is not None and time.monotonic() >= deadline and self.error is None:
                return passed
        return passed + self._exchange()

    def _exchange(self) -> list[UnitResult]:
        """The collective: every rank sends its computed units (or its error), every rank gets all of them."""
        payload = (_shareable(self.error), [(number, r.gradient, r.trajectories, r.seconds) for number, r in self.done.items()])
        gathered: list[Any] = [None] * self.world_size
        self.collectives += 1
        dist.all_gather_object(gathered, payload, group=self.group)
        batch, own_error = self.batch, self.error
        self.batch, self.mine, self.done, self.error = {}, {}, {}, None
        for rank, (rank_error, _) in enumerate(gathered):
            if rank_error is not None:
                if rank == self.rank and own_error is not None:
                    raise own_error
                raise rank_error from RuntimeError(f"raised on rank {rank} while computing its units")
        results: dict[int, UnitResult] = {}
        for _, entries in gathered:
            for number, gradient, trajectories, seconds in entries:
                results[number] = UnitResult(batch[number], gradient, trajectories, seconds)
        missing = sorted(set(batch) - set(results))
        if missing:
            raise RuntimeError(f"torch_distributed: the ranks disagree on the round's work ({len(missing)} units were "
                               "computed by no rank); every rank must run the same script with the same arguments")
        return [results[number] for number in sorted(results) if batch[number].epoch >= self.live]

    # -------------------------------------------------------------------------------------------- real clock
    def _round_nonce(self) -> str:
        """A name shared by every rank for this backend's store keys (one broadcast, at the first real round), so
        that keys of another ``learn`` or of an earlier torchrun attempt never mix with this one's."""
        if self.nonce is None:
            box = [uuid.uuid4().hex if self.rank == 0 else None]
            dist.broadcast_object_list(box, src=0, group=self.group)
            self.nonce = str(box[0])
        return self.nonce

    def arrival_counter(self, rule: AggregationRule, round_index: int, epoch: int, time_scale: Optional[float]) -> "StoreCounter":
        """The real clock's hook (:class:`~sb3_nigt.clock.real.RealRound`): this rank's agents, counted through the
        process group's ``TCPStore``.

        :raises ValueError: for ``time_scale`` > 0 (not emulated over ranks).
        :raises RuntimeError: when the process group has no ``TCPStore``.
        """
        if time_scale:
            raise ValueError("time_scale: emulated times are not supported on the real clock with the 'torch_distributed' "
                             "backend; leave time_scale=None")
        store = default_store()
        if store is None:
            raise RuntimeError("torch_distributed: the real clock needs the process group's TCPStore, and none was found")
        return StoreCounter(self, store, rule, f"sb3_nigt/{self._round_nonce()}/{round_index}/{epoch}")

    def cancel(self, epoch: int) -> None:
        self.live = max(self.live, epoch)
        self.local.cancel(epoch)
        doomed = [number for number, unit in self.batch.items() if unit.epoch < self.live]
        for number in doomed:
            del self.batch[number]
            self.done.pop(number, None)
        self.mine = {unit: numbers for unit, numbers in self.mine.items() if unit.epoch >= self.live}

    def close(self) -> None:
        """Close the local backend. The process group stays (another ``learn`` joins it again); end it with
        ``torch.distributed.destroy_process_group()`` at the end of the script."""
        self.started = False
        self.local.close()
        self._reset()


class StoreCounter:
    """A real-clock round's arrivals counted over ranks with atomic ``TCPStore.add`` calls, no server
    (docs/torch_distributed.md, "The real clock"); the round itself is :class:`~sb3_nigt.clock.real.RealRound`'s.

    ``v = add(order_key, 1)`` is a trajectory's place in the global arrival order. Rennala counts it iff v <= M, so
    a round holds exactly M. For the other rules each agent's count is kept in the store too (``add(agent_key,
    1)``), and the rank whose trajectory makes the rule done (read from every agent's count) sets the stop key;
    counts only grow after that, which keeps Malenia's condition true (its harmonic mean only rises). The ranks'
    tallies are combined in one ``all_gather_object``.

    :param owner: the backend: its rank, local backend, timeout, group and collective count.
    :param store: the process group's store.
    :param rule: the round's rule; it counts this rank's agents as they arrive, the others' at :meth:`combine`.
    :param prefix: the round's store keys' prefix (the backend's nonce, the round and the epoch).
    """

    poll = 0.02

    def __init__(self, owner: TorchDistributedBackend, store: dist.TCPStore, rule: AggregationRule, prefix: str):
        self.owner, self.store, self.rule, self.prefix = owner, store, rule, prefix
        self.backend = owner.local
        self.stop_key = f"{prefix}/stop"
        self.stopped = False
        self.deadline = time.perf_counter() + owner.timeout

    def owns(self, agent: int) -> bool:
        return self.owner._owns(agent)

    def _agent_key(self, agent: int) -> str:
        return f"{self.prefix}/agent/{agent}"

    def _met_everywhere(self) -> bool:
        """Whether the rule is met by every agent's count in the store (n small store reads)."""
        probe = type(self.rule)(self.rule.n_agents, self.rule.batch_size)
        for agent in range(self.rule.n_agents):
            for _ in range(int(self.store.add(self._agent_key(agent), 0))):
                probe.add(agent)
        return probe.done()

    def arrive(self, agent: int) -> Optional[int]:
        if self.stopped:
            return None
        order = int(self.store.add(f"{self.prefix}/order", 1))
        rennala = isinstance(self.rule, RennalaAggregation)
        if rennala and order > self.rule.batch_size:
            self.stopped = True  # the M-th was counted elsewhere: this one is not
            return None
        self.rule.add(agent)
        if not rennala:
            self.store.add(self._agent_key(agent), 1)
        if order >= self.rule.batch_size if rennala else self._met_everywhere():
            self.store.set(self.stop_key, "done")  # later reports are not counted; an early upload still is
            self.stopped = True
        return order

    def done(self) -> bool:
        """:raises RuntimeError: when the round has not ended within the backend's timeout (a dead rank)."""
        if time.perf_counter() > self.deadline:
            raise RuntimeError(f"torch_distributed: a real-clock round did not end within timeout={self.owner.timeout:g} s "
                               "(a dead or stuck rank?)")
        self.stopped = self.stopped or self.store.check([self.stop_key])
        return self.stopped

    def forget(self, agent: int) -> None:
        raise RuntimeError(f"rank {self.owner.rank}: a local worker running agent {agent} was lost on the real clock; the "
                           "round cannot go on without its agents (resume from a checkpoint)")

    def combine(self, tally: Tally, error: Optional[BaseException]) -> Tally:
        """Every rank's tally in one collective; the rule counts the other ranks' agents in agent order.

        :raises BaseException: this rank's error, or another rank's (chained to a note naming the rank)."""
        if error is not None:
            self.store.set(self.stop_key, "error")  # the other ranks stop counting
        gathered: list[Any] = [None] * self.owner.world_size
        self.owner.collectives += 1
        dist.all_gather_object(gathered, (_shareable(error), tally), group=self.owner.group)
        for rank, (rank_error, _) in enumerate(gathered):
            if rank_error is not None:
                if rank == self.owner.rank and error is not None:
                    raise error
                raise rank_error from RuntimeError(f"raised on rank {rank} in a real-clock round")
        whole = Tally.merged([entry[1] for entry in gathered])
        for agent in sorted(whole.counted):
            for _ in range(0 if self.owns(agent) else len(whole.counted[agent])):
                self.rule.add(agent)
        return whole


register_backend("torch_distributed", TorchDistributedBackend)
