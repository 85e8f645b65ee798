"""Open a GGUF file lazily: map it, parse what comes before the data, touch nothing else.

``open(path)`` maps the whole file read-only (``mmap``), parses and validates the
header, metadata and tensor infos (see ``parse.py``), and returns a ``GGUFFile``.
Tensor bytes stay on disk (or in the page cache) until ``raw()`` or ``tensor()``
reads them; ``raw()`` hands out the mapped bytes themselves, zero-copy.

References: ggml ``docs/gguf.md`` (the format), ggml ``src/gguf.cpp`` (the checks
llama.cpp makes), gguf-py ``gguf_reader.py`` (the Python reader this one is
cross-checked against in ``tests/test_gguf_reader.py``).
"""

from __future__ import annotations

import difflib
import mmap
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from labkit.errors import ClosedFileError, GGUFFormatError, MissingInputError, MissingTensorError
from labkit.gguf import codec
from labkit.gguf.constants import HEADER_BYTES, align_up
from labkit.gguf.parse import MetadataEntry, ParsedHeader, TensorInfo, parse_header

REGION_KINDS = ("header", "metadata", "tensor_info", "padding", "tensor", "unused")


@dataclass(frozen=True)
class Region:
    """A run of bytes in the file, for the anatomy figures.

    Attributes:
        kind: one of ``REGION_KINDS``: ``header`` (24 bytes), ``metadata`` (one key-value
            pair), ``tensor_info`` (one tensor-info record), ``padding`` (alignment
            zeros), ``tensor`` (one tensor's data), ``unused`` (bytes no tensor claims).
        name: the key or tensor name ("" for header and padding).
        start: first byte.
        n_bytes: length.
    """

    kind: str
    name: str
    start: int
    n_bytes: int

    @property
    def end(self) -> int:
        return self.start + self.n_bytes


def drop_pages(mapping: mmap.mmap, start: int, n_bytes: int) -> None:
    """Unmap a range's pages from this process (``MADV_DONTNEED``, rounded out to whole pages); they
    stay in the page cache, and touching the range again maps them back in."""
    first = start - start % mmap.PAGESIZE
    end = min(len(mapping), align_up(start + n_bytes, mmap.PAGESIZE))
    if end > first and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED, first, end - first)


class GGUFFile:
    """An open GGUF file. Use ``labkit.gguf.open(path)``; close it, or use ``with``.

    Attributes:
        path: the file.
        version: GGUF version (2 or 3).
        alignment: data alignment in bytes (``general.alignment``, default 32).
        data_offset: where the tensor data section starts.
        file_size_bytes: the file's size.
        metadata: key -> value. Scalars are Python values, numeric arrays numpy
            arrays, string arrays ``StringArray`` (a lazy ``list[str]``).
        metadata_types: key -> GGUF type name, e.g. ``"UINT32"``, ``"ARRAY[STRING]"``.
        tensors: name -> ``TensorInfo``, in file order.
    """

    def __init__(self, path: Path, mapping: mmap.mmap, view: memoryview, parsed: ParsedHeader) -> None:
        self.path = path
        self._mmap: mmap.mmap | None = mapping
        self._view = view  # string arrays in ``metadata`` share this view
        self._parsed = parsed
        self.version = parsed.version
        self.alignment = parsed.alignment
        self.data_offset = parsed.data_offset
        self.file_size_bytes = len(mapping)
        self.metadata: dict[str, Any] = {e.key: e.value for e in parsed.metadata}
        self.metadata_types: dict[str, str] = {e.key: e.value_type for e in parsed.metadata}
        self.tensors: dict[str, TensorInfo] = {t.name: t for t in parsed.tensors}

    # --- tensor data -----------------------------------------------------------------

    def raw(self, name: str) -> torch.Tensor:
        """The tensor's encoded bytes as a zero-copy 1-D ``uint8`` view of the mapped file.

        The memory is read-only: writing to it crashes the process. ``clone()`` first
        if you want to modify it.
        """
        info = self._info(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "buffer is not writable"
            return torch.frombuffer(self._view, dtype=torch.uint8, count=info.n_bytes, offset=info.offset)

    def tensor(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The tensor decoded to ``dtype`` (a new tensor of ``info.shape``; via ``labkit.quant``)."""
        info = self._info(name)
        return codec.decode(self.raw(name), info.qtype, info.shape, dtype, name)

    def release(self, name: str) -> None:
        """Drop the tensor's mapped pages from this process's memory; they stay in the page cache.

        Reading a mapped tensor makes its pages part of the process's resident set (RSS). A loader
        that copies the bytes out (or decodes them) no longer needs them mapped: ``MADV_DONTNEED``
        unmaps them from the process, so RSS counts the copy once, not twice. The file's pages stay
        cached by the OS, and a later ``raw(name)`` simply maps them in again. Pages shared with a
        neighbouring tensor are dropped too and come back the same way when touched.
        """
        info = self._info(name)
        assert self._mmap is not None  # _info raised if closed
        drop_pages(self._mmap, info.offset, info.n_bytes)

    def _info(self, name: str) -> TensorInfo:
        if self._mmap is None:
            raise ClosedFileError(
                f"{self.path} is closed; read tensors inside its `with gguf.open(...)` block, "
                "or open it again"
            )
        if name not in self.tensors:
            close = difflib.get_close_matches(str(name), list(self.tensors), n=3)
            hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
            raise MissingTensorError(
                f"{self.path.name} has no tensor {name!r} ({len(self.tensors)} tensors); {hint}"
                "list the names with `f.tensors` or `labkit inspect FILE`"
            )
        return self.tensors[name]

    # --- anatomy ---------------------------------------------------------------------

    def layout(self) -> list[Region]:
        """Every byte of the file, once, in order: header, metadata, tensor infos, padding, tensors."""
        p = self._parsed
        regions = [Region("header", "", 0, HEADER_BYTES)]
        regions += [Region("metadata", e.key, e.start, e.n_bytes) for e in p.metadata]
        regions += [
            Region("tensor_info", t.name, s, n)
            for t, (s, n) in zip(p.tensors, p.tensor_info_spans, strict=True)
        ]
        pos = p.infos_end
        for info in sorted(p.tensors, key=lambda t: t.offset):
            regions += self._gap(pos, info.offset)
            regions.append(Region("tensor", info.name, info.offset, info.n_bytes))
            pos = info.offset + info.n_bytes
        regions += self._gap(pos, self.file_size_bytes)
        return regions

    def _gap(self, start: int, end: int) -> list[Region]:
        """Bytes between ``start`` and ``end``: padding up to the next aligned offset, the rest unused."""
        if end <= start:
            return []
        pad_to = self.data_offset if start < self.data_offset else align_up(start, self.alignment)
        pad_end = min(pad_to, end)
        regions = [Region("padding", "", start, pad_end - start)] if pad_end > start else []
        if end > pad_end:
            regions.append(Region("unused", "", pad_end, end - pad_end))
        return regions

    def metadata_entries(self) -> list[MetadataEntry]:
        """Each key-value pair with its type and where it sits in the file."""
        return list(self._parsed.metadata)

    def typed_metadata(self) -> dict[str, Any]:
        """The metadata wrapped in ``Typed`` so that ``write()`` keeps every value's exact type."""
        from labkit.gguf.metadata import Typed

        typed: dict[str, Any] = {}
        for key, value in self.metadata.items():
            type_name = self.metadata_types[key]
            element = type_name[len("ARRAY[") : -1] if type_name.startswith("ARRAY[") else type_name
            typed[key] = Typed(element, value)
        return typed

    # --- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        """Let go of the mapping; ``raw()`` and ``tensor()`` raise ``ClosedFileError`` afterwards.

        The OS unmaps the file as soon as nothing uses it any more: views from ``raw()``
        and the metadata's string arrays keep it mapped (and valid) while they live.
        """
        self._mmap = None
        self._view = None  # type: ignore[assignment]

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        arch = self.metadata.get("general.architecture", "?")
        return (
            f"GGUFFile({str(self.path)!r}, v{self.version}, arch={arch!r}, "
            f"{len(self.metadata)} keys, {len(self.tensors)} tensors, {self.file_size_bytes:,} bytes)"
        )


def open(path: str | os.PathLike[str]) -> GGUFFile:  # noqa: A001 - mirrors builtins.open on purpose
    """Open a GGUF file: map it and parse header, metadata and tensor infos.

    Args:
        path: the ``.gguf`` file.

    Returns:
        A ``GGUFFile`` (a context manager).

    Raises:
        GGUFFormatError: the file is malformed, truncated or hostile; the message
            names the file, the byte offset and the field.
        MissingInputError: there is no file at ``path`` (a ``FileNotFoundError`` too), it is a
            folder, or ``path`` is not a path at all (e.g. ``None``).
        OSError: the file cannot be opened.

    Example:
        >>> with labkit.gguf.open(default_model_path()) as f:
        ...     f.metadata["general.architecture"], len(f.tensors)
        ('llama', 272)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise MissingInputError(
            f"gguf.open({path!r}): give the path of a .gguf file as a str or Path, "
            "e.g. labkit.modelfiles.default_model_path()"
        )
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.gguf"))[:3]
        raise MissingInputError(
            f"cannot open {path}: it is a folder, not a GGUF file; give a file's path"
            + (f", e.g. {path / inside[0]}" if inside else "")
        )
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise MissingInputError(f"cannot open {path}: no such file; check the path and the name") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise GGUFFormatError(
                f"{path}: byte 0 (header.magic): the file is empty; a GGUF file starts "
                f"with a {HEADER_BYTES}-byte header"
            )
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapping)
    try:
        parsed = parse_header(view, size)
    except GGUFFormatError as error:
        raise GGUFFormatError(f"{path}: {error}") from None
    return GGUFFile(path, mapping, view, parsed)
