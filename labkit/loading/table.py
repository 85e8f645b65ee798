"""Which bytes of a weights file hold which tensor: the tensor table, in every format.

A loader that knows the table can read exactly the bytes it needs. This module answers
three questions from a file's header alone, without reading any weights:

- ``detect_format(path)``    GGUF, safetensors or a PyTorch checkpoint (by its first bytes);
- ``tensor_table(path)``     one ``TensorSpan`` per tensor: name, type, shape, byte offset, size;
- ``select(spans, layers)``  the spans of some transformer layers (plus, by default, the
                             tensors outside every layer: embeddings, final norm, output head),
                             and ``byte_ranges(spans)`` to merge them into as few reads as possible.

GGUF's and safetensors' tables are in their headers. A PyTorch checkpoint is a zip archive:
a pickle program (``data.pkl``) that rebuilds the tensors, plus one raw record per storage.
Its table comes from ``torch.load(mmap=True, weights_only=True)``, which maps the file and runs
the pickle under torch's safe unpickler; each tensor's place in the file follows from where
its storage sits in the mapping.

References: ggml ``docs/gguf.md``; huggingface/safetensors ``README.md``; PyTorch
``torch/serialization.py`` (the zip layout and ``mmap=True``); PKWARE APPNOTE 4.3.7 (zip local headers).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import LoadError, MissingInputError

FORMATS = ("gguf", "safetensors", "pt")
_LAYER_NAME = re.compile(r"(?:^|\.)(?:blk|layers|layer|h|blocks)\.(\d+)\.")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_OPCODE = 0x80  # a legacy (pre-zip) torch.save file starts with a pickle


@dataclass(frozen=True)
class TensorSpan:
    """Where one tensor's bytes sit in its file.

    Attributes:
        name: e.g. ``"blk.0.attn_q.weight"``.
        dtype: the type as the file spells it: GGUF ``"Q4_K"``/``"F16"``, safetensors ``"BF16"``.
        shape: torch order (rows last).
        offset: the first byte, counted from the start of the file (None: not known).
        n_bytes: the tensor's size in the file.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int | None
    n_bytes: int

    @property
    def layer(self) -> int | None:
        """The transformer layer this tensor belongs to (None: embeddings, final norm, head)."""
        return layer_of(self.name)


def layer_of(name: str) -> int | None:
    """The layer number in a tensor name: ``blk.3.`` (GGUF), ``model.layers.3.`` (Hugging Face)."""
    match = _LAYER_NAME.search(name)
    return int(match.group(1)) if match else None


def detect_format(path: str | os.PathLike[str]) -> str:
    """Name a weights file's format from its first bytes: ``"gguf"``, ``"safetensors"`` or ``"pt"``.

    Raises:
        MissingInputError: no file at ``path``.
        LoadError: the bytes match none of the three (the message shows them).
    """
    path = Path(path)
    try:
        with path.open("rb", buffering=0) as handle:
            if hasattr(
                os, "posix_fadvise"
            ):  # these 9 bytes only: no read-ahead a partial load did not ask for
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
            head = handle.read(9)
    except FileNotFoundError:
        raise MissingInputError(f"cannot open {path}: no such file; check the path and the name") from None
    except IsADirectoryError:
        raise LoadError(
            f"{path} is a folder; give one weights file (.gguf, .safetensors, .pt or .bin)"
        ) from None
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] == _ZIP_MAGIC or head[:1] == bytes([_PICKLE_PROTOCOL_OPCODE]):
        return "pt"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < os.path.getsize(path):
        return "safetensors"
    raise LoadError(
        f"{path}: unknown weights format (first bytes {head.hex(' ') or 'none: the file is empty'}); labkit "
        "loads GGUF (starts with b'GGUF'), safetensors (8-byte length, then '{') and PyTorch checkpoints "
        "(a zip archive from torch.save); convert the file to one of these"
    )


def tensor_table(
    path: str | os.PathLike[str], fmt: str | None = None, *, exact: bool = False
) -> list[TensorSpan]:
    """Every tensor of a weights file, in the order its bytes sit in the file.

    Args:
        path: a GGUF, safetensors or PyTorch (``.pt``/``.bin``) file.
        fmt: its format, if already known (``detect_format``).
        exact: read only the header's own pages (GGUF: map the file with ``MADV_RANDOM``), so the
            kernel reads nothing ahead that a later partial load did not ask for.

    Returns:
        One ``TensorSpan`` per tensor, sorted by offset.

    Raises:
        LoadError: unknown format, a malformed header, or a checkpoint that ``weights_only`` refuses.
    """
    fmt = fmt or detect_format(path)
    if fmt == "gguf":
        spans = _gguf_table_exact(Path(path)) if exact else _gguf_table(Path(path))
    else:
        spans = {"safetensors": _safetensors_table, "pt": _pt_table}[fmt](Path(path))
    return sorted(spans, key=lambda s: -1 if s.offset is None else s.offset)


def _gguf_table(path: Path) -> list[TensorSpan]:
    from labkit import gguf

    with gguf.open(path) as f:
        return [TensorSpan(t.name, t.qtype, t.shape, t.offset, t.n_bytes) for t in f.tensors.values()]


def _gguf_table_exact(path: Path) -> list[TensorSpan]:
    """Parse a GGUF header from a mapping advised ``MADV_RANDOM``: each page read is a page asked for.

    A plain mapping reads megabytes around the first page it faults and marks pages that set off
    more read-ahead later: right for a whole-file load, wrong for a load that wants some bytes only.
    """
    from labkit.errors import GGUFFormatError
    from labkit.gguf.parse import parse_header

    with path.open("rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mapping, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mapping.madvise(mmap.MADV_RANDOM)
    try:
        parsed = parse_header(memoryview(mapping), len(mapping))
    except GGUFFormatError as error:
        raise GGUFFormatError(f"{path}: {error}") from None
    return [TensorSpan(t.name, t.qtype, t.shape, t.offset, t.n_bytes) for t in parsed.tensors]


def _safetensors_table(path: Path) -> list[TensorSpan]:
    from labkit.loading.safetensors_file import read_header

    data_start, entries = read_header(path)
    return [
        TensorSpan(
            name,
            e["dtype"],
            e["shape"],
            data_start + e["data_offsets"][0],
            e["data_offsets"][1] - e["data_offsets"][0],
        )
        for name, e in entries.items()
    ]


def _pt_table(path: Path) -> list[TensorSpan]:
    from labkit.loading.checkpoint import flat_tensors, torch_load
    from labkit.loading.safetensors_file import NAME_OF_DTYPE

    tensors = flat_tensors(torch_load(path, mmap=zipfile.is_zipfile(path)), path)
    offsets = _pt_offsets(path, tensors) if zipfile.is_zipfile(path) else {}
    return [
        TensorSpan(
            name,
            NAME_OF_DTYPE.get(t.dtype, str(t.dtype)),
            tuple(t.shape),
            offsets.get(name),
            t.numel() * t.element_size(),
        )
        for name, t in tensors.items()
    ]


def _pt_offsets(path: Path, tensors: dict) -> dict[str, int]:
    """File offsets of a mapped checkpoint's tensors, or {} if the layout is not the expected one.

    ``torch.load(mmap=True)`` maps the whole file once and points every storage at its record's
    bytes inside that map, so ``data_ptr - base`` is a file offset once the map's base is known.
    The first storage in memory belongs to the first data record in the file: that fixes the base.
    Every storage must then land exactly on a record's first byte, which this checks.
    """
    records = _zip_record_offsets(path)
    storages = {t.untyped_storage().data_ptr() for t in tensors.values() if t.numel()}
    if not records or not storages:
        return {}
    base = min(storages) - min(records)
    if any(ptr - base not in records for ptr in storages):
        return {}
    return {
        name: t.untyped_storage().data_ptr() - base + t.storage_offset() * t.element_size()
        for name, t in tensors.items()
    }


def _zip_record_offsets(path: Path) -> set[int]:
    """The file offset of the first data byte of every storage record (``*/data/N``) in a zip."""
    offsets = set()
    with zipfile.ZipFile(path) as archive, path.open("rb") as handle:
        for info in archive.infolist():
            if "/data/" not in info.filename or info.compress_type != zipfile.ZIP_STORED:
                continue
            handle.seek(info.header_offset)
            local = handle.read(30)  # the fixed part of a local file header
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            offsets.add(info.header_offset + 30 + name_len + extra_len)
    return offsets


def n_layers(spans: Sequence[TensorSpan]) -> int:
    """How many transformer layers the tensor names mention (highest layer number + 1)."""
    layers = [s.layer for s in spans if s.layer is not None]
    return max(layers) + 1 if layers else 0


def select(
    spans: Sequence[TensorSpan],
    layers: Iterable[int] | None,
    *,
    shared: bool = True,
    path: str | os.PathLike[str] = "the file",
) -> list[TensorSpan]:
    """The spans a partial load of ``layers`` reads.

    Args:
        spans: the file's table.
        layers: layer numbers to keep; None keeps every tensor.
        shared: also keep the tensors outside every layer (embeddings, final norm, output head).
        path: named in error messages.

    Raises:
        LoadError: a layer number the file does not have.
    """
    if layers is None:
        return list(spans)
    wanted = set(layers)
    count = n_layers(spans)
    missing = sorted(layer for layer in wanted if not 0 <= layer < count)
    if missing:
        have = f"layers 0-{count - 1}" if count else "no numbered layers"
        raise LoadError(f"layers {missing} are out of range: {path} has {have}; pick layers from that range")
    return [s for s in spans if s.layer in wanted or (shared and s.layer is None)]


def parse_layers(text: str) -> list[int]:
    """Parse ``"0-3"``, ``"0,2,5"`` or ``"0-3,8"`` into layer numbers.

    Raises:
        LoadError: the text is not such a list (the message shows the accepted forms).
    """
    layers: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
            raise LoadError(f"--layers {text!r} is not a list of layers; write e.g. 0-3, 0,2,5 or 0-3,8")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        layers.extend(range(first, last + 1))
    return sorted(set(layers))


def byte_ranges(spans: Iterable[TensorSpan], *, max_gap_bytes: int = 0) -> list[tuple[int, int]]:
    """Merge the spans' bytes into ``(offset, n_bytes)`` reads, in file order.

    Args:
        spans: spans with known offsets.
        max_gap_bytes: join two ranges when at most this many unwanted bytes lie between them
            (alignment padding is 0-31 bytes in GGUF); reading a small gap beats one more request.

    Returns:
        Non-overlapping ranges sorted by offset.
    """
    ranges: list[list[int]] = []
    for span in sorted(spans, key=lambda s: s.offset if s.offset is not None else -1):
        if span.offset is None:
            raise LoadError(
                f"tensor {span.name!r}: its place in the file is not known, so it cannot be read alone"
            )
        end = span.offset + span.n_bytes
        if ranges and span.offset - ranges[-1][1] <= max_gap_bytes:
            ranges[-1][1] = max(ranges[-1][1], end)
        else:
            ranges.append([span.offset, end])
    return [(start, end - start) for start, end in ranges]
