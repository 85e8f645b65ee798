"""The forward pass of ``activations="q8"``: the model's blocks in llama.cpp's CPU arithmetic.

``labkit.runtime.model.Model.forward`` hands a q8 model's embeddings here. The blocks are the same
as in the float mode (RMS norm, q/k/v, RoPE, grouped-query attention over the KV cache, SwiGLU,
the head); every operation comes from ``labkit.runtime.ggml_cpu``, which reproduces ggml's roundings
and order of additions, so the logits are llama.cpp's to the bit.

The matrices are multiplied as the file's integers and block scales (``IntegerWeights``): unpacked
once at load (``weights="dequantized"``: one byte per weight), or from the packed bytes each time a
block is reached (``weights="quantized"``: the file's size, a slab of rows at a time).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from labkit.errors import ModelError
from labkit.runtime import ggml_cpu
from labkit.runtime.ggml_cpu import IntegerMatrix
from labkit.runtime.weights import Weights

if TYPE_CHECKING:
    from labkit.runtime.kvcache import KVCache
    from labkit.runtime.transfers import TransferLog


class IntegerWeights:
    """A model's matrices as ``IntegerMatrix`` parts, for ``ggml_cpu.linear``.

    Args:
        store: the model's ``Weights``, holding the file's quantized bytes (``mode="quantized"``).
        head_name: the matrix the logits come from (``token_embd.weight`` when tied).
        unpack_now: unpack every matrix once now, or each time it is used.
    Raises:
        ModelError: a matrix is stored as floats, its type is not one ``ggml_cpu`` reproduces, or the
            C math library is missing.
    """

    def __init__(self, store: Weights, head_name: str, *, unpack_now: bool):
        ggml_cpu.c_math_library()  # raises now, not at the first token, where there is none
        lookup_only = {"token_embd.weight"} - {head_name}  # an untied embedding is only read by row
        dense = [name for name, t in store.dense.items() if t.dim() == 2 and name not in lookup_only]
        if dense:
            raise ModelError(
                f"activations='q8' reproduces llama.cpp's quantized matmuls; {dense[0]!r} is stored as "
                "floats (in this file, or because the weights were loaded dequantized): load the file "
                "with activations='float'"
            )
        for name, parts in store.packed.items():
            for _, qtype, _ in parts:
                ggml_cpu.check_weight_type(qtype, repr(name))
        self.store = store
        self.unpacked: dict[str, list[IntegerMatrix]] | None = None
        if unpack_now:
            self.unpacked = {
                name: [IntegerMatrix.from_bytes(raw, qtype, shape) for raw, qtype, shape in parts]
                for name, parts in store.packed.items()
            }

    @property
    def nbytes(self) -> int:
        """Bytes of the unpacked copies held (0 when matrices are unpacked as used)."""
        return sum(part.nbytes for parts in (self.unpacked or {}).values() for part in parts)

    def rows(self, name: str) -> Iterator[IntegerMatrix]:
        """The stored matrix ``name`` as integers and scales, top to bottom: its parts as unpacked
        at load, or unpacked now from the packed bytes a slab of rows at a time (the tied head of
        the default model would take 32 MB at once)."""
        if self.unpacked is not None:
            yield from self.unpacked[name]
            return
        for _, (slab, qtype, shape) in self.store.packed_slabs(name):
            yield IntegerMatrix.from_bytes(slab, qtype, shape)

    def linear(self, h: torch.Tensor, name: str) -> torch.Tensor:
        """``h @ W.T`` for the stored matrix ``name``: ``(B, T, n_in) -> (B, T, n_out)``, one sequence
        of the batch at a time."""
        pieces = [
            torch.stack([ggml_cpu.linear(sequence, part) for sequence in h]) for part in self.rows(name)
        ]  # each (B, T, rows of that part)
        return torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]


def forward(model: Any, x: torch.Tensor, past: int, cache: KVCache | None, log: TransferLog) -> torch.Tensor:
    """``Model.forward`` with ``activations="q8"``, after the embedding rows are read.

    Args:
        model: a ``labkit.runtime.model.Model`` loaded with ``activations="q8"`` (typed ``Any``: the
            model module imports this one, and imports here never go back up).
        x: float32 ``(B, T, C)`` embeddings of the new tokens.
        past: positions already cached.
        cache: the float16 KV cache to read and extend (``None``: a temporary one).
        log: receives the weight and KV reads and the hops between blocks.
    Returns:
        float32 logits ``(B, T, vocab)``.
    Raises:
        ModelError: the cache is not float16 (llama.cpp's cache type, which the attention rounds to).
    """
    c, weights, integers = model.config, model.weights, model.integer_weights
    assert integers is not None  # load(..., activations="q8") sets it
    B, T, _ = x.shape
    cache = cache if cache is not None else model.new_cache(batch=B)
    if cache.dtype != torch.float16:
        raise ModelError(
            f"activations='q8' needs llama.cpp's float16 KV cache; this one is {cache.dtype}: "
            "make it with model.new_cache()"
        )
    cos, sin = ggml_cpu.rope_table(past, past + T, c.rope_base, c.rope_dim)  # (T, rope_dim/2)
    cos, sin = cos.repeat(B, 1), sin.repeat(B, 1)  # (B*T, rope_dim/2): one row per rotated token
    n_qk = c.n_heads + c.n_kv_heads
    for layer in range(c.n_layers):
        names = model.block_names[layer]
        log.add("weights read", model.block_bytes[layer], layer=layer)
        h = ggml_cpu.rms_norm(x, weights.dense[names["attn_norm"]], c.rms_eps)
        heads = integers.linear(h, names["attn_qkv"]).unflatten(-1, (n_qk + c.n_kv_heads, c.head_dim))
        q = ggml_cpu.rope(heads[:, :, : c.n_heads].flatten(0, 1), cos, sin).unflatten(0, (B, T))
        k = ggml_cpu.rope(heads[:, :, c.n_heads : n_qk].flatten(0, 1), cos, sin).unflatten(0, (B, T))
        k_all, v_all = cache.update(layer, k.transpose(1, 2), heads[:, :, n_qk:].transpose(1, 2))
        log.add(
            "kv written",
            2 * k.numel() * k_all.element_size(),
            layer=layer,
            source="cores",
            destination=log.memory,
        )
        log.add("kv read", 2 * k_all.numel() * k_all.element_size(), layer=layer)
        out = torch.stack(
            [
                ggml_cpu.attention(q[b], k_all[b].transpose(0, 1), v_all[b].transpose(0, 1), past)
                for b in range(B)
            ]
        )  # (B, T, C)
        x = x + integers.linear(out, names["attn_output"])
        h = ggml_cpu.rms_norm(x, weights.dense[names["ffn_norm"]], c.rms_eps)
        gate, up = integers.linear(h, names["ffn_gate_up"]).split(c.ffn_dim, dim=-1)
        x = x + integers.linear(ggml_cpu.silu(gate) * up, names["ffn_down"])  # (B, T, C)
        log.add("activations to next layer", x, layer=layer, source="cores", destination=log.memory)
    cache.advance(T)
    x = ggml_cpu.rms_norm(x, weights.dense["output_norm.weight"], c.rms_eps)
    log.add(
        "weights read", weights.stored_bytes("output_norm.weight") + weights.stored_bytes(model.head_name)
    )
    return integers.linear(x, model.head_name)
