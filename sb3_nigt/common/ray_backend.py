"""The Ray backend (``backend="ray"``): the agents' work runs in Ray actors (docs/ray.md, docs/backends.md).

Each worker is a threaded Ray actor holding a :class:`~sb3_nigt.common.estimator.GradientWorker`. Inside it an
event loop (one Python thread, one torch thread) does what a subprocess worker does: it computes units, runs
agents on the real clock with their emulated times, sends each finished trajectory as a small report and a
flushed run's sum once. The main process talks to it with two actor methods: ``post`` (a small command, with a
sequence number, since a threaded actor does not keep the order of calls) and ``poll`` (a long poll returning
what the loop sent); it waits on every actor's outstanding poll with ``ray.wait``. θ is ``ray.put`` at most once
per ``publish``: the work carries the ObjectRef, and an actor fetches it only when it needs a version it has
not loaded.

Actors are created with Ray's own restarts (``max_restarts``, default -1: unbounded) and ``max_task_retries=0``,
so a call in flight at a death fails instead of being run again. Every incarnation of an actor draws an id
(``uuid4``) in its constructor; each post carries the incarnation it is meant for (another incarnation ignores
it) and each poll answer carries the incarnation that gave it. A worker is lost when its poll fails
(``RayActorError``: ``ActorDiedError``, ``ActorUnavailableError``), when a poll is answered by another
incarnation than the one the work was sent to, when its loop ended after an error, or when a busy worker shows
no progress for ``worker_timeout`` seconds (it is then killed with ``no_restart=False``, so that Ray restarts
it). ``wait`` returns a :class:`~sb3_nigt.common.backends.WorkerLost` with the live units and runs it held; the
driver forgets what it had sent, keeps the handle, and sends nothing more until the restarted incarnation
answers a poll. An actor Ray reports dead for good (its restarts exhausted), or whose restart does not answer
within ``start_timeout``, is replaced by a new actor.

Ray is imported only by this module, so importing sb3_nigt never imports ray.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
import traceback
import uuid
from collections import deque
from typing import Any, Optional

import numpy as np
import torch as th

from sb3_nigt.common.backends import (
    AgentReport,
    AgentRun,
    BackendOptions,
    Event,
    WorkerError,
    WorkerLoop,
    WorkerLost,
    _check_slot,
    _picklable,
)
from sb3_nigt.common.estimator import GradientWorker, ObsNorm, UnitResult, WorkUnit

INSTALL_HINT = 'the Ray backend needs ray: pip install "sb3-nigt[ray]"'


def _import_ray() -> Any:
    """The ``ray`` module.

    :raises ImportError: naming ``pip install "sb3-nigt[ray]"`` when ray is not installed.
    """
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is installed where this is tested
        raise ImportError(f"backend='ray': {INSTALL_HINT}") from exc
    return ray


def _init_on_loopback(ray: Any, kwargs: dict[str, Any]) -> None:
    """Start a local runtime whose processes listen on 127.0.0.1 only.

    On Linux Ray 2.x turns ``_node_ip_address="127.0.0.1"`` into the host's routable address (and its processes
    listen on every interface) unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` was set before ray was imported;
    the same switch (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``) is turned off for the duration of
    ``ray.init``. A ``RuntimeWarning`` says so if the node still got another address.
    """
    import importlib
    import warnings

    try:
        ray_constants: Any = importlib.import_module("ray._private.ray_constants")
    except ImportError:  # pragma: no cover - a Ray without that module
        ray_constants = None
    previous = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    try:
        if previous is not None:
            ray_constants.ENABLE_RAY_CLUSTER = False
        ray.init(address="local", **kwargs)  # a new runtime: neither RAY_ADDRESS nor a running cluster is joined
    finally:
        if previous is not None:
            ray_constants.ENABLE_RAY_CLUSTER = previous
    addresses = {node.get("NodeManagerAddress") for node in ray.nodes()}
    if addresses != {"127.0.0.1"}:
        warnings.warn(f"backend='ray': the local Ray runtime was meant to listen on 127.0.0.1 only, but its node "
                      f"address is {sorted(map(str, addresses))}; set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before "
                      "importing ray, or start Ray yourself", RuntimeWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------ actor
class _ActorWorker:
    """The body of a worker actor: a :class:`GradientWorker` and an event loop in a thread of its own.

    Commands (``post``) are applied in sequence order; what the loop sends is collected by ``poll``. Each
    incarnation (a first start, or a restart by Ray, which runs this constructor again) draws an id: posts meant
    for another incarnation are ignored, and every poll answer names the incarnation that gave it.
    Messages sent: ``("result", UnitResult)``, ``("cancelled", WorkUnit)``, ``("report", epoch, stats)``,
    ``("flushed", UnitResult)``, ``("alive",)`` (a heartbeat while busy), ``("error", exc, traceback)``.

    :param worker_args: the arguments of :class:`GradientWorker`.
    :param heartbeat: seconds between heartbeats of a busy loop; None: none.
    """

    def __init__(self, worker_args: dict[str, Any], heartbeat: Optional[float]) -> None:
        th.set_num_threads(1)
        self.incarnation = uuid.uuid4().hex
        self.heartbeat = heartbeat
        self.worker = GradientWorker(**worker_args)
        self.live = 0
        self.lock = threading.Condition()
        self.outgoing: list[tuple] = []
        self.exited: Optional[str] = None
        self.commands: queue.Queue = queue.Queue()
        self.early: dict[int, tuple] = {}
        self.next_seq = 0
        self.thread = threading.Thread(target=self._main, name="sb3-nigt-worker", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------------- called by the main process
    def ready(self) -> int:
        """The actor's process id, once it is built."""
        return os.getpid()

    def post(self, incarnation: str, seq: int, live: int, message: tuple) -> bool:
        """Deliver command number ``seq`` (applied in sequence order) and raise the live epoch to ``live``; ignored
        (False) when it was meant for another incarnation (sent before a restart the driver had not seen)."""
        if incarnation != self.incarnation:
            return False
        with self.lock:
            self.live = max(self.live, live)
            self.early[seq] = message
            while self.next_seq in self.early:
                self.commands.put(self.early.pop(self.next_seq))
                self.next_seq += 1
        return True

    def cancel(self, live: int) -> None:
        """Raise the live epoch to ``live`` at once (running work of lower epochs is abandoned)."""
        with self.lock:
            self.live = max(self.live, live)

    def poll(self, timeout: float, incarnation: Optional[str]) -> tuple[list[tuple], Optional[str], str]:
        """What the loop sent since the last poll (waits up to ``timeout`` seconds for something, unless the
        caller expects another ``incarnation``: then it answers at once), why the loop ended (None while it
        runs), and this incarnation's id."""
        with self.lock:
            if not self.outgoing and self.exited is None and incarnation == self.incarnation:
                self.lock.wait(timeout)
            out, self.outgoing = self.outgoing, []
            return out, self.exited, self.incarnation

    # ------------------------------------------------------------------------------------- the loop
    def _send(self, message: tuple) -> None:
        with self.lock:
            self.outgoing.append(message)
            self.lock.notify_all()

    def _receive(self, timeout: Optional[float]) -> Optional[tuple]:
        try:
            return self.commands.get(timeout=timeout)
        except queue.Empty:
            return None

    def _main(self) -> None:
        import ray

        th.set_num_threads(1)  # in this thread too: OpenMP keeps the number of threads per calling thread
        try:
            WorkerLoop(self.worker, self._send, self._receive, lambda: self.live,
                       lambda slot, refs: np.array(ray.get(refs[0]), dtype=np.float32),  # fetched once per version
                       self.heartbeat).run()
            reason = "closed"
        except Exception as exc:  # sent to the main process, which re-raises it
            self._send(("error", _picklable(exc), traceback.format_exc()))
            reason = f"its loop stopped: {type(exc).__name__}: {exc}"
        finally:
            self.worker.close()
        with self.lock:
            self.exited = reason
            self.lock.notify_all()


# ------------------------------------------------------------------------------------------- main side
class _Actor:
    """The main process's handle on one worker actor and the work it holds.

    ``incarnation`` is the id of the incarnation the work was sent to; None while the driver waits for a (re)started
    incarnation to answer a poll (commands are then kept in ``backlog``, and sent once it answers).
    """

    def __init__(self, handle: Any, poll_seconds: float) -> None:
        self.units: list[WorkUnit] = []
        self.runs: dict[int, AgentRun] = {}
        self.flushed: set[int] = set()
        self.posts: deque = deque()  # refs of posts not yet seen to complete
        self.attach(handle, poll_seconds)

    def attach(self, handle: Any, poll_seconds: float) -> None:
        """Use ``handle`` (a new actor) and wait for its first incarnation."""
        self.handle = handle
        self.ready_ref = handle.ready.remote()  # its process id once built
        self.retired: set[str] = set()  # incarnations known dead: their answers are dropped
        self.restart(poll_seconds)

    def restart(self, poll_seconds: float) -> None:
        """Forget what was sent to the current incarnation and wait for the next one (same handle)."""
        previous: Optional[str] = getattr(self, "incarnation", None)
        if previous is not None:
            self.retired.add(previous)
        self.incarnation: Optional[str] = None
        self.seq = 0
        self.backlog: list[tuple] = []  # payloads posted once the incarnation is known
        self.posts = deque()
        self.since = time.monotonic()  # when the driver began to wait for an incarnation
        self.heard = time.monotonic()
        self.retry_at = 0.0
        self.poll_ref: Any = self.handle.poll.remote(poll_seconds, None)  # answered at once by any incarnation

    @property
    def busy(self) -> bool:
        return bool(self.units) or bool(self.runs)

    def load(self) -> int:
        return len(self.units) + len(self.runs)

    def holds_live(self, live: int) -> bool:
        return bool(self.runs) or any(u.epoch >= live for u in self.units)

    def answered(self, unit: WorkUnit) -> None:
        try:
            self.units.remove(unit)
        except ValueError:
            pass


class RayBackend:
    """Runs the agents' work in Ray actors (``backend="ray"``, or an instance to configure it).

    Connection: if Ray is already initialised in this process the runtime is used as it is and left running at
    :meth:`close`; otherwise :meth:`start` calls ``ray.init(address=address, include_dashboard=False,
    **init_kwargs)`` (no address: a new local runtime bound to 127.0.0.1) and :meth:`close` shuts it down.

    :param address: the cluster to join (``"auto"``: ``RAY_ADDRESS`` or the cluster started on this machine
        with ``ray start``; ``"ray://host:10001"``; ``"host:6379"``); None: the runtime already initialised in
        this process, else a new local one listening on 127.0.0.1 only.
    :param actor_options: options of every worker actor (``.options(**actor_options)``, e.g. ``num_cpus``,
        ``num_gpus``, ``resources``, ``runtime_env``, ``scheduling_strategy``); default ``num_cpus`` is
        min(1, the cluster's CPUs / n_workers), so that every worker fits. ``max_concurrency`` is at least 4;
        ``max_restarts`` defaults to -1 (Ray restarts a lost actor under the same handle, without bound; when its
        restarts are exhausted the backend creates a new actor) and ``max_task_retries`` is 0 (a call in flight at
        a death fails, so that the lost work is known exactly).
    :param init_kwargs: extra keyword arguments of ``ray.init`` when this backend starts the runtime (e.g.
        ``num_cpus``, ``runtime_env``, ``namespace``).
    :param prefetch: units queued per actor (>= 1).
    :param start_timeout: seconds to wait for the actors to be built and scheduled at :meth:`start` (and for a
        restarted or new actor to answer before it counts as lost), e.g. when the cluster lacks the resources
        asked for.
    :raises ValueError: for ``prefetch`` < 1, ``start_timeout`` <= 0, options that are not a dict, a nonzero
        ``max_task_retries`` or a ``max_restarts`` below -1 in ``actor_options``.
    """

    #: Seconds a poll waits in the actor for something to say.
    POLL_SECONDS = 0.5

    def __init__(self, address: Optional[str] = None, actor_options: Optional[dict[str, Any]] = None,
                 init_kwargs: Optional[dict[str, Any]] = None, prefetch: int = 2, start_timeout: float = 120.0) -> None:
        if actor_options is not None and not isinstance(actor_options, dict):
            raise ValueError(f"actor_options: expected a dict of Ray actor options, got {actor_options!r}")
        value = (actor_options or {}).get("max_task_retries", 0)
        if value != 0:
            raise ValueError("actor_options: max_task_retries must be 0 or absent: a call retried on a restarted actor "
                             f"would count its work twice (lost work is resubmitted by the collector), got {value!r}")
        value = (actor_options or {}).get("max_restarts", -1)
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise ValueError(f"actor_options: max_restarts must be an int >= -1 (-1: unbounded), got {value!r}")
        if init_kwargs is not None and not isinstance(init_kwargs, dict):
            raise ValueError(f"init_kwargs: expected a dict of ray.init keyword arguments, got {init_kwargs!r}")
        if not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch: expected an int >= 1, got {prefetch!r}")
        if not start_timeout > 0:
            raise ValueError(f"start_timeout: expected seconds > 0, got {start_timeout!r}")
        self.address = address
        self.actor_options = dict(actor_options or {})
        self.init_kwargs = dict(init_kwargs or {})
        self.prefetch = prefetch
        self.start_timeout = float(start_timeout)
        self.worker_args: dict[str, Any] = {}
        self.options = BackendOptions()
        self.n_workers = 1
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self.actors: list[_Actor] = []
        self.queue: deque[WorkUnit] = deque()
        self.live = 0
        self.published: dict[int, list[Any]] = {}  # slot -> [version, θ float32 (d,), obs_norm, ObjectRef | None]
        self.n_params = 0
        self.failures = 0
        self.broken: Optional[str] = None
        self.owns_runtime = False
        self.actor_class: Any = None
        self.restarts = 0  # incarnations Ray restarted under a handle, adopted since start()
        self.replacements = 0  # new actors created for ones Ray reported dead for good (or that never answered)

    #: What a pickled backend leaves out: actors, refs, and what ``bind`` and ``start`` set up again.
    _RUNTIME = ("worker_args", "actors", "queue", "live", "published", "n_params", "failures", "broken",
                "owns_runtime", "actor_class", "restarts", "replacements")

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key not in self._RUNTIME}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.worker_args = {}
        self._reset_runtime()

    def bind(self, worker_args: dict[str, Any], options: BackendOptions) -> None:
        """Remember what the actors are built from; starts nothing."""
        self.worker_args = worker_args
        self.options = options
        self.n_workers = int(options.n_workers or os.cpu_count() or 1)

    # -------------------------------------------------------------------------------------- actors
    def _connect(self) -> Any:
        ray = _import_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(include_dashboard=False)
            if self.address is None:
                kwargs["_node_ip_address"] = "127.0.0.1"
            kwargs.update(self.init_kwargs)
            if self.address is None and kwargs.get("_node_ip_address") == "127.0.0.1":
                _init_on_loopback(ray, kwargs)
            else:  # "local": a new runtime, where Ray's default would join RAY_ADDRESS or a running cluster
                ray.init(address="local" if self.address is None else self.address, **kwargs)
            self.owns_runtime = True
        return ray

    def _heartbeat(self) -> Optional[float]:
        timeout = self.options.worker_timeout
        return None if timeout is None else min(1.0, timeout / 4)

    def _actor_options(self, ray: Any) -> dict[str, Any]:
        options = dict(self.actor_options)
        if "num_cpus" not in options:
            cpus = float(ray.cluster_resources().get("CPU", 1.0))
            options["num_cpus"] = max(0.0, min(1.0, math.floor(cpus / self.n_workers * 1e4) / 1e4))
        # Ray sets OMP_NUM_THREADS to the actor's CPUs (1), which changes how many threads numpy's BLAS uses in the
        # rollouts' forward passes, and so the last bits of large layers: the actors get this process's setting.
        runtime_env = dict(options.get("runtime_env") or {})
        env_vars = dict(runtime_env.get("env_vars") or {})
        for key in _BLAS_THREADS:
            if key in os.environ:
                env_vars.setdefault(key, os.environ[key])
        env_vars.setdefault("OMP_NUM_THREADS", str(_local_cpus()))
        runtime_env["env_vars"] = env_vars
        options["runtime_env"] = runtime_env
        options["max_concurrency"] = max(4, int(options.get("max_concurrency", 4)))
        options["max_restarts"] = int(options.get("max_restarts", -1))
        options["max_task_retries"] = 0
        return options

    def _new_handle(self) -> Any:
        return self.actor_class.remote(self.worker_args, self._heartbeat())

    def _spawn(self) -> _Actor:
        return _Actor(self._new_handle(), self.POLL_SECONDS)

    def start(self) -> None:
        """Connect to Ray (see the class) and start ``n_workers`` actors; returns once they are built.

        :raises ImportError: when ray is not installed.
        :raises WorkerError: when the actors cannot be built (the cause chained) or scheduled within
            ``start_timeout`` seconds.
        """
        self.close()
        ray = self._connect()
        try:
            self.actor_class = ray.remote(_ActorWorker).options(**self._actor_options(ray))
            with th.random.fork_rng(devices=[]):
                args = self.worker_args
                policy = args["policy_class"](args["observation_space"], args["action_space"], None, **args["policy_kwargs"])
            self.n_params = sum(p.numel() for p in policy.parameters())
            self.actors = [self._spawn() for _ in range(self.n_workers)]
            refs = [actor.ready_ref for actor in self.actors]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.start_timeout)
            if len(ready) < len(refs):
                raise WorkerError(
                    f"backend='ray': {len(refs) - len(ready)} of {len(refs)} actors were not running after "
                    f"{self.start_timeout:g} s: the cluster may lack the resources asked for ({self._actor_options(ray)}); "
                    "lower n_workers or actor_options['num_cpus']"
                )
            try:
                ray.get(refs)
                for index in range(len(self.actors)):  # the first polls, answered at once: the incarnations
                    ray.get(self.actors[index].poll_ref, timeout=self.start_timeout)
                    self._receive(index)
            except ray.exceptions.RayError as exc:
                raise WorkerError(f"backend='ray': a worker actor could not be built: {exc}") from exc
            self.restarts = self.replacements = 0
        except BaseException:
            self.close()
            raise

    def _started(self) -> None:
        if not self.actors:
            raise RuntimeError("the backend is not started: call start() first")

    def _send(self, actor: _Actor, message: tuple, refs: Optional[list[Any]] = None) -> None:
        """Post a small command (θ travels as an ObjectRef in ``refs``, never as a vector) to the actor's current
        incarnation; kept in its backlog while the driver waits for a (re)started incarnation."""
        payload = message if refs is None else (*message[:3], refs, *message[3:])
        if actor.incarnation is None:
            actor.backlog.append(payload)
            return
        self._track(actor, actor.handle.post.remote(actor.incarnation, actor.seq, self.live, payload))
        actor.seq += 1

    def _adopt(self, actor: _Actor, incarnation: str) -> None:
        """The actor's incarnation answered: send it the commands kept meanwhile."""
        actor.incarnation, actor.heard = incarnation, time.monotonic()
        if actor.retired:  # a restarted incarnation: its process id
            actor.ready_ref = actor.handle.ready.remote()
        backlog, actor.backlog = actor.backlog, []
        for payload in backlog:
            self._track(actor, actor.handle.post.remote(incarnation, actor.seq, self.live, payload))
            actor.seq += 1

    def _track(self, actor: _Actor, ref: Any) -> None:
        """Keep the ref of a call whose answer nobody waits for; collect the finished ones now and then."""
        actor.posts.append(ref)
        if len(actor.posts) > 64:
            self._harvest(actor)

    @staticmethod
    def _harvest(actor: _Actor) -> None:
        """Forget the posts already done (a failed one shows as the actor's loss, through its poll)."""
        import ray

        done, _ = ray.wait(list(actor.posts), num_returns=len(actor.posts), timeout=0)
        finished = set(done)
        for ref in done:
            try:
                ray.get(ref)
            except Exception:
                pass
        actor.posts = deque(ref for ref in actor.posts if ref not in finished)

    def _theta(self, slot: int) -> tuple[int, list[Any], Optional[ObsNorm]]:
        """(version, [ObjectRef of θ], obs_norm) of the slot; θ is put in the object store once per publish."""
        import ray

        entry = self.published[slot]
        if entry[3] is None:
            entry[3] = ray.put(entry[1])
        return entry[0], [entry[3]], entry[2]

    # ---------------------------------------------------------------------------------------- work
    def publish(self, params: np.ndarray, obs_norm: Optional[ObsNorm], slot: int = -1) -> None:
        """θ (float32 ``(d,)``) of ``slot``; kept here and put in the object store when work first needs it.

        :raises ValueError: for a bad slot or a vector of the wrong shape.
        """
        self._started()
        _check_slot(slot, self.options.agent_slots)
        params = np.array(params, dtype=np.float32)
        if params.shape != (self.n_params,):
            raise ValueError(f"params: expected shape ({self.n_params},), got {params.shape}")
        version = self.published[slot][0] + 1 if slot in self.published else 1
        self.published[slot] = [version, params, obs_norm, None]

    def _home(self, agent: int) -> Optional[int]:
        return agent % self.n_workers if self.options.pin_agents else None

    def submit(self, unit: WorkUnit) -> None:
        """Queue a unit. :raises ValueError: when θ was never published to its slot."""
        self._started()
        if unit.slot not in self.published:
            raise ValueError(f"submit: θ was never published to slot {unit.slot}")
        if unit.epoch >= self.live:
            self.queue.append(unit)
            self._dispatch()

    def _dispatch(self) -> None:
        waiting: deque[WorkUnit] = deque()
        while self.queue:
            unit = self.queue.popleft()
            if unit.epoch < self.live:
                continue
            home = self._home(unit.agent)
            if home is None:
                home = min(range(len(self.actors)), key=lambda w: self.actors[w].load())
            actor = self.actors[home]
            if len(actor.units) >= self.prefetch:
                waiting.append(unit)
                if not self.options.pin_agents:
                    waiting.extend(self.queue)
                    self.queue.clear()
                continue
            if not actor.busy:
                actor.heard = time.monotonic()
            actor.units.append(unit)
            version, refs, obs_norm = self._theta(unit.slot)
            self._send(actor, ("unit", unit, version, obs_norm), refs)
        self.queue = waiting

    def start_run(self, run: AgentRun) -> None:
        """Start an agent run on actor ``agent % n_workers``. :raises ValueError: when no broadcast θ was published."""
        self._started()
        if -1 not in self.published:
            raise ValueError("start_run: no broadcast θ was published")
        if run.epoch < self.live:
            return
        actor = self.actors[run.agent % self.n_workers]
        if not actor.busy:
            actor.heard = time.monotonic()
        actor.runs[run.agent] = run
        actor.flushed.discard(run.agent)
        version, refs, obs_norm = self._theta(-1)
        self._send(actor, ("run", run, version, obs_norm), refs)

    def flush(self, epoch: int, agent: int, count: int, upload_delay: float = 0.0) -> None:
        """End the agent's run (see :class:`~sb3_nigt.common.backends.Backend`); ignored if it is not live."""
        if not self.actors:
            return
        actor = self.actors[agent % self.n_workers]
        run = actor.runs.get(agent)
        if run is None or run.epoch != epoch or agent in actor.flushed or epoch < self.live:
            return
        self._send(actor, ("flush", epoch, agent, count, upload_delay))
        if count == 0:
            del actor.runs[agent]
        else:
            actor.flushed.add(agent)

    def _pending(self) -> bool:
        return any(u.epoch >= self.live for u in self.queue) or any(a.holds_live(self.live) for a in self.actors)

    def _kill(self, actor: _Actor, restart: bool = False) -> None:
        """``ray.kill`` the actor: for good, or (``restart``) so that Ray restarts it under the same handle."""
        import ray

        try:
            ray.kill(actor.handle, no_restart=not restart)
        except Exception:
            pass

    @staticmethod
    def _dead_for_good(actor: _Actor) -> bool:
        """Whether Ray's GCS reports the actor DEAD (its restarts exhausted, or killed for good)."""
        try:
            from ray._private import state

            return state.actors(actor_id=actor.handle._actor_id.hex()).get("State") == "DEAD"
        except Exception:  # pragma: no cover - a Ray without that debugging API (e.g. Ray Client): start_timeout
            return False

    def _replace(self, actor: _Actor) -> None:
        """Kill the actor for good and put a new one under it (its work, if any, waits in the backlog)."""
        self._kill(actor)
        self.replacements += 1
        actor.attach(self._new_handle(), self.POLL_SECONDS)

    def _lose(self, index: int, reason: str, action: str = "none") -> WorkerLost:
        """Actor ``index``'s incarnation is lost: its live work is returned in a :class:`WorkerLost`, the driver
        forgets what it sent it, and waits for the next incarnation under the same handle. ``action``: "none"
        (Ray restarts it by itself), "restart" (``ray.kill(no_restart=False)``: Ray restarts it), "replace" (a new
        actor).

        :raises WorkerError: after more than ``max_failures`` losses in a row.
        """
        actor = self.actors[index]
        self.failures += 1
        lost = WorkerLost(index, reason, [u for u in actor.units if u.epoch >= self.live],
                          [r for r in actor.runs.values() if r.epoch >= self.live])
        actor.units, actor.runs, actor.flushed = [], {}, set()
        if self.failures > self.options.max_failures:
            self._kill(actor)
            self.broken = (
                f"Ray worker actors failed {self.failures} times in a row (last: actor {index}, {reason}); "
                f"training stopped with θ, d_t and the clock at their last good values (max_failures="
                f"{self.options.max_failures})"
            )
            raise WorkerError(self.broken)
        if action == "replace":
            self._replace(actor)
        else:
            if action == "restart":
                self._kill(actor, restart=True)
            actor.restart(self.POLL_SECONDS)
        return lost

    def wait(self, timeout: Optional[float] = None) -> list[Event]:
        """Block until at least one event or ``timeout`` seconds; see :class:`~sb3_nigt.common.backends.Backend`.

        :raises RuntimeError: when no work of a live epoch is pending.
        :raises WorkerError: after more than ``max_failures`` actor losses in a row.
        :raises Exception: an exception raised by user code in an actor (e.g. ``ValueError`` for a NaN reward),
            re-raised as its own type.
        """
        if self.broken is not None:
            raise WorkerError(self.broken)
        self._started()
        import ray

        deadline = None if timeout is None else time.monotonic() + timeout
        self._dispatch()
        if not self._pending():
            raise RuntimeError("wait() called with no work pending: submit a unit or start a run first")
        while True:
            step = 1.0
            if self.options.worker_timeout is not None:
                step = min(step, self.options.worker_timeout / 2)
            now = time.monotonic()
            for actor in self.actors:  # a restarting actor whose poll failed: poll it again, 0.1 s later
                if actor.poll_ref is None:
                    if now >= actor.retry_at:
                        actor.poll_ref = actor.handle.poll.remote(self.POLL_SECONDS, None)
                    else:
                        step = min(step, actor.retry_at - now)
            if deadline is not None:
                step = max(0.0, min(step, deadline - time.monotonic()))
            refs = {actor.poll_ref: i for i, actor in enumerate(self.actors) if actor.poll_ref is not None}
            ready: list[Any] = []
            if refs:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=step)
                if ready:
                    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
            else:
                time.sleep(step)
            events: list[Event] = []
            for ref in ready:
                events.extend(self._receive(refs[ref]))
            now = time.monotonic()
            limit = self.options.worker_timeout
            for index, actor in enumerate(self.actors):
                if actor.incarnation is None and now - actor.since > self.start_timeout:
                    events.append(self._lose(index, f"not running after {self.start_timeout:g} s", "replace"))
                elif actor.incarnation is not None and limit is not None and actor.busy and now - actor.heard > limit:
                    events.append(self._lose(index, f"no sign of progress for {limit:g} s (hung)", "restart"))
            self._dispatch()
            if events or (deadline is not None and time.monotonic() >= deadline) or not self._pending():
                return events

    def _failed(self, index: int, reason: str) -> list[Event]:
        """Actor ``index``'s poll failed: a loss if it held an incarnation; a new actor if Ray reports it dead for
        good; else it is polled again shortly (Ray is restarting it)."""
        actor = self.actors[index]
        events: list[Event] = []
        if actor.incarnation is not None:
            events.append(self._lose(index, reason))
        if self._dead_for_good(actor):
            self._replace(actor)
        else:
            actor.poll_ref, actor.retry_at = None, time.monotonic() + 0.1
        return events

    def _receive(self, index: int) -> list[Event]:
        """Handle actor ``index``'s answered poll and poll it again."""
        import ray

        actor = self.actors[index]
        try:
            messages, exited, incarnation = ray.get(actor.poll_ref)
        except ray.exceptions.RayActorError as exc:  # ActorDiedError, ActorUnavailableError
            return self._failed(index, f"actor died ({type(exc).__name__}: {_first_line(exc)})")
        except ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None
        except ray.exceptions.RayError as exc:  # the node or the object store failed
            return self._failed(index, f"actor lost ({type(exc).__name__}: {_first_line(exc)})")
        events: list[Event] = []
        if incarnation in actor.retired:  # an answer of an incarnation already counted as lost
            messages, exited = [], None
        elif actor.incarnation is None:  # the first answer of a (re)started incarnation: it holds nothing of ours
            if actor.retired:
                self.restarts += 1
            self._adopt(actor, incarnation)
            messages = []
        elif incarnation != actor.incarnation:  # Ray restarted it before its poll failed: what it held is lost
            events.append(self._lose(index, "actor died (restarted by Ray, a new incarnation answered)"))
            self.restarts += 1
            self._adopt(actor, incarnation)
            messages, exited = [], None
        live = self.live
        for message in messages:
            actor.heard = time.monotonic()
            kind = message[0]
            if kind == "error":
                _, error, text = message
                actor.poll_ref = actor.handle.poll.remote(self.POLL_SECONDS, actor.incarnation)
                if error is not None:
                    raise error from WorkerError(f"in Ray worker actor {index}:\n{text}")
                raise WorkerError(f"Ray worker actor {index} failed:\n{text}")
            if kind == "result":
                result: UnitResult = message[1]
                actor.answered(result.unit)
                self.failures = 0
                if result.unit.epoch >= live:
                    events.append(result)
            elif kind == "flushed":
                result = message[1]
                agent = result.unit.agent
                run = actor.runs.get(agent)
                self.failures = 0
                if run is not None and run.epoch == result.unit.epoch:
                    del actor.runs[agent]
                    actor.flushed.discard(agent)
                    if run.epoch >= live:
                        events.append(result)
            elif kind == "cancelled":
                actor.answered(message[1])
            elif kind == "report":
                _, epoch, stats = message
                run = actor.runs.get(stats.agent)
                self.failures = 0
                if run is not None and run.epoch == epoch and stats.agent not in actor.flushed and epoch >= live:
                    events.append(AgentReport(epoch, stats))
        if exited is not None:
            return events + [self._lose(index, f"its worker loop ended ({exited})", "restart")]
        actor.poll_ref = actor.handle.poll.remote(self.POLL_SECONDS, actor.incarnation)
        return events

    def cancel(self, epoch: int) -> None:
        """Abandon all work of epochs below ``epoch`` (the live epoch never decreases)."""
        if epoch <= self.live:
            return
        self.live = epoch
        self.queue = deque(u for u in self.queue if u.epoch >= epoch)
        for actor in self.actors:
            actor.runs = {a: r for a, r in actor.runs.items() if r.epoch >= epoch}
            actor.flushed &= set(actor.runs)
            self._track(actor, actor.handle.cancel.remote(epoch))  # running work is abandoned at once

    def close(self) -> None:
        """Kill every actor, and shut Ray down if this backend started it. Safe twice and after a failure."""
        actors, self.actors = self.actors, []
        owns, self.owns_runtime = self.owns_runtime, False
        try:
            for actor in actors:
                self._kill(actor)
        finally:
            self.queue.clear()
            self.published = {}
            self.broken = None
            if owns:
                import ray

                ray.shutdown()


#: Environment variables that set how many threads numpy's BLAS uses.
_BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GOTO_NUM_THREADS")


def _local_cpus() -> int:
    """The CPUs this process may use (what BLAS libraries default their threads to)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
