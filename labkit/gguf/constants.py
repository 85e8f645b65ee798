"""The numbers a GGUF file is made of: magic, versions, value types, limits.

A GGUF file (ggml ``docs/gguf.md``) is, in order::

    header        magic "GGUF" (4 bytes), version u32, tensor_count u64, kv_count u64   = 24 bytes
    metadata      kv_count x (key: string, value_type: u32, value)
    tensor infos  tensor_count x (name: string, n_dims: u32, ne: u64 x n_dims, type: u32, offset: u64)
    padding       zeros up to a multiple of ``general.alignment`` (default 32)
    tensor data   each tensor at ``data_offset + offset``, aligned, followed by padding

A *string* is a u64 byte length followed by UTF-8 bytes (no NUL). All numbers are
little-endian. The limits below are labkit's answer to the GGUF parser CVEs
(ggml PR #709, TALOS-2024-1912..1916, CVE-2025-53630): every count and length is
checked against the bytes that are left before anything is allocated.
"""

from __future__ import annotations

import enum

from gguf.constants import GGML_QUANT_SIZES

from labkit.formats import FORMAT_BY_ID, FORMATS, Format

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3  # the version labkit writes
READABLE_VERSIONS = (2, 3)  # v2 and v3 share one layout; v1 (u32 counts) is obsolete
HEADER_BYTES = 4 + 4 + 8 + 8  # magic, version, tensor_count, kv_count
DEFAULT_ALIGNMENT = 32

MAX_ALIGNMENT = 1 << 20  # "within reason": a power of two up to 1 MiB
MAX_KEY_BYTES = 65_535  # the spec's limit for a metadata key
MAX_TENSOR_NAME_BYTES = 63  # ggml's GGML_MAX_NAME (64) minus the NUL it keeps
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 1  # no arrays of arrays: ggml rejects them, and each would cost a Python object
MAX_ELEMENTS = (1 << 63) - 1  # product of a tensor's dims must fit in int64
# Each record becomes a few hundred bytes of Python objects, so counts are capped too (far above
# any real model: SmolLM2 has 272 tensors and 33 keys, a 671B MoE about 1,100 tensors).
MAX_TENSORS = 1 << 17
MAX_KV = 1 << 16

# Smallest possible records, used to bound counts by the bytes left before parsing them.
MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, a 1-byte key, value type, a 1-byte value
MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name length, 1-byte name, n_dims, ne[0], type, offset


class ValueType(enum.IntEnum):
    """The u32 tag before every metadata value (``gguf_type`` in ggml)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7  # one byte, 0 or 1
    STRING = 8  # u64 length + UTF-8 bytes
    ARRAY = 9  # u32 element type + u64 count + elements
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# Fixed-size value types: the little-endian numpy dtype of one value.
NUMPY_DTYPES: dict[ValueType, str] = {
    ValueType.UINT8: "<u1",
    ValueType.INT8: "<i1",
    ValueType.UINT16: "<u2",
    ValueType.INT16: "<i2",
    ValueType.UINT32: "<u4",
    ValueType.INT32: "<i4",
    ValueType.FLOAT32: "<f4",
    ValueType.BOOL: "<u1",  # checked to be 0/1, then turned into bool
    ValueType.UINT64: "<u8",
    ValueType.INT64: "<i8",
    ValueType.FLOAT64: "<f8",
}

# The same, as ``struct`` codes for one scalar.
STRUCT_CODES: dict[ValueType, str] = {
    ValueType.UINT8: "<B",
    ValueType.INT8: "<b",
    ValueType.UINT16: "<H",
    ValueType.INT16: "<h",
    ValueType.UINT32: "<I",
    ValueType.INT32: "<i",
    ValueType.FLOAT32: "<f",
    ValueType.BOOL: "<B",
    ValueType.UINT64: "<Q",
    ValueType.INT64: "<q",
    ValueType.FLOAT64: "<d",
}

# Bytes of the smallest possible element of each type (strings: the length prefix; arrays: tag + count).
MIN_VALUE_BYTES: dict[ValueType, int] = {
    **{t: int(NUMPY_DTYPES[t][-1]) for t in NUMPY_DTYPES},
    ValueType.STRING: 8,
    ValueType.ARRAY: 4 + 8,
}


def _tensor_types() -> dict[int, Format]:
    """Every ggml tensor type a file may hold: labkit's table, then gguf-py's for the rest.

    labkit can quantize and dequantize the types in ``labkit.formats.FORMATS``; the
    others (IQ*, TQ*, I8, ...) are still *readable* (their bytes via ``raw()``).
    """
    types: dict[int, Format] = {}
    for qtype, (block_size, type_size) in GGML_QUANT_SIZES.items():
        types[int(qtype)] = Format(qtype.name, int(qtype), block_size, type_size, "(not in labkit.formats)")
    types.update(FORMAT_BY_ID)
    return types


TENSOR_TYPES: dict[int, Format] = _tensor_types()
FORMAT_BY_NAME: dict[str, Format] = {f.name: f for f in TENSOR_TYPES.values()}
WRITABLE_QTYPES = tuple(FORMATS)  # types labkit can encode from float values


def align_up(offset: int, alignment: int) -> int:
    """Round ``offset`` up to a multiple of ``alignment`` (the spec's ``align_offset``)."""
    return offset + (alignment - offset % alignment) % alignment
