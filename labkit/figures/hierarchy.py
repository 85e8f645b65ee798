"""Figures for chapter 1 (the memory hierarchy): tier speeds and model load times.

Both figures draw from a ``labkit.hierarchy.tiers.ProbeReport`` and keep measured numbers visibly apart
from quoted and modelled ones: each kind has its own colour, bar pattern, legend entry, and
the word "measured", "quoted" or "modelled" on the bar label and in the hover text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import plotly.graph_objects as go

from labkit.hierarchy.tiers import KINDS, TIERS, ProbeReport, TierRecord

# kind -> (colour, bar pattern, legend label)
KIND_STYLE = {
    "measured": ("#1f77b4", "", "measured on this machine"),
    "quoted": ("#b0b0b0", "/", "quoted (source in hover)"),
    "modelled": ("#ff7f0e", "x", "modelled (formula in hover)"),
}

# The article's worked example (SEED.md claim 4): 10 GB unquantized vs about 2.5 GB as Q4.
ARTICLE_MODELS = {"article: 10 GB fp16": 10 * 10**9, "article: 2.5 GB Q4": 25 * 10**8}


@dataclass(frozen=True)
class LoadTime:
    """Seconds to move one model through one tier at that tier's rate."""

    model: str
    size_bytes: int
    record: TierRecord
    seconds: float
    seconds_best: float | None  # at the high end of a quoted range, else None


def bar_label(record: TierRecord) -> str:
    """Return the axis label of a record: tier, operation and kind on one line."""
    return f"{record.tier} · {record.operation} ({record.kind})"


def _bar_layout(fig: go.Figure, title: str, value_axis_title: str, labels: list[str]) -> None:
    """Horizontal bars, one per tier, top to bottom in tier order; long labels stay readable."""
    fig.update_layout(
        title={"text": title, "y": 0.99, "yanchor": "top"},
        barmode="overlay",
        height=200 + 34 * len(labels),
        xaxis={"type": "log", "title": value_axis_title},
        yaxis={"categoryorder": "array", "categoryarray": labels[::-1], "automargin": True},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.01, "xanchor": "left", "x": 0},
        margin={"t": 140},
        uniformtext={"minsize": 11, "mode": "show"},
    )


def rate_text(record: TierRecord) -> str:
    """Return the rate as a reader should see it: '1.8 GB/s', '0.5–5 GB/s', '> 500 GB/s'."""
    if record.kind == "quoted" and record.note.startswith(">"):
        return record.note  # a lower bound, e.g. "> 500 GB/s"
    high = f"–{record.gb_per_s_max:.3g}" if record.gb_per_s_max is not None else ""
    return f"{record.gb_per_s:.3g}{high} GB/s"


def seconds_text(row: LoadTime) -> str:
    """Return a load time as text: a range for a quoted range, '<' for a lower-bound rate."""
    if row.record.kind == "quoted" and row.record.note.startswith(">"):
        return f"< {row.seconds:.3g} s"
    if row.seconds_best is not None:
        return f"{row.seconds_best:.3g}–{row.seconds:.3g} s"
    return f"{row.seconds:.3g} s"


def _hover(record: TierRecord) -> str:
    origin = record.method if record.kind != "quoted" else f"source: {record.source}"
    first = (
        ""
        if record.first_run_gb_per_s is None
        else f"<br>first run (reported apart): {record.first_run_gb_per_s:.2f} GB/s"
    )
    note = f"<br>{record.note}" if record.note else ""
    return f"<b>{record.kind.upper()}</b><br>{origin}{first}{note}"


def _ordered(records: list[TierRecord]) -> list[TierRecord]:
    """Sort by tier (disk → VRAM), then measured before quoted before modelled."""
    return sorted(records, key=lambda r: (TIERS.index(r.tier), KINDS.index(r.kind)))


def tier_figure(report: ProbeReport, *, title: str | None = None) -> go.Figure:
    """Bar chart (log scale) of every tier's GB/s, measured beside quoted and modelled.

    Args:
        report: what ``labkit.hierarchy.probe.run()`` returned.
        title: the figure title (default names the test-file size).

    Returns:
        A plotly Figure with one trace per kind (fixed order: measured, quoted, modelled).
    """
    records = _ordered(list(report))
    fig = go.Figure()
    for kind in KINDS:
        colour, pattern, legend = KIND_STYLE[kind]
        rows = [r for r in records if r.kind == kind]
        high = [(r.gb_per_s_max - r.gb_per_s) if r.gb_per_s_max else 0.0 for r in rows]
        fig.add_bar(
            name=legend,
            orientation="h",
            y=[bar_label(r) for r in rows],
            x=[r.gb_per_s for r in rows],
            marker={"color": colour, "pattern": {"shape": pattern}},
            text=[f"{rate_text(r)} {r.kind}" for r in rows],
            textposition="outside",
            cliponaxis=False,
            error_x={
                "type": "data",
                "symmetric": False,
                "array": high,
                "arrayminus": [0.0] * len(rows),
                "visible": any(high),
            },
            hovertext=[_hover(r) for r in rows],
            hoverinfo="text+x",
        )
    _bar_layout(
        fig,
        title
        or f"I/O tiers: {report.size_bytes / 2**20:.0f} MiB test file, "
        f"{report.block_bytes / 2**10:.0f} KiB reads (error bars: quoted ranges)",
        "GB/s (10^9 bytes/s), log scale",
        [bar_label(r) for r in records],
    )
    return fig


def load_times(report: ProbeReport, models: Mapping[str, int]) -> list[LoadTime]:
    """Return the seconds each model takes to pass through each tier of ``report``.

    Args:
        models: display name -> size in bytes.

    Returns:
        One ``LoadTime`` per (model, record), in the report's tier order.
    """
    rows = []
    for model, size_bytes in models.items():
        for record in _ordered(list(report)):
            best = None if record.gb_per_s_max is None else size_bytes / (record.gb_per_s_max * 1e9)
            seconds = size_bytes / (record.gb_per_s * 1e9)
            rows.append(LoadTime(model, size_bytes, record, seconds, best))
    return rows


def load_time_figure(report: ProbeReport, model: str, size_bytes: int) -> go.Figure:
    """Bar chart (log scale) of the seconds to move ``size_bytes`` through each tier.

    Measured tiers and quoted/modelled ones keep the colours and patterns of ``tier_figure``.
    """
    rows = load_times(report, {model: size_bytes})
    fig = go.Figure()
    for kind in KINDS:
        colour, pattern, legend = KIND_STYLE[kind]
        mine = [row for row in rows if row.record.kind == kind]
        fig.add_bar(
            name=legend,
            orientation="h",
            y=[bar_label(row.record) for row in mine],
            x=[row.seconds for row in mine],
            marker={"color": colour, "pattern": {"shape": pattern}},
            text=[f"{seconds_text(row)} {kind}" for row in mine],
            textposition="outside",
            cliponaxis=False,
            hovertext=[_hover(row.record) for row in mine],
            hoverinfo="text+x",
        )
    _bar_layout(
        fig,
        f"Time to move {model} ({size_bytes / 1e9:.3g} GB) through each tier",
        "seconds, log scale",
        [bar_label(row.record) for row in rows],
    )
    return fig
