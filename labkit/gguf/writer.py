"""Write GGUF v3 files: streamed one tensor at a time, and atomic.

``write(path, tensors, metadata)`` lays the file out from names, shapes and types
alone (header, metadata, tensor-info table), then asks each ``TensorSource`` for
its values, encodes them (quantizing on the fly), writes them and lets them go.
Peak memory is one tensor, so a file larger than RAM can be written.

The bytes go to an unnamed (or hidden) file in the destination folder, which is
flushed, fsync'ed and given the name ``path`` only when everything succeeded: an
error, Ctrl-C, ``kill`` or even ``kill -9`` leaves no partial file behind and never
clobbers an existing file (``labkit.gguf.atomic``).

Why an own byte writer and not ``gguf.GGUFWriter``: the whole format fits in the
few functions below, which makes this module a readable spec of the file (as
llama2.c's ``export.py`` is for its format); GGUFWriter does not write atomically,
spreads streaming over a multi-call state machine, and infers metadata types
differently from labkit's rules (see ``value_type_of``). gguf-py's *reader*
checks every file this writer makes (``tests/test_gguf_writer.py``).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labkit.errors import GGUFFormatError, QuantizationError
from labkit.gguf import codec
from labkit.gguf import constants as C
from labkit.gguf.atomic import atomic_output as _atomic_file
from labkit.gguf.atomic import check_output_path as _check_output_path
from labkit.gguf.metadata import Typed, encode_metadata


@dataclass(frozen=True)
class TensorSource:
    """A tensor to write, produced only when the writer gets to it.

    Attributes:
        name: e.g. ``"blk.0.attn_q.weight"``.
        shape: torch order (the row is the last dim).
        qtype: the type to store, e.g. ``"Q4_K"``.
        load: returns either float values of ``shape`` (encoded to ``qtype`` while
            writing) or a ``uint8`` tensor of the already-encoded bytes (written as is).
    """

    name: str
    shape: tuple[int, ...]
    qtype: str
    load: Callable[[], torch.Tensor]

    @property
    def n_bytes(self) -> int:
        fmt = C.FORMAT_BY_NAME[self.qtype]
        return math.prod(self.shape) // fmt.block_size * fmt.type_size


def write(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor] | Iterable[TensorSource],
    metadata: Mapping[str, Any],
    *,
    alignment: int = C.DEFAULT_ALIGNMENT,
    progress: bool = False,
    allow_nonfinite: bool = False,
) -> Path:
    """Write a GGUF v3 file atomically, one tensor at a time.

    Args:
        path: destination; replaced only once the new file is complete and on disk.
        tensors: ``{name: tensor}`` (stored in the tensor's dtype: F32, F16 or BF16),
            or ``TensorSource`` records (stored as their ``qtype``).
        metadata: key -> value; types follow ``value_type_of`` (wrap a value in
            ``Typed("UINT64", 7)`` to choose its type).
        alignment: data alignment in bytes, a power of two (written as
            ``general.alignment`` when it is not 32).
        progress: show a tqdm progress bar.
        allow_nonfinite: store NaN/Inf (and values too large for F16/BF16, which become Inf)
            in F32/F16/BF16 tensors as they are; by default they raise, since llama.cpp would
            load them silently and produce NaN logits. Quantized types never take them.

    Returns:
        The path written.

    Raises:
        OutputPathError: before any work, if ``path`` is a folder or its folder is missing
            or not writable.
        GGUFFormatError: a name, shape, type or metadata value cannot be written.
        QuantizationError: a tensor holds NaN/Inf, or a value its type cannot represent
            (e.g. above 65504 in F16, or a Q8_0 block whose scale overflows F16).

    Example:
        >>> write(tmp / "tiny.gguf", {"w": torch.ones(2, 32)}, {"general.architecture": "demo"})
    """
    path = Path(path)
    _check_output_path(path)
    sources = _as_sources(tensors)
    _check_alignment(alignment, metadata)
    if alignment != C.DEFAULT_ALIGNMENT and "general.alignment" not in metadata:
        metadata = {**metadata, "general.alignment": Typed("UINT32", alignment)}
    head = _header(sources, *encode_metadata(metadata), alignment)
    total_bytes = sum(s.n_bytes for s in sources)
    with _atomic_file(path) as out, _progress(progress, total_bytes, path.name) as bar:
        out.write(head)
        out.write(bytes(-len(head) % alignment))
        for source in sources:
            data = _encoded(source, allow_nonfinite)
            out.write(data.data)  # the array's buffer, no copy
            out.write(bytes(-len(data) % alignment))
            bar.update(len(data))
            del data  # let this tensor go before loading the next
    return path


def _as_sources(tensors: Mapping[str, torch.Tensor] | Iterable[TensorSource]) -> list[TensorSource]:
    if isinstance(tensors, Mapping):
        sources = [_source_of(name, tensor) for name, tensor in tensors.items()]
    else:
        sources = list(tensors)
    seen: set[str] = set()
    for source in sources:
        if not isinstance(source, TensorSource):
            raise GGUFFormatError(f"cannot write {source!r}: expected a TensorSource or a dict of tensors")
        _check_source(source)
        if source.name in seen:
            raise GGUFFormatError(f"cannot write tensor {source.name!r} twice: names must be unique")
        seen.add(source.name)
    return sources


def _source_of(name: str, tensor: torch.Tensor) -> TensorSource:
    if not isinstance(tensor, torch.Tensor) or tensor.dtype not in codec.QTYPE_OF_DTYPE:
        kind = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise GGUFFormatError(
            f"cannot write tensor {name!r} of {kind}: a dict of tensors holds float32, float16 "
            "or bfloat16 tensors; use TensorSource(qtype=...) for quantized or encoded data"
        )
    return TensorSource(name, tuple(tensor.shape), codec.QTYPE_OF_DTYPE[tensor.dtype], lambda: tensor)


def _check_source(source: TensorSource) -> None:
    name, shape = source.name, source.shape
    try:
        encoded = name.encode("utf-8") if isinstance(name, str) else b""
    except UnicodeEncodeError:  # a lone surrogate
        encoded = b""
    if not 0 < len(encoded) <= C.MAX_TENSOR_NAME_BYTES:
        raise GGUFFormatError(
            f"cannot write tensor {name!r}: names are 1..{C.MAX_TENSOR_NAME_BYTES} bytes of valid UTF-8 "
            "(no lone surrogates); rename it"
        )
    if not 1 <= len(shape) <= C.MAX_DIMS or not all(isinstance(d, int) and d >= 1 for d in shape):
        raise GGUFFormatError(
            f"cannot write tensor {name!r} of shape {shape}: 1..{C.MAX_DIMS} dims, each >= 1"
        )
    fmt = C.FORMAT_BY_NAME.get(source.qtype)
    if fmt is None:
        raise GGUFFormatError(f"cannot write tensor {name!r}: unknown type {source.qtype!r}")
    if shape[-1] % fmt.block_size:
        raise GGUFFormatError(
            f"cannot write tensor {name!r} as {fmt.name}: its row length {shape[-1]} is not a "
            f"multiple of the block size {fmt.block_size}; pick another type"
        )


def _check_alignment(alignment: int, metadata: Mapping[str, Any]) -> None:
    if not (
        isinstance(alignment, int) and 0 < alignment <= C.MAX_ALIGNMENT and alignment & (alignment - 1) == 0
    ):
        raise GGUFFormatError(f"alignment {alignment!r} must be a power of two from 1 to {C.MAX_ALIGNMENT}")
    declared = metadata.get("general.alignment", alignment)
    declared = getattr(declared, "value", declared)
    if declared != alignment:
        raise GGUFFormatError(f"metadata general.alignment={declared!r} disagrees with alignment={alignment}")


def _header(sources: list[TensorSource], metadata_bytes: bytes, n_kv: int, alignment: int) -> bytes:
    """Header, metadata and tensor-info table: everything before the data."""
    parts = [C.GGUF_MAGIC, struct.pack("<IQQ", C.GGUF_VERSION, len(sources), n_kv), metadata_bytes]
    offset = 0
    for source in sources:
        name = source.name.encode("utf-8")
        ne = source.shape[::-1]  # GGUF stores the row length first
        parts.append(struct.pack(f"<Q{len(name)}sI{len(ne)}Q", len(name), name, len(ne), *ne))
        parts.append(struct.pack("<IQ", C.FORMAT_BY_NAME[source.qtype].type_id, offset))
        offset = C.align_up(offset + source.n_bytes, alignment)
    return b"".join(parts)


def _encoded(source: TensorSource, allow_nonfinite: bool = False) -> np.ndarray:
    """Load one tensor and return its file bytes, checked against the declared shape and type."""
    values = source.load()
    if not isinstance(values, torch.Tensor):
        raise GGUFFormatError(
            f"tensor {source.name!r}: load() returned {type(values).__name__}, not a tensor"
        )
    if values.dtype == torch.uint8:
        if values.numel() != source.n_bytes:
            raise GGUFFormatError(
                f"tensor {source.name!r}: load() returned {values.numel()} encoded bytes; "
                f"{source.qtype} of shape {source.shape} takes {source.n_bytes}"
            )
        return values.detach().cpu().contiguous().numpy().reshape(-1)
    if not values.is_floating_point() or tuple(values.shape) != tuple(source.shape):
        raise GGUFFormatError(
            f"tensor {source.name!r}: load() returned {values.dtype} of shape "
            f"{tuple(values.shape)}; expected floats of shape {source.shape} or uint8 bytes"
        )
    if source.qtype not in codec.FLOAT_DTYPES and source.qtype not in C.WRITABLE_QTYPES:
        raise GGUFFormatError(
            f"tensor {source.name!r}: labkit cannot encode {source.qtype}; "
            "pass its encoded bytes (uint8) instead"
        )
    data = codec.encode(values, source.qtype, source.name)
    assert data.size == source.n_bytes, (source.name, data.size, source.n_bytes)  # quantizer invariant
    if source.qtype in codec.FLOAT_DTYPES and not allow_nonfinite:
        _check_stored_finite(values, data, source)
    return data


def _check_stored_finite(values: torch.Tensor, data: np.ndarray, source: TensorSource) -> None:
    """Refuse NaN/Inf in a float tensor, and finite values that became Inf in F16/BF16 (overflow)."""
    stored = torch.from_numpy(data).view(codec.FLOAT_DTYPES[source.qtype])  # the values as written
    lo, hi = torch.aminmax(stored.float())  # NaN propagates, Inf shows: one pass in the common case
    if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
        return
    flat = int((~torch.isfinite(stored)).nonzero()[0, 0])
    index = [int(i) for i in np.unravel_index(flat, source.shape)]
    original = float(values.reshape(-1)[flat])
    if math.isfinite(original):
        biggest = float(torch.finfo(codec.FLOAT_DTYPES[source.qtype]).max)
        raise QuantizationError(
            f"tensor {source.name!r}: the value {original:g} at index {index} is beyond {source.qtype}'s "
            f"largest value {biggest:g} and would be stored as inf; store the tensor as F32 (or BF16), "
            "or scale it down"
        )
    raise QuantizationError(
        f"tensor {source.name!r} holds {original} at index {index}; a model file with NaN/Inf gives "
        "NaN outputs. Find where it comes from (or clean it with torch.nan_to_num), or pass "
        "allow_nonfinite=True to store it anyway"
    )


@contextmanager
def _progress(enabled: bool, total_bytes: int, label: str) -> Iterator[Any]:
    from tqdm.auto import tqdm

    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=label, disable=not enabled) as bar:
        yield bar
