"""AFedPG's asynchronous server (docs/algorithms.md, "AFedPG (our inferred reading)"): one update per arriving
gradient, on the simulated clock (over :class:`~sb3_nigt.clock.events.EventEngine`) or the real one, through a
started :class:`~sb3_nigt.clock.rounds.Collector`'s public backend, timing model, work counters and units."""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from sb3_nigt.backends.contract import WorkerLost
from sb3_nigt.clock.events import EventEngine, Order
from sb3_nigt.clock.exact import ExactTime
from sb3_nigt.clock.real import WallClock, lost_work
from sb3_nigt.clock.rounds import Arrival, Collector
from sb3_nigt.clock.trace import TraceEvent
from sb3_nigt.workers.rollout import ObsNorm, UnitResult, WorkUnit


class AsyncServer:
    """Serves agents one gradient at a time, each at its own θ, through a started :class:`Collector`.

    :param collector: the collector whose backend, clock, counters and units are used (its public methods
        ``transfer``, ``compute_unit``, ``unit``, ``await_unit`` and ``next_epoch``).
    """

    def __init__(self, collector: Collector):
        self.collector = collector

    def serve(
        self,
        params: np.ndarray,
        obs_norm: Optional[ObsNorm],
        start_time: Any,
        first_index: list[int],
        on_arrival: Callable[[Arrival], tuple[Optional[tuple], bool]],
        first_version: int = 0,
        trace: Optional[list[TraceEvent]] = None,
        jobs: Optional[dict[int, dict]] = None,
    ) -> None:
        """A server that updates on every arrival (AFedPG; docs/algorithms.md), on the simulated or real clock.

        Agent i downloads θ (κ_i seconds), computes one gradient (h_i), uploads it (κ_i), each transfer with its
        own draw. Its θ travels through the backend's agent slot i (never in a message). At the server the
        arrivals are handed to ``on_arrival`` one at a time, in time order (ties by increasing agent index) on the
        simulated clock, in physical order on the real one. ``on_arrival`` returns ``(reply, stop)``: ``reply`` is
        the ``(θ, obs_norm, version)`` the server sends back to that agent for its next gradient (None if the
        update did not happen), and ``stop`` ends serving.

        :param params: θ that agents without work in flight download at ``start_time`` (float32, ``(d,)``).
        :param obs_norm: the observation-normalization statistics that go with it, or None.
        :param start_time: clock time at the start (seconds).
        :param first_index: for each agent, the index of its next gradient (job seeds use (seed, 0, agent, index)).
        :param on_arrival: the server's update, called with each :class:`Arrival` (its ``gradient`` and ``version``
            set).
        :param first_version: the server's update counter k at the start (θ_k, the trace's ``round``).
        :param trace: a list to append the events to, or None.
        :param jobs: simulated clock: each agent's work in flight, kept between calls (and saved with the model),
            so that serving resumes exactly where it stopped; updated in place.
        """
        self.collector.next_epoch()
        events = trace if trace is not None else []
        if self.collector.clock == "simulated":
            self._serve_simulated(params, obs_norm, ExactTime.of(start_time), first_index, on_arrival, first_version, events,
                                  {} if jobs is None else jobs)
        else:
            self._serve_real(params, obs_norm, float(start_time), first_index, on_arrival, first_version, events)
        self.collector.next_epoch()

    def _send_job(self, agent: int, index: int, theta: np.ndarray, norm: Optional[ObsNorm], **emulation: Any) -> None:
        """Publish θ to agent ``agent``'s slot and submit its gradient ``index`` (a unit of one, round index 0)."""
        self.collector.backend.publish(theta, norm, slot=agent)
        self.collector.backend.submit(self.collector.unit(0, agent, index, 1, slot=agent, **emulation))

    def _serve_simulated(self, params, obs_norm, start: ExactTime, first_index, on_arrival, version: int, trace, jobs) -> None:
        """Arrivals in exact time: each job's download (κ_i), gradient (h_i) and upload (κ_i) on the event engine;
        an arrival's :attr:`~sb3_nigt.clock.events.Order.FINISH` event is its time at the server."""
        collector = self.collector
        results: dict[tuple[int, int], UnitResult] = {}

        def uploaded(agent: int, index: int, finish: ExactTime) -> None:
            job = jobs[agent]
            job["finish"] = finish
            job["arrival"] = finish + collector.transfer(agent, finish)
            engine.push(job["arrival"], Order.FINISH, agent, index)

        engine = EventEngine(collector.timing, collector.compute_unit, lambda a, i: collector.await_unit((a, i), results).n_steps, uploaded)
        for agent in range(collector.n_agents):
            if agent not in jobs:
                jobs[agent] = new_job(agent, first_index[agent], start, params, obs_norm, version)
        for agent in sorted(jobs):
            self._launch(engine, jobs[agent])
        while True:
            event = engine.next_event()
            assert event is not None  # every agent has a job in flight
            at, agent, index = event.time, event.agent, event.gradient
            job = jobs.pop(agent)
            k = job["version"]
            trace.append(TraceEvent(k, agent, "broadcast", -1, job["download"], job["computing"], "sent"))
            trace.append(TraceEvent(k, agent, "compute", index, job["computing"], job["finish"], "counted"))
            trace.append(TraceEvent(k, agent, "upload", -1, job["finish"], at, "sent"))
            result = collector.await_unit((agent, index), results)
            del results[(agent, index)]
            reply, stop = on_arrival(Arrival(at, agent, index, result.trajectories[0], result.gradient, k))
            if reply is None:
                return
            jobs[agent] = new_job(agent, index + 1, at, *reply)
            if stop:
                return
            self._launch(engine, jobs[agent])

    def _launch(self, engine: EventEngine, job: dict) -> None:
        """Start (or, after a pause, restart computing) an agent's job; times already drawn are kept."""
        agent = job["agent"]
        if job["computing"] is None:
            job["computing"] = job["download"] + self.collector.transfer(agent, job["download"])
        self._send_job(agent, job["index"], job["params"], job["obs_norm"])
        if job["arrival"] is not None:
            engine.push(job["arrival"], Order.FINISH, agent, job["index"])
        else:
            job["unit"] = engine.compute(agent, job["index"], job["computing"], job["unit"])

    def _serve_real(self, params, obs_norm, base: float, first_index, on_arrival, version: int, trace) -> None:
        collector = self.collector
        clock = WallClock(collector, base)
        downloaded: dict[tuple[int, int], tuple[float, int]] = {}

        def begin(agent: int, index: int, theta: np.ndarray, norm: Optional[ObsNorm], k: int, since: Optional[float] = None) -> None:
            """Send the agent its job; ``since``: its previous arrival, from which the trace times its download (the
            server's update in between is part of it, as the simulated clock has the agent download at once)."""
            at = clock.now()
            kappa = clock.transfer(agent, at)
            minimum = clock.computes(agent, at + kappa, 1)[0]
            upload = clock.transfer(agent, at + kappa)  # drawn ahead: the worker sleeps it
            self._send_job(agent, index, theta, norm, delay=kappa, min_duration=minimum, per_step=clock.timing.per_step,
                           upload_delay=upload)
            downloaded[(agent, index)] = (at if since is None else min(since, at), k)

        for agent in range(collector.n_agents):  # the simulated clock has every agent download at the start
            begin(agent, first_index[agent], params, obs_norm, version, since=base)
        while True:
            for event in collector.backend.wait(timeout=1.0):
                if isinstance(event, WorkerLost):
                    for unit in lost_work(collector, event).units:  # the agent's slot still holds its θ
                        collector.backend.submit(unit)
                    continue
                if not isinstance(event, UnitResult) or event.unit.epoch != collector.epoch:
                    continue
                at = clock.now()
                unit = event.unit
                key = (unit.agent, unit.first)
                if key not in downloaded:  # a stale result
                    continue
                download, k = downloaded.pop(key)
                trace.extend(measured_job(k, unit, download, at, event.seconds))
                reply, stop = on_arrival(Arrival(ExactTime.of(at), unit.agent, unit.first, event.trajectories[0], event.gradient, k))
                if stop or reply is None:
                    return
                theta, norm, new_version = reply
                begin(unit.agent, unit.first + 1, theta, norm, new_version, since=at)


def measured_job(version: int, unit: WorkUnit, download: float, at: float, seconds: float) -> list[TraceEvent]:
    """The trace of one real-clock AFedPG job, sent at ``download`` and back at ``at`` (seconds on the clock), that
    took ``seconds`` on its worker (emulated sleeps included). Measured: the gradient (the worker's time less its
    emulated transfers); the upload is the emulated κ_i its worker slept (no clock observes it apart); the
    broadcast is the rest of the round trip (θ's travel and the result's way back, emulated download included), so
    the three add up to ``at - download``."""
    computed = max(0.0, seconds - unit.delay - unit.upload_delay)
    sent = max(download, at - unit.upload_delay - computed)
    return [TraceEvent(version, unit.agent, "broadcast", -1, download, sent, "sent", sent - download),
            TraceEvent(version, unit.agent, "compute", unit.first, sent, at - unit.upload_delay, "counted", computed),
            TraceEvent(version, unit.agent, "upload", -1, at - unit.upload_delay, at, "sent", unit.upload_delay)]


def new_job(agent: int, index: int, download: ExactTime, params: np.ndarray, obs_norm: Optional[ObsNorm], version: int) -> dict:
    """An AFedPG agent's job: it downloads θ_version at ``download`` and computes gradient ``index`` (times drawn when
    it is launched, kept when serving pauses)."""
    return {"agent": agent, "index": index, "download": download, "params": np.asarray(params, dtype=np.float32),
            "obs_norm": obs_norm, "version": version, "computing": None, "unit": None, "finish": None, "arrival": None}
