"""The clock's event trace: where every agent's time goes, round by round (docs/time.md, "Event trace").

With ``record_trace=True`` an algorithm appends one :class:`TraceEvent` per broadcast, gradient and upload to
``model.trace``, on both clocks. :mod:`sb3_nigt.timeline` writes it as a tidy CSV and draws it as a timeline;
:func:`read_trace_csv` reads such a CSV back, checking every row (:func:`as_event`), for the timeline and for
:class:`~sb3_nigt.clock.calibration.TraceTimes` alike.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

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


#: One event: a :class:`TraceEvent`, or a mapping with the keys of :data:`COLUMNS` (``"algorithm"`` optional), such
#: as a row of :func:`read_trace_csv`.
EventLike = Union[TraceEvent, Mapping[str, Any]]


def _time(value: ExactTime | float | str, what: str) -> float:
    """A time as a finite float (seconds).

    :param value: an :class:`ExactTime`, a number or its text.
    :param what: the field name, for the error message.
    :return: the time in seconds.
    :raises ValueError: when the value is not a finite number.
    """
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"trace: {what} must be a time in seconds, got {value!r}") from None
    if not math.isfinite(seconds):
        raise ValueError(f"trace: {what} must be finite, got {value!r}")
    return seconds


def _integer(value: Any, what: str) -> int:
    """An integer field (round, agent, index), also from its text.

    :param value: an int or its text.
    :param what: the field name, for the error message.
    :return: the integer.
    :raises ValueError: when the value is not an integer.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"trace: {what} must be an integer, got {value!r}") from None


def _measured(value: Any) -> float | None:
    """The ``measured`` field: None (or empty text) when nothing was measured, else a finite float >= 0 (seconds).

    :raises ValueError: for text that is not a number, a negative or a non-finite duration.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    seconds = _time(value, "measured")
    if seconds < 0:
        raise ValueError(f"trace: measured must be a duration >= 0 seconds, got {value!r}")
    return seconds


def as_event(event: EventLike) -> TraceEvent:
    """One event as a :class:`TraceEvent` with float times (seconds), checked.

    :param event: a :class:`TraceEvent` (times floats or :class:`ExactTime`) or a mapping with the keys
        ``round, agent, kind, index, start, end, status`` and optionally ``measured`` (values may be text, as in a
        CSV row; an empty or missing ``measured`` is None).
    :return: the event, times as floats.
    :raises ValueError: for a missing field, an unknown kind or status, a non-finite time, ``end < start`` or a
        negative measured duration.
    :raises TypeError: when ``event`` is neither a :class:`TraceEvent` nor a mapping.
    """
    if isinstance(event, TraceEvent):
        fields = {name: getattr(event, name) for name in COLUMNS[1:]}
    elif isinstance(event, Mapping):
        missing = [name for name in COLUMNS_WITHOUT_MEASURED[1:] if name not in event]
        if missing:
            raise ValueError(f"trace: event {dict(event)!r} lacks {missing}")
        fields = {name: event.get(name) for name in COLUMNS[1:]}
    else:
        raise TypeError(f"trace: an event must be a TraceEvent or a mapping, got {type(event).__name__}")
    kind, status = str(fields["kind"]), str(fields["status"])
    if kind not in KINDS:
        raise ValueError(f"trace: kind must be one of {KINDS}, got {kind!r}")
    if status not in STATUSES:
        raise ValueError(f"trace: status must be one of {STATUSES}, got {status!r}")
    start, end = _time(fields["start"], "start"), _time(fields["end"], "end")
    if end < start:
        raise ValueError(f"trace: an event ends ({end!r} s) before it starts ({start!r} s): {event!r}")
    return TraceEvent(
        round=_integer(fields["round"], "round"),
        agent=_integer(fields["agent"], "agent"),
        kind=kind,
        index=_integer(fields["index"], "index"),
        start=start,
        end=end,
        status=status,
        measured=_measured(fields["measured"]),
    )


def read_trace_csv(path: Union[str, "os.PathLike[str]"]) -> list[dict[str, Any]]:
    """Read a CSV written by :func:`write_trace_csv` (also one written before the ``measured`` column existed, whose
    rows then read as unmeasured).

    :param path: the CSV file.
    :return: one dict per row with the keys of :data:`COLUMNS`: ``round``, ``agent`` and ``index`` as int,
        ``start`` and ``end`` as float (seconds), ``algorithm``, ``kind`` and ``status`` as str, ``measured`` as float
        (seconds) or None.
    :raises ValueError: when the header is neither :data:`COLUMNS` nor
        :data:`~sb3_nigt.clock.trace.COLUMNS_WITHOUT_MEASURED`, or a row is invalid (the line number is given).
    :raises FileNotFoundError: when the file does not exist.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(header) not in (COLUMNS, COLUMNS_WITHOUT_MEASURED):
            raise ValueError(f"{path}: expected the header {','.join(COLUMNS)}, got {header!r}")
        columns = tuple(header)
        records = []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(columns):
                raise ValueError(f"{path}, line {line}: expected {len(columns)} fields, got {len(row)}")
            try:
                event = as_event(dict(zip(columns, row)))
            except ValueError as error:
                raise ValueError(f"{path}, line {line}: {error}") from None
            records.append(
                {
                    "algorithm": row[0],
                    "round": event.round,
                    "agent": event.agent,
                    "kind": event.kind,
                    "index": event.index,
                    "start": float(event.start),
                    "end": float(event.end),
                    "status": event.status,
                    "measured": event.measured,
                }
            )
    return records
