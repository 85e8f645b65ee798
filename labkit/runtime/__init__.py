"""A small llama runtime on labkit's own GGUF stack (chapter 5).

Modules, in reading order:

- ``tokenizer``  text <-> token ids from a GGUF file's metadata
- ``weights``    how a loaded model holds its weights: dense floats or quantized bytes
- ``kvcache``    the KV cache a model keeps between tokens
- ``transfers``  every byte a forward pass moves, hop by hop
- ``activations`` llama.cpp's 8-bit rounding of each quantized matmul's input
- ``ggml_cpu``   llama.cpp's CPU arithmetic, op by op: its logits to the bit (``activations="q8"``)
- ``model``      ``load()`` -> ``Model``: forward, generate, perplexity, summary
- ``dtypes``     the fastest compute dtype on this machine, measured once and cached
- ``timing``     decode speed (measured) beside the bytes each token reads (counted)
- ``graphs``     one CUDA graph per decode step on a GPU (static KV cache)

Example:
    >>> from labkit import runtime
    >>> m = runtime.load(path)
    >>> m.generate("The GPU reads", max_new_tokens=8)
"""

from __future__ import annotations

from labkit.runtime.activations import round_activations
from labkit.runtime.dtypes import DtypeChoice, choose_dtype
from labkit.runtime.kvcache import KVCache, kv_cache_size_bytes
from labkit.runtime.model import LlamaConfig, Model, PerplexityResult, lab_text, load
from labkit.runtime.timing import DecodeTiming, time_decode
from labkit.runtime.tokenizer import Tokenizer
from labkit.runtime.transfers import HOPS, Transfer, TransferLog, bytes_by_hop, bytes_per_step

__all__ = [
    "HOPS",
    "DecodeTiming",
    "DtypeChoice",
    "KVCache",
    "LlamaConfig",
    "Model",
    "PerplexityResult",
    "Tokenizer",
    "Transfer",
    "TransferLog",
    "bytes_by_hop",
    "bytes_per_step",
    "choose_dtype",
    "kv_cache_size_bytes",
    "lab_text",
    "load",
    "round_activations",
    "time_decode",
]
