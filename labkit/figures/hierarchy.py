"""Figures for chapter 1 (the memory hierarchy): tier speeds, model load times, copy speed by size.

The figures draw from a ``labkit.hierarchy.tiers.ProbeReport`` and keep measured numbers visibly apart
from quoted and modelled ones: each kind has its own colour, bar pattern, legend entry, and
the word "measured", "quoted" or "modelled" on the bar label and in the hover text.

A load *time* is never measured here: it is modelled, ``seconds = bytes / rate``, from a rate that
was measured (or quoted, or itself modelled). Only rows that are ways to load a model enter the
load-time table (``is_load_path``): reading the file cold or from the page cache, copying a mapped
file into RAM, and the RAM → VRAM hop. Touching a mapped page copies nothing, writing is not
loading, and VRAM bandwidth is what compute reads, not how weights arrive.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from labkit.hierarchy.caches import CopyRate
from labkit.hierarchy.tiers import KINDS, TIERS, ProbeReport, TierRecord

# kind -> (colour, bar pattern, legend label)
KIND_STYLE = {
    "measured": ("#1f77b4", "", "measured on this machine"),
    "quoted": ("#b0b0b0", "/", "quoted (source in hover)"),
    "modelled": ("#ff7f0e", "x", "modelled (formula in hover)"),
}

# The article's worked example (SEED.md claim 4): 10 GB unquantized vs about 2.5 GB as Q4 (its round number).
ARTICLE_MODELS = {"article: 10 GB fp16": 10 * 10**9, "article: 2.5 GB Q4 (quoted)": 25 * 10**8}

# Operations that move a model's bytes one hop towards the compute (prefix match).
LOAD_PATH_OPERATIONS = (
    "cold read()",
    "O_DIRECT read()",
    "warm read()",
    "mmap + copy into RAM",
    "HDD (article)",
    "SSD (article)",
    "host→device",
    "PCIe 4.0 x16",
    "PCIe 5.0 x16",
    "RAM → VRAM hop",
)


def is_load_path(record: TierRecord) -> bool:
    """True for rows that are a way to move a model's bytes one hop: reads, mapped copies, RAM → VRAM."""
    return record.operation.startswith(LOAD_PATH_OPERATIONS)


def time_kind(record: TierRecord) -> str:
    """How a load time from this rate was obtained: always modelled, from a rate of some kind."""
    return f"modelled: bytes ÷ a rate {'measured here' if record.kind == 'measured' else record.kind}"


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
    """Return the seconds each model takes to pass each load-path hop of ``report`` (modelled).

    Args:
        models: display name -> size in bytes.

    Returns:
        One ``LoadTime`` per (model, load-path record), in the report's tier order.
    """
    rows = []
    for model, size_bytes in models.items():
        for record in _ordered([r for r in report if is_load_path(r)]):
            best = None if record.gb_per_s_max is None else size_bytes / (record.gb_per_s_max * 1e9)
            seconds = size_bytes / (record.gb_per_s * 1e9)
            rows.append(LoadTime(model, size_bytes, record, seconds, best))
    return rows


def load_time_figure(report: ProbeReport, models: Mapping[str, int]) -> go.Figure:
    """Bar chart (log scale): modelled seconds for each model through each load-path hop.

    One trace per model; a bar is solid when its rate was measured here, hatched when quoted or
    modelled, and its label names the kind.
    """
    rows = load_times(report, models)
    labels = list(dict.fromkeys(bar_label(row.record) for row in rows))
    fig = go.Figure()
    for model in models:
        mine = [row for row in rows if row.model == model]
        fig.add_bar(
            name=model,
            orientation="h",
            y=[bar_label(row.record) for row in mine],
            x=[row.seconds for row in mine],
            marker={"pattern": {"shape": [KIND_STYLE[row.record.kind][1] for row in mine]}},
            text=[seconds_text(row) for row in mine],
            textposition="outside",
            cliponaxis=False,
            hovertext=[f"{time_kind(row.record)}<br>{_hover(row.record)}" for row in mine],
            hoverinfo="text+x",
        )
    _bar_layout(
        fig,
        "Load time, MODELLED as bytes ÷ rate (solid: rate measured here; hatched: quoted/modelled rate)",
        "seconds (modelled), log scale",
        labels,
    )
    fig.update_layout(barmode="group", height=200 + 22 * len(labels) * max(len(models), 1))
    return fig


def copy_sweep_figure(rates: Sequence[CopyRate], *, highlight_bytes: int | None = None) -> go.Figure:
    """Copy speed (measured) against buffer size, log-log; ``highlight_bytes`` marks one size."""
    fig = go.Figure()
    fig.add_scatter(
        x=[rate.size_bytes for rate in rates],
        y=[rate.record.gb_per_s for rate in rates],
        mode="lines+markers",
        name="measured on this machine",
        marker={"color": KIND_STYLE["measured"][0], "size": 9},
        hovertext=[
            f"{r.record.operation}: {r.record.gb_per_s:.2f} GB/s (measured)<br>{r.record.method}"
            for r in rates
        ],
        hoverinfo="text",
    )
    chosen = [rate for rate in rates if rate.size_bytes == highlight_bytes]
    if chosen:
        fig.add_scatter(
            x=[chosen[0].size_bytes],
            y=[chosen[0].record.gb_per_s],
            mode="markers",
            name="the slider's size",
            marker={"color": "#d62728", "size": 16, "symbol": "circle-open", "line": {"width": 3}},
        )
    fig.update_layout(
        title="Copy speed by buffer size (measured, 1 thread): small buffers stay in the CPU's caches",
        xaxis={"type": "log", "title": "buffer size (bytes), log scale"},
        yaxis={"type": "log", "title": "GB/s (10^9 bytes/s), log scale"},
        height=420,
    )
    return fig


def report_table_html(report: ProbeReport, *, bar: Callable[..., str] | None = None) -> str:
    """The probe's rows as an HTML table: kind, tier, operation, rate, first run, note.

    Args:
        bar: draws a text bar per row, ``bar(gb_per_s, largest, log_floor=...)`` (log scale), if given.
    """
    largest = max(record.gb_per_s for record in report)
    floor = min(record.gb_per_s for record in report) / 2
    head = "<th>kind</th><th>tier</th><th>operation</th><th>rate</th><th>first run</th><th>note</th>"
    cells = [f"<tr>{head}{'<th>GB/s, log scale</th>' if bar else ''}</tr>"]
    for record in report:
        first = "" if record.first_run_gb_per_s is None else f"{record.first_run_gb_per_s:.3g} GB/s"
        drawn = ""
        if bar is not None:
            drawn = bar(record.gb_per_s, largest, log_floor=floor)
            drawn = f'<td style="text-align:left;font-family:monospace">{drawn}</td>'
        cells.append(
            f"<tr><td>{record.kind}</td><td>{html.escape(record.tier)}</td>"
            f"<td>{html.escape(record.operation)}</td><td>{html.escape(rate_text(record))}</td>"
            f"<td>{first}</td><td>{html.escape(record.note)}</td>{drawn}</tr>"
        )
    return "<table>" + "".join(cells) + "</table>"


def load_time_table_html(report: ProbeReport, models: Mapping[str, int]) -> str:
    """Load times as an HTML table: one row per load-path hop, one column per model.

    Every time is modelled (bytes ÷ rate); the "rate" column says whether the rate was measured
    here (bold), quoted or modelled (grey italic).
    """
    rows = load_times(report, models)
    head = "".join(f"<th>{html.escape(name)}<br>{size / 1e9:.3g} GB</th>" for name, size in models.items())
    cells = [f"<tr><th>tier</th><th>load path</th><th>rate (its kind)</th>{head}</tr>"]
    for record in _ordered([r for r in report if is_load_path(r)]):
        style = "font-weight:bold" if record.kind == "measured" else "font-style:italic;color:#666"
        times = "".join(f"<td>{seconds_text(row)}</td>" for row in rows if row.record is record)
        kind = "measured here" if record.kind == "measured" else record.kind
        cells.append(
            f'<tr style="{style}"><td>{html.escape(record.tier)}</td><td>{html.escape(record.operation)}</td>'
            f"<td>{html.escape(rate_text(record))} ({kind})</td>{times}</tr>"
        )
    caption = "<caption>load time in seconds, <b>modelled</b> = bytes ÷ rate (no model was loaded)</caption>"
    return f"<table>{caption}{''.join(cells)}</table>"
