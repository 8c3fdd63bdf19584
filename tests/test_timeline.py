"""sb3_nigt.timeline: the event trace as a tidy CSV and a timeline picture (synthetic traces, no training)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib
import matplotlib.image
import matplotlib.pyplot as plt
import pytest
from matplotlib.collections import PolyCollection

from sb3_nigt.clock.exact import ExactTime
from sb3_nigt.clock.trace import COLUMNS, TraceEvent
from sb3_nigt.timeline import (
    as_event,
    main,
    plot_timeline,
    plot_timelines,
    read_trace_csv,
    round_ends,
    select_events,
    split_by_algorithm,
    write_trace_csv,
)

matplotlib.use("Agg")  # headless: no figure is ever shown

E = TraceEvent


def three_rounds() -> list[TraceEvent]:
    """3 agents, 19 events. Round 0 ends at 2.3 (uploads), round 1 at 4.5 (uploads), round 2 at 5.0 (no upload)."""
    return [
        # round 0: agent 2's gradient is abandoned when the round ends
        E(0, 0, "broadcast", -1, 0.0, 0.1, "sent"),
        E(0, 0, "compute", 0, 0.1, 1.1, "counted"),
        E(0, 0, "compute", 1, 1.1, 2.1, "counted"),
        E(0, 0, "upload", -1, 2.1, 2.2, "sent"),
        E(0, 1, "broadcast", -1, 0.0, 0.1, "sent"),
        E(0, 1, "compute", 0, 0.1, 2.1, "counted"),
        E(0, 1, "upload", -1, 2.1, 2.3, "sent"),
        E(0, 2, "broadcast", -1, 0.0, 0.1, "sent"),
        E(0, 2, "compute", 0, 0.1, 2.3, "abandoned"),
        # round 1: agent 2 is down
        E(1, 0, "broadcast", -1, 2.3, 2.4, "sent"),
        E(1, 0, "compute", 0, 2.4, 3.4, "counted"),
        E(1, 0, "upload", -1, 3.4, 3.5, "sent"),
        E(1, 1, "broadcast", -1, 2.3, 2.4, "sent"),
        E(1, 1, "compute", 0, 2.4, 4.4, "counted"),
        E(1, 1, "upload", -1, 4.4, 4.5, "sent"),
        E(1, 2, "compute", -1, 2.3, 4.5, "down"),
        # round 2: cut short (no upload)
        E(2, 0, "broadcast", -1, 4.5, 4.6, "sent"),
        E(2, 0, "compute", 0, 4.6, 5.0, "abandoned"),
        E(2, 1, "broadcast", -1, 4.5, 4.6, "sent"),
    ]


def exact_trace() -> list[TraceEvent]:
    """One agent on exact times: h = √2, κ = 0.1."""
    tenth, root = ExactTime.of(0.1), ExactTime.sqrt(2)
    return [
        E(0, 0, "broadcast", -1, ExactTime.of(0), tenth, "sent"),
        E(0, 0, "compute", 0, tenth, tenth + root, "counted"),
        E(0, 0, "upload", -1, tenth + root, tenth + root + tenth, "sent"),
    ]


def bars(ax) -> dict[str, list[tuple[float, float, float]]]:
    """The drawn bars by category: (x start, x end, y centre) of every rectangle of the broken_barh collections."""
    found: dict[str, list[tuple[float, float, float]]] = {}
    for collection in ax.collections:
        if isinstance(collection, PolyCollection):
            for path in collection.get_paths():
                xs, ys = path.vertices[:, 0], path.vertices[:, 1]
                found.setdefault(collection.get_gid(), []).append(
                    (float(xs.min()), float(xs.max()), float(ys.min() + ys.max()) / 2)
                )
    return found


def boundaries(ax) -> list[float]:
    """x of the dashed round-end lines."""
    return sorted(float(line.get_xdata()[0]) for line in ax.lines if line.get_gid() == "round end")


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 2000
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 500


# ------------------------------------------------------------------------------------------------------------ CSV
def test_csv_round_trip_several_algorithms(tmp_path):
    other = [E(0, 0, "compute", 0, 0.1, 0.1 + 0.2, "counted"), E(0, 1, "upload", -1, 1e-17, 123456.789, "sent")]
    path = write_trace_csv({"rennala": three_rounds(), "afedpg": other}, tmp_path / "sub" / "trace.csv")
    assert path == tmp_path / "sub" / "trace.csv"

    with path.open(newline="") as handle:
        raw = list(csv.reader(handle))
    assert raw[0] == ["algorithm", "round", "agent", "kind", "index", "start", "end", "status", "measured"]
    assert tuple(raw[0]) == COLUMNS
    assert len(raw) == 1 + 19 + 2
    assert raw[-2] == ["afedpg", "0", "0", "compute", "0", "0.1", "0.30000000000000004", "counted", ""]  # repr precision

    rows = read_trace_csv(path)
    assert [r["algorithm"] for r in rows] == ["rennala"] * 19 + ["afedpg"] * 2
    assert rows[8] == {"algorithm": "rennala", "round": 0, "agent": 2, "kind": "compute", "index": 0,
                       "start": 0.1, "end": 2.3, "status": "abandoned", "measured": None}
    assert list(rows[0]) == list(COLUMNS)
    for row in rows:
        assert type(row["round"]) is int and type(row["agent"]) is int and type(row["index"]) is int
        assert type(row["start"]) is float and type(row["end"]) is float
    assert rows[-2]["end"] == 0.1 + 0.2
    assert rows[-1]["start"] == 1e-17 and rows[-1]["end"] == 123456.789
    expected = [e.as_row("rennala") for e in three_rounds()] + [e.as_row("afedpg") for e in other]
    assert [tuple(r[c] for c in COLUMNS) for r in rows] == expected

    # Rows read back write the same file again (the algorithm column comes from the mapping).
    again = write_trace_csv(split_by_algorithm(rows), tmp_path / "again.csv")
    assert again.read_bytes() == path.read_bytes()


def test_csv_single_trace_algorithm_column(tmp_path):
    path = write_trace_csv(three_rounds()[:2], tmp_path / "one.csv", algorithm="sync")
    rows = read_trace_csv(path)
    assert [(r["algorithm"], r["kind"], r["start"], r["end"]) for r in rows] == [
        ("sync", "broadcast", 0.0, 0.1), ("sync", "compute", 0.1, 1.1)
    ]
    unnamed = read_trace_csv(write_trace_csv(three_rounds(), tmp_path / "unnamed.csv"))
    assert {r["algorithm"] for r in unnamed} == {""}
    assert len(unnamed) == 19


def test_csv_exact_times(tmp_path):
    rows = read_trace_csv(write_trace_csv(exact_trace(), tmp_path / "exact.csv", algorithm="rennala"))
    assert rows[1]["start"] == 0.1
    assert rows[1]["end"] == float(ExactTime.of(0.1) + ExactTime.sqrt(2))
    assert math.isclose(rows[2]["end"], 0.2 + math.sqrt(2), rel_tol=1e-15)


def test_csv_errors(tmp_path):
    with pytest.raises(ValueError, match="algorithm must be empty"):
        write_trace_csv({"a": three_rounds()}, tmp_path / "x.csv", algorithm="b")
    with pytest.raises(ValueError, match="kind"):
        write_trace_csv([E(0, 0, "think", 0, 0.0, 1.0, "counted")], tmp_path / "x.csv")
    with pytest.raises(ValueError, match="status"):
        write_trace_csv([E(0, 0, "compute", 0, 0.0, 1.0, "lost")], tmp_path / "x.csv")
    with pytest.raises(ValueError, match="before it starts"):
        write_trace_csv([E(0, 0, "compute", 0, 2.0, 1.0, "counted")], tmp_path / "x.csv")
    with pytest.raises(ValueError, match="finite"):
        write_trace_csv([E(0, 0, "compute", 0, 0.0, math.inf, "counted")], tmp_path / "x.csv")
    with pytest.raises(TypeError):
        write_trace_csv(three_rounds()[0], tmp_path / "x.csv")

    bad_header = tmp_path / "header.csv"
    bad_header.write_text("round,agent,kind\n0,0,compute\n")
    with pytest.raises(ValueError, match="header"):
        read_trace_csv(bad_header)
    bad_row = tmp_path / "row.csv"
    bad_row.write_text(",".join(COLUMNS) + "\nsync,0,zero,compute,0,0.0,1.0,counted,\n")
    with pytest.raises(ValueError, match="line 2.*agent"):
        read_trace_csv(bad_row)


# ------------------------------------------------------------------------------------------------------ selection
def test_round_ends_uploads_or_all_events():
    assert round_ends(three_rounds()) == {0: 2.3, 1: 4.5, 2: 5.0}
    # An upload that ends before a later (abandoned) gradient still ends the round.
    trace = [E(0, 0, "upload", -1, 0.0, 1.0, "sent"), E(0, 1, "compute", 0, 0.0, 3.0, "abandoned")]
    assert round_ends(trace) == {0: 1.0}


def test_select_events_rounds_and_agents():
    trace = three_rounds()
    assert len(select_events(trace)) == 19
    picked = select_events(trace, rounds=(1, 2), max_agents=2)
    assert len(picked) == 9
    assert {(e.round, e.agent) for e in picked} == {(1, 0), (1, 1), (2, 0), (2, 1)}
    assert [e.agent for e in select_events(trace, max_agents=1)] == [0] * 9
    assert {e.round for e in select_events(trace, rounds=(0, 0))} == {0}
    assert select_events(trace, rounds=(5, 9)) == []
    with pytest.raises(ValueError, match="first"):
        select_events(trace, rounds=(2, 1))
    with pytest.raises(ValueError, match="rounds"):
        select_events(trace, rounds=(1,))
    with pytest.raises(ValueError, match="max_agents"):
        select_events(trace, max_agents=0)


def test_as_event_from_text_and_exact():
    event = as_event({"algorithm": "x", "round": "3", "agent": "1", "kind": "upload", "index": "-1",
                      "start": "0.5", "end": "0.75", "status": "sent"})
    assert event == E(3, 1, "upload", -1, 0.5, 0.75, "sent")
    exact = as_event(exact_trace()[1])
    assert type(exact.start) is float and exact.end == float(ExactTime.of(0.1) + ExactTime.sqrt(2))
    with pytest.raises(ValueError, match="lacks"):
        as_event({"round": 0})


# ------------------------------------------------------------------------------------------------------- plotting
def test_plot_timeline_draws_every_event():
    fig, ax = plt.subplots()
    try:
        assert plot_timeline(three_rounds(), ax=ax, title="Rennala") is ax
        drawn = bars(ax)
        assert {k: len(v) for k, v in drawn.items()} == {"compute": 5, "abandoned": 2, "broadcast": 7, "upload": 4, "down": 1}
        assert drawn["down"] == [(2.3, pytest.approx(4.5), 2.0)]  # agent 2's row
        assert sorted(drawn["abandoned"]) == [(0.1, pytest.approx(2.3), 2.0), (4.6, pytest.approx(5.0), 0.0)]
        assert boundaries(ax) == [2.3, 4.5, 5.0]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["agent 0", "agent 1", "agent 2"]
        low, high = ax.get_ylim()
        assert low > high  # agent 0 at the top
        assert ax.get_title() == "Rennala"
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend == ["gradient (counted)", "gradient (abandoned)", "broadcast (θ to agent)",
                          "upload (agent to server)", "down (outage)", "round end"]
    finally:
        plt.close(fig)


def test_plot_timeline_rounds_and_max_agents():
    fig, ax = plt.subplots()
    try:
        plot_timeline(three_rounds(), ax=ax, rounds=(1, 2), max_agents=2)
        drawn = bars(ax)
        assert {k: len(v) for k, v in drawn.items()} == {"compute": 2, "abandoned": 1, "broadcast": 4, "upload": 2}
        assert min(start for spans in drawn.values() for start, _, _ in spans) == 2.3
        assert {y for spans in drawn.values() for _, _, y in spans} == {0.0, 1.0}
        assert boundaries(ax) == [4.5, 5.0]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["agent 0", "agent 1"]
        left, right = ax.get_xlim()
        assert left < 2.3 and 5.0 < right < 5.5
    finally:
        plt.close(fig)


def test_plot_timeline_writes_png(tmp_path):
    open_before = plt.get_fignums()
    fig = plot_timeline(three_rounds(), path=tmp_path / "pics" / "timeline.png", title="one")
    assert_png(tmp_path / "pics" / "timeline.png")
    assert plt.get_fignums() == open_before  # nothing left open in pyplot
    assert sum(len(v) for v in bars(fig.axes[0]).values()) == 19


def test_plot_timeline_exact_times_and_rows(tmp_path):
    fig = plot_timeline(exact_trace(), path=tmp_path / "exact.png")
    assert_png(tmp_path / "exact.png")
    (compute,) = bars(fig.axes[0])["compute"]
    assert compute[0] == 0.1
    assert compute[1] == pytest.approx(0.1 + math.sqrt(2), rel=1e-12)
    assert boundaries(fig.axes[0]) == [pytest.approx(0.2 + math.sqrt(2), rel=1e-12)]

    rows = read_trace_csv(write_trace_csv(three_rounds(), tmp_path / "t.csv", algorithm="sync"))
    fig = plot_timeline(rows, path=tmp_path / "rows.png", max_agents=1)
    assert_png(tmp_path / "rows.png")
    assert sum(len(v) for v in bars(fig.axes[0]).values()) == 9


def test_plot_timeline_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_timeline([], path=tmp_path / "x.png")
    with pytest.raises(ValueError, match="first"):
        plot_timeline(three_rounds(), path=tmp_path / "x.png", rounds=(3, 1))
    with pytest.raises(ValueError, match="max_agents"):
        plot_timeline(three_rounds(), path=tmp_path / "x.png", max_agents=-1)
    assert not (tmp_path / "x.png").exists()


def test_plot_timelines_one_panel_per_algorithm(tmp_path):
    traces = {"Rennala": three_rounds(), "Malenia": three_rounds()[:9], "Sync": exact_trace(), "AFedPG": three_rounds()}
    open_before = plt.get_fignums()
    fig = plot_timelines(traces, tmp_path / "all.png", max_agents=2)
    assert_png(tmp_path / "all.png")
    assert plt.get_fignums() == open_before
    assert [ax.get_title() for ax in fig.axes] == list(traces)
    assert [sum(len(v) for v in bars(ax).values()) for ax in fig.axes] == [16, 7, 3, 16]
    assert [len(ax.get_yticks()) for ax in fig.axes] == [2, 2, 1, 2]
    assert [ax.get_legend() is not None for ax in fig.axes] == [True, False, False, False]

    shared = plot_timelines(traces, tmp_path / "shared.png", rounds=(0, 0), sharex=True)
    assert_png(tmp_path / "shared.png")
    limits = {ax.get_xlim() for ax in shared.axes}
    assert len(limits) == 1
    (left, right), = limits
    assert left < 0.0 and right >= 2.3
    assert [boundaries(ax) for ax in shared.axes] == [[2.3], [2.3], [pytest.approx(0.2 + math.sqrt(2))], [2.3]]

    with pytest.raises(ValueError, match="no traces"):
        plot_timelines({}, tmp_path / "none.png")


def test_cli_single_and_several_algorithms(tmp_path, capsys):
    several = write_trace_csv({"rennala": three_rounds(), "afedpg": exact_trace()}, tmp_path / "several.csv")
    out = main([str(several), "--out", str(tmp_path / "several.png"), "--rounds", "0", "1", "--max-agents", "2"])
    assert out == tmp_path / "several.png"
    assert_png(out)
    assert "several.png" in capsys.readouterr().out

    single = write_trace_csv(three_rounds(), tmp_path / "single.csv", algorithm="sync")
    out = main([str(single), "--out", str(tmp_path / "single.png")])
    assert_png(out)

    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(COLUMNS) + "\n")
    with pytest.raises(ValueError, match="empty"):
        main([str(empty), "--out", str(tmp_path / "empty.png")])


def test_server_version_panels_draw_and_label_every_update(tmp_path):
    traces = {"Rennala NIGT": three_rounds(), "AFedPG": three_rounds()}
    fig = plot_timelines(traces, tmp_path / "versions.png", sharex=True, server_versions=["AFedPG"])
    rennala, afedpg = fig.axes
    assert rennala.get_title() == "Rennala NIGT"
    assert afedpg.get_title() == "AFedPG (rounds are server versions: one update per gradient)"
    assert boundaries(rennala) == [2.3, 4.5, 5.0] and boundaries(afedpg) == []
    updates = sorted(float(line.get_xdata()[0]) for line in afedpg.lines if line.get_gid() == "server update")
    assert updates == [2.3, 4.5, 5.0]
    assert rennala.get_xlim() == afedpg.get_xlim()  # one time axis
    labels = [text.get_text() for text in rennala.get_legend().get_texts()]
    assert "round end" in labels and "server update (AFedPG: rounds are server versions)" in labels


def test_cli_labels_afedpg_rounds_as_server_versions(tmp_path, monkeypatch):
    import sb3_nigt.timeline as timeline

    seen = {}
    monkeypatch.setattr(timeline, "plot_timelines", lambda traces, path, **kwargs: seen.update(kwargs))
    several = write_trace_csv({"rennala": three_rounds(), "afedpg": exact_trace()}, tmp_path / "several.csv")
    main([str(several), "--out", str(tmp_path / "several.png"), "--sharex"])
    assert seen["server_versions"] == ["afedpg"] and seen["sharex"] is True
