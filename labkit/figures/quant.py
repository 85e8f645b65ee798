"""Figures of notebook 02 (quantization). Needs plotly.

- ``annotated_block``   one block's bytes in hex, each field named (d, m, qs, ...)
- ``size_error_figure`` size against error for every type (``labkit.quant.tradeoff.sweep``)
- ``error_histogram``   the distribution of ``x_hat - x``
- ``stats_table``       the error metrics as a small HTML table
- ``load_path_figure``  reading a model file against dequantizing it
  (``labkit.quant.tradeoff.time_load_path``)

The measurements live in ``labkit.quant.tradeoff``; these functions only draw its
records, and every title says whether a number was measured or computed.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
import torch

from labkit.formats import FORMATS
from labkit.quant import QuantErrorStats
from labkit.quant.tradeoff import LoadPathTimes, TypePoint

# The fields of each block, in byte order: (name, size in bytes). Kept beside the
# figures that draw them; the authoritative layouts are the kernels' docstrings.
BLOCK_FIELDS: dict[str, list[tuple[str, int]]] = {
    "Q8_0": [("d", 2), ("qs", 32)],
    "Q4_0": [("d", 2), ("qs", 16)],
    "Q4_1": [("d", 2), ("m", 2), ("qs", 16)],
    "Q5_0": [("d", 2), ("qh", 4), ("qs", 16)],
    "Q5_1": [("d", 2), ("m", 2), ("qh", 4), ("qs", 16)],
    "Q2_K": [("scales", 16), ("qs", 64), ("d", 2), ("dmin", 2)],
    "Q3_K": [("hmask", 32), ("qs", 64), ("scales", 12), ("d", 2)],
    "Q4_K": [("d", 2), ("dmin", 2), ("scales", 12), ("qs", 128)],
    "Q5_K": [("d", 2), ("dmin", 2), ("scales", 12), ("qh", 32), ("qs", 128)],
    "Q6_K": [("ql", 128), ("qh", 64), ("scales", 16), ("d", 2)],
}


def annotated_block(raw: bytes, qtype: str, *, bytes_per_line: int = 16) -> str:
    """Hex of one block, each line labelled with the field(s) its bytes belong to.

    Args:
        raw: at least one block of ``qtype``'s bytes (only the first block is shown).
        qtype: a block type of ``BLOCK_FIELDS``.
    """
    fields = BLOCK_FIELDS[qtype]
    assert sum(n for _, n in fields) == FORMATS[qtype].type_size
    lines, start = [], 0
    for name, size in fields:
        for offset in range(0, size, bytes_per_line):
            chunk = raw[start + offset : start + min(size, offset + bytes_per_line)]
            label = (
                f"{name}[{offset}:{min(size, offset + bytes_per_line)}]" if size > bytes_per_line else name
            )
            lines.append(f"{start + offset:4d}  {chunk.hex(' '):<{3 * bytes_per_line}}  {label}")
        start += size
    return "\n".join(lines)


def size_error_figure(curves: Mapping[str, Sequence[TypePoint]]) -> go.Figure:
    """SNR against size, one line of points per set of weights (e.g. model and gaussian)."""
    fig = go.Figure()
    for label, points in curves.items():
        finite = [p for p in points if p.stats.snr_db != float("inf")]
        fig.add_scatter(
            x=[p.size_bytes / 1e6 for p in finite],
            y=[p.stats.snr_db for p in finite],
            name=label,
            mode="markers+text",
            text=[p.qtype for p in finite],
            textposition="top center",
            hovertext=[
                f"{p.qtype}: {p.stats.bits_per_weight:.4g} bits/weight, {p.size_bytes / 1e6:.1f} MB, "
                f"SNR {p.stats.snr_db:.1f} dB, max error {p.stats.max_abs_error:.3g}"
                for p in finite
            ],
            hoverinfo="text",
        )
    fig.update_layout(
        title="Size against error: bytes computed from the block table, SNR measured on a sample",
        xaxis_title="MB for all 2-D weights of the default model (log scale)",
        xaxis_type="log",
        yaxis_title="SNR in dB (higher = closer to the original)",
        height=440,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )
    return fig


def error_histogram(
    original: torch.Tensor, restored: torch.Tensor, *, title: str, n_bins: int = 80
) -> go.Figure:
    """Histogram of ``restored - original`` (measured)."""
    error = (restored - original).reshape(-1).float()
    fig = go.Figure(go.Histogram(x=error.numpy(), nbinsx=n_bins, marker_color="#4C78A8"))
    fig.update_layout(
        title=title,
        xaxis_title="x_hat - x",
        yaxis_title="weights",
        bargap=0.02,
        height=340,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )
    return fig


def stats_table(stats: QuantErrorStats, *, note: str = "") -> str:
    """The four numbers of a ``QuantErrorStats`` as a small HTML table."""
    rows = [
        ("bits per weight", f"{stats.bits_per_weight:.4g}" if stats.bits_per_weight else "–"),
        ("MSE", f"{stats.mse:.3g}"),
        ("max |error|", f"{stats.max_abs_error:.3g}"),
        ("SNR", f"{stats.snr_db:.1f} dB"),
        ("weights compared", f"{stats.n_weights:,}"),
    ]
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td><b>{html.escape(v)}</b></td></tr>" for k, v in rows)
    return f"<table>{cells}</table><p><i>{html.escape(note)}</i></p>"


def load_path_figure(t: LoadPathTimes) -> go.Figure:
    """Bars of the measured seconds of each step of a Python load path."""
    bars = [
        ("read file from the device", t.read_device_s),
        ("read file, warm (page cache)", t.read_warm_s),
        ("dequantize to float32 (labkit)", t.dequantize_s),
        ("dequantize to float32 (gguf-py)", t.gguf_py_s),
    ]
    bars = [(label, s) for label, s in bars if s is not None]
    fig = go.Figure(
        go.Bar(
            x=[s for _, s in bars],
            y=[label for label, _ in bars],
            orientation="h",
            marker_color=["#72B7B2", "#54A24B", "#E45756", "#F58518"][: len(bars)],
            text=[f"{s * 1e3:,.0f} ms" for _, s in bars],
            textposition="auto",
        )
    )
    fig.update_layout(
        title=f"Loading the default model in Python: {t.file_bytes / 1e6:.0f} MB file -> "
        f"{t.n_weights * 4 / 1e6:.0f} MB float32 (all measured here)",
        xaxis_title="seconds",
        height=300,
        margin={"l": 230, "r": 20, "t": 50, "b": 50},
    )
    return fig
