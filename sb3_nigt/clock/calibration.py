"""Times from a real run (docs/calibration.md): a recorded trace's measured durations as the simulated clock's h_i
and κ_i.

A real-clock model with ``record_trace=True`` records, per agent, each gradient's measured wall duration and
each transfer's (:class:`~sb3_nigt.clock.trace.TraceEvent`'s ``measured``). :class:`TraceTimes` reads them back,
from ``model.trace`` or its CSV, as two time specifications of the ordinary callable form
``f(agent, start_seconds, counter) -> seconds`` (:class:`~sb3_nigt.clock.timing.TimingModel`), so every algorithm
takes them as ``compute_times=`` and ``communication_times=``. The clock reads each float as the decimal it prints
as (:class:`~sb3_nigt.clock.exact.ExactTime`), so a replay is exact and deterministic.

The sequences are laid out in the order the simulated clock draws them (its work counters,
:class:`~sb3_nigt.clock.timing.TimeCounters`): per agent, round after round, the counted gradients in index
order, then the gradient in flight when the round stopped (the simulated clock starts, then abandons, one too);
the transfers as the broadcast, then the upload of each round. A gradient still in flight at the stop takes its
measured duration where it finished before its agent was stopped (the trace's measured ``"abandoned"``
gradients); otherwise it was never measured to its end, and it takes the seconds it had run at the stop plus the
agent's median measured gradient, so that its replay is still running at the stop (that value is modelled).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from sb3_nigt.clock.trace import COLUMNS_WITHOUT_MEASURED, TraceEvent, read_trace_csv

#: ``mode`` values: the k-th recorded duration for the k-th draw (cycling), or seeded draws among them.
MODES = ("replay", "resample")
#: ``gradients`` values of :meth:`TraceTimes.from_trace`: durations measured on the workers, or the spacing of the
#: arrivals at the server.
GRADIENTS = ("worker", "arrivals")

_COMPUTE, _COMMUNICATION = 0, 1  # random streams of "resample"


def _check_durations(per_agent: Sequence[Sequence[float]], name: str, positive: bool) -> tuple[tuple[float, ...], ...]:
    """Per-agent durations as tuples of floats, checked.

    :raises ValueError: naming ``name`` for no agent, an agent without durations, or a negative (compute: zero),
        NaN, infinite or > 1e15 duration.
    """
    if len(per_agent) == 0:
        raise ValueError(f"{name}: the trace has no agent")
    checked = []
    for agent, durations in enumerate(per_agent):
        values = tuple(float(x) for x in durations)
        if not values:
            what = "gradient" if positive else "transfer"
            raise ValueError(f"{name}: agent {agent} has no recorded {what} (every agent needs at least one)")
        bad = [x for x in values if not math.isfinite(x) or x < 0 or (positive and x == 0) or x > 1e15]
        if bad:
            bound = "> 0" if positive else ">= 0"
            raise ValueError(f"{name}: agent {agent}'s durations must be finite, {bound} and at most 1e15 seconds, got {bad[0]!r}")
        checked.append(values)
    return tuple(checked)


@dataclass(frozen=True)
class RecordedTimes:
    """A time specification of the callable form, ``f(agent, start_seconds, counter) -> seconds``, from recorded
    durations: ``durations[agent][counter % len]`` (``"replay"``) or a draw among ``durations[agent]`` seeded from
    (seed, stream, agent, counter) (``"resample"``). ``start_seconds`` is not used.

    :param durations: per agent, its recorded durations in seconds (tuples of floats, the order they were drawn).
    :param pool: per agent, the durations ``"resample"`` draws among (measured ones only).
    :param mode: ``"replay"`` or ``"resample"``.
    :param seed: the seed of ``"resample"``.
    :param stream: 0 (compute) or 1 (communication), so that both kinds of draw are independent.
    :param kind: ``"compute_times"`` or ``"communication_times"``, for errors.
    :param first_round: the first recorded round (with ``starts``).
    :param starts: per recorded round (``first_round``, ``first_round + 1``, ...), per agent, the position in
        ``durations`` of the round's first draw; None: no alignment by round.
    """

    durations: tuple[tuple[float, ...], ...]
    pool: tuple[tuple[float, ...], ...]
    mode: str
    seed: int
    stream: int
    kind: str
    first_round: int = 0
    starts: Optional[tuple[tuple[int, ...], ...]] = None

    @property
    def n_agents(self) -> int:
        """The number of agents recorded."""
        return len(self.durations)

    def __call__(self, agent: int, start: float = 0.0, counter: int = 0) -> float:
        if self.mode == "replay":
            recorded = self.durations[agent]
            return recorded[counter % len(recorded)]
        pool = self.pool[agent]
        rng = np.random.default_rng([self.seed, self.stream, agent, counter])
        return pool[int(rng.integers(len(pool)))]

    def align_round(self, round_index: int, counters: list[int]) -> None:
        """Called by the simulated clock as round ``round_index`` starts (:meth:`TimingModel.begin_round
        <sb3_nigt.clock.timing.TimingModel.begin_round>`): set each agent's counter to where the recording of that
        round starts (cycling past the last recorded round), so that a round that counted one gradient more or fewer
        than the recorded one does not shift the rounds after it. Without ``starts``, or before ``first_round``,
        nothing changes."""
        if self.starts is None or round_index < self.first_round:
            return
        cycle, position = divmod(round_index - self.first_round, len(self.starts))
        for agent in range(min(len(counters), self.n_agents)):
            counters[agent] = cycle * len(self.durations[agent]) + self.starts[position][agent]

    def check_timing(self, n_agents: int, unit: str, arg: str) -> None:
        """Called by :class:`~sb3_nigt.clock.timing.TimingModel` when it parses the specification.

        :raises ValueError: starting ``arg:`` when the trace has fewer agents than ``n_agents``, or (compute) when
            ``unit`` is not ``"gradient"`` (recorded durations are seconds per gradient).
        """
        if self.n_agents < n_agents:
            raise ValueError(f"{arg}: the trace records {self.n_agents} agents, fewer than n_agents={n_agents}; "
                             f"record a run with at least {n_agents} agents")
        if self.stream == _COMPUTE and unit != "gradient":
            raise ValueError(f"{arg}: recorded times are seconds per gradient; use compute_time_unit='gradient', got {unit!r}")


class TraceTimes:
    """Compute and communication times of n agents measured in a real run, for any algorithm's
    ``compute_times=`` (:attr:`compute`) and ``communication_times=`` (:attr:`communication`).

    :param compute: per agent, its gradients' durations in seconds (> 0), in the order the simulated clock draws
        them (see the module docstring); agent i's k-th gradient takes ``compute[i][k % len]`` in ``"replay"``.
    :param communication: per agent, its transfers' durations in seconds (>= 0), broadcasts and uploads in order.
    :param mode: ``"replay"`` (agent i's k-th gradient takes its k-th recorded duration, cycling past the end; the
        same for transfers) or ``"resample"`` (each draw is one of agent i's recorded durations, seeded from
        (``seed``, compute or communication, i, k)).
    :param seed: the seed of ``"resample"`` (int >= 0).
    :param compute_pool: per agent, the durations ``"resample"`` draws gradients from (default: ``compute``);
        :meth:`from_trace` leaves out the modelled in-flight gradients.
    :param rounds: ``(first_round, compute_starts, communication_starts)``: the recorded rounds' positions in the
        sequences (per round, per agent, the index of its first draw; :meth:`from_trace` sets them for a trace of
        aggregation rounds): the simulated clock then starts each round r at its recording's position, agent i's
        k-th gradient of round r taking the k-th recorded gradient of agent i in round r. None: by counter only.
    :raises ValueError: naming the argument, for an unknown mode, a bad seed, no agent, an agent with no recorded
        gradient (or transfer), or a negative (compute: zero), non-finite or > 1e15 duration.
    """

    def __init__(self, compute: Sequence[Sequence[float]], communication: Sequence[Sequence[float]], mode: str = "replay",
                 seed: int = 0, compute_pool: Optional[Sequence[Sequence[float]]] = None,
                 rounds: Optional[tuple[int, Sequence[Sequence[int]], Sequence[Sequence[int]]]] = None):
        if mode not in MODES:
            raise ValueError(f"mode: must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: must be an int >= 0, got {seed!r}")
        durations = _check_durations(compute, "compute", positive=True)
        transfers = _check_durations(communication, "communication", positive=False)
        pool = durations if compute_pool is None else _check_durations(compute_pool, "compute_pool", positive=True)
        if not len(durations) == len(transfers) == len(pool):
            raise ValueError(f"communication: expected {len(durations)} agents, as compute, got {len(transfers)}"
                             + ("" if len(pool) == len(durations) else f" (compute_pool: {len(pool)})"))
        self.mode, self.seed = mode, int(seed)
        first, compute_starts, transfer_starts = (0, None, None) if rounds is None else (
            int(rounds[0]), _check_starts(rounds[1], durations, "compute"), _check_starts(rounds[2], transfers, "communication"))
        #: h_i: pass as ``compute_times=`` (seconds per gradient).
        self.compute = RecordedTimes(durations, pool, mode, self.seed, _COMPUTE, "compute_times", first, compute_starts)
        #: κ_i: pass as ``communication_times=`` (seconds per transfer).
        self.communication = RecordedTimes(transfers, transfers, mode, self.seed, _COMMUNICATION, "communication_times",
                                           first, transfer_starts)

    @property
    def n_agents(self) -> int:
        """The number of agents recorded."""
        return self.compute.n_agents

    def __repr__(self) -> str:
        counts = ", ".join(str(len(d)) for d in self.compute.durations)
        return f"TraceTimes({self.n_agents} agents, gradients recorded per agent: {counts}, mode={self.mode!r})"

    @classmethod
    def from_trace(cls, trace: Iterable[Any], mode: str = "replay", seed: int = 0, algorithm: Optional[str] = None,
                   gradients: str = "worker") -> "TraceTimes":
        """The times of a recorded trace (``model.trace``, or rows of :func:`sb3_nigt.timeline.read_trace_csv`).

        Durations are the events' ``measured`` seconds; where an event has none (a simulated-clock trace), its
        ``end - start``.

        :param trace: :class:`~sb3_nigt.clock.trace.TraceEvent` objects or mappings with their fields.
        :param mode: ``"replay"`` or ``"resample"``.
        :param seed: the seed of ``"resample"``.
        :param algorithm: keep only the rows of this ``algorithm`` column (a CSV holding several); None: every row.
        :param gradients: ``"worker"``: each gradient lasts what its worker measured; ``"arrivals"``: as the server
            saw it: an agent's gradient after its first of the round lasts from the arrival of the one before to its
            own (the reports' latency included, so that a replay puts every arrival where the real run had it).
        :raises ValueError: for an empty trace (or no row of ``algorithm``), an agent (0 .. the highest recorded)
            with no counted gradient, a negative or non-finite duration, or a bad ``mode``, ``seed`` or
            ``gradients``.
        """
        if gradients not in GRADIENTS:
            raise ValueError(f"gradients: must be one of {', '.join(map(repr, GRADIENTS))}, got {gradients!r}")
        events = [_event(e) for e in trace if algorithm is None or _field(e, "algorithm", "") == algorithm]
        if gradients == "arrivals":
            events = _arrival_spacing(events)
        if not events:
            raise ValueError("trace: no event" + ("" if algorithm is None else f" of algorithm {algorithm!r}"))
        n_agents = 1 + max(e.agent for e in events)
        measured = _measured_gradients(events, n_agents)
        rounds = _by_round(events)
        missing = [agent for agent in range(n_agents) if not measured[agent]]
        if missing:
            raise ValueError(
                f"trace: agents {missing} have no recorded gradient (none counted, none measured), so their compute "
                f"times are unknown; with RennalaNIGT a slow agent may never count: record with a larger round_size, "
                f"or with MaleniaNIGT or SynchronizedNIGT, where every agent counts")
        compute, compute_starts = _compute_sequences(rounds, n_agents, measured)
        transfers, transfer_starts = _transfer_sequences(rounds, n_agents)
        aligned = _aggregation_rounds(rounds, n_agents)
        return cls(compute, transfers, mode, seed, compute_pool=measured,
                   rounds=(min(rounds), compute_starts, transfer_starts) if aligned else None)

    @classmethod
    def read_csv(cls, path: Union[str, "os.PathLike[str]"], mode: str = "replay", seed: int = 0,
                 algorithm: Optional[str] = None, gradients: str = "worker") -> "TraceTimes":
        """The times of a trace CSV (:func:`sb3_nigt.timeline.write_trace_csv`; a file without the ``measured``
        column reads as unmeasured).

        :param path: the CSV file.
        :param algorithm: keep only the rows of this ``algorithm`` column; None: every row (a file holding several
            algorithms' traces then needs it).
        :raises ValueError: for a header that is not a trace's, a bad row (its line is named), several algorithms
            without ``algorithm``, and as :meth:`from_trace`.
        :raises FileNotFoundError: when the file does not exist.
        """
        rows = read_trace_csv(path)
        names = sorted({row["algorithm"] for row in rows})
        if algorithm is None and len(names) > 1:
            raise ValueError(f"algorithm: {path} holds the traces of {', '.join(map(repr, names))}; name one")
        return cls.from_trace(rows, mode, seed, algorithm, gradients)


# -------------------------------------------------------------------------------------------------- helpers
def _field(event: Any, name: str, default: Any = None) -> Any:
    return event.get(name, default) if isinstance(event, dict) else getattr(event, name, default)


def _event(event: Any) -> TraceEvent:
    """A trace event from an event or a mapping, its times as floats; checks the agent.

    :raises ValueError: for a negative agent or a missing field.
    """
    if isinstance(event, TraceEvent):
        item = event
    else:
        try:
            item = TraceEvent(int(event["round"]), int(event["agent"]), str(event["kind"]), int(event["index"]),
                              float(event["start"]), float(event["end"]), str(event["status"]), event.get("measured"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"trace: an event must have the fields {', '.join(COLUMNS_WITHOUT_MEASURED[1:])}, got {event!r}") from exc
    if item.agent < 0:
        raise ValueError(f"trace: agents are numbered from 0, got {item.agent}")
    return item


def _seconds(event: TraceEvent) -> float:
    """The event's measured seconds, else its end - start."""
    return float(event.measured) if event.measured is not None else float(event.end) - float(event.start)


def _by_round(events: list[TraceEvent]) -> dict[int, list[TraceEvent]]:
    rounds: dict[int, list[TraceEvent]] = defaultdict(list)
    for event in events:
        rounds[event.round].append(event)
    return dict(sorted(rounds.items()))


def _arrival_spacing(events: list[TraceEvent]) -> list[TraceEvent]:
    """The events with each measured gradient after an agent's first of the round lasting from the previous one's
    arrival to its own (at least 1 µs: reports read in one burst arrive together)."""
    gradients = sorted((i for i, e in enumerate(events) if e.kind == "compute" and e.measured is not None),
                       key=lambda i: (events[i].round, events[i].agent, events[i].index))
    spaced = list(events)
    previous: dict[tuple[int, int], float] = {}
    for i in gradients:
        event = events[i]
        key = (event.round, event.agent)
        if key in previous:
            spaced[i] = replace(event, measured=max(float(event.end) - previous[key], 1e-6))
        previous[key] = float(event.end)
    return spaced


def _measured_gradients(events: list[TraceEvent], n_agents: int) -> list[list[float]]:
    """Per agent, the durations of its whole gradients, round by round, in index order: the counted ones, and the
    abandoned ones whose whole duration was measured (a real-clock gradient that finished too late to count)."""
    whole = sorted((e for e in events if e.kind == "compute" and (e.status == "counted" or (e.status == "abandoned" and e.measured is not None))),
                   key=lambda e: (e.round, e.index))
    per_agent: list[list[float]] = [[] for _ in range(n_agents)]
    for event in whole:
        per_agent[event.agent].append(_seconds(event))
    return per_agent


def _check_starts(starts: Sequence[Sequence[int]], durations: tuple[tuple[float, ...], ...], name: str) -> tuple[tuple[int, ...], ...]:
    """Round starts as tuples, checked against the sequences. :raises ValueError: naming ``rounds``."""
    checked = tuple(tuple(int(x) for x in row) for row in starts)
    if not checked or any(len(row) != len(durations) or any(not 0 <= x < len(d) for x, d in zip(row, durations)) for row in checked):
        raise ValueError(f"rounds: {name} starts must give, per round, one position per agent within its sequence")
    return checked


def _aggregation_rounds(rounds: dict[int, list[TraceEvent]], n_agents: int) -> bool:
    """Whether the trace's rounds are aggregation rounds, numbered without gaps, each broadcasting θ to every
    agent (not AFedPG's server versions): then its replay is aligned by round."""
    numbers = list(rounds)
    return numbers == list(range(numbers[0], numbers[0] + len(numbers))) and all(
        {e.agent for e in events if e.kind == "broadcast"} == set(range(n_agents)) for events in rounds.values())


def _compute_sequences(rounds: dict[int, list[TraceEvent]], n_agents: int,
                       measured: list[list[float]]) -> tuple[list[list[float]], list[list[int]]]:
    """Per agent, the gradients in the order the simulated clock draws them: each round's counted ones, then the
    one in flight at the stop (its measured duration if it finished before its agent was stopped, else modelled:
    its seconds at the stop plus the agent's median); and per round, where each agent's draws begin."""
    medians = [float(np.median(m)) if m else 0.0 for m in measured]
    sequences: list[list[float]] = [[] for _ in range(n_agents)]
    starts: list[list[int]] = []
    for events_of_round in rounds.values():
        starts.append([len(sequence) for sequence in sequences])
        counted = [e for e in events_of_round if e.kind == "compute" and e.status == "counted"]
        if not counted:
            continue
        last = max(counted, key=lambda e: float(e.end))
        stop = float(last.end)
        for agent in range(n_agents):
            mine = sorted((e for e in counted if e.agent == agent), key=lambda e: e.index)
            sequences[agent].extend(_seconds(e) for e in mine)
            busy_from = _in_flight_since(events_of_round, agent, mine, stop)
            if agent != last.agent and busy_from is not None and medians[agent] > 0:
                late = [e for e in events_of_round if e.agent == agent and e.kind == "compute" and e.status == "abandoned"
                        and e.measured is not None and e.index == (mine[-1].index + 1 if mine else e.index)]
                whole = min(late, key=lambda e: e.index).measured if late else None
                sequences[agent].append(float(whole) if whole is not None else stop - busy_from + medians[agent])
    return sequences, _within(starts, sequences)


def _within(starts: list[list[int]], sequences: list[list[float]]) -> list[list[int]]:
    """Round starts kept inside each sequence (a round in which an agent drew nothing starts where the next one
    does, or, at the end, wraps to 0)."""
    return [[start if start < len(sequence) else 0 for start, sequence in zip(row, sequences)] for row in starts]


def _in_flight_since(events: list[TraceEvent], agent: int, counted: list[TraceEvent], stop: float) -> Optional[float]:
    """When the agent's gradient in flight at ``stop`` began (its last counted gradient's end, else its broadcast's
    end), or None if it had none: it stopped of itself (its upload began before the stop) or θ had not reached it."""
    uploads = [e for e in events if e.agent == agent and e.kind == "upload"]
    if any(float(e.start) < stop for e in uploads):
        return None
    if counted:
        return float(counted[-1].end)
    broadcasts = [e for e in events if e.agent == agent and e.kind == "broadcast"]
    if not broadcasts:
        return None
    arrived = max(float(e.start) + _seconds(e) for e in broadcasts)
    return arrived if arrived < stop else None


def _transfer_sequences(rounds: dict[int, list[TraceEvent]], n_agents: int) -> tuple[list[list[float]], list[list[int]]]:
    """Per agent, its transfers in the order the simulated clock draws them: round by round, the broadcast(s),
    then the upload; and per round, where each agent's transfers begin."""
    order = {"broadcast": 0, "upload": 1}
    per_agent: list[list[float]] = [[] for _ in range(n_agents)]
    starts: list[list[int]] = []
    for events in rounds.values():
        starts.append([len(sequence) for sequence in per_agent])
        for event in sorted((e for e in events if e.kind in order and e.status == "sent"), key=lambda e: (order[e.kind], float(e.start))):
            per_agent[event.agent].append(_seconds(event))
    return per_agent, _within(starts, per_agent)
