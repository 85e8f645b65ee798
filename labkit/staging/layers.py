"""What the stager moves: each layer of a GGUF model as byte ranges in the file and tensors in a slot.

A *layer* here is the unit that is placed and streamed as a whole: each transformer block
``blk.N``, and ``output`` (the final norm and the head matrix, llama.cpp's "output layer").
The input embedding is not a layer: a token reads only its own row of ``token_embd``, so
those rows are read from the file when needed, as llama.cpp keeps ``token_embd`` on the CPU.

A layer has two sizes:

- ``file_bytes``: its tensors' bytes as stored in the file (quantized), what a read moves;
- ``dense_bytes``: the same tensors dequantized to the compute dtype, what ``F.linear``
  needs, and what a resident layer occupies.

The dense tensors follow ``labkit.runtime.weights`` exactly: ``attn_q/k/v`` stacked into
``attn_qkv``, ``ffn_gate/up`` into ``ffn_gate_up``, norms in float32, and on a CPU, float32
matrices with at least as many rows as columns stored column by column (the layout
``matmul_layout`` picks), so that a streamed layer computes bit for bit what a resident one does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from labkit.errors import ModelError
from labkit.formats import FORMATS
from labkit.gguf.codec import FLOAT_DTYPES
from labkit.runtime.model import BLOCK_TENSORS  # a block's tensors, as in the file
from labkit.runtime.weights import FUSED, fused_name

SLOT_ALIGN_BYTES = 64  # every tensor in a slot starts on a 64-byte boundary (any dtype's alignment)
SLAB_FLOAT32_BYTES = 4 << 20  # a matrix is dequantized this many float32 bytes of rows at a time
RUN_GAP_BYTES = 4096  # tensors at most this far apart in the file are read as one run (the gap with them)


@dataclass(frozen=True)
class FilePart:
    """One file tensor of a layer: where its bytes sit, and where they go.

    Attributes:
        name: the file's tensor name (``blk.3.attn_k.weight``).
        stored_name: the dense tensor it becomes part of (``blk.3.attn_qkv.weight``).
        qtype: its ggml type.
        shape: torch-order shape (``(rows, cols)`` or ``(n,)``).
        file_offset: absolute byte offset in the file.
        n_bytes: its size in the file.
        raw_offset: where it lands in the layer's raw slot (its bytes, back to back).
        row_start: first row it fills in the stored tensor.
    """

    name: str
    stored_name: str
    qtype: str
    shape: tuple[int, ...]
    file_offset: int
    n_bytes: int
    raw_offset: int
    row_start: int


@dataclass(frozen=True)
class DenseTensor:
    """A compute-ready tensor of a layer, as it sits in a slot.

    Attributes:
        name: the stored name (``blk.3.attn_qkv.weight``).
        shape: ``(n_out, n_in)`` or ``(n,)``.
        dtype: float32 for norms, the compute dtype for matrices.
        column_major: stored column by column (``w.T.contiguous().T``).
        slot_offset: where it starts in the layer's dense slot.
        raw_offset: set when the tensor is simply a view of the raw slot at this offset: the file
            already holds it in the compute dtype and memory order (an F16 file computed in float16),
            so it needs no dequantize step and no dense bytes.
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    column_major: bool
    slot_offset: int
    raw_offset: int | None = None

    @property
    def size_bytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class LayerSpec:
    """One placeable layer of the model.

    Attributes:
        name: ``"blk.N"`` or ``"output"``.
        index: its position in the forward pass (blocks 0..n-1, then output).
        parts: its file tensors, in the order they fill the raw slot.
        tensors: its dense tensors, in the order they fill the dense slot.
    """

    name: str
    index: int
    parts: tuple[FilePart, ...]
    tensors: tuple[DenseTensor, ...]

    @property
    def file_bytes(self) -> int:
        """Bytes read from the file for one pass through this layer."""
        return sum(p.n_bytes for p in self.parts)

    @property
    def raw_slot_bytes(self) -> int:
        """Bytes of the raw slot: the layer's runs of file bytes (with the padding between tensors)."""
        return max(p.raw_offset + p.n_bytes for p in self.parts)

    @property
    def aliased(self) -> bool:
        """True when every tensor is a view of the raw bytes (the file holds the compute format)."""
        return all(t.raw_offset is not None for t in self.tensors)

    @property
    def dense_bytes(self) -> int:
        """Bytes of the dense slot: the tensors that must be dequantized (0 when ``aliased``)."""
        return max((t.slot_offset + t.size_bytes for t in self.tensors if t.raw_offset is None), default=0)

    @property
    def resident_bytes(self) -> int:
        """Bytes a resident layer occupies: its dense tensors, or its raw bytes when ``aliased``."""
        return self.raw_slot_bytes if self.aliased else self.dense_bytes

    @property
    def largest_float32_bytes(self) -> int:
        """The dequantize scratch: one slab of rows in float32 (the whole tensor when smaller); 0 when aliased."""
        if self.aliased:
            return 0
        return max(min(4 * _numel(p.shape), max(SLAB_FLOAT32_BYTES, 4 * p.shape[-1])) for p in self.parts)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _align(n: int, to: int = SLOT_ALIGN_BYTES) -> int:
    return -(-n // to) * to


def column_major(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> bool:
    """Whether ``labkit.runtime.weights.matmul_layout`` stores this matrix column by column."""
    return len(shape) == 2 and device.type == "cpu" and dtype == torch.float32 and shape[0] >= shape[1]


def layer_tensor_names(n_layers: int, tied: bool) -> list[list[str]]:
    """The file tensors of each layer: blocks 0..n-1, then the output layer."""
    layers = [[f"blk.{i}.{t}.weight" for t in BLOCK_TENSORS] for i in range(n_layers)]
    head = "token_embd.weight" if tied else "output.weight"
    return [*layers, ["output_norm.weight", head]]


def layer_specs(
    gguf_file: Any, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> list[LayerSpec]:
    """Every placeable layer of an open llama GGUF file, with its byte ranges and dense tensors.

    Args:
        gguf_file: an open ``labkit.gguf`` file of a llama model.
        dtype: the compute dtype the matrices are dequantized to.
        device: the compute device (decides the matrices' memory order, as the runtime does).
    Raises:
        ModelError: a tensor a llama block needs is missing, or has a type labkit cannot decode.
    """
    device = torch.device(device)
    n_layers = int(gguf_file.metadata.get("llama.block_count", 0))
    tied = "output.weight" not in gguf_file.tensors
    specs = []
    for index, names in enumerate(layer_tensor_names(n_layers, tied)):
        missing = [n for n in names if n not in gguf_file.tensors]
        if missing:
            raise ModelError(
                f"tensor {missing[0]!r} is missing from {Path(gguf_file.path).name}; "
                f"a llama block needs {list(BLOCK_TENSORS)}"
            )
        name = "output" if index == n_layers else f"blk.{index}"
        specs.append(_layer_spec(gguf_file, name, index, names, dtype, device))
    return specs


def _layer_spec(
    gguf_file: Any, name: str, index: int, names: list[str], dtype: torch.dtype, device: torch.device
) -> LayerSpec:
    groups: dict[str, list[str]] = {}
    for tensor in names:
        groups.setdefault(fused_name(tensor), []).append(tensor)
    parts, tensors, dense_at = [], [], 0
    for stored, members in groups.items():
        members.sort(key=_row_order)
        row = 0
        for member in members:
            info = gguf_file.tensors[member]
            if info.qtype not in FORMATS:
                raise ModelError(
                    f"tensor {member!r} is {info.qtype}, which labkit cannot dequantize; "
                    f"re-quantize the file to one of {', '.join(FORMATS)}"
                )
            shape = tuple(int(s) for s in info.shape)
            parts.append(
                FilePart(member, stored, info.qtype, shape, int(info.offset), int(info.n_bytes), 0, row)
            )
            row += shape[0]
        first = gguf_file.tensors[members[0]].shape
        shape = (row, int(first[1])) if len(first) == 2 else (int(first[0]),)
        tensor_dtype = dtype if len(shape) == 2 else torch.float32  # norms stay float32, as in the runtime
        tensors.append(
            DenseTensor(stored, shape, tensor_dtype, column_major(shape, tensor_dtype, device), dense_at)
        )
        dense_at = _align(dense_at + tensors[-1].size_bytes)
    placed = _raw_layout(parts)
    aliases = [_alias_offset(t, [p for p in placed if p.stored_name == t.name]) for t in tensors]
    if all(offset is not None for offset in aliases):  # the whole layer is already in compute format
        tensors = [
            replace(t, slot_offset=0, raw_offset=offset) for t, offset in zip(tensors, aliases, strict=True)
        ]
    return LayerSpec(name, index, placed, tuple(tensors))


def _alias_offset(tensor: DenseTensor, parts: list[FilePart]) -> int | None:
    """Where ``tensor`` can be viewed in the raw slot as is, or None (it must be dequantized)."""
    first = min(parts, key=lambda p: p.row_start)
    in_row_order = sorted(parts, key=lambda p: p.row_start)
    back_to_back = all(
        b.raw_offset == a.raw_offset + a.n_bytes for a, b in zip(in_row_order, in_row_order[1:], strict=False)
    )
    same_format = all(FLOAT_DTYPES.get(p.qtype) == tensor.dtype for p in parts)
    if same_format and back_to_back and not tensor.column_major and first.raw_offset % SLOT_ALIGN_BYTES == 0:
        return first.raw_offset
    return None


def _raw_layout(parts: list[FilePart]) -> tuple[FilePart, ...]:
    """Give each part its place in the raw slot: a run of nearby tensors keeps its file layout, so one
    read covers the run (a block's tensors sit back to back in the file); separate runs are stacked."""
    placed: list[FilePart] = []
    run_file = run_raw = end_file = end_raw = 0
    for part in sorted(parts, key=lambda p: p.file_offset):
        if not placed or part.file_offset - end_file > RUN_GAP_BYTES:
            run_file, run_raw = part.file_offset, _align(end_raw)  # a new run
        raw_offset = run_raw + part.file_offset - run_file
        placed.append(replace(part, raw_offset=raw_offset))
        end_file, end_raw = part.file_offset + part.n_bytes, raw_offset + part.n_bytes
    order = {part.name: i for i, part in enumerate(parts)}
    return tuple(sorted(placed, key=lambda p: order[p.name]))


def _row_order(name: str) -> int:
    short = name.split(".")[-2]
    return next((parts.index(short) for parts in FUSED.values() if short in parts), 0)
