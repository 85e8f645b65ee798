"""llama.cpp's own quantizer, called through ctypes, when llama-cpp-python is installed.

labkit's quantizers claim to write the same bytes as ggml. This module lets
anyone check that claim on their own data: it loads the ``libggml-base``
shared library that the ``llama-cpp-python`` wheel bundles and calls

* ``ggml_quantize_chunk(type, src, dst, start=0, nrows, n_per_row, imatrix=NULL)``:
  the reference quantizers (``quantize_row_*_ref``), one thread;
* the type's ``to_float`` (``dequantize_row_*``) from ``ggml_get_type_traits``.

Nothing here is needed to use labkit; the tests, the fixture script and the
benchmark use it when it is available.
"""

from __future__ import annotations

import ctypes
import importlib.util
from functools import cache
from pathlib import Path

import numpy as np
import torch

from labkit.errors import LabkitError
from labkit.formats import FORMATS, Format

_LIBRARY_NAMES = ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll")


class _TypeTraits(ctypes.Structure):
    # struct ggml_type_traits in ggml/include/ggml.h
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


def libggml_path() -> Path | None:
    """Where the installed llama-cpp-python keeps ``libggml-base``, or ``None``."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for name in _LIBRARY_NAMES:
            for candidate in (Path(folder) / "lib" / name, Path(folder) / name):
                if candidate.is_file():
                    return candidate
    return None


def available() -> bool:
    """True when llama.cpp's library can be loaded."""
    return libggml_path() is not None


@cache
def _library() -> ctypes.CDLL:
    path = libggml_path()
    if path is None:
        raise LabkitError(
            "llama.cpp's library was not found: install llama-cpp-python "
            "(python -m pip install llama-cpp-python) to cross-check against it"
        )
    lib = ctypes.CDLL(str(path))
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    return lib


def ggml_quantize(x: torch.Tensor | np.ndarray, qtype: str | Format) -> torch.Tensor:
    """Quantize rows with ggml's reference quantizer (no importance matrix, one thread).

    Args:
        x: ``(rows, n_per_row)`` floats (converted to float32).
        qtype: type name or ``Format``.

    Returns:
        ``(rows, row_bytes)`` uint8, the bytes ggml wrote.
    """
    fmt = qtype if isinstance(qtype, Format) else FORMATS[str(qtype).upper()]
    rows = np.ascontiguousarray(torch.as_tensor(x).to(torch.float32).numpy())
    n_rows, n_per_row = rows.shape
    out = np.zeros((n_rows, fmt.row_bytes(n_per_row)), dtype=np.uint8)
    written = _library().ggml_quantize_chunk(
        fmt.type_id, rows.ctypes.data, out.ctypes.data, 0, n_rows, n_per_row, None
    )
    assert written == out.size, (written, out.size)
    return torch.from_numpy(out)


def ggml_dequantize(q: torch.Tensor | np.ndarray, qtype: str | Format, n_weights: int) -> torch.Tensor:
    """Decode block bytes with ggml's own ``to_float`` for the type.

    Returns:
        1-D float32 tensor of ``n_weights`` values.
    """
    fmt = qtype if isinstance(qtype, Format) else FORMATS[str(qtype).upper()]
    raw = np.ascontiguousarray(torch.as_tensor(q).numpy()).view(np.uint8)
    if fmt.name == "F32":
        return torch.from_numpy(raw.reshape(-1).view(np.float32)[:n_weights].copy())
    traits = _library().ggml_get_type_traits(fmt.type_id).contents
    out = np.empty(n_weights, dtype=np.float32)
    _TO_FLOAT(traits.to_float)(raw.ctypes.data, out.ctypes.data, n_weights)
    return torch.from_numpy(out)
