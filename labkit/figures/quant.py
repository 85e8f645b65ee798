"""Figures and measurements of notebook 02 (quantization). Needs plotly.

- ``annotated_block``   one block's bytes in hex, each field named (d, m, qs, ...)
- ``model_sample``      float32 rows sampled from a GGUF model's weight matrices
- ``sweep`` / ``size_error_figure``  size against error for every type
- ``error_histogram``   the distribution of ``x_hat - x``
- ``time_load_path`` / ``load_path_figure``  reading a model file against dequantizing it, measured

Every number these functions return or draw is either *measured* here (timings,
errors) or *computed* exactly from the block table (sizes); the figure titles
say which.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch

from labkit import pagecache
from labkit.formats import FORMATS
from labkit.quant import QUANT_TYPES, QuantErrorStats, dequantize, model_error_metrics, quantize

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
            label = f"{name}[{offset}:{min(size, offset + bytes_per_line)}]" if size > bytes_per_line else name
            lines.append(f"{start + offset:4d}  {chunk.hex(' '):<{3 * bytes_per_line}}  {label}")
        start += size
    return "\n".join(lines)


def model_sample(f: Any, *, every_nth_row: int = 16) -> dict[str, torch.Tensor]:
    """Every ``every_nth_row``-th row of each 2-D weight of an open ``labkit.gguf`` file, as float32.

    Returns:
        name -> (rows, n_per_row) float32, decoded from the file's own type.
    """
    sample = {}
    for name, info in f.tensors.items():
        if len(info.shape) == 2:
            sample[name] = f.tensor(name)[::every_nth_row].contiguous()
    return sample


def as_rows(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Flatten and cut into rows that are whole blocks (drops the few weights left over).

    SmolLM2's rows are 576 weights, not a multiple of the K-quants' 256; llama.cpp
    then picks another type for such tensors. To measure a format's error on these
    weights anyway, regroup them: a block's error depends only on its own weights.
    """
    flat = x.reshape(-1)
    usable = flat.numel() // block_size * block_size
    return flat[:usable].reshape(-1, block_size)  # (rows, block_size)


@dataclass(frozen=True)
class TypePoint:
    """One type's cost and error on one set of weights.

    Attributes:
        qtype: the type.
        size_bytes: bytes of the whole model's 2-D weights in this type (computed from the
            block table, checked against ``quantize``'s output on the sample).
        stats: error metrics, measured on the sample.
    """

    qtype: str
    size_bytes: int
    stats: QuantErrorStats


def sweep(sample: Mapping[str, torch.Tensor], n_weights: int, qtypes: Iterable[str] = QUANT_TYPES) -> list[TypePoint]:
    """Quantize the sample to each type, measure the error, and size the whole model in that type.

    Args:
        sample: name -> float32 weights (e.g. from ``model_sample``).
        n_weights: how many weights the whole model's 2-D tensors hold.
        qtypes: the types to try.
    """
    points = []
    for qtype in qtypes:
        fmt = FORMATS[qtype]
        pairs, sample_bytes, sample_weights = [], 0, 0
        for x in sample.values():
            rows = as_rows(x, fmt.block_size)
            q = quantize(rows, qtype)
            sample_bytes += q.numel()
            sample_weights += rows.numel()
            pairs.append((rows, dequantize(q, qtype, rows.shape)))
        assert sample_bytes * 8 == sample_weights * fmt.bits_per_weight  # the table is what quantize writes
        size_bytes = round(n_weights * fmt.bits_per_weight / 8)
        points.append(TypePoint(qtype, size_bytes, model_error_metrics(pairs, qtype)))
    return points


def size_error_figure(curves: Mapping[str, Sequence[TypePoint]]) -> go.Figure:
    """SNR against size, one line of points per set of weights (e.g. model and gaussian)."""
    fig = go.Figure()
    for label, points in curves.items():
        finite = [p for p in points if p.stats.snr_db != float("inf")]
        fig.add_scatter(
            x=[p.size_bytes / 1e6 for p in finite], y=[p.stats.snr_db for p in finite], name=label,
            mode="markers+text", text=[p.qtype for p in finite], textposition="top center",
            hovertext=[f"{p.qtype}: {p.stats.bits_per_weight:.4g} bits/weight, {p.size_bytes / 1e6:.1f} MB, "
                       f"SNR {p.stats.snr_db:.1f} dB, max error {p.stats.max_abs_error:.3g}" for p in finite],
            hoverinfo="text",
        )
    fig.update_layout(
        title="Size against error: bytes computed from the block table, SNR measured on a sample",
        xaxis_title="MB for all 2-D weights of the default model (log scale)", xaxis_type="log",
        yaxis_title="SNR in dB (higher = closer to the original)", height=440,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )
    return fig


def error_histogram(original: torch.Tensor, restored: torch.Tensor, *, title: str, n_bins: int = 80) -> go.Figure:
    """Histogram of ``restored - original`` (measured)."""
    error = (restored - original).reshape(-1).float()
    fig = go.Figure(go.Histogram(x=error.numpy(), nbinsx=n_bins, marker_color="#4C78A8"))
    fig.update_layout(title=title, xaxis_title="x_hat - x", yaxis_title="weights", bargap=0.02, height=340,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig


def stats_table(stats: QuantErrorStats, *, note: str = "") -> str:
    """The four numbers of a ``QuantErrorStats`` as a small HTML table."""
    rows = [("bits per weight", f"{stats.bits_per_weight:.4g}" if stats.bits_per_weight else "–"),
            ("MSE", f"{stats.mse:.3g}"), ("max |error|", f"{stats.max_abs_error:.3g}"),
            ("SNR", f"{stats.snr_db:.1f} dB"), ("weights compared", f"{stats.n_weights:,}")]
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td><b>{html.escape(v)}</b></td></tr>" for k, v in rows)
    return f"<table>{cells}</table><p><i>{html.escape(note)}</i></p>"


@dataclass(frozen=True)
class LoadPathTimes:
    """Reading a GGUF file against turning its tensors into float32, all measured here.

    Attributes:
        file_bytes: the file's size.
        n_weights: weights decoded.
        read_device_s: reading the whole file from the storage device (None if no read could be
            shown to come from the device; see ``device_how``).
        device_how: how the device read was made and the evidence it reached the device.
        read_warm_s: reading it again, from the page cache.
        dequantize_s: decoding every tensor to float32 with ``labkit.quant``.
        gguf_py_s: the same with ``gguf.quants.dequantize`` (None if not run).
    """

    file_bytes: int
    n_weights: int
    read_device_s: float | None
    device_how: str
    read_warm_s: float
    dequantize_s: float
    gguf_py_s: float | None


def _read_all(path: Path) -> None:
    with path.open("rb", buffering=0) as handle:
        while handle.read(1 << 24):
            pass


def _device_read(path: Path) -> tuple[float | None, str]:
    """One read of the whole file from the device: evict it from the page cache, else O_DIRECT."""
    cold, verdicts = pagecache.timed_cold_runs(path, 1, lambda: _read_all(path))
    if verdicts[0].verified:
        return cold[0], f"evicted from the page cache first ({verdicts[0].how})"
    direct = pagecache.timed_direct_runs(path, 1 << 24, 1)
    if direct is not None and direct[1].verified:
        return direct[0][0], f"O_DIRECT, bypassing the page cache ({direct[1].how})"
    return None, f"could not show a read reaching the device here ({verdicts[0].how})"


def time_load_path(f: Any, *, with_gguf_py: bool = True) -> LoadPathTimes:
    """Measure: read the file from the device, read it warm, dequantize every tensor (labkit, gguf-py)."""
    path = Path(f.path)
    device_s, device_how = _device_read(path)
    start = time.perf_counter()
    _read_all(path)
    warm_s = time.perf_counter() - start
    start = time.perf_counter()
    n_weights = sum(f.tensor(name).numel() for name in f.tensors)
    dequantize_s = time.perf_counter() - start
    gguf_py_s = None
    if with_gguf_py:
        import gguf
        import numpy as np

        start = time.perf_counter()
        for name, info in f.tensors.items():
            gguf.quants.dequantize(np.asarray(f.raw(name)), gguf.GGMLQuantizationType[info.qtype])
        gguf_py_s = time.perf_counter() - start
    return LoadPathTimes(path.stat().st_size, n_weights, device_s, device_how, warm_s, dequantize_s, gguf_py_s)


def load_path_figure(t: LoadPathTimes) -> go.Figure:
    """Bars of the measured seconds of each step of a Python load path."""
    bars = [("read file from the device", t.read_device_s), ("read file, warm (page cache)", t.read_warm_s),
            ("dequantize to float32 (labkit)", t.dequantize_s), ("dequantize to float32 (gguf-py)", t.gguf_py_s)]
    bars = [(label, s) for label, s in bars if s is not None]
    fig = go.Figure(go.Bar(
        x=[s for _, s in bars], y=[label for label, _ in bars], orientation="h",
        marker_color=["#72B7B2", "#54A24B", "#E45756", "#F58518"][: len(bars)],
        text=[f"{s * 1e3:,.0f} ms" for _, s in bars], textposition="auto",
    ))
    fig.update_layout(
        title=f"Loading the default model in Python: {t.file_bytes / 1e6:.0f} MB file -> "
              f"{t.n_weights * 4 / 1e6:.0f} MB float32 (all measured here)",
        xaxis_title="seconds", height=300, margin={"l": 230, "r": 20, "t": 50, "b": 50},
    )
    return fig
