"""Python values -> GGUF metadata bytes, with labkit's type rules.

Each key-value pair is ``key: string, value_type: u32, value``. Python values get
a GGUF type by these rules (``value_type_of``):

=================================  ==============================================
Python value                       GGUF type
=================================  ==============================================
``str``                            STRING
``bool``                           BOOL
``int``                            UINT32; INT32 if negative; UINT64/INT64 if it
                                   does not fit in 32 bits
``float``                          FLOAT32
``list[str]``                      ARRAY[STRING]
``list[bool]``                     ARRAY[BOOL]
``list[int]``                      ARRAY[INT32] (ARRAY[INT64] if a value needs it)
``list[float]``, float numpy array ARRAY[FLOAT32]
integer numpy array                ARRAY of the same width (``int32`` -> INT32, ...)
``Typed("UINT64", value)``         exactly that type (arrays: the element type)
=================================  ==============================================
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from labkit.errors import GGUFFormatError
from labkit.gguf import constants as C
from labkit.gguf.constants import ValueType

_NUMPY_KIND = {  # integer/bool numpy dtype -> GGUF element type
    np.dtype(C.NUMPY_DTYPES[t]).newbyteorder("="): t for t in C.NUMPY_DTYPES if t != ValueType.BOOL
}


@dataclass(frozen=True)
class Typed:
    """A metadata value with an explicit GGUF type.

    Attributes:
        value_type: a ``ValueType`` name, e.g. ``"UINT64"``; for an array, the element
            type (``Typed("INT32", [1, 2])``) or the spelled-out ``"ARRAY[INT32]"``.
        value: the scalar, or a sequence / numpy array for an array.
    """

    value_type: str
    value: Any


def value_type_of(value: Any, key: str = "?") -> tuple[ValueType, ValueType | None]:
    """The GGUF (type, element type) labkit writes ``value`` as (element type only for arrays)."""
    if isinstance(value, Typed):
        return _explicit_type(value, key)
    if isinstance(value, (str, bool, int, float, np.generic)):
        return _scalar_type(value, key), None
    if isinstance(value, np.ndarray):
        return ValueType.ARRAY, _numpy_element_type(value, key)
    if isinstance(value, Sequence):
        return ValueType.ARRAY, _list_element_type(value, key)
    raise GGUFFormatError(
        f"metadata {key!r}: cannot store a {type(value).__name__}; use str, bool, int, "
        "float, a list of them, a numpy array, or Typed(...)"
    )


def _explicit_type(typed: Typed, key: str) -> tuple[ValueType, ValueType | None]:
    name = typed.value_type
    is_array = name.startswith("ARRAY[") and name.endswith("]")
    name = name[6:-1] if is_array else name
    if name not in ValueType.__members__ or name == "ARRAY":
        raise GGUFFormatError(
            f"metadata {key!r}: unknown type {typed.value_type!r}; "
            f"known: {', '.join(t.name for t in ValueType if t != ValueType.ARRAY)}"
        )
    element = ValueType[name]
    value = typed.value
    if is_array or not isinstance(value, (str, bytes, int, float, bool, np.generic)):
        return ValueType.ARRAY, element
    return element, None


def _scalar_type(value: Any, key: str) -> ValueType:
    if isinstance(value, (bool, np.bool_)):
        return ValueType.BOOL
    if isinstance(value, str):
        return ValueType.STRING
    if isinstance(value, (float, np.floating)):
        return ValueType.FLOAT32
    value = int(value)
    for vtype, low, high in (
        (ValueType.UINT32, 0, 2**32),
        (ValueType.INT32, -(2**31), 0),
        (ValueType.UINT64, 0, 2**64),
        (ValueType.INT64, -(2**63), 0),
    ):
        if low <= value < high:
            return vtype
    raise GGUFFormatError(f"metadata {key!r}: integer {value} does not fit in 64 bits")


def _numpy_element_type(array: np.ndarray, key: str) -> ValueType:
    if array.dtype.kind == "f":
        return ValueType.FLOAT32
    if array.dtype.kind == "b":
        return ValueType.BOOL
    found = _NUMPY_KIND.get(array.dtype.newbyteorder("="))
    if found is None:
        raise GGUFFormatError(f"metadata {key!r}: cannot store a numpy array of {array.dtype}")
    return found


def _list_element_type(values: Sequence[Any], key: str) -> ValueType:
    if len(values) == 0:
        raise GGUFFormatError(
            f"metadata {key!r}: an empty list has no element type; "
            f"write it as Typed('STRING', []) (or the type you mean)"
        )
    if all(isinstance(v, str) for v in values):
        return ValueType.STRING
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return ValueType.BOOL
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        fits = all(-(2**31) <= int(v) < 2**31 for v in values)
        return ValueType.INT32 if fits else ValueType.INT64
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values):
        return ValueType.FLOAT32
    raise GGUFFormatError(f"metadata {key!r}: a list must hold only str, only bool, or only numbers")


def encode_metadata(metadata: Mapping[str, Any]) -> tuple[bytes, int]:
    """Encode every key-value pair; returns (bytes, number of pairs)."""
    parts = []
    for key, value in metadata.items():
        encoded_key = _utf8(key, key) if isinstance(key, str) else b""
        if not 0 < len(encoded_key) <= C.MAX_KEY_BYTES:
            raise GGUFFormatError(f"metadata key {key!r}: keys are 1..{C.MAX_KEY_BYTES} UTF-8 bytes")
        vtype, element = value_type_of(value, key)
        raw = value.value if isinstance(value, Typed) else value
        parts.append(struct.pack("<Q", len(encoded_key)) + encoded_key + struct.pack("<I", vtype))
        if vtype == ValueType.ARRAY:
            parts.append(_encode_array(raw, element, key))
        else:
            parts.append(_encode_scalar(raw, vtype, key))
    return b"".join(parts), len(metadata)


def _encode_string(text: str, key: str) -> bytes:
    if not isinstance(text, str):
        raise GGUFFormatError(f"metadata {key!r}: expected a str, got {type(text).__name__}")
    data = _utf8(text, key)
    return struct.pack("<Q", len(data)) + data


def _utf8(text: str, key: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate (e.g. from a bad ``surrogateescape`` decode) cannot be."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise GGUFFormatError(
            f"metadata {key!r}: {text[max(error.start - 10, 0) : error.end + 10]!r} holds "
            f"{text[error.start]!r} at character {error.start}, which is not valid in UTF-8 "
            "(a lone surrogate); GGUF strings are UTF-8: fix the text where it was decoded"
        ) from None


def _encode_scalar(value: Any, vtype: ValueType, key: str) -> bytes:
    if vtype == ValueType.STRING:
        return _encode_string(value, key)
    if vtype == ValueType.BOOL and value not in (0, 1):
        raise GGUFFormatError(f"metadata {key!r}: BOOL value {value!r} must be True/False")
    try:
        number = float(value) if vtype in (ValueType.FLOAT32, ValueType.FLOAT64) else int(value)
        return struct.pack(C.STRUCT_CODES[vtype], number)
    except OverflowError:
        raise GGUFFormatError(
            f"metadata {key!r}: {value!r} is too large for {vtype.name}; "
            "wrap it as Typed('FLOAT64', value) to store it"
        ) from None
    except (struct.error, TypeError, ValueError) as error:
        raise GGUFFormatError(f"metadata {key!r}: {value!r} is not a valid {vtype.name} ({error})") from None


def _encode_array(values: Any, element: ValueType | None, key: str) -> bytes:
    assert element is not None
    if isinstance(values, (str, bytes)):
        raise GGUFFormatError(
            f"metadata {key!r}: expected a sequence for an ARRAY[{element.name}], got a string"
        )
    if element == ValueType.STRING:
        strings = values.tolist() if hasattr(values, "tolist") else list(values)
        body = b"".join([_encode_string(s, key) for s in strings])
        return struct.pack("<IQ", element, len(strings)) + body
    array = np.asarray(values)
    if array.ndim != 1:
        raise GGUFFormatError(f"metadata {key!r}: arrays are 1-D; got shape {array.shape}")
    dtype = np.dtype(C.NUMPY_DTYPES[element])
    if array.size and not _fits(array, element, dtype):
        raise GGUFFormatError(
            f"metadata {key!r}: values of {array.dtype} do not fit in ARRAY[{element.name}]"
        )
    return struct.pack("<IQ", element, array.size) + array.astype(dtype).tobytes()


def _fits(array: np.ndarray, element: ValueType, dtype: np.dtype) -> bool:
    if dtype.kind == "f":  # numbers that would turn into inf in a narrower float do not fit
        if array.dtype.kind not in "iubf":
            return False
        finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
        return bool(np.abs(finite.astype(np.float64)).max(initial=0) <= np.finfo(dtype).max)
    if array.dtype.kind not in "iub":
        return False  # floats, objects, strings into an integer/bool array
    low, high = (0, 1) if element == ValueType.BOOL else (np.iinfo(dtype).min, np.iinfo(dtype).max)
    return int(array.min()) >= low and int(array.max()) <= high
