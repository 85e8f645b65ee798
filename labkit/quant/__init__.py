"""GGML block quantization in torch, byte-identical to llama.cpp (chapter 2).

``quantize(x, "Q4_K")`` returns exactly the bytes llama.cpp's reference
quantizer (``ggml_quantize_chunk`` without an importance matrix) writes for
the same float32 rows; ``dequantize`` turns block bytes back into float32
exactly like ``gguf.quants.dequantize``. Supported: F32 F16 BF16 Q8_0 Q4_0
Q4_1 Q5_0 Q5_1 Q2_K Q3_K Q4_K Q5_K Q6_K.

Modules, in reading order:

- ``rounding``  the C rounding and float rules that decide bit-exactness
- ``floats``    F32, F16, BF16
- ``legacy``    Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (32 weights per block)
- ``search``    the K-quant scale searches (``make_qkx2_quants`` and friends)
- ``kquants``   Q2_K ... Q6_K super-blocks of 256 weights
- ``metrics``   MSE, max error, SNR, bits per weight
- ``tradeoff``  what each type saves and costs on a real model (error sweep, load-path timing)
- ``reference`` llama.cpp's own quantizer via ctypes, to cross-check (optional)

Reference: ggml ``src/ggml-quants.c`` and ``src/ggml-common.h`` as vendored
by llama-cpp-python 0.3.36 (llama.cpp 0c1e570 of 2026-10-01, libggml-base
0.25.3): the bytes were matched against that library, built without
``-march`` (so without fused multiply-adds), on AMD and Intel x86-64. gguf-py
``gguf/quants.py`` for dequantization. The kernels are plain eager torch
and give the same bytes on CUDA (checked on an H200).

Example:
    >>> import torch, labkit.quant as lq
    >>> w = torch.randn(4, 256)
    >>> q = lq.quantize(w, "Q4_K")          # (4, 144) uint8
    >>> back = lq.dequantize(q, "Q4_K", w.shape)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from labkit.errors import QuantizationError
from labkit.formats import FORMATS, Format
from labkit.quant import floats, kquants, legacy
from labkit.quant.metrics import QuantErrorStats, error_metrics, model_error_metrics

__all__ = [
    "QUANT_TYPES",
    "QuantErrorStats",
    "dequantize",
    "error_metrics",
    "model_error_metrics",
    "quantize",
    "resolve_format",
]

Kernel = Callable[[torch.Tensor, torch.Tensor], None]  # kernel(blocks, out) fills out
_WHOLE = 1 << 62  # one-op conversions gain nothing from chunks

# name -> (quantize kernel, dequantize kernel, blocks per chunk when quantizing, when dequantizing).
# Work is done a chunk of blocks at a time so that the temporaries of one
# chunk stay in the CPU cache: fewer trips to main memory, same bytes. The
# sizes were tuned on this lab's 2-core machines (K-quants: 256-weight blocks).
_KERNELS: dict[str, tuple[Kernel, Kernel, int, int]] = {
    "F32": (floats.quantize_f32, floats.dequantize_f32, _WHOLE, _WHOLE),
    "F16": (floats.quantize_f16, floats.dequantize_f16, _WHOLE, _WHOLE),
    "BF16": (floats.quantize_bf16, floats.dequantize_bf16, _WHOLE, _WHOLE),
    "Q8_0": (legacy.quantize_q8_0, legacy.dequantize_q8_0, 1 << 12, 1 << 14),
    "Q4_0": (legacy.quantize_q4_0, legacy.dequantize_q4_0, 1 << 12, 1 << 14),
    "Q4_1": (legacy.quantize_q4_1, legacy.dequantize_q4_1, 1 << 12, 1 << 14),
    "Q5_0": (legacy.quantize_q5_0, legacy.dequantize_q5_0, 1 << 12, 1 << 14),
    "Q5_1": (legacy.quantize_q5_1, legacy.dequantize_q5_1, 1 << 12, 1 << 14),
    "Q2_K": (kquants.quantize_q2_k, kquants.dequantize_q2_k, 1 << 10, 1 << 11),
    "Q3_K": (kquants.quantize_q3_k, kquants.dequantize_q3_k, 1 << 12, 1 << 11),
    "Q4_K": (kquants.quantize_q4_k, kquants.dequantize_q4_k, 1 << 10, 1 << 11),
    "Q5_K": (kquants.quantize_q5_k, kquants.dequantize_q5_k, 1 << 10, 1 << 11),
    "Q6_K": (kquants.quantize_q6_k, kquants.dequantize_q6_k, 1 << 10, 1 << 11),
}

F16_ROUNDS_TO_INF = 65520.0  # the smallest float32 magnitude that rounds to F16's inf (65504 + half a step)
# name -> byte offsets of the block's f16 fields (scales ``d``, mins ``m``/``dmin``): see FORMATS' layouts.
# A finite weight can still overflow them (Q8_0: |x| > 65504 * 127), and llama.cpp would store inf.
_F16_FIELDS: dict[str, tuple[int, ...]] = {
    "F16": (0,),
    "Q8_0": (0,),
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "Q2_K": (16 + 64, 16 + 64 + 2),
    "Q3_K": (32 + 64 + 12,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (128 + 64 + 16,),
}

QUANT_TYPES: tuple[str, ...] = tuple(_KERNELS)
"""The type names ``quantize`` and ``dequantize`` accept, in table order."""


def resolve_format(qtype: str | Format) -> Format:
    """Look up a type by GGUF name (``"Q4_K"``, case-insensitive) or ``Format``.

    Raises:
        QuantizationError: the type is not one labkit can (de)quantize.
    """
    key = qtype.name if isinstance(qtype, Format) else str(qtype).upper()
    if key not in _KERNELS:
        raise QuantizationError(
            f"unknown or unsupported quantization type {qtype!r}; expected one of {', '.join(QUANT_TYPES)}"
        )
    return FORMATS[key]


def _label(name: str | None) -> str:
    return f"tensor {name!r}" if name else "the tensor"


def _as_float32(x: torch.Tensor | np.ndarray, label: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise QuantizationError(f"{label} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise QuantizationError(
            f"{label} has dtype {x.dtype}, but quantization needs floating-point values; "
            f"convert it first, e.g. x.float()"
        )
    if x.dim() == 0 or x.numel() == 0:
        raise QuantizationError(
            f"{label} is empty (shape {tuple(x.shape)}); quantize needs at least one row of weights"
        )
    return x.to(torch.float32)


def _check_finite(x: torch.Tensor, label: str) -> float:
    """Raise naming the first NaN/Inf by row and column (rows = all leading dims); else return max |x|."""
    lo, hi = torch.aminmax(x)  # NaN propagates, Inf shows up: one fast pass
    if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
        return max(-float(lo), float(hi))
    finite = torch.isfinite(x)
    index = tuple(int(i) for i in (~finite).nonzero()[0])
    value = float(x[index])
    row = index[:-1] if len(index) > 2 else index[0] if len(index) == 2 else 0
    raise QuantizationError(
        f"{label} holds {value} at row {row}, column {index[-1]} (index {list(index)}); "
        f"quantization needs finite values: find where the NaN/Inf comes from, or clean it "
        f"with torch.nan_to_num"
    )


def _check_no_overflow(
    out: torch.Tensor, blocks: torch.Tensor, fmt: Format, label: str, n_per_row: int
) -> None:
    """Raise if a finite weight gave an infinite f16 field (the value or a block's scale overflowed)."""
    # Each f16 field as a zero-copy strided view (n_blocks, 1) of int16 (block sizes and offsets are
    # even): inf or NaN exactly when its 5 exponent bits are all ones (integer ops: one fast pass).
    overflowed = [
        (out[:, o : o + 2].view(torch.int16) & 0x7C00) == 0x7C00 for o in _F16_FIELDS.get(fmt.name, ())
    ]
    if not any(bool(f.any()) for f in overflowed):
        return
    block = int(torch.cat(overflowed, dim=1).any(dim=1).nonzero()[0, 0])
    blocks_per_row = n_per_row // fmt.block_size
    row, column = divmod(block, blocks_per_row)
    biggest = float(blocks[block].abs().max())
    what = "the value" if fmt.name == "F16" else f"the {fmt.name} block's f16 scale"
    raise QuantizationError(
        f"{label}: {what} at row {row}, column {column * fmt.block_size} overflows F16's largest value "
        f"65504 (the block holds |x| up to {biggest:g}) and would be stored as inf; scale the tensor "
        "down, or store it as F32/BF16 (allow_overflow=True stores inf, as llama.cpp would)"
    )


def _fresh(n_rows: int, n_cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A new output tensor.

    On CPU it is allocated by numpy, which asks Linux for *huge pages* on large
    arrays (madvise): the first write to fresh memory then takes a fraction of
    the page faults that ``torch.empty``'s 4 KiB pages cost, and filling fresh
    memory is most of what a dequantizer does.
    """
    if device.type == "cpu":
        return torch.from_numpy(np.empty((n_rows, n_cols), dtype=torch.empty(0, dtype=dtype).numpy().dtype))
    return torch.empty(n_rows, n_cols, dtype=dtype, device=device)


def _run_chunks(kernel: Kernel, blocks: torch.Tensor, out: torch.Tensor, chunk: int) -> torch.Tensor:
    """Let ``kernel`` fill ``out`` from ``blocks``, a chunk of blocks at a time."""
    for start in range(0, blocks.shape[0], chunk):
        kernel(blocks[start : start + chunk], out[start : start + chunk])
    return out


def quantize(
    x: torch.Tensor | np.ndarray,
    qtype: str | Format,
    *,
    name: str | None = None,
    allow_overflow: bool = False,
) -> torch.Tensor:
    """Quantize rows of weights into ggml block bytes.

    Args:
        x: float tensor (float32, float16, bfloat16 or float64; it is first
            rounded to float32, which is what llama.cpp's quantizers read).
            The last dimension is a row and must be a whole number of blocks.
        qtype: a type name such as ``"Q8_0"`` or ``"Q4_K"``, or a ``Format``.
        name: the tensor's name, used in error messages.
        allow_overflow: write inf where a value (F16) or a block's f16 scale overflows, as
            llama.cpp does, instead of raising.

    Returns:
        uint8 tensor of shape ``(*x.shape[:-1], row_bytes)`` holding each
        row's blocks back to back, as in a GGUF file.

    Raises:
        QuantizationError: unknown type, non-float dtype, empty tensor, a row
            length that is not a multiple of the block size, NaN/Inf values, or a finite
            value whose F16 value or block scale would overflow to inf (F16 above 65504,
            Q8_0 above 65504 * 127, ...).
    """
    fmt = resolve_format(qtype)
    label = _label(name)
    x = _as_float32(x, label)
    n_per_row = x.shape[-1]
    if n_per_row % fmt.block_size:
        raise QuantizationError(
            f"{label} has rows of {n_per_row} weights, but {fmt.name} packs blocks of "
            f"{fmt.block_size}; the row length must be a multiple of {fmt.block_size} "
            f"(pad the rows, or pick a type with a smaller block)"
        )
    largest = _check_finite(x, label)
    quantize_blocks, _, chunk, _ = _KERNELS[fmt.name]
    blocks = x.contiguous().reshape(-1, fmt.block_size)  # (n_blocks, block_size)
    out = _fresh(blocks.shape[0], fmt.type_size, torch.uint8, blocks.device)
    _run_chunks(quantize_blocks, blocks, out, chunk)
    # F16 stores the values themselves: below 65520 they round (to nearest even) to at most 65504.
    if not allow_overflow and not (fmt.name == "F16" and largest < F16_ROUNDS_TO_INF):
        _check_no_overflow(out, blocks, fmt, label, x.shape[-1])
    return out.reshape(*x.shape[:-1], fmt.row_bytes(n_per_row))  # (*leading, row_bytes)


def _checked_shape(shape: Sequence[int], label: str) -> tuple[int, ...]:
    """``shape`` as a tuple of whole numbers >= 1 (a tensor's shape, e.g. ``(4, 256)``)."""
    fix = "pass the weights' shape as whole numbers >= 1, e.g. (4, 256) or info.shape"
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, torch.Size, np.ndarray)):
        raise QuantizationError(f"{label}: shape={shape!r} is not a shape; {fix}")
    dims = []
    for dim in shape:
        if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)) or int(dim) < 1:
            raise QuantizationError(f"{label}: shape {tuple(shape)!r} has the dimension {dim!r}; {fix}")
        dims.append(int(dim))
    return tuple(dims)


def dequantize(
    q: torch.Tensor | np.ndarray, qtype: str | Format, shape: Sequence[int], *, name: str | None = None
) -> torch.Tensor:
    """Turn ggml block bytes back into float32 weights.

    Args:
        q: uint8 tensor holding the bytes of the whole tensor, in any shape
            (a 1-D view of a file works).
        qtype: the type the bytes are in.
        shape: the weights' shape (torch order: the last dimension is a row).
        name: the tensor's name, used in error messages.

    Returns:
        float32 tensor of ``shape``.

    Raises:
        QuantizationError: unknown type, ``q`` not uint8, a shape that is not whole
            numbers >= 1, or the byte count does not match ``shape`` for this type.
    """
    fmt = resolve_format(qtype)
    label = _label(name)
    if isinstance(q, np.ndarray):
        q = torch.from_numpy(q)
    if not isinstance(q, torch.Tensor) or q.dtype != torch.uint8:
        got = q.dtype if isinstance(q, torch.Tensor) else type(q).__name__
        raise QuantizationError(f"{label}: dequantize needs the raw bytes as a uint8 tensor, got {got}")
    shape = _checked_shape(shape, label)
    n_weights = math.prod(shape)
    if not shape or shape[-1] % fmt.block_size:
        raise QuantizationError(
            f"{label}: shape {shape} does not split into {fmt.name} blocks of {fmt.block_size} weights per row"
        )
    expected_bytes = n_weights // fmt.block_size * fmt.type_size
    if q.numel() != expected_bytes:
        raise QuantizationError(
            f"{label}: {fmt.name} weights of shape {shape} take {expected_bytes} bytes, "
            f"but {q.numel()} bytes were given"
        )
    _, dequantize_blocks, _, chunk = _KERNELS[fmt.name]
    blocks = q.reshape(-1, fmt.type_size)  # (n_blocks, type_size)
    out = _fresh(blocks.shape[0], fmt.block_size, torch.float32, blocks.device)
    _run_chunks(dequantize_blocks, blocks, out, chunk)
    return out.reshape(shape)
