"""The GGUF file (chapter 3): a hardened lazy reader and an atomic streaming writer.

Modules, in reading order:

- ``constants``  magic, versions, value types, limits, the tensor type table
- ``parse``      header, metadata and tensor infos, validated against every known attack
- ``strings``    string arrays walked in bulk, decoded on access
- ``reader``     ``open()`` -> ``GGUFFile``: mmap, ``raw()``, ``tensor()``, ``layout()``
- ``metadata``   Python values -> metadata bytes (``Typed`` picks a type)
- ``codec``      tensor values <-> stored bytes (float types here, the rest via ``labkit.quant``)
- ``writer``     ``write()``: streamed, atomic GGUF v3

Example:
    >>> import labkit.gguf
    >>> with labkit.gguf.open(path) as f:
    ...     f.metadata["general.architecture"], f.tensors["output_norm.weight"].shape
"""

from __future__ import annotations

from labkit.errors import GGUFFormatError
from labkit.gguf.metadata import Typed
from labkit.gguf.parse import MetadataEntry, TensorInfo

# ``gguf.open`` reads like ``gzip.open``; it is left out of ``__all__`` so ``import *`` never hides the builtin.
from labkit.gguf.reader import REGION_KINDS, GGUFFile, Region, open  # noqa: A004, F401
from labkit.gguf.strings import StringArray
from labkit.gguf.writer import TensorSource, write

__all__ = [
    "GGUFFile",
    "GGUFFormatError",
    "MetadataEntry",
    "REGION_KINDS",
    "Region",
    "StringArray",
    "TensorInfo",
    "TensorSource",
    "Typed",
    "write",
]
