"""Requantize a GGUF file with llama.cpp's per-tensor rules: what ``labkit quantize`` runs.

``labkit.quant.mixtures`` decides each tensor's type; this module applies the plan to a file, one
tensor (and one slab of rows) at a time, so memory stays bounded however large the model.

The output keeps llama.cpp's tensor order (tensors without a layer first, then by layer
number, each group sorted by name), its metadata (the input's keys, with
``general.quantization_version`` and ``general.file_type`` re-set at the end), and its
32-byte alignment, so that tensor types and bytes can be compared with llama.cpp's own
output (``tests/test_requant.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from labkit import gguf
from labkit.errors import QuantizationError
from labkit.formats import FORMATS
from labkit.quant import dequantize, quantize
from labkit.quant.mixtures import GGML_QNT_VERSION, FileType, TensorPlan, plan_types, resolve_type

# --- the file: dequantize -> quantize, one tensor (and one slab of rows) at a time ---

SLAB_BYTES = 64 << 20  # f32 rows decoded at once: bounds memory like llama.cpp's max_buf_size
_SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


@dataclass(frozen=True)
class RequantReport:
    """What ``requantize`` did.

    Attributes:
        src_path, dst_path: the input and output files.
        file_type: the llama.cpp file type written to ``general.file_type``.
        pure: one type for every quantizable tensor.
        plans: every tensor's decision, in output order.
        src_size_bytes, dst_size_bytes: the two files' sizes (measured).
        elapsed_s: wall time of the whole run (measured).
    """

    src_path: Path
    dst_path: Path
    file_type: str
    pure: bool
    plans: tuple[TensorPlan, ...]
    src_size_bytes: int
    dst_size_bytes: int
    elapsed_s: float

    @property
    def requantized_from(self) -> list[str]:
        """Quantized input types that were decoded and quantized again (each round adds error)."""
        return sorted({p.src_qtype for p in self.plans if not p.copied and FORMATS[p.src_qtype].quantized})


def requantize_tensor(
    raw: torch.Tensor,
    src_qtype: str,
    dst_qtype: str,
    shape: Sequence[int],
    *,
    name: str = "",
    slab_bytes: int = SLAB_BYTES,
) -> torch.Tensor:
    """Decode a tensor's bytes to f32 and encode them as ``dst_qtype``, a slab of rows at a time.

    Args:
        raw: the tensor's bytes (1-D uint8, e.g. ``GGUFFile.raw(name)``).
        src_qtype, dst_qtype: the types before and after.
        shape: torch order; rows are ``shape[-1]`` weights.
        name: used in error messages.
        slab_bytes: at most this many bytes of f32 rows are decoded at once.

    Returns:
        1-D uint8 tensor of the encoded bytes.
    """
    n_cols = shape[-1]
    n_rows = raw.numel() // FORMATS[src_qtype].row_bytes(n_cols)
    src_row, dst_row = FORMATS[src_qtype].row_bytes(n_cols), FORMATS[dst_qtype].row_bytes(n_cols)
    out = torch.empty(n_rows * dst_row, dtype=torch.uint8)
    rows_per_slab = max(1, slab_bytes // (4 * n_cols))
    for r0 in range(0, n_rows, rows_per_slab):
        r1 = min(n_rows, r0 + rows_per_slab)
        x = dequantize(
            raw[r0 * src_row : r1 * src_row], src_qtype, (r1 - r0, n_cols), name=name
        )  # (rows, n_cols)
        out[r0 * dst_row : r1 * dst_row] = quantize(x, dst_qtype, name=name).reshape(-1)
    return out


def output_metadata(metadata: Mapping[str, Any], file_type: FileType) -> dict[str, Any]:
    """The input's metadata as llama.cpp writes it back: split keys dropped, and
    ``general.quantization_version`` and ``general.file_type`` set (as u32) at the end."""
    moved = ("general.quantization_version", "general.file_type", *_SPLIT_KEYS)
    out = {k: v for k, v in metadata.items() if k not in moved}
    out["general.quantization_version"] = gguf.Typed("UINT32", GGML_QNT_VERSION)
    out["general.file_type"] = gguf.Typed("UINT32", file_type.ftype_id)
    return out


def _source(f: Any, plan: TensorPlan) -> gguf.TensorSource:
    """A tensor for the writer: the bytes as they are, or requantized when it asks."""
    if plan.copied:
        return gguf.TensorSource(plan.name, plan.shape, plan.dst_qtype, lambda: f.raw(plan.name))
    return gguf.TensorSource(
        plan.name,
        plan.shape,
        plan.dst_qtype,
        lambda: requantize_tensor(
            f.raw(plan.name), plan.src_qtype, plan.dst_qtype, plan.shape, name=plan.name
        ),
    )


def requantize(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    type_name: str,
    *,
    pure: bool = False,
    progress: bool = False,
) -> RequantReport:
    """Requantize a GGUF file to a llama.cpp file type, tensor by tensor.

    Args:
        src: the input GGUF (a dense llama-architecture model).
        dst: the output path (written atomically; must differ from ``src``).
        type_name: ``"Q4_K_M"``, ``"Q5_K_M"``, ``"Q6_K"``, ``"Q8_0"``, ... (see ``FILE_TYPES``),
            or a K-quant tensor type such as ``"Q4_K"`` (pure).
        pure: one type for every quantizable tensor (llama.cpp's ``--pure``).
        progress: show a tqdm progress bar.

    Returns:
        A ``RequantReport``.

    Raises:
        QuantizationError: an unknown type, a model the rules don't cover, or ``dst`` is ``src``.
        MissingInputError: ``src`` does not exist (from ``gguf.open``).
        OutputPathError: ``dst`` is a folder, or its folder is missing or read-only (from
            ``gguf.write``, before any tensor is requantized).

    Example:
        >>> report = requantize(default_model_path(), tmp / "smol-q4_k_m.gguf", "Q4_K_M")
    """
    start_s = time.perf_counter()
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise QuantizationError(f"the output {dst} is the input file; write to another path")
    file_type, pure = resolve_type(type_name, pure=pure)
    with gguf.open(src) as f:
        plans = plan_types(f.tensors, f.metadata, file_type.name, pure=pure)
        metadata = output_metadata(f.typed_metadata(), file_type)
        gguf.write(dst, [_source(f, p) for p in plans], metadata, alignment=f.alignment, progress=progress)
    return RequantReport(
        src,
        dst,
        file_type.name,
        pure,
        tuple(plans),
        src.stat().st_size,
        dst.stat().st_size,
        time.perf_counter() - start_s,
    )
