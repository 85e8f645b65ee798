"""How a loaded model holds its weights: dense floats, or the file's quantized bytes.

Two modes (``labkit.runtime.load(..., weights=...)``):

- ``"dequantized"``: every tensor is dequantized once at load time and kept as
  float32/bfloat16/float16: fast matmuls, 4-8x the file's bytes in memory;
- ``"quantized"``: the file's quantized bytes stay resident, and a block's
  matrices are dequantized when the forward pass reaches that block, then freed:
  about the file's size in memory, and more compute per token.

Two load-time changes make batch-1 decoding faster without changing the math:

1. **Fusion.** ``attn_q``, ``attn_k`` and ``attn_v`` all multiply the same input,
   so their rows are stacked into one matrix ``attn_qkv`` (``ffn_gate`` and
   ``ffn_up`` likewise into ``ffn_gate_up``): one matrix-vector product instead
   of three, and the outputs are split again afterwards. The stacked matrix holds
   exactly the bytes of its parts. In quantized mode the parts' *bytes* are
   stacked when they share a type (a row is whole blocks, so rows can stack), and
   one ``dequantize`` call covers them.
2. **Memory order.** Decoding multiplies each matrix by one vector, so speed is
   how fast the matrix streams from RAM, and that depends on its memory order.
   torch hands float32 products to MKL. While this module was written, on the lab's
   AMD EPYC machine (2 threads), MKL streamed a matrix stored column by column
   (``w.T.contiguous().T``: same ``(out, in)`` shape, transposed memory) up to 2x
   faster when it has at least as many rows as columns (the tied head: about 12 ->
   22 GB/s), and row by row when it is wide (``ffn_down``, 1536 columns); on an
   Intel Xeon (a GPU machine's host) both orders measured within 5%. Those were
   development measurements; ``bench/bench_runtime.py`` measures every matrix shape
   of the default model in both orders again on each run and writes the table to
   ``bench/results/runtime.md``. bfloat16/float16 products go to oneDNN, which
   prefers rows everywhere. On a GPU the matrices keep the file's row order.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from labkit.formats import FORMATS

# Float32 bytes decoded at once when the weights are kept narrower (bfloat16/float16): see dequantize_rows.
SLAB_FLOAT32_BYTES = 16 << 20

# Matrices stored as one: the fused name, then its parts in the order their rows are stacked.
FUSED = {"attn_qkv": ("attn_q", "attn_k", "attn_v"), "ffn_gate_up": ("ffn_gate", "ffn_up")}

Packed = tuple[torch.Tensor, str, tuple[int, ...]]  # (raw uint8 bytes, qtype, float shape)


def slab_rows(n_cols: int, slab_bytes: int = SLAB_FLOAT32_BYTES) -> int:
    """How many rows of an ``n_cols``-wide matrix fill ``slab_bytes`` of float32 (at least one)."""
    return max(1, slab_bytes // (4 * n_cols))


def matmul_layout(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` in the memory order its matrix-vector products read fastest (see the module docstring)."""
    n_out, n_in = matrix.shape
    if matrix.device.type == "cpu" and matrix.dtype == torch.float32 and n_out >= n_in:
        return matrix.T.contiguous().T  # same (out, in) shape, column-major memory
    return matrix.contiguous()


def dequantize_rows(
    raw: torch.Tensor, qtype: str, shape: tuple[int, ...], dtype: torch.dtype, *, name: str = ""
) -> torch.Tensor:
    """A quantized matrix's bytes as ``dtype`` floats of ``shape`` ``(n_rows, n_cols)``.

    ``labkit.quant.dequantize`` returns float32. For a narrower ``dtype`` the rows are decoded a slab
    (``SLAB_FLOAT32_BYTES`` of float32) at a time into the result, so no float32 copy of the whole
    matrix is ever held: for the tied head of the default model that copy alone would be 113 MB.

    Args:
        raw: the matrix's bytes (1-D uint8; rows of whole blocks).
        qtype: its ggml type (``"Q4_1"``, ...).
        shape: ``(n_rows, n_cols)``.
        dtype: the float dtype to return.
        name: the tensor's name, for error messages.
    """
    from labkit.quant import dequantize

    if dtype == torch.float32:
        return dequantize(raw, qtype, shape, name=name)
    n_rows, n_cols = shape
    rows = raw.reshape(n_rows, -1)  # (n_rows, bytes per row)
    out = torch.empty(shape, dtype=dtype, device=raw.device)
    step = slab_rows(n_cols)
    for start in range(0, n_rows, step):
        slab = rows[start : start + step]  # (<= step, bytes per row)
        out[start : start + step] = dequantize(slab, qtype, (slab.shape[0], n_cols), name=name).to(dtype)
    return out


def _decode(gguf_file: Any, name: str, qtype: str, dtype: torch.dtype) -> torch.Tensor:
    """A file matrix as ``dtype`` floats, without a float32 copy of the whole of it when ``dtype`` is narrower."""
    if not FORMATS[qtype].quantized:
        return gguf_file.tensor(name, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the bytes are a read-only view of the mapped file
        return dequantize_rows(
            gguf_file.raw(name), qtype, tuple(gguf_file.tensors[name].shape), dtype, name=name
        )


class Weights:
    """The model's tensors by name, held dense or as quantized bytes dequantized on use.

    Names are GGUF's (``blk.3.attn_output.weight``), plus the fused ``blk.N.attn_qkv.weight`` and
    ``blk.N.ffn_gate_up.weight`` that replace their parts. ``dense[name]``: float tensors ready for
    ``F.linear``. ``packed[name]``: a list of ``(raw bytes, qtype, shape)`` parts, only in
    ``"quantized"`` mode (norm vectors and other float tensors are always dense, and so is a fused
    matrix with an unquantized part).

    Args:
        gguf_file: an open ``labkit.gguf`` file.
        names: the file tensors to load (fused groups must list all their parts).
        mode: ``"dequantized"`` or ``"quantized"``.
        dtype: dtype of the matrices once dequantized (norm vectors stay float32).
        device: where the tensors live.
    """

    def __init__(
        self, gguf_file: Any, names: Sequence[str], *, mode: str, dtype: torch.dtype, device: torch.device
    ):
        self.mode, self.dtype, self.device = mode, dtype, device
        self.dense: dict[str, torch.Tensor] = {}
        self.packed: dict[str, list[Packed]] = {}
        for name, parts in storage_plan(names).items():
            infos = [gguf_file.tensors[part] for part in parts]
            if mode == "quantized" and all(FORMATS[info.qtype].quantized for info in infos):
                packed = [
                    (gguf_file.raw(part), info.qtype, tuple(info.shape))
                    for part, info in zip(parts, infos, strict=True)
                ]  # views of the mapped file, copied once by _stack_packed: the file can close
                self.packed[name] = [
                    (raw.to(device), qtype, shape) for raw, qtype, shape in _stack_packed(packed)
                ]
            elif len(infos[0].shape) == 1:
                self.dense[name] = gguf_file.tensor(name).to(
                    device=device, dtype=torch.float32
                )  # norms stay float32
            else:
                floats = [
                    _decode(gguf_file, part, info.qtype, dtype).to(device)
                    for part, info in zip(parts, infos, strict=True)
                ]
                self.dense[name] = matmul_layout(torch.cat(floats) if len(floats) > 1 else floats[0])
            for part in parts:
                gguf_file.release(part)  # the bytes are copied or decoded: RSS need not count them twice

    def get(self, name: str) -> torch.Tensor:
        """The tensor as floats: stored, or dequantized now from its packed bytes."""
        if name in self.dense:
            return self.dense[name]
        floats = [
            dequantize_rows(raw, qtype, shape, self.dtype, name=name)
            for raw, qtype, shape in self.packed[name]
        ]
        return torch.cat(floats) if len(floats) > 1 else floats[0]

    def row_slabs(self, name: str) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first row, rows as floats)`` covering a 2-D tensor: the whole of it when stored dense;
        when packed, slabs of ``SLAB_FLOAT32_BYTES`` of float32 dequantized one at a time, so a
        caller that uses each slab and drops it never holds the whole matrix as floats (the tied
        head of the default model: 56 MB as bfloat16)."""
        if name in self.dense:
            yield 0, self.dense[name]
            return
        for first, (slab, qtype, shape) in self.packed_slabs(name):
            yield first, dequantize_rows(slab, qtype, shape, self.dtype, name=name)

    def packed_slabs(self, name: str) -> Iterator[tuple[int, Packed]]:
        """``(first row, (bytes, qtype, shape))`` of a packed matrix, top to bottom, in slabs of as many
        rows as ``SLAB_FLOAT32_BYTES`` of float32 hold (views of the stored bytes, nothing copied)."""
        first = 0
        for raw, qtype, (n_rows, n_cols) in self.packed[name]:
            rows = raw.reshape(n_rows, -1)  # (n_rows, bytes per row)
            step = slab_rows(n_cols)
            for start in range(0, n_rows, step):
                slab = rows[start : start + step]  # (<= step, bytes per row)
                yield first + start, (slab, qtype, (slab.shape[0], n_cols))
            first += n_rows

    def rows(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of a 2-D tensor; when packed, only those rows' bytes are dequantized."""
        if name in self.dense:
            return self.dense[name][ids]
        from labkit.quant import dequantize

        [(raw, qtype, (n_rows, n_cols))] = self.packed[name]
        row_bytes = raw.view(n_rows, -1)[ids.reshape(-1)]  # (N, bytes per row)
        return dequantize(row_bytes, qtype, (ids.numel(), n_cols)).view(*ids.shape, n_cols).to(self.dtype)

    def stored_bytes(self, name: str) -> int:
        """Bytes this tensor occupies while resident."""
        if name in self.dense:
            return self.dense[name].numel() * self.dense[name].element_size()
        return sum(raw.numel() for raw, _, _ in self.packed[name])

    def row_bytes(self, name: str) -> int:
        """Bytes one row of a 2-D tensor occupies while resident."""
        n_rows = (
            self.dense[name].shape[0] if name in self.dense else sum(s[0] for _, _, s in self.packed[name])
        )
        return self.stored_bytes(name) // n_rows

    @property
    def names(self) -> list[str]:
        """Every stored tensor (fused matrices under their fused names)."""
        return [*self.dense, *self.packed]

    @property
    def total_bytes(self) -> int:
        return sum(self.stored_bytes(name) for name in self.names)


def fused_name(name: str) -> str:
    """The name a file tensor is stored under: ``blk.0.attn_k.weight`` -> ``blk.0.attn_qkv.weight``."""
    for fused, parts in FUSED.items():
        for part in parts:
            if f".{part}." in name:
                return name.replace(f".{part}.", f".{fused}.")
    return name


def storage_plan(names: Sequence[str]) -> dict[str, list[str]]:
    """Stored name -> the file tensors it holds, in row order (``FUSED`` gives the order)."""
    plan: dict[str, list[str]] = {}
    for name in names:
        plan.setdefault(fused_name(name), []).append(name)
    return {stored: sorted(parts, key=_row_order) for stored, parts in plan.items()}


def _row_order(name: str) -> int:
    """Position of a part inside its fused matrix (0 for tensors stored alone)."""
    short = name.split(".")[-2]  # blk.0.attn_k.weight -> attn_k
    return next((parts.index(short) for parts in FUSED.values() if short in parts), 0)


def _stack_packed(parts: list[Packed]) -> list[Packed]:
    """Copies of the parts' bytes, stacked when they share a qtype (rows of whole blocks) so one
    dequantize covers them."""
    if len({qtype for _, qtype, _ in parts}) > 1:
        return [(raw.clone(), qtype, shape) for raw, qtype, shape in parts]  # e.g. attn_v in a finer type
    raw = torch.cat([raw.reshape(-1) for raw, _, _ in parts])
    n_rows = sum(shape[0] for _, _, shape in parts)
    return [(raw, parts[0][1], (n_rows, *parts[0][2][1:]))]
