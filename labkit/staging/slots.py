"""What a slot holds: views of a layer's tensors in flat byte slots, and the dequantize step that fills them.

A streamed layer lands in two flat ``uint8`` buffers on the compute device: the *raw slot* (its file
bytes, as read) and the *dense slot* (its tensors dequantized to the compute dtype, in the memory
order the runtime's matrix products expect). ``dense_view`` carves a tensor out of them;
``dequantize_layer`` decodes raw into dense with ``labkit.quant``, exactly as the runtime does at
load time. Also here: the process's peak RSS, which a staged pass reports beside its spans.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from labkit.gguf import codec
from labkit.runtime.weights import slab_rows
from labkit.staging.layers import SLAB_FLOAT32_BYTES, DenseTensor, FilePart, LayerSpec


def dense_view(raw: torch.Tensor, dense: torch.Tensor, tensor: DenseTensor) -> torch.Tensor:
    """The tensor's view inside a layer's flat uint8 slots, with the runtime's shape and memory order:
    in the dense slot, or straight in the raw bytes when the file already holds it as computed."""
    slot, at = (dense, tensor.slot_offset) if tensor.raw_offset is None else (raw, tensor.raw_offset)
    flat = slot[at : at + tensor.size_bytes].view(tensor.dtype)
    if tensor.column_major:
        return flat.view(tensor.shape[1], tensor.shape[0]).T  # (n_out, n_in), stored column by column
    return flat.view(tensor.shape)


def dequantize_layer(
    layer: LayerSpec,
    raw: torch.Tensor | Callable[[FilePart, int, int], torch.Tensor],
    dense: dict[str, torch.Tensor],
    *,
    max_read_bytes: int | None = None,
) -> None:
    """Decode a layer's raw file bytes into its dense tensors (``labkit.quant``, as the runtime does).

    Matrices are decoded a slab of rows at a time (``SLAB_FLOAT32_BYTES`` of float32), so the
    scratch memory stays small even for the head: each value is the same as a whole-tensor decode.

    Args:
        layer: the layer.
        raw: its raw slot (the file bytes at the parts' ``raw_offset``), or a function
            ``(part, start, n_bytes) -> uint8 bytes`` that fetches ``n_bytes`` of ``part`` from ``start``
            (a resident layer is read from the file slab by slab, with no raw copy of the whole layer).
        dense: the dense tensors to fill (``dense_view``).
        max_read_bytes: the most bytes one fetch may ask for (a staging buffer's size); ``None``: any.
    """
    fetch = raw if callable(raw) else _slice_of(raw)
    aliased = {t.name for t in layer.tensors if t.raw_offset is not None}
    for part in (p for p in layer.parts if p.stored_name not in aliased):
        target = dense[part.stored_name]
        if len(part.shape) == 1:  # a norm vector: float32, small
            values = codec.decode(
                fetch(part, 0, part.n_bytes), part.qtype, part.shape, target.dtype, part.name
            )
            target.copy_(values)
            continue
        n_rows, n_cols = part.shape
        row_bytes = part.n_bytes // n_rows
        step = slab_rows(n_cols, SLAB_FLOAT32_BYTES)
        if max_read_bytes is not None:
            step = max(1, min(step, max_read_bytes // row_bytes))
        for first in range(0, n_rows, step):
            rows = min(step, n_rows - first)
            slab = fetch(part, first * row_bytes, rows * row_bytes)
            values = codec.decode(slab, part.qtype, (rows, n_cols), target.dtype, part.name)
            target[part.row_start + first : part.row_start + first + rows].copy_(values)


def _slice_of(raw: torch.Tensor) -> Callable[[FilePart, int, int], torch.Tensor]:
    """A fetch function over a raw slot: the part's bytes are at its ``raw_offset``."""

    def fetch(part: FilePart, start: int, n_bytes: int) -> torch.Tensor:
        at = part.raw_offset + start
        return raw[at : at + n_bytes]

    return fetch


def peak_rss_bytes() -> int | None:
    """The process's peak resident set since the last ``reset_peak_rss`` (``VmHWM``), or None."""
    return _status_bytes("VmHWM")


def rss_bytes() -> int | None:
    """The process's resident set now (``VmRSS``), or None where there is no ``/proc``."""
    return _status_bytes("VmRSS")


def _status_bytes(key: str) -> int | None:
    """A ``kB`` line of ``/proc/self/status`` in bytes, or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
