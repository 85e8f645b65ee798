"""A small llama runtime on labkit's own GGUF reader and dequantizers.

Read this next to llama.cpp's ``src/models/llama.cpp`` graph and Karpathy's
``llama2.c/run.c``; the math is the same, written as plain torch::

    x = token_embd[ids]                                   # (B, T, C)
    for each block:
        h = rms_norm(x) * attn_norm
        q, k, v = h @ Wq, h @ Wk, h @ Wv                  # RoPE on q and k; k, v go to the KV cache
        x = x + softmax(q k^T / sqrt(d) + causal) v @ Wo  # grouped-query attention
        h = rms_norm(x) * ffn_norm
        x = x + (silu(h @ Wgate) * (h @ Wup)) @ Wdown     # SwiGLU feed-forward
    logits = rms_norm(x) * output_norm @ output           # output = token_embd when tied

Two ways to hold the weights (``load(..., weights=...)``):

- ``"dequantized"``: every tensor is dequantized once at load time and kept as
  float32/bfloat16: fast matmuls, 4-8x the file's bytes in memory;
- ``"quantized"``: the file's quantized bytes stay resident, and each block's
  tensors are dequantized when the forward pass reaches that block, then freed:
  about the file's size in memory, and more compute per token.

RoPE: GGUF files store ``attn_q``/``attn_k`` permuted by llama.cpp's converter so
that each rotated pair is two *adjacent* numbers (ggml's "normal" RoPE mode), not
the two halves of the head as in the Hugging Face code. This runtime rotates
adjacent pairs, as ggml does.

Equal to llama.cpp? On an F32 copy of the default model the logits agree to ~0.01.
On the Q4_1 file they differ by ~0.15 on average, because llama.cpp's CPU kernels
round the activations to 8 bits (Q8_1 blocks) before every quantized matmul;
top-1 tokens then agree except at near-ties (tests/test_model_llama_cpp.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from labkit.errors import ModelError
from labkit.kvcache import KVCache
from labkit.tokenizer import Tokenizer
from labkit.transfers import NullLog, TransferLog

SUPPORTED_ARCHITECTURES = ("llama",)
WEIGHT_MODES = ("dequantized", "quantized")
BLOCK_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                 "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


@dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters, read from the ``llama.*`` metadata keys."""

    n_layers: int  # llama.block_count
    dim: int  # llama.embedding_length
    ffn_dim: int  # llama.feed_forward_length
    n_heads: int  # llama.attention.head_count
    n_kv_heads: int  # llama.attention.head_count_kv (grouped-query attention when < n_heads)
    vocab_size: int
    context_length: int  # llama.context_length
    rope_base: float  # llama.rope.freq_base
    rope_dim: int  # llama.rope.dimension_count (dims of each head that rotate)
    rms_eps: float  # llama.attention.layer_norm_rms_epsilon
    tied_embeddings: bool  # no output.weight: the head reuses token_embd

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_gguf(cls, metadata: Mapping[str, Any], tensor_shapes: Mapping[str, tuple[int, ...]]) -> "LlamaConfig":
        """Read the config; raise ``ModelError`` naming any missing key or unsupported architecture."""
        arch = metadata.get("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ModelError(f"general.architecture is {arch!r}; labkit runs only {list(SUPPORTED_ARCHITECTURES)} "
                             "models (SmolLM2, TinyLlama, Llama 2/3 and their GGUF conversions)")

        def need(key: str) -> Any:
            if f"llama.{key}" not in metadata:
                raise ModelError(f"metadata key 'llama.{key}' is missing; a llama GGUF file must have it")
            return metadata[f"llama.{key}"]

        dim, n_heads = int(need("embedding_length")), int(need("attention.head_count"))
        if "token_embd.weight" not in tensor_shapes:
            raise ModelError("tensor 'token_embd.weight' is missing; a llama GGUF file must have it")
        return cls(
            n_layers=int(need("block_count")),
            dim=dim,
            ffn_dim=int(need("feed_forward_length")),
            n_heads=n_heads,
            n_kv_heads=int(metadata.get("llama.attention.head_count_kv", n_heads)),
            vocab_size=int(tensor_shapes["token_embd.weight"][0]),
            context_length=int(need("context_length")),
            rope_base=float(metadata.get("llama.rope.freq_base", 10000.0)),
            rope_dim=int(metadata.get("llama.rope.dimension_count", dim // n_heads)),
            rms_eps=float(need("attention.layer_norm_rms_epsilon")),
            tied_embeddings="output.weight" not in tensor_shapes,
        )


@dataclass(frozen=True)
class PerplexityResult:
    """How surprised the model is by a text: ``perplexity = exp(mean_nll)`` over ``n_scored`` tokens."""

    n_tokens: int
    n_scored: int
    mean_nll: float
    perplexity: float


class Weights:
    """The model's tensors, held dense or as quantized bytes dequantized on use.

    ``dense[name]``: float tensors ready for matmul. ``packed[name]``: ``(raw uint8 bytes, qtype, shape)``,
    only in ``"quantized"`` mode (norm vectors and other float tensors are always dense).
    """

    def __init__(self, gguf_file: Any, names: Sequence[str], *, mode: str, dtype: torch.dtype, device: torch.device):
        from labkit.formats import FORMATS

        self.mode, self.dtype, self.device = mode, dtype, device
        self.dense: dict[str, torch.Tensor] = {}
        self.packed: dict[str, tuple[torch.Tensor, str, tuple[int, ...]]] = {}
        for name in names:
            info = gguf_file.tensors[name]
            if mode == "quantized" and FORMATS[info.qtype].quantized:
                raw = gguf_file.raw(name).to(device, copy=True)  # own copy: resident, file can close
                self.packed[name] = (raw, info.qtype, tuple(info.shape))
            else:
                dtype_here = torch.float32 if len(info.shape) == 1 else dtype  # norms stay float32
                self.dense[name] = gguf_file.tensor(name).to(device=device, dtype=dtype_here)

    def get(self, name: str) -> torch.Tensor:
        """The tensor as floats: stored, or dequantized now from its packed bytes."""
        if name in self.dense:
            return self.dense[name]
        from labkit.quant import dequantize

        raw, qtype, shape = self.packed[name]
        return dequantize(raw, qtype, shape).to(self.dtype)

    def rows(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of a 2-D tensor; when packed, only those rows' bytes are dequantized."""
        if name in self.dense:
            return self.dense[name][ids]
        from labkit.quant import dequantize

        raw, qtype, (n_rows, n_cols) = self.packed[name]
        row_bytes = raw.view(n_rows, -1)[ids.reshape(-1)]  # (N, bytes per row)
        return dequantize(row_bytes, qtype, (ids.numel(), n_cols)).view(*ids.shape, n_cols).to(self.dtype)

    def stored_bytes(self, name: str) -> int:
        """Bytes this tensor occupies while resident."""
        tensor = self.dense[name] if name in self.dense else self.packed[name][0]
        return tensor.numel() * tensor.element_size()

    def row_bytes(self, name: str) -> int:
        """Bytes one row of a 2-D tensor occupies while resident."""
        n_rows = self.dense[name].shape[0] if name in self.dense else self.packed[name][2][0]
        return self.stored_bytes(name) // n_rows

    @property
    def total_bytes(self) -> int:
        return sum(self.stored_bytes(name) for name in [*self.dense, *self.packed])


def load(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         weights: str = "dequantized") -> "Model":
    """Load a llama-architecture GGUF file into a runnable ``Model``.

    Args:
        path: the ``.gguf`` file.
        device: ``"cpu"`` or ``"cuda"`` (weights are copied there once).
        dtype: compute dtype of the matmul weights (``torch.float32`` or ``torch.bfloat16``).
        weights: ``"dequantized"`` (dense floats) or ``"quantized"`` (packed bytes, dequantized per block).
    Returns:
        The model, with its tokenizer and config.
    Raises:
        ModelError: unsupported architecture, missing tensor or key, or a bad option.
        GGUFFormatError: the file is not valid GGUF.
    """
    from labkit import gguf

    if not Path(path).is_file():
        raise ModelError(f"no model file at {path}; pass the path of a .gguf file")
    if weights not in WEIGHT_MODES:
        raise ModelError(f"weights={weights!r}; choose one of {list(WEIGHT_MODES)}")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device='cuda' was asked for, but this torch sees no CUDA GPU; use device='cpu'")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ModelError(f"dtype={dtype}; choose torch.float32, torch.bfloat16 or torch.float16")
    with gguf.open(path) as gguf_file:
        shapes = {name: tuple(info.shape) for name, info in gguf_file.tensors.items()}
        config = LlamaConfig.from_gguf(gguf_file.metadata, shapes)
        names = _tensor_names(config)
        missing = [name for name in names if name not in shapes]
        if missing:
            raise ModelError(f"tensor {missing[0]!r} is missing from {Path(path).name} "
                             f"({len(missing)} missing); a llama block needs {list(BLOCK_TENSORS)}")
        tokenizer = Tokenizer.from_metadata(gguf_file.metadata)
        store = Weights(gguf_file, names, mode=weights, dtype=dtype, device=torch.device(device))
    return Model(config, tokenizer, store)


def _tensor_names(config: LlamaConfig) -> list[str]:
    names = ["token_embd.weight", "output_norm.weight"]
    names += [f"blk.{i}.{t}.weight" for i in range(config.n_layers) for t in BLOCK_TENSORS]
    return names if config.tied_embeddings else [*names, "output.weight"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension (ggml_rms_norm then ggml_mul)."""
    return F.rms_norm(x, weight.shape, weight, eps)


def rope_angles(positions: torch.Tensor, base: float, rope_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of ``position * base^(-2i/rope_dim)`` for each position and pair ``i``: two ``(T, rope_dim/2)``."""
    freqs = base ** (-torch.arange(0, rope_dim, 2, dtype=torch.float64, device=positions.device) / rope_dim)
    angles = positions.to(torch.float64)[:, None] * freqs[None, :]  # (T, rope_dim/2)
    return angles.cos().float(), angles.sin().float()


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs ``(x[2i], x[2i+1])`` by the angles of ``rope_angles`` (ggml "normal" RoPE mode).

    Args:
        x: ``(B, T, n_heads, head_dim)``; the first ``rope_dim`` dims of each head rotate, the rest pass.
        cos, sin: ``(T, rope_dim/2)``.
    """
    rope_dim = 2 * cos.shape[-1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]  # (1, T, 1, rope_dim/2)
    pairs = x[..., :rope_dim].unflatten(-1, (rope_dim // 2, 2))  # (B, T, H, rope_dim/2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)  # (B, T, H, rope_dim)
    return torch.cat((rotated, x[..., rope_dim:]), dim=-1)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` computed in the weight's dtype, returned in ``x``'s dtype (the float32 residual stream)."""
    return F.linear(x.to(weight.dtype), weight).to(x.dtype)


class Model:
    """A loaded llama model: ``forward`` with a KV cache, ``logits``, ``generate``, ``perplexity``.

    Example:
        >>> model = load(default_model_path())
        >>> model.tokenizer.decode(model.generate("The capital of France is", 8))
    """

    def __init__(self, config: LlamaConfig, tokenizer: Tokenizer, weights: Weights):
        self.config, self.tokenizer, self.weights = config, tokenizer, weights
        self.device, self.dtype = weights.device, weights.dtype
        self.head_name = "token_embd.weight" if config.tied_embeddings else "output.weight"

    @property
    def weight_bytes_per_token(self) -> int:
        """Bytes of resident weights one decode step reads: every block's tensors, the norms and the head."""
        names = [n for n in _tensor_names(self.config) if n != "token_embd.weight" or self.config.tied_embeddings]
        return sum(self.weights.stored_bytes(name) for name in names)

    def new_cache(self, *, batch: int = 1, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache (``dtype`` defaults to the compute dtype; llama.cpp uses float16)."""
        c = self.config
        return KVCache(n_layers=c.n_layers, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim, max_length=c.context_length,
                       batch=batch, dtype=dtype or self.dtype, device=self.device)

    @torch.inference_mode()
    def forward(self, ids: Sequence[int] | torch.Tensor, cache: KVCache | None = None, *,
                log: TransferLog | None = None) -> torch.Tensor:
        """Run ``T`` new tokens through the model, after the ``cache.length`` tokens already cached.

        Args:
            ids: ``(T,)`` or ``(B, T)`` token ids (list or tensor, on the host).
            cache: the KV cache to read and extend (``None``: no past, nothing kept).
            log: a ``TransferLog`` to receive one record per hop of this call.
        Returns:
            Float32 logits ``(B, T, vocab)`` on the host.
        Raises:
            ModelError: the cache plus ``T`` would pass the context length.
        """
        c, log = self.config, log if log is not None else NullLog(self.device)
        ids = torch.as_tensor(ids, dtype=torch.long)
        ids = ids[None] if ids.dim() == 1 else ids  # (B, T)
        past = cache.length if cache is not None else 0
        if past + ids.shape[1] > c.context_length:
            raise ModelError(f"{past} cached + {ids.shape[1]} new tokens exceed the context length "
                             f"{c.context_length}; shorten the prompt (labkit never truncates silently)")
        ids = log.to_device(ids, "input ids in")
        x = self.weights.rows("token_embd.weight", ids).float()  # (B, T, C) the residual stream, float32
        log.add("embedding rows read", ids.numel() * self.weights.row_bytes("token_embd.weight"))
        positions = torch.arange(past, past + ids.shape[1], device=self.device)
        angles = rope_angles(positions, c.rope_base, c.rope_dim)  # cos, sin: (T, rope_dim/2), shared by all blocks
        for layer in range(c.n_layers):
            w = self._block_weights(layer, log)
            x = x + self._attention(rms_norm(x, w["attn_norm"], c.rms_eps), w, layer, angles, cache, log)
            h = rms_norm(x, w["ffn_norm"], c.rms_eps)
            gate, up = linear(h, w["ffn_gate"]), linear(h, w["ffn_up"])  # (B, T, ffn_dim)
            x = x + linear(F.silu(gate) * up, w["ffn_down"])
            log.add("activations to next layer", x, layer=layer, source="cores", destination=log.memory)
        if cache is not None:
            cache.advance(ids.shape[1])
        x = rms_norm(x, self.weights.get("output_norm.weight"), c.rms_eps)
        head = self.weights.get(self.head_name)  # (vocab, C); dequantized now in "quantized" mode
        logits = linear(x, head).float()  # (B, T, vocab)
        head_bytes = self.weights.stored_bytes("output_norm.weight") + self.weights.stored_bytes(self.head_name)
        log.add("weights read", head_bytes)
        if self.head_name in self.weights.packed:
            log.add("weights dequantized", head.nbytes, source="cores", destination=log.memory)
        return log.to_host(logits, "logits out")

    def _block_weights(self, layer: int, log: TransferLog) -> dict[str, torch.Tensor]:
        """One block's tensors as floats (dequantized here in ``"quantized"`` mode), with their reads logged."""
        names = {short: f"blk.{layer}.{short}.weight" for short in BLOCK_TENSORS}
        tensors = {short: self.weights.get(name) for short, name in names.items()}
        log.add("weights read", sum(self.weights.stored_bytes(n) for n in names.values()), layer=layer)
        packed = [short for short, name in names.items() if name in self.weights.packed]
        if packed:
            log.add("weights dequantized", sum(tensors[s].nbytes for s in packed),
                    layer=layer, source="cores", destination=log.memory)
        return tensors

    def _attention(self, h: torch.Tensor, w: dict[str, torch.Tensor], layer: int,
                   angles: tuple[torch.Tensor, torch.Tensor],
                   cache: KVCache | None, log: TransferLog) -> torch.Tensor:
        c = self.config
        B, T, _ = h.shape
        q = linear(h, w["attn_q"]).view(B, T, c.n_heads, c.head_dim)  # (B, T, H, D)
        k = linear(h, w["attn_k"]).view(B, T, c.n_kv_heads, c.head_dim)  # (B, T, Hkv, D)
        v = linear(h, w["attn_v"]).view(B, T, c.n_kv_heads, c.head_dim)
        q, k = rope(q, *angles), rope(k, *angles)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, Hkv, S, D): S = cached + new positions
            log.add("kv written", 2 * T * k[:, :, :1].numel() * k.element_size(), layer=layer,
                    source="cores", destination=log.memory)
            log.add("kv read", 2 * k.numel() * k.element_size(), layer=layer)
        group = c.n_heads // c.n_kv_heads  # query heads that share one KV head
        k = k.to(q.dtype).repeat_interleave(group, dim=1)  # (B, H, S, D)
        v = v.to(q.dtype).repeat_interleave(group, dim=1)
        scores = (q @ k.transpose(2, 3)) / c.head_dim**0.5  # (B, H, T, S): S = cached + new positions
        S = scores.shape[-1]
        if T > 1:  # causal: new token t sees positions <= S - T + t
            causal = torch.ones(T, S, dtype=torch.bool, device=h.device).tril(S - T)  # (T, S)
            scores = scores.masked_fill(~causal, float("-inf"))
        out = torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v  # (B, H, T, D)
        return linear(out.transpose(1, 2).reshape(B, T, c.dim), w["attn_output"])  # (B, T, C)

    def logits(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Float32 logits ``(T, vocab)`` for one whole sequence (through a temporary KV cache)."""
        return self.forward(ids, self.new_cache())[0]

    def prompt_ids(self, prompt: str | Sequence[int], *, chat: bool = False) -> list[int]:
        """Token ids of a prompt: a string (chat-formatted with the file's template when ``chat``) or ids."""
        if not isinstance(prompt, str):
            return [int(i) for i in prompt]
        if chat:
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
        return self.tokenizer.encode(prompt, add_special=True)

    def stream(self, prompt: str | Sequence[int], max_new_tokens: int, temperature: float = 0.0,
               seed: int | None = None, *, chat: bool = False, stop_at_end: bool = True) -> Iterator[int]:
        """Yield new token ids one at a time (see ``generate``)."""
        ids = self.prompt_ids(prompt, chat=chat)
        if not ids or len(ids) + max_new_tokens > self.config.context_length:
            raise ModelError(f"the prompt has {len(ids)} tokens and {max_new_tokens} new ones were asked for; "
                             f"together they must be between 1 and the context length {self.config.context_length}")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        cache = self.new_cache()
        logits = self.forward(ids, cache)[0, -1]  # (vocab,)
        for _ in range(max_new_tokens):
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                next_id = int(torch.multinomial(probs, 1, generator=generator))
            else:
                next_id = int(logits.argmax())
            yield next_id
            if stop_at_end and next_id in self.tokenizer.special.end_of_generation_ids:
                return
            logits = self.forward([next_id], cache)[0, -1]

    def generate(self, prompt: str | Sequence[int], max_new_tokens: int, temperature: float = 0.0,
                 seed: int | None = None, *, chat: bool = False, stop_at_end: bool = True) -> list[int]:
        """Continue a prompt; return only the new token ids.

        Args:
            prompt: text, or token ids.
            max_new_tokens: at most this many tokens are generated.
            temperature: 0 picks the most likely token (greedy); > 0 samples from ``softmax(logits / T)``.
            seed: makes sampling repeatable.
            chat: wrap a text prompt in the file's chat template as one user message.
            stop_at_end: stop after an end-of-generation token (it is included in the result).
        Raises:
            ModelError: prompt plus ``max_new_tokens`` would not fit the context (no silent truncation).
        """
        return list(self.stream(prompt, max_new_tokens, temperature, seed, chat=chat, stop_at_end=stop_at_end))

    def requantized(self, qtype: str) -> "Model":
        """A copy whose weight matrices went through ``qtype`` and back, in memory (quantize, then dequantize).

        To see what a smaller type costs in quality without writing a file. Needs ``weights="dequantized"``.
        """
        from labkit.quant import dequantize, quantize

        if self.weights.packed:
            raise ModelError("requantized() needs a model loaded with weights='dequantized'")
        store = copy.copy(self.weights)
        store.dense = {name: dequantize(quantize(t.float(), qtype, name=name), qtype, t.shape).to(t.dtype)
                       if t.dim() == 2 else t for name, t in self.weights.dense.items()}
        return Model(self.config, self.tokenizer, store)

    def perplexity(self, text: str) -> PerplexityResult:
        """Perplexity of ``text``: ``exp`` of the mean negative log-likelihood of each next token.

        Texts longer than the context are scored in consecutive context-sized windows.
        """
        ids = self.tokenizer.encode(text, add_special=True)
        if len(ids) < 2:
            raise ModelError(f"perplexity needs at least 2 tokens; the text gave {len(ids)}")
        nll_sum, n_scored = 0.0, 0
        for start in range(0, len(ids), self.config.context_length):
            window = ids[start:start + self.config.context_length]
            if len(window) < 2:
                break
            logits = self.logits(window)  # (T, vocab)
            nll_sum += float(F.cross_entropy(logits[:-1], torch.tensor(window[1:]), reduction="sum"))
            n_scored += len(window) - 1
        mean_nll = nll_sum / n_scored
        return PerplexityResult(len(ids), n_scored, mean_nll, float(torch.tensor(mean_nll).exp()))


def lab_text() -> str:
    """The short text written for this lab (``labkit/data/lab_text.txt``), the default perplexity text."""
    from importlib.resources import files

    return files("labkit").joinpath("data/lab_text.txt").read_text(encoding="utf-8")
