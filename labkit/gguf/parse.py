"""Parse and validate everything before a GGUF file's tensor data, trusting nothing.

Every read goes through a ``_Cursor`` that first checks the bytes are there, and
every count or length is compared with the bytes that are left *before* anything
is allocated, so a hostile file can make labkit raise ``GGUFFormatError`` but not
allocate more than the file's size, recurse without bound, loop for long, or read
out of bounds. Each error names the byte offset and the field, e.g.
``byte 8 (header.tensor_count): ...``.

Policy where the spec leaves a choice: little-endian only (big-endian files are detected
and refused); no arrays of arrays (as in ggml); tensor data must be aligned, inside the
file and non-overlapping, but need not be contiguous (gaps show as "unused" in
``layout()``); padding bytes are not checked for zeros; keys must be UTF-8 but are not
forced into ``lower_snake_case``; required keys (``general.architecture``) are the
runtime's business. Strings inside arrays are checked for UTF-8 when they are read.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from labkit.errors import GGUFFormatError
from labkit.gguf import constants as C
from labkit.gguf.constants import ValueType
from labkit.gguf.strings import StringArray, walk_strings

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SCALARS = {t: struct.Struct(code) for t, code in C.STRUCT_CODES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file and what it holds.

    Attributes:
        name: e.g. ``"blk.0.attn_q.weight"``.
        qtype: the ggml type name, e.g. ``"Q4_K"``.
        shape: torch order (GGUF's ``ne`` reversed: the row is the last dim).
        offset: absolute byte offset of the first byte in the file.
        n_bytes: bytes of encoded data.
    """

    name: str
    qtype: str
    shape: tuple[int, ...]
    offset: int
    n_bytes: int

    @property
    def ne(self) -> tuple[int, ...]:
        """The dims as GGUF stores them: ``ne[0]`` is the contiguous row length."""
        return self.shape[::-1]

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class MetadataEntry:
    """One key-value pair and the bytes it occupies (``value_type`` like ``"ARRAY[STRING]"``)."""

    key: str
    value_type: str
    value: Any
    start: int
    n_bytes: int


@dataclass(frozen=True)
class ParsedHeader:
    """Everything before the tensor data, validated."""

    version: int
    alignment: int
    metadata: list[MetadataEntry]
    tensors: list[TensorInfo]
    tensor_info_spans: list[tuple[int, int]]  # (start, n_bytes) of each tensor-info record
    infos_end: int  # first byte after the tensor-info table
    data_offset: int  # start of the tensor data section (aligned)


def fail(offset: int, field: str, problem: str) -> GGUFFormatError:
    """Build (not raise) the error for a bad field: ``byte 8 (header.tensor_count): <problem>``.

    Callers write ``raise fail(...)``, so the raise stays visible where the check is.
    """
    return GGUFFormatError(f"byte {offset} ({field}): {problem}")


class _Cursor:
    """A read position in the file that never reads past its end."""

    def __init__(self, buf: Any, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def left(self) -> int:
        return self.size - self.pos

    def need(self, n_bytes: int, field: str) -> None:
        if n_bytes > self.size - self.pos:
            raise fail(
                self.pos, field, f"needs {n_bytes} bytes but only {self.left()} are left (truncated file?)"
            )

    def read(self, code: struct.Struct, field: str) -> Any:
        self.need(code.size, field)
        (value,) = code.unpack_from(self.buf, self.pos)
        self.pos += code.size
        return value

    def string(self, field: str, max_bytes: int | None = None) -> str:
        start = self.pos
        length = self.read(_U64, f"{field} length")
        if max_bytes is not None and length > max_bytes:
            raise fail(start, field, f"string of {length} bytes; at most {max_bytes} allowed")
        self.need(length, field)
        raw = self.buf[self.pos : self.pos + length]
        try:
            text = str(raw, "utf-8")
        except UnicodeDecodeError as error:
            raise fail(self.pos + error.start, field, f"not valid UTF-8 ({error.reason})") from None
        self.pos += length
        return text

    def value_type(self, field: str) -> ValueType:
        start = self.pos
        tag = self.read(_U32, field)
        if tag not in ValueType._value2member_map_:
            raise fail(start, field, f"unknown value type {tag} (known: 0..{max(ValueType)})")
        return ValueType(tag)


def parse_header(buf: Any, size: int) -> ParsedHeader:
    """Parse and validate header, metadata and tensor infos of a GGUF image.

    Args:
        buf: the file's bytes (an ``mmap``, ``bytes`` or memoryview).
        size: the file size in bytes.

    Returns:
        A ``ParsedHeader``; offsets in it are absolute and checked against ``size``.

    Raises:
        GGUFFormatError: naming the byte offset and field of the first problem.
    """
    cur = _Cursor(buf, size)
    version, n_tensors, n_kv = _parse_counts(cur)
    metadata = _parse_metadata(cur, n_kv)
    alignment = _alignment(metadata)
    tensors, spans = _parse_tensor_infos(cur, n_tensors, alignment)
    infos_end = cur.pos
    data_offset = C.align_up(infos_end, alignment)
    offset_fields = [start + n_bytes - 8 for start, n_bytes in spans]  # the u64 offset ends each record
    tensors = [_place(t, i, data_offset, offset_fields[i], size) for i, t in enumerate(tensors)]
    _check_no_overlap(tensors, offset_fields)
    return ParsedHeader(version, alignment, metadata, tensors, spans, infos_end, data_offset)


def _parse_counts(cur: _Cursor) -> tuple[int, int, int]:
    cur.need(4, "header.magic")
    magic = bytes(cur.buf[0:4])
    if magic != C.GGUF_MAGIC:
        raise fail(0, "header.magic", f"expected {C.GGUF_MAGIC!r}, found {magic!r}: this is not a GGUF file")
    cur.pos = 4
    version = cur.read(_U32, "header.version")
    if version & 0xFFFF == 0 and version != 0:
        raise fail(
            4,
            "header.version",
            f"reads as {version:#010x}: a big-endian GGUF file. labkit reads "
            "little-endian GGUF only; convert it with gguf-py's gguf_convert_endian.py",
        )
    if version not in C.READABLE_VERSIONS:
        hint = " (v1 used 32-bit counts and is obsolete)" if version == 1 else ""
        raise fail(4, "header.version", f"version {version}; labkit reads versions 2 and 3{hint}")
    n_tensors = cur.read(_U64, "header.tensor_count")
    n_kv = cur.read(_U64, "header.kv_count")
    min_bytes = n_tensors * C.MIN_TENSOR_INFO_BYTES + n_kv * C.MIN_KV_BYTES
    if min_bytes > cur.left():
        field = (
            "header.tensor_count" if n_tensors * C.MIN_TENSOR_INFO_BYTES > cur.left() else "header.kv_count"
        )
        raise fail(
            8 if field == "header.tensor_count" else 16,
            field,
            f"{n_tensors} tensor infos and {n_kv} key-value pairs need at least {min_bytes} bytes "
            f"but only {cur.left()} are left",
        )
    if n_tensors > C.MAX_TENSORS:
        raise fail(8, "header.tensor_count", f"{n_tensors} tensors; labkit reads at most {C.MAX_TENSORS}")
    if n_kv > C.MAX_KV:
        raise fail(16, "header.kv_count", f"{n_kv} key-value pairs; labkit reads at most {C.MAX_KV}")
    return version, n_tensors, n_kv


def _parse_metadata(cur: _Cursor, n_kv: int) -> list[MetadataEntry]:
    entries: list[MetadataEntry] = []
    first_seen: dict[str, int] = {}
    for i in range(n_kv):
        start = cur.pos
        key = cur.string(f"metadata[{i}].key", C.MAX_KEY_BYTES)
        if not key:
            raise fail(start, f"metadata[{i}].key", "empty key")
        if key in first_seen:
            raise fail(
                start, f"metadata[{i}] {key!r}", f"duplicate key (first defined at byte {first_seen[key]})"
            )
        first_seen[key] = start
        vtype = cur.value_type(f"metadata[{i}] {key!r} value_type")
        value, type_name = _parse_value(cur, vtype, f"metadata[{i}] {key!r}", depth=0)
        entries.append(MetadataEntry(key, type_name, value, start, cur.pos - start))
    return entries


def _parse_value(cur: _Cursor, vtype: ValueType, field: str, depth: int) -> tuple[Any, str]:
    """One value of type ``vtype`` -> (Python value, type name)."""
    if vtype == ValueType.STRING:
        return cur.string(field), "STRING"
    if vtype == ValueType.ARRAY:
        return _parse_array(cur, field, depth + 1)
    start = cur.pos
    value = cur.read(_SCALARS[vtype], field)
    if vtype == ValueType.BOOL:
        if value > 1:
            raise fail(start, field, f"BOOL byte is {value}; must be 0 or 1")
        value = bool(value)
    return value, vtype.name


def _parse_array(cur: _Cursor, field: str, depth: int) -> tuple[Any, str]:
    if depth > C.MAX_ARRAY_DEPTH:
        raise fail(
            cur.pos,
            field,
            f"arrays nested {depth} deep; at most {C.MAX_ARRAY_DEPTH} allowed "
            "(llama.cpp rejects arrays of arrays too)",
        )
    etype = cur.value_type(f"{field} element type")
    count_at = cur.pos
    count = cur.read(_U64, f"{field} count")
    if count * C.MIN_VALUE_BYTES[etype] > cur.left():
        raise fail(
            count_at,
            f"{field} count",
            f"{count} {etype.name} elements need at least "
            f"{count * C.MIN_VALUE_BYTES[etype]} bytes but only {cur.left()} are left",
        )
    if etype == ValueType.STRING:
        bounds = walk_strings(cur.buf, cur.pos, count, cur.size, field)
        cur.pos = int(bounds[-1])
        return StringArray(cur.buf, bounds, field), "ARRAY[STRING]"
    if etype == ValueType.ARRAY:
        values = [_parse_array(cur, f"{field}[{i}]", depth + 1)[0] for i in range(count)]
        return values, "ARRAY[ARRAY]"
    return _parse_numeric_array(cur, etype, count, field), f"ARRAY[{etype.name}]"


def _parse_numeric_array(cur: _Cursor, etype: ValueType, count: int, field: str) -> np.ndarray:
    dtype = np.dtype(C.NUMPY_DTYPES[etype])
    values = np.frombuffer(cur.buf, dtype=dtype, count=count, offset=cur.pos).copy()
    if etype == ValueType.BOOL:
        bad = np.flatnonzero(values > 1)
        if bad.size:
            i = int(bad[0])
            raise fail(cur.pos + i, f"{field}[{i}]", f"BOOL byte is {values[i]}; must be 0 or 1")
        values = values.astype(bool)
    cur.pos += count * dtype.itemsize
    return values


def _alignment(metadata: list[MetadataEntry]) -> int:
    for entry in metadata:
        if entry.key == "general.alignment":
            field = "metadata 'general.alignment'"
            if entry.value_type != "UINT32":
                raise fail(entry.start, field, f"type {entry.value_type}; must be UINT32")
            value = entry.value
            if not (0 < value <= C.MAX_ALIGNMENT and value & (value - 1) == 0):
                raise fail(entry.start, field, f"{value}; must be a power of two from 1 to {C.MAX_ALIGNMENT}")
            return value
    return C.DEFAULT_ALIGNMENT


def _parse_tensor_infos(cur: _Cursor, n_tensors: int, alignment: int) -> tuple[list[TensorInfo], list]:
    tensors: list[TensorInfo] = []
    spans: list[tuple[int, int]] = []
    first_seen: dict[str, int] = {}
    for i in range(n_tensors):
        start = cur.pos
        name = cur.string(f"tensor_info[{i}].name", C.MAX_TENSOR_NAME_BYTES)
        field = f"tensor_info[{i}] {name!r}"
        if not name:
            raise fail(start, f"tensor_info[{i}].name", "empty tensor name")
        if name in first_seen:
            raise fail(start, field, f"duplicate tensor name (first defined at byte {first_seen[name]})")
        first_seen[name] = start
        ne = _parse_dims(cur, field)
        fmt = _parse_tensor_type(cur, field)
        if ne[0] % fmt.block_size:
            raise fail(
                start,
                field,
                f"row length ne[0]={ne[0]} is not a multiple of {fmt.name}'s block size {fmt.block_size}",
            )
        offset_at = cur.pos
        offset = cur.read(_U64, f"{field}.offset")
        if offset % alignment:
            raise fail(
                offset_at, f"{field}.offset", f"{offset} is not a multiple of the alignment {alignment}"
            )
        n_elements = math.prod(ne)
        n_bytes = n_elements // fmt.block_size * fmt.type_size
        tensors.append(TensorInfo(name, fmt.name, ne[::-1], offset, n_bytes))  # offset: relative for now
        spans.append((start, cur.pos - start))
    return tensors, spans


def _parse_dims(cur: _Cursor, field: str) -> tuple[int, ...]:
    n_dims_at = cur.pos
    n_dims = cur.read(_U32, f"{field}.n_dims")
    if not 1 <= n_dims <= C.MAX_DIMS:
        raise fail(n_dims_at, f"{field}.n_dims", f"{n_dims}; must be 1..{C.MAX_DIMS}")
    ne: list[int] = []
    n_elements = 1
    for j in range(n_dims):
        at = cur.pos
        dim = cur.read(_U64, f"{field}.ne[{j}]")
        n_elements *= dim
        if dim == 0:
            raise fail(at, f"{field}.ne[{j}]", "dimension is 0; every dimension must be at least 1")
        if n_elements > C.MAX_ELEMENTS:
            raise fail(at, f"{field}.ne[{j}]", f"dims {ne + [dim]} hold more than 2**63 - 1 elements")
        ne.append(dim)
    return tuple(ne)


def _parse_tensor_type(cur: _Cursor, field: str) -> Any:
    at = cur.pos
    type_id = cur.read(_U32, f"{field}.type")
    fmt = C.TENSOR_TYPES.get(type_id)
    if fmt is None:
        raise fail(at, f"{field}.type", f"unknown ggml type {type_id} (removed or newer than this gguf-py)")
    return fmt


def _place(info: TensorInfo, index: int, data_offset: int, offset_field: int, size: int) -> TensorInfo:
    """Turn the relative offset absolute and check the bytes lie inside the file."""
    start = data_offset + info.offset
    if start + info.n_bytes > size:
        raise fail(
            offset_field,
            f"tensor_info[{index}] {info.name!r}.offset",
            f"data [{start}, {start + info.n_bytes}) ends past the end of the file ({size} bytes)",
        )
    return TensorInfo(info.name, info.qtype, info.shape, start, info.n_bytes)


def _check_no_overlap(tensors: list[TensorInfo], offset_fields: list[int]) -> None:
    order = sorted(range(len(tensors)), key=lambda i: tensors[i].offset)
    for a, b in pairwise(order):
        first, second = tensors[a], tensors[b]
        if first.offset + first.n_bytes > second.offset:
            raise fail(
                offset_fields[b],
                f"tensor_info[{b}] {second.name!r}.offset",
                f"data starts at byte {second.offset}, inside tensor {first.name!r} "
                f"[{first.offset}, {first.offset + first.n_bytes})",
            )
