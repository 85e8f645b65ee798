"""Figures and tables for notebook 04: what a load costs, measured.

- ``records_table(records)``: one row per ``LoadRecord``: times, memory, device bytes, cache state.
- ``rss_figure(records)``: resident memory over time, one line per load, on one figure.
- ``open_vs_loaded_figure(records)``: time to open, to the first tensor and until all were
  touched (log scale): why a benchmark that stops at the open overstates speed.
- ``pair_figure(rows)``: the article's "10 GB vs 2.5 GB" at a scaled size: the ratio of bytes
  beside the ratio of load times.

Every number comes from a ``LoadRecord`` (measured in a child process, or counted by the kernel);
the axis titles say which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from labkit.loading.record import COLD, WARM, LoadRecord

MIB = 2**20
STEP_COLORS = {"open": "#9467bd", "first tensor": "#1f77b4", "all touched": "#2ca02c"}


def _mib(n_bytes: int | None) -> str:
    return "–" if n_bytes is None else f"{n_bytes / MIB:,.1f}"


def records_table(records: Sequence[LoadRecord]) -> str:
    """A fixed-width table of loads: what was loaded, the three times, memory, faults and device bytes."""
    header = (
        "load",
        "cache",
        "open ms",
        "1st ms",
        "all ms",
        "+peak MiB",
        "device MiB",
        "major flt",
        "tensors MiB",
    )
    rows = [header]
    for r in records:
        rows.append(
            (
                f"{r.loader} {r.format} {r.mode}"
                + ("" if r.layers is None else f" L{r.layers[0]}-{r.layers[-1]}"),
                r.cache_state.split(" (")[0],
                f"{r.open_s * 1e3:,.2f}",
                f"{r.first_tensor_s * 1e3:,.2f}",
                f"{r.all_touched_s * 1e3:,.1f}",
                _mib(r.added_peak_rss_bytes),
                _mib(r.device_read_bytes),
                "–" if r.major_faults is None else str(r.major_faults),
                _mib(r.tensor_bytes),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    note = (
        "times, +peak (RSS above the start of the load) and cache: measured in a fresh process; "
        "device bytes and faults: counted by the kernel; tensors: counted from the file's table"
    )
    return "\n".join([*lines, note])


def rss_figure(
    records: Sequence[LoadRecord], *, title: str = "Resident memory during each load"
) -> go.Figure:
    """One line per load: RSS above the load's start (MiB) against time (ms); a dot where all were touched."""
    figure = go.Figure()
    for r in records:
        t_ms = [t * 1e3 for t, _ in r.rss_series]
        added = [(rss - r.rss_before_bytes) / MIB for _, rss in r.rss_series]
        dash = "solid" if r.cache_state == COLD else "dot" if r.cache_state == WARM else "dash"
        figure.add_trace(
            go.Scatter(
                x=t_ms,
                y=added,
                mode="lines",
                name=r.label,
                line={"dash": dash},
                hovertemplate="%{x:.1f} ms: +%{y:.1f} MiB<extra>" + r.label + "</extra>",
            )
        )
        figure.add_trace(
            go.Scatter(
                x=[r.all_touched_s * 1e3],
                y=[r.added_peak_rss_bytes / MIB],
                mode="markers",
                marker={"size": 9, "color": figure.data[-1].line.color},
                showlegend=False,
                hovertemplate="all touched at %{x:.1f} ms<extra></extra>",
            )
        )
    figure.update_layout(
        title=f"{title} (measured; solid = cold, dotted = warm)",
        xaxis_title="time since the load started (ms, measured)",
        yaxis_title="resident memory above the start (MiB)",
        legend={"orientation": "h", "y": -0.25},
        height=460,
        margin={"t": 60, "b": 140},
    )
    return figure


def open_vs_loaded_figure(records: Sequence[LoadRecord]) -> go.Figure:
    """Grouped bars per load: seconds to open, to the first tensor, until every tensor was touched (log x)."""
    labels = [r.label for r in records]
    steps = {
        "open": [r.open_s for r in records],
        "first tensor": [r.first_tensor_s for r in records],
        "all touched": [r.all_touched_s for r in records],
    }
    figure = go.Figure()
    for step, seconds in steps.items():
        figure.add_trace(
            go.Bar(
                y=labels,
                x=[s * 1e3 for s in seconds],
                name=step,
                orientation="h",
                marker_color=STEP_COLORS[step],
                hovertemplate="%{x:.3f} ms<extra>" + step + "</extra>",
            )
        )
    figure.update_layout(
        title="Opening is not loading: time to open vs time until every tensor was touched (measured)",
        xaxis={"title": "milliseconds since the load started (log scale, measured)", "type": "log"},
        barmode="group",
        height=max(300, 70 * len(records) + 120),
        legend={"orientation": "h", "y": -0.2},
        margin={"l": 10},
    )
    return figure


def pair_figure(big: Mapping[str, float], small: Mapping[str, float]) -> go.Figure:
    """The article's pair at a scaled size: how many times more bytes, and how many times longer.

    Args:
        big, small: ``{"label", "size_bytes", "seconds"}`` of the 16-bit and the 4-bit file
            (size counted, seconds measured).
    """
    ratios = {
        "bytes (counted)": big["size_bytes"] / small["size_bytes"],
        "load time (measured)": big["seconds"] / small["seconds"],
    }
    figure = go.Figure(
        go.Bar(
            x=list(ratios),
            y=list(ratios.values()),
            marker_color=["#7f7f7f", "#2ca02c"],
            text=[f"{v:.2f}x" for v in ratios.values()],
            textposition="outside",
        )
    )
    figure.update_layout(
        title=f"{big['label']} vs {small['label']}: ratio of bytes beside ratio of load times",
        yaxis_title=f"{big['label']} ÷ {small['label']}",
        height=380,
    )
    return figure
