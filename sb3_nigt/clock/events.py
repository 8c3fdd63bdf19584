"""The simulated clock's discrete-event engine (docs/time.md): typed events in exact time, shared by the round
planner of Rennala, Malenia and Synchronized NIGT (:mod:`sb3_nigt.clock.planner`) and by AFedPG's per-arrival
server (:mod:`sb3_nigt.algorithms.afedpg_server`).

Events are played in increasing time; at equal times in increasing :class:`Order`, then agent index, then
gradient index. A gradient's compute time is h_i (per gradient), h_i·H (``"horizon"``) or h_i·T (``"step"``,
T = the sampled trajectory's length): with per-step times the engine first schedules a lower bound (one step,
:attr:`Order.BOUND`) and settles the finish when that event comes up, by asking for the trajectory's length.
"""

from __future__ import annotations

import heapq
from enum import IntEnum
from typing import Callable, NamedTuple, Optional

from sb3_nigt.clock.exact import ExactTime
from sb3_nigt.clock.timing import TimingModel


class Order(IntEnum):
    """What an event is, and its rank among events at the same time (lower first)."""

    DOWN = -1  #: an outage starts (felt before anything else at that time)
    START = 0  #: θ has reached the agent: it starts computing
    BOUND = 1  #: a gradient's finish while its duration is a lower bound (per-step times: not yet sampled)
    FINISH = 2  #: a gradient's known finish (AFedPG: its arrival at the server)


class Event(NamedTuple):
    """One event on the simulated clock: at ``time`` (seconds, exact), about ``agent``'s gradient number
    ``gradient`` (its index; -1: none, for a broadcast or an outage between gradients)."""

    time: ExactTime
    order: Order
    agent: int
    gradient: int = -1


class EventEngine:
    """A priority queue of :class:`Event`, plus each gradient's compute time h_i.

    :param timing: the agents' compute and communication times (``duration`` and ``per_step`` are read).
    :param draw: ``draw(agent, start)``, h_i of the agent's next gradient starting at ``start`` (advances its work
        counter).
    :param steps: ``steps(agent, index)``, environment steps of the agent's gradient ``index`` (per-step times only;
        may wait for the gradient to be computed).
    :param finished: ``finished(agent, index, finish)``, called once a gradient's finish time is known (the caller
        then pushes what follows: a :attr:`Order.FINISH`, or a :attr:`Order.DOWN` when an outage cuts it).
    """

    def __init__(self, timing: TimingModel, draw: Callable[[int, ExactTime], ExactTime], steps: Callable[[int, int], int],
                 finished: Callable[[int, int, ExactTime], None]):
        self.timing = timing
        self._draw = draw
        self._steps = steps
        self._finished = finished
        self.queue: list[Event] = []
        self.started: dict[tuple[int, int], ExactTime] = {}  # (agent, index) → when its computation started
        self._units: dict[tuple[int, int], ExactTime] = {}  # per-step times: (agent, index) → h_i, until settled

    def push(self, time: ExactTime, order: Order, agent: int, index: int = -1) -> None:
        heapq.heappush(self.queue, Event(time, order, agent, index))

    def compute(self, agent: int, index: int, at: ExactTime, unit: Optional[ExactTime] = None) -> ExactTime:
        """``agent`` starts computing its gradient ``index`` at ``at``; returns h_i (``unit``, else a new draw).

        With durations known in advance ``finished`` is called at once; with per-step times a lower bound (one
        step) is queued, settled by :meth:`next_event`."""
        unit = self._draw(agent, at) if unit is None else unit
        self.started[(agent, index)] = at
        if self.timing.per_step:
            self._units[(agent, index)] = unit
            self.push(at + self.timing.duration(unit, 1), Order.BOUND, agent, index)
        else:
            self._finished(agent, index, at + self.timing.duration(unit))
        return unit

    def next_event(self) -> Optional[Event]:
        """The next :attr:`Order.DOWN`, :attr:`Order.START` or :attr:`Order.FINISH` event, or None when the queue is
        empty. :attr:`Order.BOUND` events met on the way are settled: the trajectory's length sets the finish."""
        while self.queue:
            event = heapq.heappop(self.queue)
            if event.order != Order.BOUND:
                return event
            key = (event.agent, event.gradient)
            finish = self.started[key] + self.timing.duration(self._units.pop(key), self._steps(*key))
            self._finished(event.agent, event.gradient, finish)
        return None
