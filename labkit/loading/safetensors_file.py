"""The safetensors file, read and written by labkit: 8 bytes, a JSON header, then raw tensors.

Layout (little-endian)::

    offset 0        u64 N            length of the header in bytes
    offset 8        N bytes of JSON  {"__metadata__": {str: str},            (optional)
                                      "name": {"dtype": "F16", "shape": [r, c],
                                               "data_offsets": [begin, end]}, ...}
                                     padded with spaces to a multiple of 8
    offset 8 + N    the data         each tensor's bytes at [begin, end), relative to 8 + N

That is the whole format: no pickle, no code, nothing to run, so loading a file from a
stranger is safe. Its tensor table says where every byte is, so a loader can map the file
and read only what it needs.

``read_header`` parses and checks the header against a hostile file (a huge length, bad
JSON, offsets out of the file, overlapping or missing bytes); ``write`` streams tensors to a
new file atomically.

References: huggingface/safetensors ``README.md`` (the format) and its Rust ``lib``
(``MAX_HEADER_SIZE``, the checks ``validate`` makes); this module is checked against the
``safetensors`` package in ``tests/test_loading_formats.py``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import torch

from labkit.errors import LoadError, MissingInputError
from labkit.gguf.atomic import atomic_output, check_output_path

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
HEADER_ALIGN = 8
# safetensors dtype name -> (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
NAME_OF_DTYPE = {dtype: name for name, (dtype, _) in DTYPES.items()}


def read_header(path: str | os.PathLike[str]) -> tuple[int, dict[str, dict]]:
    """Read and check a safetensors header.

    Args:
        path: the ``.safetensors`` file.

    Returns:
        ``(data_start, entries)``: where the data section starts, and name ->
        ``{"dtype", "shape", "data_offsets"}`` in file order (``__metadata__`` left out).

    Raises:
        MissingInputError: no file at ``path``.
        LoadError: the header is malformed, too large, or points outside the file.
    """
    path = Path(path)
    try:
        with path.open("rb", buffering=0) as handle:
            if hasattr(os, "posix_fadvise"):  # read the header's bytes only: no read-ahead past them
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
            size_bytes = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise LoadError(
                    f"{path}: {size_bytes} bytes is too short for a safetensors file (8-byte header)"
                )
            (n_header,) = struct.unpack("<Q", prefix)
            if not 2 <= n_header <= min(MAX_HEADER_BYTES, size_bytes - 8):
                raise LoadError(
                    f"{path}: header length {n_header:,} is impossible for a {size_bytes:,}-byte file "
                    f"(at most {MAX_HEADER_BYTES:,}); the file is truncated or not safetensors"
                )
            text = handle.read(n_header)
    except FileNotFoundError:
        raise MissingInputError(f"cannot open {path}: no such file; check the path and the name") from None
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LoadError(f"{path}: the safetensors header is not valid UTF-8 JSON ({error})") from None
    if not isinstance(header, dict):
        raise LoadError(f"{path}: the safetensors header must be a JSON object, not {type(header).__name__}")
    header.pop("__metadata__", None)
    data_start = 8 + n_header
    entries = {name: _checked_entry(path, name, entry) for name, entry in header.items()}
    entries = dict(sorted(entries.items(), key=lambda item: item[1]["data_offsets"][0]))
    _check_coverage(path, entries, size_bytes - data_start)
    return data_start, entries


def _checked_entry(path: Path, name: str, entry: object) -> dict:
    """One tensor's entry, with its dtype known and its byte count matching its shape."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise LoadError(
            f"{path}: tensor {name!r}: expected keys dtype, shape, data_offsets; got {entry!r:.200}"
        )
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise LoadError(f"{path}: tensor {name!r} has dtype {dtype!r}; labkit reads {', '.join(DTYPES)}")
    ints = isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
    pair = isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)
    if not (ints and pair):
        raise LoadError(
            f"{path}: tensor {name!r}: shape {shape!r} and data_offsets {offsets!r} must be lists "
            "of non-negative integers (data_offsets: [begin, end])"
        )
    n_elements = 1
    for d in shape:
        n_elements *= d
    if offsets[1] - offsets[0] != n_elements * DTYPES[dtype][1]:
        raise LoadError(
            f"{path}: tensor {name!r}: data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes, "
            f"but {dtype} of shape {shape} takes {n_elements * DTYPES[dtype][1]}"
        )
    return {"dtype": dtype, "shape": tuple(shape), "data_offsets": tuple(offsets)}


def _check_coverage(path: Path, entries: dict[str, dict], data_bytes: int) -> None:
    """Tensors must tile the data section exactly: no overlap, no hole, nothing past the end."""
    position = 0
    for name, entry in entries.items():
        begin, end = entry["data_offsets"]
        if begin != position:
            what = (
                "overlaps the tensor before it"
                if begin < position
                else f"leaves a hole of {begin - position} bytes"
            )
            raise LoadError(f"{path}: tensor {name!r} at data offset {begin} {what}; the file is corrupt")
        position = end
    if position != data_bytes:
        raise LoadError(
            f"{path}: the tensors hold {position:,} bytes but the data section has {data_bytes:,}; "
            "the file is truncated or has trailing bytes"
        )


def write(path: str | os.PathLike[str], tensors: Iterable[tuple[str, torch.Tensor]]) -> Path:
    """Write tensors as a safetensors file, atomically (a temp file renamed into place).

    Args:
        path: the ``.safetensors`` file to write.
        tensors: ``(name, tensor)`` pairs in the order to store them. The header needs every
            shape first, so they are gathered before writing: pass views of a mapped file
            (``load(..., mode="lazy")``) to keep memory small.

    Returns:
        ``path``.

    Raises:
        OutputPathError: the folder is missing or not writable.
        LoadError: a tensor's dtype has no safetensors name, or a name repeats.
    """
    path = Path(path)
    check_output_path(path)
    items = list(tensors)
    header: dict[str, dict] = {}
    position = 0
    for name, tensor in items:
        if tensor.dtype not in NAME_OF_DTYPE or name in header:
            problem = (
                "appears twice" if name in header else f"has dtype {tensor.dtype}, which safetensors lacks"
            )
            raise LoadError(f"cannot write tensor {name!r} to {path}: it {problem}")
        n_bytes = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": NAME_OF_DTYPE[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [position, position + n_bytes],
        }
        position += n_bytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % HEADER_ALIGN)
    with atomic_output(path) as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for _, tensor in items:
            out.write(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return path
