"""Arrays of GGUF strings, parsed in bulk and decoded only when read.

A tokenizer's vocabulary is one metadata array of ~50k-260k strings, each a u64
length followed by its bytes. gguf-py builds two numpy views per string and
takes about 2 s to open SmolLM2; here one tight loop walks the length prefixes
and records where each string starts, into one int64 array (8 bytes per string,
never more than the file), and a string is decoded the moment it is read.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from itertools import pairwise
from typing import Any, overload

import numpy as np

from labkit.errors import GGUFFormatError

_U64 = struct.Struct("<Q")


def walk_strings(buf: Any, start: int, count: int, end: int, field: str) -> np.ndarray:
    """Find the ``count`` length-prefixed strings that begin at byte ``start``.

    Args:
        buf: the file's bytes (an ``mmap`` or ``bytes``).
        start: offset of the first string's u64 length.
        count: how many strings (already checked: ``8 * count <= end - start``).
        end: offset one past the last byte the strings may use.
        field: the field name used in error messages.

    Returns:
        int64 array ``bounds`` of ``count + 1`` offsets: string ``i``'s length prefix is
        at ``bounds[i]`` and its bytes are ``buf[bounds[i] + 8 : bounds[i + 1]]``.

    Raises:
        GGUFFormatError: a length runs past ``end``.
    """
    bounds = np.empty(count + 1, dtype=np.int64)
    out = memoryview(bounds.data)
    unpack = _U64.unpack_from
    pos = start
    try:
        for i in range(count):
            out[i] = pos
            pos += 8 + unpack(buf, pos)[0]  # may run past ``end``: caught below
        out[count] = pos
    except (struct.error, ValueError, OverflowError):
        pos = end + 1
    if pos > end:
        _raise_first_overrun(buf, start, count, end, field)
    return bounds


def _raise_first_overrun(buf: Any, start: int, count: int, end: int, field: str) -> None:
    """Slow path: walk again, checking every length, and report the first bad one."""
    pos = start
    for i in range(count):
        if end - pos < 8:
            raise GGUFFormatError(f"byte {pos} ({field}[{i}] length): the file ends inside the array")
        (length,) = _U64.unpack_from(buf, pos)
        if length > end - pos - 8:
            raise GGUFFormatError(
                f"byte {pos} ({field}[{i}] length): string of {length} bytes runs past the end of "
                f"the file ({end - pos - 8} bytes are left)"
            )
        pos += 8 + length
    raise AssertionError("walk_strings found an overrun that the careful walk did not")  # pragma: no cover


class StringArray(Sequence):
    """A GGUF array of strings that decodes each string when it is read.

    Behaves like a read-only ``list[str]``: ``len``, indexing, slicing, iteration,
    ``==`` with a list. ``tolist()`` decodes everything at once.
    """

    def __init__(self, buf: Any, bounds: np.ndarray, field: str) -> None:
        self._buf = buf  # a memoryview of the file; keeps the mapping alive
        self._bounds = bounds
        self._field = field

    def __len__(self) -> int:
        return len(self._bounds) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self._decode(i) for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self._field}: index {index} out of range for {n} strings")
        return self._decode(index % n)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tolist())

    def tolist(self) -> list[str]:
        """Decode every string (about 10 ms per 50k tokens)."""
        buf, starts = self._buf, self._bounds.tolist()
        try:
            return [str(buf[a + 8 : b], "utf-8") for a, b in pairwise(starts)]
        except UnicodeDecodeError:
            for i in range(len(self)):
                self._decode(i)  # raises with the offset of the first bad string
            raise  # pragma: no cover

    def raw_bytes(self, index: int) -> bytes:
        """The undecoded bytes of string ``index``."""
        a, b = int(self._bounds[index]), int(self._bounds[index + 1])
        return bytes(self._buf[a + 8 : b])

    def _decode(self, index: int) -> str:
        a, b = int(self._bounds[index]), int(self._bounds[index + 1])
        try:
            return str(self._buf[a + 8 : b], "utf-8")
        except UnicodeDecodeError as error:
            raise GGUFFormatError(
                f"byte {a + 8 + error.start} ({self._field}[{index}]): not valid UTF-8 ({error.reason})"
            ) from None

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (StringArray, list, tuple)):
            return len(self) == len(other) and self.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-looking sequence: unhashable like list

    def __repr__(self) -> str:
        head = ", ".join(repr(self._decode(i)) for i in range(min(3, len(self))))
        more = ", ..." if len(self) > 3 else ""
        return f"StringArray(n={len(self)}, [{head}{more}])"
