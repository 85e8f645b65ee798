"""What a quantization type saves and what it costs, measured on a real model (chapter 2).

- ``model_sample``    float32 rows sampled from the weight matrices of an open GGUF file
- ``float_stand_in``  a float tensor in place of the original a quantized file no longer holds
- ``file_type_size``  bytes of a whole model in a llama.cpp file type (Q4_K_M ...), from the block table
- ``as_rows``         regroup weights into whole blocks of a type
- ``sweep``           size against error for every type: ``TypePoint`` records
- ``time_load_path``  reading a model file against dequantizing it: ``LoadPathTimes``

Every number these functions return is either *measured* here (timings, errors) or
*computed* exactly from the block table (sizes); the records' docstrings say which.
The reads go through ``labkit.hierarchy.probe``, which checks that a "device" read really
reached the device (``labkit.hierarchy.pagecache``). The figures that draw these records are
in ``labkit.figures.quant``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from labkit.errors import ProbeError, QuantizationError
from labkit.formats import FORMATS
from labkit.hierarchy import probe
from labkit.quant import QUANT_TYPES, QuantErrorStats, dequantize, model_error_metrics, quantize
from labkit.quant.mixtures import plan_types

READ_BLOCK_BYTES = 16 << 20  # read() size of the load-path reads


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


# Block types whose bytes start with the fp16 step d between two neighbouring levels.
STEP_FIRST_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
FLOAT_TYPES = ("F32", "F16", "BF16")


def float_stand_in(
    f: Any, name: str, *, every_nth_row: int = 1, max_rows: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, str]:
    """A float32 stand-in for the weights tensor ``name`` held before it was quantized.

    A quantized file keeps only each weight's grid value; rounding to the nearest level means the
    original lay within half a step of it: ``|x - decoded| <= d/2``, with ``d`` the block's step
    (stored first in each block of the types in ``STEP_FIRST_TYPES``; fp16 rounding of ``d`` and
    ``m`` aside). This picks one such original: every decoded weight moved by an independent uniform
    amount in ``[-d/2, d/2)``. It keeps the real tensor's rows, block scales and outliers, and is on
    no grid, so requantizing it measures a type's error honestly (the decoded grid itself would give
    its own type zero error). Float tensors are returned as they are.

    Args:
        f: an open ``labkit.gguf`` file.
        name: a tensor of a type in ``STEP_FIRST_TYPES`` or ``FLOAT_TYPES``.
        every_nth_row, max_rows: which rows to return (``[::every_nth_row][:max_rows]``).
        seed: seeds the uniform offsets.

    Returns:
        ``(weights, how)``: float32 ``(rows, n_per_row)`` and a sentence saying what they are.

    Raises:
        QuantizationError: the tensor's type stores no single step per block (the K-quants).
    """
    info = f.tensors[name]
    decoded = f.tensor(name)
    decoded = decoded[None] if decoded.dim() == 1 else decoded.reshape(-1, decoded.shape[-1])
    picked = torch.arange(decoded.shape[0])[::every_nth_row][:max_rows]
    if info.qtype in FLOAT_TYPES:
        return decoded[picked].contiguous(), f"the file's own {info.qtype} weights"
    if info.qtype not in STEP_FIRST_TYPES:
        raise QuantizationError(
            f"tensor {name!r} is {info.qtype}, which stores no single step per block; "
            f"pick a tensor of type {', '.join(STEP_FIRST_TYPES + FLOAT_TYPES)}"
        )
    fmt = FORMATS[info.qtype]
    n_blocks = decoded.shape[-1] // fmt.block_size
    blocks = f.raw(name).reshape(decoded.shape[0], n_blocks, fmt.type_size)[picked]  # (rows, blocks, bytes)
    step = blocks[..., :2].contiguous().view(torch.float16).float().abs()  # (rows, blocks, 1)
    g = torch.Generator().manual_seed(seed)
    offsets = (torch.rand(len(picked), n_blocks, fmt.block_size, generator=g) - 0.5) * step
    weights = decoded[picked] + offsets.reshape(len(picked), -1)  # (rows, n_per_row)
    how = (
        f"a stand-in for the float original: the file's {info.qtype} weights, each moved by a uniform "
        "random amount within its own quantization step (the original lay within ±d/2 of it)"
    )
    return weights, how


def model_float_sample(f: Any, *, every_nth_row: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Like ``model_sample``, but each tensor is its ``float_stand_in`` (K-quant tensors are skipped)."""
    sample = {}
    for name, info in f.tensors.items():
        if len(info.shape) == 2 and info.qtype in STEP_FIRST_TYPES + FLOAT_TYPES:
            sample[name] = float_stand_in(f, name, every_nth_row=every_nth_row, seed=seed)[0]
    return sample


@dataclass(frozen=True)
class ShapeOnly:
    """A tensor's name, torch-order shape and type, without its data (enough to size a file)."""

    name: str
    shape: tuple[int, ...]
    qtype: str


# Llama-2-7B's shapes (Touvron et al. 2023, arXiv:2307.09288; its config.json): about 6.7e9 weights.
LLAMA_2_7B = {"n_layer": 32, "dim": 4096, "ffn_dim": 11008, "vocab": 32000, "n_head": 32, "n_head_kv": 32}


def llama_shapes(
    n_layer: int, dim: int, ffn_dim: int, vocab: int, n_head: int, n_head_kv: int
) -> tuple[list[ShapeOnly], dict[str, Any]]:
    """The tensors (as F16) and metadata of a llama model of these hyperparameters, without data."""
    kv_dim = dim // n_head * n_head_kv
    tensors = [
        ShapeOnly("token_embd.weight", (vocab, dim), "F16"),
        ShapeOnly("output_norm.weight", (dim,), "F32"),
        ShapeOnly("output.weight", (vocab, dim), "F16"),
    ]
    per_layer = {
        "attn_norm": (dim,),
        "attn_q": (dim, dim),
        "attn_k": (kv_dim, dim),
        "attn_v": (kv_dim, dim),
        "attn_output": (dim, dim),
        "ffn_norm": (dim,),
        "ffn_gate": (ffn_dim, dim),
        "ffn_up": (ffn_dim, dim),
        "ffn_down": (dim, ffn_dim),
    }
    for i in range(n_layer):
        for part, shape in per_layer.items():
            tensors.append(ShapeOnly(f"blk.{i}.{part}.weight", shape, "F32" if len(shape) == 1 else "F16"))
    metadata = {
        "general.architecture": "llama",
        "llama.block_count": n_layer,
        "llama.attention.head_count": n_head,
        "llama.attention.head_count_kv": n_head_kv,
    }
    return tensors, metadata


@dataclass(frozen=True)
class FileTypeSize:
    """Bytes of a whole model's tensors in one llama.cpp file type, computed from the block table."""

    type_name: str
    n_weights: int
    size_bytes: int

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.size_bytes / self.n_weights


def file_type_size(
    tensors: Mapping[str, Any] | Iterable[Any], metadata: Mapping[str, Any], type_name: str
) -> FileTypeSize:
    """Size a model's tensor data in a llama.cpp file type (``"Q4_K_M"``, ``"Q4_0"``, ``"F16"``, ...).

    Each tensor gets the type llama.cpp's quantizer would give it (``labkit.quant.mixtures.plan_types``:
    Q4_K_M keeps some tensors in Q6_K, norms in F32, ...), and is sized from the block table:
    ``weights / block_size * type_size``. Metadata (the tokenizer, a few MB) is not counted.

    Returns:
        A ``FileTypeSize``.
    """
    n_weights = size_bytes = 0
    for plan in plan_types(tensors, metadata, type_name):
        fmt = FORMATS[plan.dst_qtype]
        n = int(np.prod(plan.shape))
        n_weights += n
        size_bytes += n // fmt.block_size * fmt.type_size
    return FileTypeSize(type_name, n_weights, size_bytes)


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


def sweep(
    sample: Mapping[str, torch.Tensor], n_weights: int, qtypes: Iterable[str] = QUANT_TYPES
) -> list[TypePoint]:
    """Quantize the sample to each type, measure the error, and size the whole model in that type.

    Args:
        sample: name -> float32 weights (e.g. from ``model_sample``).
        n_weights: how many weights the whole model's 2-D tensors hold.
        qtypes: the types to try.

    Returns:
        One ``TypePoint`` per type, in the order of ``qtypes``.
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


def _dequantize_all(f: Any) -> None:
    for name in f.tensors:
        f.tensor(name)
        f.release(name)  # its mapped pages leave the process: RSS holds one tensor's bytes at a time


def _dequantize_all_gguf_py(f: Any) -> None:
    for name, info in f.tensors.items():
        gguf.quants.dequantize(np.asarray(f.raw(name)), gguf.GGMLQuantizationType[info.qtype])
        f.release(name)


def time_load_path(f: Any, *, with_gguf_py: bool = True) -> LoadPathTimes:
    """Measure the steps of a Python load path on an open ``labkit.gguf`` file, one run each.

    The device read is the first row of ``labkit.hierarchy.probe.measure_cold_read``: an ``O_DIRECT``
    ``read()`` that bypasses the page cache (``f`` maps the file, and the kernel does not evict pages
    a process has mapped, so ``posix_fadvise`` cannot empty the cache here); where ``O_DIRECT`` is
    refused, a ``read()`` after a verified eviction, else not a device number (then ``read_device_s``
    is None). The warm read is ``labkit.hierarchy.probe.measure_warm_read``.

    Args:
        f: the open file.
        with_gguf_py: also time gguf-py's dequantizer, as a peer.

    Returns:
        A ``LoadPathTimes``.
    """
    path = Path(f.path)
    try:  # f maps the file, and the kernel keeps mapped pages cached whatever fadvise asks: bypass it
        cold = probe.measure_cold_read(path, READ_BLOCK_BYTES, repeats=0, method="direct")[0]
    except ProbeError:  # no O_DIRECT here (e.g. tmpfs): fadvise, verified, or an honest "not evicted"
        cold = probe.measure_cold_read(path, READ_BLOCK_BYTES, repeats=0)[0]
    warm = probe.measure_warm_read(path, READ_BLOCK_BYTES, repeats=0)
    dequantize_s = probe.time_runs(lambda: _dequantize_all(f), runs=1)[0]
    gguf_py_s = probe.time_runs(lambda: _dequantize_all_gguf_py(f), runs=1)[0] if with_gguf_py else None
    return LoadPathTimes(
        file_bytes=cold.moved_bytes,
        n_weights=sum(info.n_elements for info in f.tensors.values()),
        read_device_s=cold.elapsed_s if cold.tier == "disk" else None,
        device_how=f"{cold.method}; {cold.note}",
        read_warm_s=warm.elapsed_s,
        dequantize_s=dequantize_s,
        gguf_py_s=gguf_py_s,
    )
