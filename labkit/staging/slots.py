"""What a slot holds: views of a layer's tensors in flat byte slots, and the dequantize step that fills them.

A streamed layer lands in two flat ``uint8`` buffers on the compute device: the *raw slot* (its file
bytes, as read) and the *dense slot* (its tensors dequantized to the compute dtype, in the memory
order the runtime's matrix products expect). ``dense_view`` carves a tensor out of them;
``dequantize_layer`` decodes raw into dense with ``labkit.quant``, exactly as the runtime does at
load time. Also here: the process's peak RSS, which a staged pass reports beside its spans.
"""

from __future__ import annotations

from pathlib import Path

import torch

from labkit.gguf import codec
from labkit.staging.layers import SLAB_FLOAT32_BYTES, DenseTensor, LayerSpec


def dense_view(raw: torch.Tensor, dense: torch.Tensor, tensor: DenseTensor) -> torch.Tensor:
    """The tensor's view inside a layer's flat uint8 slots, with the runtime's shape and memory order:
    in the dense slot, or straight in the raw bytes when the file already holds it as computed."""
    slot, at = (dense, tensor.slot_offset) if tensor.raw_offset is None else (raw, tensor.raw_offset)
    flat = slot[at : at + tensor.size_bytes].view(tensor.dtype)
    if tensor.column_major:
        return flat.view(tensor.shape[1], tensor.shape[0]).T  # (n_out, n_in), stored column by column
    return flat.view(tensor.shape)


def dequantize_layer(layer: LayerSpec, raw: torch.Tensor, dense: dict[str, torch.Tensor]) -> None:
    """Decode a layer's raw file bytes into its dense tensors (``labkit.quant``, as the runtime does).

    Matrices are decoded a slab of rows at a time (``SLAB_FLOAT32_BYTES`` of float32), so the
    scratch memory stays small even for the head: each value is the same as a whole-tensor decode.
    """
    aliased = {t.name for t in layer.tensors if t.raw_offset is not None}
    for part in (p for p in layer.parts if p.stored_name not in aliased):
        target = dense[part.stored_name]
        if len(part.shape) == 1:  # a norm vector: float32, small
            target.copy_(
                codec.decode(
                    raw[part.raw_offset : part.raw_offset + part.n_bytes],
                    part.qtype,
                    part.shape,
                    target.dtype,
                    part.name,
                )
            )
            continue
        n_rows, n_cols = part.shape
        row_bytes = part.n_bytes // n_rows
        step = max(1, SLAB_FLOAT32_BYTES // (4 * n_cols))
        for first in range(0, n_rows, step):
            rows = min(step, n_rows - first)
            at = part.raw_offset + first * row_bytes
            values = codec.decode(
                raw[at : at + rows * row_bytes], part.qtype, (rows, n_cols), target.dtype, part.name
            )
            target[part.row_start + first : part.row_start + first + rows].copy_(values)


def peak_rss_bytes() -> int | None:
    """The process's peak resident set since the last ``reset_peak_rss`` (``VmHWM``), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
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
