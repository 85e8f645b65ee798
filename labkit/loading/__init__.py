"""Loading weights (chapter 4): opening is not loading.

Modules, in reading order:

- ``table``            which bytes hold which tensor, in GGUF, safetensors and PyTorch files;
                       ``byte_ranges`` merges a layer's tensors into as few reads as possible
- ``safetensors_file`` the safetensors format, read (hardened) and written (atomic)
- ``checkpoint``       PyTorch checkpoints, opened only with ``weights_only=True``
- ``loaders``          ``load(path, mode)``: eager, lazy (mmap) or partial (some layers)
- ``child``            one measured load, run inside a fresh process
- ``record``           ``LoadRecord``: what a measured load returns; the cache-state verdict
- ``measure``          ``measure(path, mode=..., cache=...)``: start the child, sample its memory
- ``files``            the same synthetic weights as F16/Q4_0/Q4_K_M GGUF, safetensors and ``.pt``

Example:
    >>> from labkit import loading
    >>> weights = loading.load("model.gguf", mode="partial", layers=range(4))
    >>> record = loading.measure("model.gguf", mode="lazy", cache="cold")
    >>> record.open_s, record.all_touched_s, record.cache_state
"""

from __future__ import annotations

from labkit.loading.files import write_as, write_model_set
from labkit.loading.loaders import MODES, OpenedWeights, Weights, load, open_weights
from labkit.loading.measure import measure
from labkit.loading.record import COLD, PARTLY, UNVERIFIABLE, WARM, LoadRecord, cache_verdict
from labkit.loading.table import (
    TensorSpan,
    byte_ranges,
    detect_format,
    layer_of,
    n_layers,
    parse_layers,
    select,
    tensor_table,
)

__all__ = [
    "COLD",
    "MODES",
    "PARTLY",
    "UNVERIFIABLE",
    "WARM",
    "LoadRecord",
    "OpenedWeights",
    "TensorSpan",
    "Weights",
    "byte_ranges",
    "cache_verdict",
    "detect_format",
    "layer_of",
    "load",
    "measure",
    "n_layers",
    "open_weights",
    "parse_layers",
    "select",
    "tensor_table",
    "write_as",
    "write_model_set",
]
