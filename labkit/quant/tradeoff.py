"""What a quantization type saves and what it costs, measured on a real model (chapter 2).

- ``model_sample``    float32 rows sampled from the weight matrices of an open GGUF file
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

from labkit.formats import FORMATS
from labkit.hierarchy import probe
from labkit.quant import QUANT_TYPES, QuantErrorStats, dequantize, model_error_metrics, quantize

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


def _dequantize_all_gguf_py(f: Any) -> None:
    for name, info in f.tensors.items():
        gguf.quants.dequantize(np.asarray(f.raw(name)), gguf.GGMLQuantizationType[info.qtype])


def time_load_path(f: Any, *, with_gguf_py: bool = True) -> LoadPathTimes:
    """Measure the steps of a Python load path on an open ``labkit.gguf`` file, one run each.

    The device read is the first row of ``labkit.hierarchy.probe.measure_cold_read``: a ``read()`` after
    the file was evicted from the page cache and checked, else ``O_DIRECT``, else not a device
    number (then ``read_device_s`` is None). The warm read is ``labkit.hierarchy.probe.measure_warm_read``.

    Args:
        f: the open file.
        with_gguf_py: also time gguf-py's dequantizer, as a peer.

    Returns:
        A ``LoadPathTimes``.
    """
    path = Path(f.path)
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
