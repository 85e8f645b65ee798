"""Figures and tables for the capstone (notebook 07 and ``labkit tour``): the whole journey at a glance.

- ``dashboard(report, qtype)``: four panels: seconds per stage for one type, measured beside the time
  the probed tiers predict (modelled); bytes per stage per type (counted); measured seconds per stage
  per type; perplexity (measured) against file size (counted).
- ``claims_figure(rows)``: the article's claims beside what this machine measured (a table).
- ``budget_figure(plan, qtype)``: which layers a RAM budget keeps resident and which stream.

The HTML report of ``labkit tour`` is written by ``labkit.figures.capstone_report``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from labkit.journey.claims import ClaimRow
from labkit.journey.records import PROBE, STAGES, JourneyReport

KIND_COLORS = {"measured": "#2ca02c", "modelled": "#7f7f7f", "counted": "#1f77b4"}
TYPE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
VERDICT_COLORS = {"held here": "#d9f2d9", "partly": "#fff2cc", "did not hold here": "#f8d7da"}


def _stages(report: JourneyReport, qtype: str) -> list[Any]:
    return [r for s in STAGES for r in report.stages if r.stage == s and r.qtype == qtype]


def _seconds_traces(report: JourneyReport, qtype: str) -> list[go.Bar]:
    rows = _stages(report, qtype)
    names = [r.stage for r in rows][::-1]
    measured = [r.measured_s for r in rows][::-1]
    predicted = [r.predicted_s for r in rows][::-1]
    return [
        go.Bar(
            y=names,
            x=measured,
            orientation="h",
            name="measured here",
            marker_color=KIND_COLORS["measured"],
            hovertext=[r.what for r in rows][::-1],
            legendgroup="kind",
        ),
        go.Bar(
            y=names,
            x=predicted,
            orientation="h",
            name="predicted from the probed tiers (modelled)",
            marker_color=KIND_COLORS["modelled"],
            marker_pattern_shape="/",
            hovertext=[r.prediction for r in rows][::-1],
            legendgroup="kind",
        ),
    ]


def _per_type_traces(report: JourneyReport, field: str, *, show_legend: bool) -> list[go.Bar]:
    stages = [s for s in STAGES if s != PROBE and any(r.stage == s for r in report.stages)]
    traces = []
    for i, v in enumerate(report.variants):
        values = {r.stage: getattr(r, field) for r in report.stages if r.qtype == v.qtype}
        traces.append(
            go.Bar(
                x=stages,
                y=[values.get(s) for s in stages],
                name=v.qtype,
                legendgroup=v.qtype,
                marker_color=TYPE_COLORS[i % len(TYPE_COLORS)],
                showlegend=show_legend,
            )
        )
    return traces


def _quality_trace(report: JourneyReport) -> go.Scatter:
    return go.Scatter(
        x=[v.file_bytes / 1e6 for v in report.variants],
        y=[v.perplexity for v in report.variants],
        mode="markers+text",
        text=[v.qtype for v in report.variants],
        textposition="top center",
        marker={
            "size": 11,
            "color": [TYPE_COLORS[i % len(TYPE_COLORS)] for i in range(len(report.variants))],
        },
        name="perplexity vs size",
        showlegend=False,
        hovertext=[
            f"{v.n_scored} tokens scored (measured); file {v.file_bytes:,} bytes (counted)"
            for v in report.variants
        ],
    )


def dashboard(report: JourneyReport, qtype: str | None = None) -> go.Figure:
    """The journey on one page: four panels, each axis naming its numbers' kind.

    Args:
        report: a ``labkit.journey.JourneyReport``.
        qtype: the type whose stages the first panel shows (default: the first type run).
    """
    qtype = qtype or report.qtypes[0]
    report.variant(qtype)  # KeyError naming the types there are
    figure = make_subplots(
        rows=2,
        cols=2,
        vertical_spacing=0.16,
        horizontal_spacing=0.14,
        subplot_titles=(
            f"{qtype}: seconds per stage, measured vs predicted",
            "bytes per stage per type (counted)",
            "seconds per stage per type (measured)",
            "quality vs size: perplexity (measured) vs file (counted)",
        ),
    )
    for trace in _seconds_traces(report, qtype):
        figure.add_trace(trace, row=1, col=1)
    for trace in _per_type_traces(report, "size_bytes", show_legend=True):
        figure.add_trace(trace, row=1, col=2)
    for trace in _per_type_traces(report, "measured_s", show_legend=False):
        figure.add_trace(trace, row=2, col=1)
    figure.add_trace(_quality_trace(report), row=2, col=2)
    figure.update_xaxes(type="log", title_text="seconds (log)", row=1, col=1)
    figure.update_yaxes(type="log", title_text="bytes, counted (log)", row=1, col=2)
    figure.update_yaxes(type="log", title_text="seconds, measured (log)", row=2, col=1)
    figure.update_xaxes(title_text="file size, MB (counted)", row=2, col=2)
    figure.update_yaxes(title_text="perplexity (measured, lower is better)", row=2, col=2)
    figure.update_layout(
        barmode="group",
        height=820,
        margin={"l": 120, "t": 90},
        title=f"The journey of {report.model} on this machine ({report.machine.cpu})",
        legend={"orientation": "h", "y": -0.08},
    )
    return figure


def claims_figure(rows: Sequence[ClaimRow]) -> go.Figure:
    """The article's claims (quoted), what this machine measured (labelled inline), the verdict."""
    colors = [VERDICT_COLORS.get(r.verdict, "#eeeeee") for r in rows]
    figure = go.Figure(
        go.Table(
            columnwidth=[4, 30, 50, 12],
            header={
                "values": [
                    "#",
                    "the article claims (quoted)",
                    "this machine (each number labelled)",
                    "verdict",
                ],
                "align": "left",
                "fill_color": "#dddddd",
            },
            cells={
                "values": [
                    [r.number for r in rows],
                    [r.claim for r in rows],
                    [r.measured for r in rows],
                    [r.verdict for r in rows],
                ],
                "align": "left",
                "fill_color": [["white"] * len(rows)] * 3 + [colors],
                "height": 44,
            },
        )
    )
    figure.update_layout(
        title="The article's claims, tested on this machine",
        height=160 + 62 * len(rows),
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    return figure


def budget_figure(plan: Any, qtype: str, *, predicted_s: float | None = None) -> go.Figure:
    """One bar per layer, coloured by where a RAM budget puts it: resident, or streamed from the file.

    Args:
        plan: a ``labkit.staging.Plan``.
        qtype: the type's name, for the title.
        predicted_s: the pass's I/O time predicted from the probed tiers (modelled), shown in the title.
    """
    colors = {"gpu": "#2ca02c", "cpu": "#1f77b4", "disk": "#d62728"}
    names = {"gpu": "resident in VRAM", "cpu": "resident in RAM", "disk": "streamed from the file each pass"}
    figure = go.Figure()
    for tier in ("gpu", "cpu", "disk"):
        placed = [p for p in plan.placements if p.tier == tier]
        if placed:
            figure.add_trace(
                go.Bar(
                    x=[p.layer for p in placed],
                    y=[p.size_bytes / 1e6 for p in placed],
                    name=names[tier],
                    marker_color=colors[tier],
                )
            )
    budget = plan.budgets.get("ram")
    budget_text = "no limit" if budget is None else f"{budget / 1e6:.0f} MB"
    io = "" if predicted_s is None else f"; streamed I/O ≈ {predicted_s * 1e3:.0f} ms per pass (modelled)"
    figure.update_layout(
        title=f"{qtype} under a RAM budget of {budget_text}: {plan.n_resident} of "
        f"{len(plan.placements)} layers resident{io}",
        yaxis_title="MB per layer (counted)",
        height=360,
        barmode="stack",
    )
    return figure
