"""One decode step as one CUDA graph: a static KV cache, so a token is one launch (GPU only).

At batch 1 a 135 M-parameter model is launch-bound on a GPU: ``Model.forward`` issues ~400 small
kernels per token from Python, each a few microseconds of launch for a few microseconds of work.
A CUDA graph records those launches once and replays them with one call
(``torch.cuda.CUDAGraph``; PyTorch's "CUDA Graphs" notes). Recording needs every shape and
address fixed, so the decode step here is written for a *static* cache:

- the KV cache is allocated at its full length once (no doubling), and the new key/value row is
  written at ``position`` with ``index_copy_`` (a tensor index, not a Python slice);
- attention always runs over all ``max_length`` positions, with a mask ``arange(S) <= position``
  hiding the empty ones;
- the token id and the position live in two small device tensors that are overwritten before
  each replay, and the logits land in one static output tensor.

``StaticDecoder(model, max_length)`` prefills with the ordinary ``forward`` (any prompt length, into
the same static cache), then ``step(token)`` runs one decode step, replayed from the graph on CUDA
(``use_graph=True``) or run eagerly (CPU, or to check the graph against the eager step; the
logits are the same computation either way). Dense weights only, ``activations="float"``.

Not yet measured: this session had no GPU. ``scripts/gpu_check_graphs.py`` times it against
``Model.forward`` on a lent GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from labkit.errors import ModelError
from labkit.runtime.kvcache import KVCache
from labkit.runtime.model import Model, rms_norm, rope
from labkit.runtime.transfers import NullLog


class StaticDecoder:
    """Greedy-decode-ready wrapper: ``prefill(ids)`` then ``step(token)`` per new token.

    Args:
        model: a loaded ``Model`` with dense weights and ``activations="float"``.
        max_length: positions the static cache holds (prompt + new tokens).
        use_graph: record the step as a CUDA graph (needs ``model.device`` to be CUDA).
    """

    def __init__(self, model: Model, max_length: int, *, use_graph: bool = False):
        if model.weights.packed or model.activations != "float":
            raise ModelError(
                "StaticDecoder needs weights='dequantized' and activations='float'; load it that way"
            )
        if use_graph and model.device.type != "cuda":
            raise ModelError(
                f"use_graph=True needs a CUDA model; this one is on {model.device}: use use_graph=False"
            )
        if not 1 <= max_length <= model.config.context_length:
            raise ModelError(
                f"max_length={max_length}; give 1 to the context length {model.config.context_length}"
            )
        self.model, self.max_length = model, max_length
        c = model.config
        self.cache = KVCache(
            n_layers=c.n_layers,
            n_kv_heads=c.n_kv_heads,
            head_dim=c.head_dim,
            max_length=max_length,
            dtype=model.dtype,
            device=model.device,
            initial_capacity=max_length,
        )  # the full length at once: the buffers never move again
        device = model.device
        self.token = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.rotations = model.rotations(0, max_length)  # (max_length, rope_dim/2), indexed by position
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits = torch.zeros(1, 1, model.config.vocab_size, device=device)
        self.use_graph = use_graph

    def prefill(self, ids: Sequence[int]) -> torch.Tensor:
        """Run the prompt through the ordinary forward pass into the static cache; its last logits."""
        if len(ids) >= self.max_length:
            raise ModelError(f"a {len(ids)}-token prompt leaves no room in max_length={self.max_length}")
        return self.model.forward(ids, self.cache)[0, -1]

    def step(self, token: int) -> torch.Tensor:
        """One decode step for ``token`` at the next position: ``(vocab,)`` float32 logits (a static tensor)."""
        if self.cache.length >= self.max_length:
            raise ModelError(
                f"the static cache is full ({self.max_length} positions); make a new StaticDecoder"
            )
        self.token.fill_(token)
        self.position.fill_(self.cache.length)
        if not self.use_graph:
            self.logits.copy_(self._step())
        else:
            if self.graph is None:
                self._capture()
            assert self.graph is not None
            self.graph.replay()
        self.cache.advance(1)
        return self.logits[0, -1]

    def _capture(self) -> None:
        """Record ``_step`` once (after warm-up runs on a side stream, as PyTorch's notes require)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step()  # rewrites the same cache row: harmless, the replay writes it again
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits.copy_(self._step())

    def _step(self) -> torch.Tensor:
        """The decode step with static shapes: ``(1, 1, vocab)`` logits for ``self.token`` at ``self.position``."""
        m, c = self.model, self.model.config
        x = m.weights.dense["token_embd.weight"][self.token].float()  # (1, 1, C)
        rotations = self.rotations.index_select(0, self.position)  # (1, rope_dim/2)
        visible = (torch.arange(self.max_length, device=x.device) <= self.position)[None, :]  # (1, S)
        for layer in range(c.n_layers):
            w = m._block_weights(layer, NullLog(m.device))
            x = x + self._attention(rms_norm(x, w["attn_norm"], c.rms_eps), w, layer, rotations, visible)
            h = rms_norm(x, w["ffn_norm"], c.rms_eps)
            gate, up = F.linear(h.to(m.dtype), w["ffn_gate_up"]).float().split(c.ffn_dim, dim=-1)
            x = x + F.linear((F.silu(gate) * up).to(m.dtype), w["ffn_down"]).float()
        x = rms_norm(x, m.weights.get("output_norm.weight"), c.rms_eps)
        return F.linear(x.to(m.dtype), m.weights.get(m.head_name)).float()  # (1, 1, vocab)

    def _attention(
        self,
        h: torch.Tensor,
        w: dict[str, torch.Tensor],
        layer: int,
        rotations: torch.Tensor,
        visible: torch.Tensor,
    ) -> torch.Tensor:
        c, m = self.model.config, self.model
        heads = (
            F.linear(h.to(m.dtype), w["attn_qkv"])
            .float()
            .unflatten(-1, (c.n_heads + 2 * c.n_kv_heads, c.head_dim))
        )
        qk = rope(heads[:, :, : c.n_heads + c.n_kv_heads], rotations)  # (1, 1, H+Hkv, D)
        q = qk[:, :, : c.n_heads].transpose(1, 2)  # (1, H, 1, D)
        k, v = qk[:, :, c.n_heads :].transpose(1, 2), heads[:, :, c.n_heads + c.n_kv_heads :].transpose(1, 2)
        keys, values = self.cache.keys[layer], self.cache.values[layer]  # (1, Hkv, max_length, D)
        keys.index_copy_(2, self.position, k.to(keys.dtype))
        values.index_copy_(2, self.position, v.to(values.dtype))
        out = F.scaled_dot_product_attention(
            q, keys.to(q.dtype), values.to(q.dtype), attn_mask=visible, enable_gqa=True
        )  # (1, H, 1, D)
        return F.linear(out.transpose(1, 2).reshape(1, 1, c.dim).to(m.dtype), w["attn_output"]).float()
