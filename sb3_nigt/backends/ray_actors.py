"""The Ray backend (``backend="ray"``): the agents' work runs in Ray actors (docs/ray.md, docs/backends.md).

Each worker is a threaded Ray actor holding a :class:`~sb3_nigt.workers.rollout.GradientWorker`. Inside it an
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
it). ``wait`` returns a :class:`~sb3_nigt.backends.contract.WorkerLost` with the live units and runs it held; the
driver forgets what it had sent, keeps the handle, and sends nothing more until the restarted incarnation
answers a poll. An actor Ray reports dead for good (its restarts exhausted), or whose restart does not answer
within ``start_timeout``, is replaced by a new actor.

Ray is imported only by this module, so importing sb3_nigt never imports ray.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import threading
import time
import uuid
from collections import deque
from typing import Any, Optional

import numpy as np
import torch as th

from sb3_nigt.backends.contract import Event, WorkerError
from sb3_nigt.backends.remote import RemoteDriver, RemoteWorker, bounded
from sb3_nigt.workers.loop import serve
from sb3_nigt.workers.messages import Theta
from sb3_nigt.workers.rollout import GradientWorker

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


#: The logger of Ray's token-authentication set-up (Ray >= 2.5x), and the start of its notice that token
#: authentication was turned on: harmless for a runtime of ours that listens on 127.0.0.1 only, and printed on
#: every run. Its notice that authentication is *disabled* is left alone.
_RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_RAY_AUTH_ENABLED_NOTICE = "Token authentication is enabled for this Ray cluster"


def _drop_auth_enabled_notice(record: logging.LogRecord) -> bool:
    """A logging filter: False (drop) for Ray's "token authentication is enabled" notice only."""
    return not record.getMessage().startswith(_RAY_AUTH_ENABLED_NOTICE)


def _init_on_loopback(ray: Any, kwargs: dict[str, Any]) -> None:
    """Start a local runtime whose processes listen on 127.0.0.1 only.

    On Linux Ray 2.x turns ``_node_ip_address="127.0.0.1"`` into the host's routable address (and its processes
    listen on every interface) unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` was set before ray was imported;
    the same switch (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``) is turned off for the duration of
    ``ray.init``. A ``RuntimeWarning`` says so if the node still got another address. Ray's notice that token
    authentication is enabled (the safe state, printed on every start) is dropped during this ``ray.init`` only;
    any other message of Ray's, the one for disabled authentication included, is shown.
    """
    import importlib
    import warnings

    try:
        ray_constants: Any = importlib.import_module("ray._private.ray_constants")
    except ImportError:  # pragma: no cover - a Ray without that module
        ray_constants = None
    previous = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    auth_logger = logging.getLogger(_RAY_AUTH_LOGGER)
    auth_logger.addFilter(_drop_auth_enabled_notice)
    try:
        if previous is not None:
            ray_constants.ENABLE_RAY_CLUSTER = False
        ray.init(address="local", **kwargs)  # a new runtime: neither RAY_ADDRESS nor a running cluster is joined
    finally:
        auth_logger.removeFilter(_drop_auth_enabled_notice)
        if previous is not None:
            ray_constants.ENABLE_RAY_CLUSTER = previous
    addresses = {node.get("NodeManagerAddress") for node in ray.nodes()}
    if addresses != {"127.0.0.1"}:
        warnings.warn(f"backend='ray': the local Ray runtime was meant to listen on 127.0.0.1 only, but its node "
                      f"address is {sorted(map(str, addresses))}; set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before "
                      "importing ray, or start Ray yourself", RuntimeWarning, stacklevel=3)



# ------------------------------------------------------------------------------------------------ actor
class _ActorWorker:
    """The body of a worker actor: a :class:`GradientWorker` and a :class:`~sb3_nigt.workers.loop.WorkerLoop` in a thread of
    its own.

    Commands (``post``) are applied in sequence order; the messages the loop sends
    (:mod:`sb3_nigt.workers.messages`) are collected by ``poll``. Each incarnation (a first start, or a restart by
    Ray, which runs this constructor again) draws an id: posts meant for another incarnation are ignored, and every
    poll answer names the incarnation that gave it.

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
        self.outgoing: list[Any] = []
        self.exited: Optional[str] = None
        self.commands: queue.Queue = queue.Queue()
        self.early: dict[int, Any] = {}
        self.next_seq = 0
        self.thread = threading.Thread(target=self._main, name="sb3-nigt-worker", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------------- called by the main process
    def ready(self) -> int:
        """The actor's process id, once it is built."""
        return os.getpid()

    def post(self, incarnation: str, seq: int, live: int, message: Any) -> bool:
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

    def poll(self, timeout: float, incarnation: Optional[str]) -> tuple[list[Any], Optional[str], str]:
        """What the loop sent since the last poll (waits up to ``timeout`` seconds for something, unless the
        caller expects another ``incarnation``: then it answers at once), why the loop ended (None while it
        runs), and this incarnation's id."""
        with self.lock:
            if not self.outgoing and self.exited is None and incarnation == self.incarnation:
                self.lock.wait(timeout)
            out, self.outgoing = self.outgoing, []
            return out, self.exited, self.incarnation

    # ------------------------------------------------------------------------------------- the loop
    def _send(self, message: Any) -> None:
        with self.lock:
            self.outgoing.append(message)
            self.lock.notify_all()

    def _receive(self, timeout: Optional[float]) -> Any:
        try:
            return self.commands.get(timeout=timeout)
        except queue.Empty:
            return None

    def _main(self) -> None:
        import ray

        th.set_num_threads(1)  # in this thread too: OpenMP keeps the number of threads per calling thread

        def fetch(slot: int, ref: Any) -> np.ndarray:  # once per version
            return np.array(ray.get(ref), dtype=np.float32)

        reason = serve(lambda: (self.worker, fetch), self._send, self._receive, lambda: self.live, self.heartbeat)
        with self.lock:
            self.exited = reason
            self.lock.notify_all()


# ------------------------------------------------------------------------------------------- main side
class _Actor(RemoteWorker):
    """The main process's handle on one worker actor and the work it holds.

    ``incarnation`` is the id of the incarnation the work was sent to; None while the driver waits for a (re)started
    incarnation to answer a poll (commands are then kept in ``backlog``, and sent once it answers).
    """

    def __init__(self, handle: Any, poll_seconds: float) -> None:
        super().__init__()
        self.posts: deque = deque()  # refs of posts not yet seen to complete
        self.incarnation: Optional[str] = None
        self.attach(handle, poll_seconds)

    def attach(self, handle: Any, poll_seconds: float) -> None:
        """Use ``handle`` (a new actor) and wait for its first incarnation."""
        self.handle = handle
        self.ready_ref = handle.ready.remote()  # its process id once built
        self.retired: set[str] = set()  # incarnations known dead: their answers are dropped
        self.restart(poll_seconds)

    def restart(self, poll_seconds: float) -> None:
        """Forget what was sent to the current incarnation and wait for the next one (same handle)."""
        if self.incarnation is not None:
            self.retired.add(self.incarnation)
        self.incarnation = None
        self.seq = 0
        self.backlog: list[Any] = []  # commands posted once the incarnation is known
        self.posts = deque()
        self.since = time.monotonic()  # when the driver began to wait for an incarnation
        self.heard = time.monotonic()
        self.retry_at = 0.0
        self.poll_ref: Any = self.handle.poll.remote(poll_seconds, None)  # answered at once by any incarnation


class RayBackend(RemoteDriver):
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
        self.start_timeout = float(start_timeout)
        super().__init__(prefetch)

    NAME, PLURAL, SHORT = "Ray worker actor", "Ray worker actors", "actor"

    #: What a pickled backend leaves out: actors, refs, and what ``bind`` and ``start`` set up again.
    _RUNTIME = RemoteDriver._RUNTIME + ("owns_runtime", "actor_class", "restarts", "replacements")

    def _reset_runtime(self) -> None:
        super()._reset_runtime()
        self.workers: list[_Actor] = []
        self.owns_runtime = False
        self.actor_class: Any = None
        self.restarts = 0  # incarnations Ray restarted under a handle, adopted since start()
        self.replacements = 0  # new actors created for ones Ray reported dead for good (or that never answered)

    @property
    def actors(self) -> list[_Actor]:
        """The worker actors' handles (the driver's ``workers``)."""
        return self.workers

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
            self.n_params = self._count_params()
            self.workers = [_Actor(self._new_handle(), self.POLL_SECONDS) for _ in range(self.n_workers)]
            self._await_incarnations(ray)
            self.restarts = self.replacements = 0
        except BaseException:
            self.close()
            raise

    def _await_incarnations(self, ray: Any) -> None:
        """Wait for every actor to be built and to name its incarnation.

        :raises WorkerError: when they are not all running within ``start_timeout``, or one could not be built.
        """
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

    # ------------------------------------------------------------------------------------ transport
    def _post(self, actor: _Actor, message: Any) -> None:
        """Post a small command (θ travels as an ObjectRef inside it, never as a vector) to the actor's current
        incarnation; kept in its backlog while the driver waits for a (re)started incarnation."""
        if actor.incarnation is None:
            actor.backlog.append(message)
            return
        self._track(actor, actor.handle.post.remote(actor.incarnation, actor.seq, self.live, message))
        actor.seq += 1

    def _adopt(self, actor: _Actor, incarnation: str) -> None:
        """The actor's incarnation answered: send it the commands kept meanwhile."""
        actor.incarnation, actor.heard = incarnation, time.monotonic()
        if actor.retired:  # a restarted incarnation: its process id
            actor.ready_ref = actor.handle.ready.remote()
        backlog, actor.backlog = actor.backlog, []
        for message in backlog:
            self._post(actor, message)

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

    def _store(self, slot: int, params: np.ndarray) -> np.ndarray:
        return params  # put in the object store when work first needs it (:meth:`_theta`)

    def _theta(self, slot: int) -> Theta:
        """θ of the slot as an ObjectRef; θ is put in the object store once per publish."""
        theta = self.published[slot]
        if isinstance(theta.handle, np.ndarray):
            import ray

            theta = self.published[slot] = dataclasses.replace(theta, handle=ray.put(theta.handle))
        return theta

    def _announce(self, epoch: int) -> None:
        for actor in self.actors:
            self._track(actor, actor.handle.cancel.remote(epoch))  # running work is abandoned at once

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

    def _stop(self, index: int, reason: Optional[str]) -> str:
        return reason or "actor died"

    def _abandon(self, index: int) -> None:
        self._kill(self.actors[index])

    def _renew(self, index: int, action: str) -> None:
        """``action``: "none" (Ray restarts it by itself), "restart" (``ray.kill(no_restart=False)``: Ray restarts
        it), "replace" (a new actor); the driver then waits for the next incarnation."""
        actor = self.actors[index]
        if action == "replace":
            self._replace(actor)
            return
        if action == "restart":
            self._kill(actor, restart=True)
        actor.restart(self.POLL_SECONDS)

    def _overdue(self, worker: Any, now: float) -> Optional[tuple[str, str]]:
        """Also lost: an actor whose (re)started incarnation has not answered within ``start_timeout``."""
        if worker.incarnation is None:
            if now - worker.since > self.start_timeout:
                return f"not running after {self.start_timeout:g} s", "replace"
            return None
        return super()._overdue(worker, now)

    # ----------------------------------------------------------------------------------------- polls
    def _poll(self, step: float, deadline: Optional[float]) -> list[Event]:
        """Wait on every actor's outstanding poll with ``ray.wait``; handle the answered ones."""
        import ray

        step = bounded(self._retry_polls(step), deadline)
        refs = {actor.poll_ref: i for i, actor in enumerate(self.actors) if actor.poll_ref is not None}
        if not refs:
            time.sleep(step)
            return []
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=step)
        if ready:
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        events: list[Event] = []
        for ref in ready:
            events.extend(self._receive(refs[ref]))
        return events

    def _retry_polls(self, step: float) -> float:
        """Poll again the restarting actors whose poll failed, 0.1 s later; ``step`` cut to the next such retry."""
        now = time.monotonic()
        for actor in self.actors:
            if actor.poll_ref is None:
                if now >= actor.retry_at:
                    actor.poll_ref = actor.handle.poll.remote(self.POLL_SECONDS, None)
                else:
                    step = min(step, actor.retry_at - now)
        return step

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

    def _settle(self, index: int, incarnation: str, messages: list[Any],
                exited: Optional[str]) -> tuple[list[Event], list[Any], Optional[str]]:
        """Check which incarnation answered: (events, the messages to handle, why its loop ended)."""
        actor = self.actors[index]
        if incarnation in actor.retired:  # an answer of an incarnation already counted as lost
            return [], [], None
        if actor.incarnation is None:  # the first answer of a (re)started incarnation: it holds nothing of ours
            if actor.retired:
                self.restarts += 1
            self._adopt(actor, incarnation)
            return [], [], exited
        if incarnation != actor.incarnation:  # Ray restarted it before its poll failed: what it held is lost
            events: list[Event] = [self._lose(index, "actor died (restarted by Ray, a new incarnation answered)")]
            self.restarts += 1
            self._adopt(actor, incarnation)
            return events, [], None
        return [], messages, exited

    def _repoll(self, actor: _Actor) -> None:
        actor.poll_ref = actor.handle.poll.remote(self.POLL_SECONDS, actor.incarnation)

    def _receive(self, index: int) -> list[Event]:
        """Handle actor ``index``'s answered poll and poll it again."""
        import ray

        actor = self.actors[index]
        try:
            answer = ray.get(actor.poll_ref)
        except ray.exceptions.RayActorError as exc:  # ActorDiedError, ActorUnavailableError
            return self._failed(index, f"actor died ({type(exc).__name__}: {_first_line(exc)})")
        except ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None
        except ray.exceptions.RayError as exc:  # the node or the object store failed
            return self._failed(index, f"actor lost ({type(exc).__name__}: {_first_line(exc)})")
        messages, exited, incarnation = answer
        events, messages, exited = self._settle(index, incarnation, messages, exited)
        try:
            events.extend(self._handle(index, messages))
        except BaseException:
            self._repoll(actor)
            raise
        if exited is not None:
            return events + [self._lose(index, f"its worker loop ended ({exited})", "restart")]
        self._repoll(actor)
        return events

    def close(self) -> None:
        """Kill every actor, and shut Ray down if this backend started it. Safe twice and after a failure."""
        actors, self.workers = self.workers, []
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
