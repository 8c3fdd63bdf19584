"""The clock's event trace: where every agent's time goes, round by round (docs/time.md, "Event trace").

With ``record_trace=True`` an algorithm appends one :class:`TraceEvent` per broadcast, gradient and upload to
``model.trace``, on both clocks. :mod:`sb3_nigt.timeline` writes it as a tidy CSV and draws it as a timeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from sb3_nigt.clock.exact import ExactTime

#: The kinds of event.
KINDS = ("broadcast", "compute", "upload")
#: Statuses: a gradient is ``"counted"`` (used in the aggregate) or ``"abandoned"`` (in flight when the round
#: ended; its ``end`` is when it was abandoned); a transfer is ``"sent"``; an agent that is down (an outage) has
#: ``"down"`` events.
STATUSES = ("counted", "abandoned", "sent", "down")

#: CSV columns, in order (:func:`sb3_nigt.timeline.write_trace_csv`). ``measured`` is empty where nothing was
#: measured (the simulated clock); files written before it existed (:data:`COLUMNS_WITHOUT_MEASURED`) still read.
COLUMNS = ("algorithm", "round", "agent", "kind", "index", "start", "end", "status", "measured")
#: The columns of trace files written before the ``measured`` column existed.
COLUMNS_WITHOUT_MEASURED = COLUMNS[:-1]


@dataclass(frozen=True)
class TraceEvent:
    """One interval of one agent's time, in seconds on the clock.

    :param round: the aggregation round (AFedPG: the server version θ_k the agent downloaded).
    :param agent: the agent, from 0.
    :param kind: ``"broadcast"`` (θ travels to the agent, κ_i), ``"compute"`` (one gradient, h_i) or ``"upload"``
        (the agent's vector travels to the server, κ_i).
    :param index: the agent's gradient index within the round (compute), or -1 (transfers).
    :param start: when the interval starts (seconds; exact on the simulated clock).
    :param end: when it ends (seconds).
    :param status: ``"counted"``, ``"abandoned"``, ``"sent"`` or ``"down"``.
    :param measured: real clock only: the interval's duration as measured, in wall seconds (a gradient: on its
        worker, from when it could start to its end; a transfer: as the main process observes it, see
        docs/calibration.md); None where the clock modelled it instead (the simulated clock).
    """

    round: int
    agent: int
    kind: str
    index: int
    start: Union[ExactTime, float]
    end: Union[ExactTime, float]
    status: str
    measured: Optional[float] = None

    def as_row(self, algorithm: str = "") -> tuple:
        """The CSV row (:data:`COLUMNS`), times as floats (``measured``: None when not measured)."""
        measured = None if self.measured is None else float(self.measured)
        return (algorithm, self.round, self.agent, self.kind, self.index, float(self.start), float(self.end), self.status,
                measured)
