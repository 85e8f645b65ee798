"""Figures and tables for notebook 05: what moves while a model runs.

- ``journey_table(records)``: one token's hops (``labkit.runtime.transfers`` records) as text, summed per hop:
  bytes (counted, exact) and time (measured with CUDA events, or modelled: not timed).
- ``journey_figure(records)``: the same as bars of bytes (log scale), coloured by how the time is known.
- ``kv_growth_figure(...)``: KV cache bytes against context length, beside the weights' bytes.
- ``speed_figure(rows)``: measured tokens/s beside the memory-bandwidth bound.
- ``quality_figure(rows)``: perplexity (measured) against file size (on disk).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from labkit.runtime.kvcache import kv_cache_size_bytes
from labkit.runtime.transfers import HOPS, Transfer

BASIS_COLORS = {"measured": "#2ca02c", "modelled": "#7f7f7f"}


@dataclass(frozen=True)
class HopTotal:
    """All records of one hop in one step, summed (``size_bytes`` counted; ``time_basis`` as in ``Transfer``)."""

    hop: str
    n_records: int
    size_bytes: int
    route: str
    time_basis: str
    elapsed_s: float | None


def hop_totals(records: Iterable[Transfer]) -> list[HopTotal]:
    """Sum records per hop (in ``HOPS`` order); times are summed only when every record's time was measured."""
    groups: dict[str, list[Transfer]] = defaultdict(list)
    for record in records:
        groups[record.hop].append(record)
    totals = []
    for hop in (h for h in HOPS if h in groups):
        rows = groups[hop]
        measured = all(r.time_basis == "measured" for r in rows)
        totals.append(
            HopTotal(
                hop,
                len(rows),
                sum(r.size_bytes for r in rows),
                f"{rows[0].source} -> {rows[0].destination}",
                "measured" if measured else "modelled",
                sum(r.elapsed_s or 0.0 for r in rows) if measured else None,
            )
        )
    return totals


def journey_table(records: Iterable[Transfer]) -> str:
    """A fixed-width table of one step's hops: records, bytes (counted), route, and how the time is known."""
    lines = [f"{'hop':26} {'records':>7} {'bytes (counted)':>16}  {'route':26} time"]
    for t in hop_totals(records):
        time_text = f"measured, {t.elapsed_s * 1e6:.0f} us" if t.elapsed_s is not None else t.time_basis
        lines.append(f"{t.hop:26} {t.n_records:>7} {t.size_bytes:>16,}  {t.route:26} {time_text}")
    return "\n".join(lines)


def journey_figure(
    records: Iterable[Transfer], *, title: str = "One token's journey: bytes per hop (counted)"
) -> go.Figure:
    """Horizontal bars of bytes per hop (log scale), coloured by whether the hop's time was measured."""
    totals = hop_totals(records)[::-1]  # first hop on top
    figure = go.Figure(
        go.Bar(
            x=[t.size_bytes for t in totals],
            y=[t.hop for t in totals],
            orientation="h",
            marker_color=[BASIS_COLORS[t.time_basis] for t in totals],
            text=[f"{_size_text(t.size_bytes)} (time {t.time_basis})" for t in totals],
            textposition="auto",
            hovertext=[f"{t.route}; {t.n_records} records; bytes counted" for t in totals],
        )
    )
    figure.update_layout(
        title=title,
        xaxis={"type": "log", "title": "bytes, counted (log scale)"},
        height=360,
        margin={"l": 180},
    )
    return figure


def kv_growth_figure(
    *,
    n_layers: int,
    n_kv_heads: int,
    head_dim: int,
    max_context: int,
    weight_bytes: int,
    batch: int = 1,
    bytes_per_element: float = 2,
    marker_context: int | None = None,
) -> go.Figure:
    """KV cache bytes (modelled by the formula) against context length, with the weights' bytes as a line."""
    contexts = sorted({max(1, round(max_context * i / 64)) for i in range(65)})
    sizes = [
        kv_cache_size_bytes(
            n_layers=n_layers,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            context_length=n,
            batch=batch,
            bytes_per_element=bytes_per_element,
        )
        for n in contexts
    ]
    figure = go.Figure(go.Scatter(x=contexts, y=sizes, mode="lines", name=f"KV cache (batch {batch})"))
    figure.add_trace(
        go.Scatter(
            x=[contexts[0], contexts[-1]],
            y=[weight_bytes, weight_bytes],
            mode="lines",
            line={"dash": "dash"},
            name="weights (as loaded)",
        )
    )
    if marker_context is not None:
        size = kv_cache_size_bytes(
            n_layers=n_layers,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            context_length=marker_context,
            batch=batch,
            bytes_per_element=bytes_per_element,
        )
        figure.add_trace(
            go.Scatter(
                x=[marker_context],
                y=[size],
                mode="markers+text",
                name="chosen context",
                text=[_size_text(size)],
                textposition="top left",
                marker={"size": 10},
            )
        )
    figure.update_layout(
        title="KV cache size vs context length (modelled from the metadata)",
        xaxis_title="context length (tokens)",
        yaxis_title="bytes",
        height=380,
    )
    return figure


def speed_figure(rows: Sequence[dict]) -> go.Figure:
    """Grouped bars per runner: measured tokens/s and the bandwidth bound (``rows``: runner, tokens_per_s, bound)."""
    names = [r["runner"] for r in rows]
    figure = go.Figure(
        [
            go.Bar(
                name="measured tokens/s",
                x=names,
                y=[r["tokens_per_s"] for r in rows],
                marker_color=BASIS_COLORS["measured"],
            ),
            go.Bar(
                name="bandwidth bound (modelled)",
                x=names,
                y=[r["bound_tokens_per_s"] for r in rows],
                marker_color=BASIS_COLORS["modelled"],
            ),
        ]
    )
    figure.update_layout(
        barmode="group",
        title="Decode speed vs the memory-bandwidth bound",
        yaxis={"type": "log", "title": "tokens/s (log scale)"},
        height=380,
    )
    return figure


def quality_figure(rows: Sequence[dict]) -> go.Figure:
    """Perplexity (measured) against file size: one labelled point per row (qtype, file_bytes, perplexity)."""
    figure = go.Figure(
        go.Scatter(
            x=[r["file_bytes"] / 1e6 for r in rows],
            y=[r["perplexity"] for r in rows],
            mode="markers+text",
            text=[r["qtype"] for r in rows],
            textposition="top center",
            marker={"size": 11},
        )
    )
    figure.update_layout(
        title="Quality vs size: perplexity on the lab text (measured; lower is better)",
        xaxis_title="GGUF file size (MB, on disk)",
        yaxis_title="perplexity",
        height=380,
    )
    return figure


def _size_text(size_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.1f} {unit}"
    return f"{size_bytes} B"
