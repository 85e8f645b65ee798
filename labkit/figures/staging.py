"""Figures for notebook 06: where each layer lives, and a staged pass as a timeline.

- ``plan_figure(plan)``: one bar per layer, coloured by tier, with the budget it was planned under.
- ``timeline_figure(traces)``: a Gantt chart, one lane per worker (read, copy, compute) and per
  trace; *modelled* spans are hatched and say "modelled" in their legend entry and hover text.
- ``speed_curve_figure(rows)``: decode tokens/s (measured) against resident layers, with the bytes
  each token must read from the file (counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from labkit.staging.plan import Plan
from labkit.staging.trace import LANE_OF_STAGE, Trace

TIER_COLORS = {"gpu": "#2ca02c", "cpu": "#1f77b4", "disk": "#ff7f0e"}
STAGE_COLORS = {"read": "#ff7f0e", "copy": "#9467bd", "dequantize": "#8c564b", "compute": "#1f77b4"}


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def plan_figure(plan: Plan, *, title: str | None = None) -> go.Figure:
    """One bar per layer (its bytes in its tier, counted), coloured by tier."""
    figure = go.Figure()
    meaning = {
        "gpu": "resident on the GPU",
        "cpu": "resident in RAM" if plan.device == "cpu" else "in RAM, copied",
        "disk": "read from the file every pass",
    }
    for tier, color in TIER_COLORS.items():
        placed = [p for p in plan.placements if p.tier == tier]
        if placed:
            figure.add_trace(
                go.Bar(
                    x=[p.layer for p in placed],
                    y=[p.size_bytes for p in placed],
                    name=f"{tier}: {meaning[tier]}",
                    marker_color=color,
                    hovertext=[f"{p.layer}: {_mib(p.size_bytes)} (counted)" for p in placed],
                )
            )
    budgets = ", ".join(f"{w} {_mib(b) if b is not None else 'no limit'}" for w, b in plan.budgets.items())
    figure.update_layout(
        title=title or f"Where each layer lives (budgets: {budgets}; order {plan.order!r})",
        xaxis={
            "title": "layer (forward order)",
            "categoryorder": "array",
            "categoryarray": [p.layer for p in plan.placements],
        },
        yaxis_title="bytes in its tier (counted)",
        barmode="overlay",
        height=340,
    )
    return figure


def _label(trace: Trace) -> str:
    kind = "measured" if trace.kind == "measured" else f"projected, copies modelled ({trace.link.name})"  # type: ignore[union-attr]
    return f"{trace.mode}, {kind}"


def timeline_figure(traces: Sequence[tuple[str, Trace]] | Trace, *, title: str | None = None) -> go.Figure:
    """A Gantt chart of one or more staged passes: lanes read / copy / compute for each trace.

    Args:
        traces: a trace, or ``(label, trace)`` pairs shown one above the other.
        title: the figure's title (default: each trace's makespan and how it was obtained).
    """
    pairs = [(_label(traces), traces)] if isinstance(traces, Trace) else list(traces)
    figure = go.Figure()
    shown: set[str] = set()
    lanes: list[str] = []
    for label, trace in pairs:
        for lane in ("compute", "copy", "read"):
            lanes.append(f"{label} · {lane}")
        for stage, color in STAGE_COLORS.items():
            for source in ("measured", "modelled"):
                spans = [s for s in trace.spans if s.stage == stage and s.source == source]
                if not spans:
                    continue
                name = f"{stage} ({source})"
                figure.add_trace(
                    go.Bar(
                        base=[s.start_s * 1e3 for s in spans],
                        x=[s.elapsed_s * 1e3 for s in spans],
                        y=[f"{label} · {LANE_OF_STAGE[stage]}" for s in spans],
                        orientation="h",
                        name=name,
                        legendgroup=name,
                        showlegend=name not in shown,
                        marker_color=color,
                        marker_pattern_shape="/" if source == "modelled" else "",
                        marker_line_width=0.5,
                        marker_line_color="white",
                        text=[s.name for s in spans],
                        textposition="inside",
                        insidetextanchor="middle",
                        hovertext=[
                            f"{s.name} {s.stage}: {s.elapsed_s * 1e3:.2f} ms, {s.size_bytes:,} bytes, {s.source}"
                            f" ({s.clock}){'; ' + s.note if s.note else ''}"
                            for s in spans
                        ],
                    )
                )
                shown.add(name)
    makespans = "; ".join(
        f"{label}: {trace.summary().makespan_s * 1e3:,.1f} ms {trace.kind}" for label, trace in pairs
    )
    figure.update_layout(
        title=title or f"Staged pass timeline ({makespans})",
        barmode="overlay",
        xaxis_title="time since the pass began (ms)",
        height=140 + 90 * len(pairs),
        yaxis={"categoryorder": "array", "categoryarray": lanes[::-1]},
        margin={"l": 220},
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


def speed_curve_figure(rows: Sequence[dict[str, Any]], *, title: str | None = None) -> go.Figure:
    """Tokens/s (measured) against resident layers, and the file bytes each token reads (counted).

    Args:
        rows: dicts with ``n_resident``, ``tokens_per_s`` and ``read_bytes_per_token``; an optional
            ``label`` groups rows into one line per model.
    """
    figure = go.Figure()
    labels = list(dict.fromkeys(r.get("label", "model") for r in rows))
    for label in labels:
        mine = sorted((r for r in rows if r.get("label", "model") == label), key=lambda r: r["n_resident"])
        figure.add_trace(
            go.Scatter(
                x=[r["n_resident"] for r in mine],
                y=[r["tokens_per_s"] for r in mine],
                mode="lines+markers",
                name=f"{label}: tokens/s (measured)",
            )
        )
        figure.add_trace(
            go.Bar(
                x=[r["n_resident"] for r in mine],
                y=[r["read_bytes_per_token"] / 2**20 for r in mine],
                name=f"{label}: MiB read from the file per token (counted)",
                yaxis="y2",
                opacity=0.3,
            )
        )
    figure.update_layout(
        title=title or "Decode speed against resident layers: speed collapses when the budget is short",
        xaxis_title="resident layers (the rest stream from the file every token)",
        yaxis_title="tokens/s (measured)",
        height=380,
        legend={"orientation": "h", "y": -0.3},
        yaxis2={"title": "MiB read per token (counted)", "overlaying": "y", "side": "right"},
    )
    return figure
