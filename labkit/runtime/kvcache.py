"""The KV cache: the intermediate tensors a model keeps between tokens.

Attention at position t needs the keys and values of every earlier position.
Recomputing them would redo the whole prompt for each new token, so each layer
stores them once and reads them all back at every step. The store grows by one
row per token per layer::

    size_bytes = 2 (K and V) x n_layers x batch x positions x n_kv_heads x head_dim x bytes_per_element

For SmolLM2-135M (30 layers, 3 KV heads of 64) in float16 that is 23,040 bytes
per token: 8,192 tokens of context take 189 MB, more than the Q4_1 weights.
llama.cpp keeps its cache in float16 by default.
"""

from __future__ import annotations

import torch

from labkit.errors import ModelError


def kv_cache_size_bytes(
    *,
    n_layers: int,
    n_kv_heads: int,
    head_dim: int,
    context_length: int,
    batch: int = 1,
    bytes_per_element: float = 2,
) -> int:
    """Bytes a full KV cache takes (the formula in the module docstring).

    Args:
        n_layers: transformer blocks (``llama.block_count``).
        n_kv_heads: key/value heads (``llama.attention.head_count_kv``).
        head_dim: width of one head (``embedding_length // head_count``).
        context_length: positions cached.
        batch: sequences cached side by side.
        bytes_per_element: 2 for float16/bfloat16, 4 for float32, 34/32 = 1.0625 for llama.cpp's Q8_0
            cache blocks (32 int8 values and one fp16 scale).
    Returns:
        The size in bytes.
    """
    return round(2 * n_layers * batch * context_length * n_kv_heads * head_dim * bytes_per_element)


class KVCache:
    """Per-layer key and value tensors, preallocated and grown by doubling.

    Layout per layer: ``keys[layer]`` and ``values[layer]`` of shape
    ``(batch, n_kv_heads, capacity, head_dim)``; positions ``[0, length)`` are filled.

    Args:
        n_layers, n_kv_heads, head_dim: the model's attention shape.
        max_length: the model's context length; writing past it raises ``ModelError``.
        batch: sequences side by side.
        dtype, device: where and how the cache is stored.
        initial_capacity: positions allocated at first (the cache doubles when full).
    """

    def __init__(
        self,
        *,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        max_length: int,
        batch: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        initial_capacity: int = 256,
    ):
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.max_length, self.batch, self.dtype = max_length, batch, dtype
        self.device = torch.device(device)
        self.length = 0  # positions filled (the same in every layer once a forward pass ends)
        self.capacity = min(initial_capacity, max_length)
        shape = (batch, n_kv_heads, self.capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(n_layers)]

    @property
    def size_bytes(self) -> int:
        """Bytes of the filled positions (what the formula above gives for ``length``)."""
        element_bytes = torch.empty((), dtype=self.dtype).element_size()
        return kv_cache_size_bytes(
            n_layers=self.n_layers,
            n_kv_heads=self.n_kv_heads,
            head_dim=self.head_dim,
            context_length=self.length,
            batch=self.batch,
            bytes_per_element=element_bytes,
        )

    @property
    def allocated_bytes(self) -> int:
        """Bytes allocated, filled or not."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one layer's new keys/values after the filled ones; return all of them.

        Args:
            layer: block index.
            k, v: ``(batch, n_kv_heads, T, head_dim)`` for the ``T`` new positions.
        Returns:
            ``(keys, values)`` of shape ``(batch, n_kv_heads, length + T, head_dim)`` (views, no copy).
        """
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_length:
            raise ModelError(
                f"the KV cache is full: {end} positions asked for, the context length is "
                f"{self.max_length}; start a new cache or use a shorter text"
            )
        if end > self.capacity:
            self._grow(end)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n_positions: int) -> None:
        """Mark ``n_positions`` more positions as filled (call once per forward pass, after every layer)."""
        self.length += n_positions

    def _grow(self, needed: int) -> None:
        capacity = self.capacity
        while capacity < needed:
            capacity = min(2 * capacity, self.max_length)
        for cache in (self.keys, self.values):
            for layer, old in enumerate(cache):
                new = old.new_zeros((self.batch, self.n_kv_heads, capacity, self.head_dim))
                new[:, :, : self.capacity] = old
                cache[layer] = new
        self.capacity = capacity
