"""The clock's event trace as a tidy CSV and a Gantt-style timeline (docs/time.md, "Event trace").

A model built with ``record_trace=True`` keeps one :class:`~sb3_nigt.clock.trace.TraceEvent` per broadcast,
gradient and upload in ``model.trace``. This module

- writes such traces to a tidy CSV, one row per event, columns :data:`~sb3_nigt.clock.trace.COLUMNS`
  (:func:`write_trace_csv`), and reads it back (:func:`read_trace_csv`);
- draws one timeline per trace (:func:`plot_timeline`) or one panel per algorithm (:func:`plot_timelines`):
  agents on the y-axis (agent 0 at the top), seconds on the clock on the x-axis, one bar per event, idle time
  left blank and a dashed vertical line where each round ends.

Command line (a CSV holding several algorithms gives one panel each)::

    python -m sb3_nigt.timeline trace.csv --out timeline.png [--rounds 0 3] [--max-agents 10]

All times are in seconds.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, cast

from sb3_nigt.clock.trace import COLUMNS, COLUMNS_WITHOUT_MEASURED, EventLike, TraceEvent, as_event, read_trace_csv

if TYPE_CHECKING:  # matplotlib is an optional dependency, imported when plotting
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: A file path.
PathLike = Union[str, "os.PathLike[str]"]

#: Bar categories, in legend order: a counted gradient, an abandoned gradient, a broadcast, an upload, an outage.
CATEGORIES = ("compute", "abandoned", "broadcast", "upload", "down")
#: Legend text per category.
CATEGORY_LABELS = {
    "compute": "gradient (counted)",
    "abandoned": "gradient (abandoned)",
    "broadcast": "broadcast (θ to agent)",
    "upload": "upload (agent to server)",
    "down": "down (outage)",
}
#: Bar style per category (keyword arguments of ``Axes.broken_barh``).
CATEGORY_STYLES: dict[str, dict[str, Any]] = {
    "compute": {"facecolor": "tab:blue", "edgecolor": "white", "linewidth": 0.8},  # white edges: gradients apart
    "abandoned": {"facecolor": "#c6dbef", "edgecolor": "tab:blue", "linewidth": 0.3, "hatch": "////"},
    "broadcast": {"facecolor": "tab:green", "edgecolor": "tab:green", "linewidth": 0.3},
    "upload": {"facecolor": "tab:orange", "edgecolor": "tab:orange", "linewidth": 0.3},
    "down": {"facecolor": "0.6", "edgecolor": "0.45", "linewidth": 0.3},
}
_BOUNDARY_STYLE: dict[str, Any] = {"color": "0.25", "linestyle": "--", "linewidth": 0.7}
#: The boundary line's legend text: a round's end, or (AFedPG, whose "round" is the server version) a server update.
BOUNDARY_LABELS = ("round end", "server update")
#: Style of a server update line (AFedPG): one per gradient, so thinner and lighter than a round end.
_UPDATE_STYLE: dict[str, Any] = {"color": "tab:red", "linestyle": "-", "linewidth": 0.5, "alpha": 0.6}
#: Panel names (as in :func:`read_trace_csv`'s ``algorithm`` column or the labels of ``sb3_nigt.compare``) whose
#: "round" is the server version θ_k: the command line draws them as :func:`plot_timelines`'s ``server_versions``.
SERVER_VERSION_NAMES = ("afedpg", "AFedPG")
_BAR_HEIGHT = 0.8
_DPI = 110


# ------------------------------------------------------------------------------------------------------- events
def as_events(events: Iterable[EventLike]) -> list[TraceEvent]:
    """Every event as a :class:`TraceEvent` with float times (:func:`as_event`), in the given order.

    :param events: the trace (``model.trace``, or rows of :func:`read_trace_csv`).
    :return: the checked events.
    :raises ValueError: for an invalid event (:func:`as_event`).
    :raises TypeError: when ``events`` is a single event or a mapping rather than a sequence of events.
    """
    if isinstance(events, (TraceEvent, Mapping, str)):
        raise TypeError(f"trace: expected a sequence of events, got {type(events).__name__}")
    return [as_event(event) for event in events]


def event_category(event: TraceEvent) -> str:
    """The bar category (:data:`CATEGORIES`) of an event.

    :param event: the event.
    :return: ``"down"`` for an outage, ``"abandoned"`` for an abandoned gradient, ``"compute"`` for a counted one,
        else the kind (``"broadcast"`` or ``"upload"``).
    """
    if event.status == "down":
        return "down"
    if event.kind == "compute":
        return "abandoned" if event.status == "abandoned" else "compute"
    return event.kind


def round_ends(events: Iterable[EventLike]) -> dict[int, float]:
    """When each round ends: the latest end of its uploads, or of all its events when it has no upload.

    :param events: the trace.
    :return: ``{round: end in seconds}``, rounds in increasing order.
    :raises ValueError: for an invalid event (:func:`as_event`).
    """
    return _round_ends(as_events(events))


def _round_ends(trace: list[TraceEvent]) -> dict[int, float]:
    """:func:`round_ends` of checked events."""
    uploads: dict[int, float] = {}
    latest: dict[int, float] = {}
    for event in trace:
        end = float(event.end)
        latest[event.round] = max(end, latest.get(event.round, -math.inf))
        if event.kind == "upload":
            uploads[event.round] = max(end, uploads.get(event.round, -math.inf))
    return {r: uploads.get(r, latest[r]) for r in sorted(latest)}


def _check_rounds(rounds: Sequence[int] | None) -> tuple[int, int] | None:
    """``rounds`` as ``(first, last)``.

    :param rounds: ``None`` or a pair of integers ``first <= last``.
    :return: the pair, or ``None``.
    :raises ValueError: when ``rounds`` is not such a pair.
    """
    if rounds is None:
        return None
    pair = tuple(rounds)
    if len(pair) != 2 or any(isinstance(r, bool) or not isinstance(r, int) for r in pair):
        raise ValueError(f"rounds: expected (first, last), two integers, got {rounds!r}")
    first, last = pair
    if first > last:
        raise ValueError(f"rounds: first ({first}) must be <= last ({last})")
    return first, last


def _check_max_agents(max_agents: int | None) -> int | None:
    """``max_agents`` checked.

    :param max_agents: ``None`` or a positive integer.
    :return: the value.
    :raises ValueError: when it is not a positive integer.
    """
    if max_agents is None:
        return None
    if isinstance(max_agents, bool) or not isinstance(max_agents, int) or max_agents < 1:
        raise ValueError(f"max_agents: expected a positive integer, got {max_agents!r}")
    return max_agents


def select_events(
    events: Iterable[EventLike], rounds: Sequence[int] | None = None, max_agents: int | None = None
) -> list[TraceEvent]:
    """The events that a timeline draws: those of rounds ``first..last`` (inclusive) and agents ``< max_agents``.

    :param events: the trace.
    :param rounds: ``(first, last)``, or ``None`` for every round.
    :param max_agents: keep agents ``0 .. max_agents - 1``; ``None`` keeps every agent.
    :return: the selected events (times as floats), in trace order.
    :raises ValueError: for an invalid event, ``rounds`` or ``max_agents``.
    """
    return _select(as_events(events), _check_rounds(rounds), _check_max_agents(max_agents))


def _select(trace: list[TraceEvent], window: tuple[int, int] | None, limit: int | None) -> list[TraceEvent]:
    """:func:`select_events` of checked events and arguments."""
    return [
        event
        for event in trace
        if (window is None or window[0] <= event.round <= window[1]) and (limit is None or event.agent < limit)
    ]


# ---------------------------------------------------------------------------------------------------------- CSV
def _rows(events: Iterable[EventLike], algorithm: str) -> list[list[str]]:
    """CSV rows of one trace (floats written as ``repr``, which reads back to the same float; an unmeasured
    ``measured`` is empty)."""
    return [
        [algorithm, str(e.round), str(e.agent), e.kind, str(e.index), repr(float(e.start)), repr(float(e.end)), e.status,
         "" if e.measured is None else repr(float(e.measured))]
        for e in as_events(events)
    ]


def write_trace_csv(
    events: Iterable[EventLike] | Mapping[str, Iterable[EventLike]], path: PathLike, algorithm: str = ""
) -> Path:
    """Write a trace as a tidy CSV: header :data:`COLUMNS`, one row per event, times in seconds.

    :param events: the events (``model.trace``, or rows of :func:`read_trace_csv`), or ``{algorithm: events}`` to
        write several algorithms in one file (in the mapping's order).
    :param path: the CSV file (its folder is created when missing; an existing file is replaced).
    :param algorithm: the ``algorithm`` column for a single trace; must stay ``""`` with a mapping.
    :return: the path written.
    :raises ValueError: for an invalid event (:func:`as_event`), or when ``algorithm`` is given with a mapping.
    :raises TypeError: when ``events`` is neither a sequence of events nor a mapping of them.
    """
    if isinstance(events, Mapping) and not set(COLUMNS_WITHOUT_MEASURED[1:]) <= set(events):
        if algorithm:
            raise ValueError("write_trace_csv: algorithm must be empty when events maps algorithm names to events")
        rows = [row for name, trace in events.items() for row in _rows(trace, str(name))]
    else:
        # A Mapping here is a single event, which as_events rejects with a TypeError.
        rows = _rows(cast("Iterable[EventLike]", events), str(algorithm))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return path


def split_by_algorithm(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Group rows of :func:`read_trace_csv` by their ``algorithm`` column, in order of first appearance.

    :param rows: the rows.
    :return: ``{algorithm: rows}``.
    """
    traces: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        traces.setdefault(str(row.get("algorithm", "")), []).append(row)
    return traces


# ----------------------------------------------------------------------------------------------------- plotting
def _agent_rows(events: list[TraceEvent], max_agents: int | None) -> int:
    """How many agent rows a panel has: up to the largest agent in the whole trace, at most ``max_agents``."""
    count = max((event.agent for event in events), default=-1) + 1
    return count if max_agents is None else min(count, max_agents)


def _panel_height(rows: int) -> float:
    """Inches for a panel of ``rows`` agents (title and axis included)."""
    return 1.1 + 0.28 * max(rows, 1)


def _new_figure(path: PathLike | None, panels: int, height: float, **subplots: Any) -> tuple[Figure, Any]:
    """A figure and its axes: drawn on the Agg canvas when it is to be saved, else through pyplot (to be shown).

    The Agg figure is not registered with pyplot, so saving never changes the user's backend and leaves no open
    figure behind.
    """
    size = (10.0, height)
    if path is not None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=size)
        FigureCanvasAgg(fig)
        return fig, fig.subplots(panels, 1, squeeze=False, **subplots)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(panels, 1, figsize=size, squeeze=False, **subplots)
    return fig, axes


def _draw(
    ax: Axes,
    trace: list[TraceEvent],
    rounds: Sequence[int] | None,
    max_agents: int | None,
    title: str | None,
    boundary: str = "round end",
) -> tuple[set[str], tuple[float, float] | None]:
    """Draw one checked trace (:func:`as_events`) into ``ax`` (no legend).

    :param boundary: one of :data:`BOUNDARY_LABELS`: ``"round end"`` (a dashed line where each round ends) or
        ``"server update"`` (AFedPG: its "round" is the server version, so a thin line at each server update).
    :return: the categories drawn (and ``boundary`` when a boundary was drawn), and the drawn time span.
    :raises ValueError: for an empty trace or invalid arguments.
    """
    window = _check_rounds(rounds)
    limit = _check_max_agents(max_agents)
    if not trace:
        raise ValueError("plot_timeline: the trace is empty (was the model built with record_trace=True?)")
    rows = _agent_rows(trace, limit)
    shown = _select(trace, window, limit)

    bars: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for event in shown:
        start, end = float(event.start), float(event.end)
        bars.setdefault((event_category(event), event.agent), []).append((start, end - start))
    drawn = set()
    for category in CATEGORIES:  # a fixed order: later categories are drawn on top
        for agent in range(rows):
            spans = bars.get((category, agent))
            if spans:
                ax.broken_barh(spans, (agent - _BAR_HEIGHT / 2, _BAR_HEIGHT), gid=category, **CATEGORY_STYLES[category])
                drawn.add(category)

    ends = _round_ends(trace)  # a round ends for everyone: its end uses every agent's events
    for r, end in ends.items():
        if window is None or window[0] <= r <= window[1]:
            ax.axvline(end, gid=boundary, **(_BOUNDARY_STYLE if boundary == "round end" else _UPDATE_STYLE))
            drawn.add(boundary)

    span = None
    if shown:
        span = (min(float(e.start) for e in shown), max(float(e.end) for e in shown))
        if window is not None:  # the boundaries of the selected rounds stay in view
            selected = [end for r, end in ends.items() if window[0] <= r <= window[1]]
            span = (span[0], max([span[1], *selected]))
        _set_span(ax, span)
    ax.set_ylim(rows - 0.5, -0.5)  # agent 0 at the top
    ax.set_yticks(range(rows))
    ax.set_yticklabels([f"agent {i}" for i in range(rows)], fontsize=8 if rows <= 20 else 6)
    ax.set_xlabel("time (s)")
    ax.grid(axis="x", alpha=0.25)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title, fontsize=10)
    return drawn, span


def _set_span(ax: Axes, span: tuple[float, float]) -> None:
    """Show ``span`` (seconds) with a small margin."""
    low, high = span
    margin = 0.01 * (high - low) if high > low else 0.5
    ax.set_xlim(low - margin, high + margin)


def _legend(ax: Axes, drawn: set[str]) -> None:
    """A legend of the categories drawn, outside the axes on the right."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [
        Patch(label=CATEGORY_LABELS[category], **CATEGORY_STYLES[category]) for category in CATEGORIES if category in drawn
    ]
    if "round end" in drawn:
        handles.append(Line2D([], [], label="round end", **_BOUNDARY_STYLE))
    if "server update" in drawn:
        handles.append(Line2D([], [], label="server update (AFedPG: rounds are server versions)", **_UPDATE_STYLE))
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _save(fig: Figure, path: PathLike) -> None:
    """Save ``fig`` to ``path`` (folder created when missing) at the module's dpi, legend included."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")


def plot_timeline(
    events: Iterable[EventLike],
    path: PathLike | None = None,
    title: str | None = None,
    rounds: Sequence[int] | None = None,
    max_agents: int | None = None,
    ax: Axes | None = None,
) -> Figure | Axes:
    """Draw a trace as a timeline: one row per agent (agent 0 at the top), seconds on the x-axis.

    Each event is a horizontal bar: a counted gradient solid blue, an abandoned gradient hatched light blue, a
    broadcast green, an upload orange, an outage (``"down"``) grey. Idle time is left blank. A thin dashed vertical
    line marks where each round ends (:func:`round_ends`). A legend explains the colours.

    :param events: the trace: :class:`TraceEvent` objects (times floats or :class:`ExactTime`) or rows of
        :func:`read_trace_csv`.
    :param path: when given, the picture is drawn on the Agg canvas, saved there (dpi 110) and the figure closed
        (nothing is left open in pyplot); with ``ax`` it saves ``ax``'s figure, which stays open.
    :param title: the panel title.
    :param rounds: ``(first, last)``: draw only these rounds (inclusive), and their boundaries.
    :param max_agents: draw only agents ``0 .. max_agents - 1``.
    :param ax: draw into these axes instead of a new figure.
    :return: the figure, or ``ax`` when it was given.
    :raises ValueError: for an empty trace, an invalid event, ``rounds`` or ``max_agents``.
    :raises ImportError: when matplotlib is not installed (``pip install sb3-nigt[plot]``).
    """
    trace = as_events(events)
    if ax is not None:
        drawn, _ = _draw(ax, trace, rounds, max_agents, title)
        _legend(ax, drawn)
        if path is not None:
            from matplotlib.figure import Figure

            figure = ax.figure
            # Axes inside a SubFigure have no savefig: the figure must be a top-level Figure.
            assert isinstance(figure, Figure), f"plot_timeline: ax must belong to a Figure to be saved, not a {type(figure).__name__}"
            _save(figure, path)
        return ax
    rows = _agent_rows(trace, _check_max_agents(max_agents))
    fig, axes = _new_figure(path, 1, _panel_height(rows))
    drawn, _ = _draw(axes[0, 0], trace, rounds, max_agents, title)
    _legend(axes[0, 0], drawn)
    fig.tight_layout()
    if path is not None:
        _save(fig, path)
    return fig


def plot_timelines(
    traces: Mapping[str, Iterable[EventLike]],
    path: PathLike | None,
    rounds: Sequence[int] | None = None,
    max_agents: int | None = None,
    sharex: bool = False,
    server_versions: Collection[str] = (),
) -> Figure:
    """Draw several traces, one panel per algorithm stacked vertically (titled with its name), one legend.

    :param traces: ``{algorithm: events}``, in panel order (e.g. Rennala, Malenia, Sync and AFedPG).
    :param path: where to save the picture (Agg canvas, dpi 110; the figure is then not left open), or ``None`` to
        return a pyplot figure unsaved.
    :param rounds: ``(first, last)``: draw only these rounds in every panel.
    :param max_agents: draw only agents ``0 .. max_agents - 1`` in every panel.
    :param sharex: one time axis for every panel (spanning them all); otherwise each panel fits its own trace.
    :param server_versions: names of the panels whose "round" is the server version θ_k (AFedPG: one version per
        gradient): their boundaries are drawn as thin "server update" lines and their title says so.
    :return: the figure.
    :raises ValueError: when ``traces`` is empty or one of them is (:func:`plot_timeline`), or for invalid
        ``rounds`` or ``max_agents``.
    :raises ImportError: when matplotlib is not installed.
    """
    if not traces:
        raise ValueError("plot_timelines: no traces")
    limit = _check_max_agents(max_agents)
    checked = {name: as_events(events) for name, events in traces.items()}
    rows = [_agent_rows(trace, limit) for trace in checked.values()]
    heights = [_panel_height(n) for n in rows]
    fig, axes = _new_figure(path, len(checked), sum(heights), sharex=sharex, gridspec_kw={"height_ratios": heights})
    drawn: set[str] = set()
    spans = []
    for ax, (name, trace) in zip(axes[:, 0], checked.items()):
        versions = name in server_versions
        title = f"{name or '(unnamed)'}{' (rounds are server versions: one update per gradient)' if versions else ''}"
        categories, span = _draw(ax, trace, rounds, max_agents, title, "server update" if versions else "round end")
        drawn |= categories
        if span is not None:
            spans.append(span)
    if sharex and spans:
        _set_span(axes[0, 0], (min(s[0] for s in spans), max(s[1] for s in spans)))
    for ax in axes[:-1, 0]:
        if sharex:
            ax.set_xlabel("")
    _legend(axes[0, 0], drawn)
    fig.tight_layout()
    if path is not None:
        _save(fig, path)
    return fig


# ---------------------------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> Path:
    """``python -m sb3_nigt.timeline trace.csv --out timeline.png [--rounds 0 3] [--max-agents 10]``.

    :param argv: the arguments (default: ``sys.argv[1:]``).
    :return: the picture written.
    :raises ValueError: for an invalid or empty CSV, ``--rounds`` or ``--max-agents``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m sb3_nigt.timeline",
        description="Draw the clock's event trace (a CSV of sb3_nigt.timeline.write_trace_csv) as a timeline; "
        "a CSV with several algorithms gives one panel each.",
    )
    parser.add_argument("csv", help="the trace CSV")
    parser.add_argument("--out", default="timeline.png", help="the picture to write (default: timeline.png)")
    parser.add_argument("--rounds", type=int, nargs=2, metavar=("FIRST", "LAST"), default=None,
                        help="draw only rounds FIRST..LAST (inclusive)")
    parser.add_argument("--max-agents", type=int, default=None, help="draw only the first N agents")
    parser.add_argument("--title", default=None, help="title of a single-algorithm picture")
    parser.add_argument("--sharex", action="store_true", help="one time axis for every panel")
    args = parser.parse_args(argv)

    traces = split_by_algorithm(read_trace_csv(args.csv))
    if not traces:
        raise ValueError(f"{args.csv}: the trace is empty")
    rounds = tuple(args.rounds) if args.rounds is not None else None
    if len(traces) == 1:
        (name, events), = traces.items()
        plot_timeline(events, path=args.out, title=args.title or name or None, rounds=rounds, max_agents=args.max_agents)
    else:
        plot_timelines(traces, args.out, rounds=rounds, max_agents=args.max_agents, sharex=args.sharex,
                       server_versions=[name for name in traces if name in SERVER_VERSION_NAMES])
    print(f"wrote {args.out}")
    return Path(args.out)


if __name__ == "__main__":
    main()
