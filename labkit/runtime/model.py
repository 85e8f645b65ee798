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

The weights are held dense or as the file's quantized bytes (``load(..., weights=...)``,
see ``labkit.runtime.weights``). Matrices that read the same input are stored stacked, so
``[Wq | Wk | Wv]`` and ``[Wgate | Wup]`` are one product each, split afterwards.

Decoding one token at a time is a matrix-*vector* product per weight matrix, so
its speed is set by how fast the weights stream from RAM. The rest is kept to a few
operations per block: one fused RMS norm, RoPE as one complex multiplication,
``F.scaled_dot_product_attention`` over a preallocated KV cache.

RoPE: GGUF files store ``attn_q``/``attn_k`` permuted by llama.cpp's converter so
that each rotated pair is two *adjacent* numbers (ggml's "normal" RoPE mode), not
the two halves of the head as in the Hugging Face code. This runtime rotates
adjacent pairs, as ggml does.

Equal to llama.cpp? On an F32 copy of the default model the logits agree to ~0.01.
On the Q4_1 file they differ by a few tenths, because llama.cpp's CPU kernels round the activations
to 8 bits (Q8_1 blocks) before every quantized matmul and labkit's float mode does not; the
top-1 token is still the same at every position of the test prompt, and on other text can
differ at near-ties (tests/test_model_llama_cpp.py). ``load(..., activations="q8")`` computes
the whole forward pass with llama.cpp's CPU arithmetic instead (``labkit.runtime.ggml_cpu``):
the same roundings, float16 KV cache and order of additions, and then the logits are
llama.cpp's *to the bit* (measured against llama.cpp on this lab's x86 machine). That mode is
slow; it exists to show that the difference is arithmetic, not a different model.

Which compute dtype is fastest depends on the CPU; ``load(path)`` without a ``dtype``
measures it once per machine and remembers it (``labkit.runtime.dtypes``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from labkit.errors import ModelError
from labkit.runtime.kvcache import KVCache
from labkit.runtime.tokenizer import PRE_TOKENIZER_REGEXES, Tokenizer
from labkit.runtime.transfers import NullLog, TransferLog
from labkit.runtime.weights import Weights

if TYPE_CHECKING:
    from labkit.runtime.dtypes import DtypeChoice
    from labkit.runtime.ggml_forward import IntegerWeights

SUPPORTED_ARCHITECTURES = ("llama",)
WEIGHT_MODES = ("dequantized", "quantized")
ACTIVATION_MODES = ("float", "q8")  # q8: llama.cpp's CPU arithmetic, op for op (labkit.runtime.ggml_cpu)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BLOCK_TENSORS = (
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
)  # as in the file
SCORE_TOKENS = 256  # tokens per forward pass when scoring or reading a prompt: bounds logits and attention
PERPLEXITY_WINDOW = 2048  # default tokens per perplexity window: its float32 KV cache is 94 MB on SmolLM2
BLOCK_WEIGHTS = ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_gate_up", "ffn_down")  # as stored


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
    def from_gguf(
        cls, metadata: Mapping[str, Any], tensor_shapes: Mapping[str, tuple[int, ...]]
    ) -> LlamaConfig:
        """Read the config; raise ``ModelError`` naming any missing key or unsupported architecture."""
        arch = metadata.get("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ModelError(
                f"general.architecture is {arch!r}; labkit runs only {list(SUPPORTED_ARCHITECTURES)} "
                "GGUF files with a byte-level BPE tokenizer (tokenizer.ggml.model 'gpt2', "
                f"tokenizer.ggml.pre one of {sorted(PRE_TOKENIZER_REGEXES)}), such as SmolLM2 "
                "and labkit's synthetic llamas"
            )

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


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    weights: str = "dequantized",
    *,
    activations: str = "float",
) -> Model:
    """Load a llama-architecture GGUF file into a runnable ``Model``.

    Args:
        path: the ``.gguf`` file.
        device: ``"cpu"`` or ``"cuda"`` (weights are copied there once).
        dtype: compute dtype of the matmul weights (``torch.float32``, ``torch.bfloat16`` or
            ``torch.float16``). ``None``: the fastest of the three on this machine whose top-1 tokens
            equal float32's, measured once and cached (``labkit.runtime.dtypes``; the choice and its
            reason are in ``model.summary()``). With ``activations="q8"`` the dtype is float32.
        weights: ``"dequantized"`` (dense floats) or ``"quantized"`` (packed bytes, dequantized per block).
            With ``activations="q8"``: integer weights unpacked once at load, or per block on use.
        activations: ``"float"`` (default) or ``"q8"``: compute as llama.cpp's CPU backend does, each
            quantized matmul's input rounded to 8-bit blocks and every other operation in ggml's own
            arithmetic (``labkit.runtime.ggml_cpu``; CPU only, Q4_1/Q8_0 weights, slow).
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
    if activations not in ACTIVATION_MODES:
        raise ModelError(f"activations={activations!r}; choose one of {list(ACTIVATION_MODES)}")
    if _device_type(device) == "cuda" and not torch.cuda.is_available():
        raise ModelError("device='cuda' was asked for, but this torch sees no CUDA GPU; use device='cpu'")
    if dtype is not None and dtype not in DTYPES.values():
        raise ModelError(f"dtype={dtype}; choose torch.float32, torch.bfloat16 or torch.float16 (or None)")
    choice = None
    if activations == "q8":
        if _device_type(device) != "cpu" or dtype not in (None, torch.float32):
            raise ModelError(
                f"activations='q8' reproduces llama.cpp's CPU arithmetic in float32 on the CPU; "
                f"device={device!r}, dtype={dtype} were asked for: use device='cpu' and dtype=None"
            )
        dtype = torch.float32
    elif dtype is None:
        from labkit.runtime.dtypes import choose_dtype

        choice = choose_dtype(path, load=load, device=device, weights=weights)
        dtype = DTYPES[choice.dtype]
    with gguf.open(path) as gguf_file:
        shapes = {name: tuple(info.shape) for name, info in gguf_file.tensors.items()}
        config = LlamaConfig.from_gguf(gguf_file.metadata, shapes)
        names = _tensor_names(config)
        missing = [name for name in names if name not in shapes]
        if missing:
            raise ModelError(
                f"tensor {missing[0]!r} is missing from {Path(path).name} "
                f"({len(missing)} missing); a llama block needs {list(BLOCK_TENSORS)}"
            )
        tokenizer = Tokenizer.from_metadata(gguf_file.metadata)
        store_mode = "quantized" if activations == "q8" else weights  # q8 multiplies the file's integers
        store = Weights(gguf_file, names, mode=store_mode, dtype=dtype, device=torch.device(device))
    return Model(
        config,
        tokenizer,
        store,
        activations=activations,
        dtype_choice=choice,
        unpack_integers=weights == "dequantized",
    )


def _device_type(device: str | torch.device) -> str:
    """``"cpu"`` or ``"cuda"``; any other device (``"mps"``, ``"meta"``, ``None``, a typo) raises ``ModelError``."""
    try:
        kind = torch.device(device).type if isinstance(device, (str, torch.device)) else None
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ModelError(
            f"device={device!r} is not a device labkit's runtime runs on; use 'cpu', 'cuda' or 'cuda:N'"
        )
    return kind


def _tensor_names(config: LlamaConfig) -> list[str]:
    names = ["token_embd.weight", "output_norm.weight"]
    names += [f"blk.{i}.{t}.weight" for i in range(config.n_layers) for t in BLOCK_TENSORS]
    return names if config.tied_embeddings else [*names, "output.weight"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension (ggml_rms_norm then ggml_mul)."""
    return F.rms_norm(x, weight.shape, weight, eps)


def rope_rotations(positions: torch.Tensor, base: float, rope_dim: int) -> torch.Tensor:
    """``cos + i*sin`` of the angles ``position * base^(-2j/rope_dim)``, per position and pair ``j``.

    Returns:
        complex64 ``(T, rope_dim/2)``: unit complex numbers, one rotation per pair (angles computed in float64).
    """
    freqs = base ** (-torch.arange(0, rope_dim, 2, dtype=torch.float64, device=positions.device) / rope_dim)
    angles = positions.to(torch.float64)[:, None] * freqs[None, :]  # (T, rope_dim/2)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs ``(x[2i], x[2i+1])`` by ``rope_rotations`` (ggml "normal" RoPE mode).

    A pair read as the complex number ``x0 + i*x1``, times ``cos + i*sin``, gives
    ``(x0*cos - x1*sin) + i*(x0*sin + x1*cos)``: the pair turned by the angle. One complex
    multiplication rotates every pair of every head at once.

    Args:
        x: float32 ``(B, T, n_heads, head_dim)``; the first ``rope_dim`` dims of each head rotate, the rest pass.
        rotations: ``(T, rope_dim/2)`` from ``rope_rotations``.
    """
    rope_dim = 2 * rotations.shape[-1]
    pairs = torch.view_as_complex(
        x[..., :rope_dim].unflatten(-1, (rope_dim // 2, 2))
    )  # (B, T, H, rope_dim/2)
    rotated = torch.view_as_real(pairs * rotations[:, None, :]).flatten(-2)  # (B, T, H, rope_dim)
    return rotated if rope_dim == x.shape[-1] else torch.cat((rotated, x[..., rope_dim:]), dim=-1)


def causal_mask(n_new: int, n_total: int, device: torch.device) -> torch.Tensor | None:
    """``(n_new, n_total)``: True where new token ``t`` may see position ``s`` (``s <= n_total - n_new + t``).

    ``None`` for one new token: it sees every cached position and itself, nothing to hide.
    """
    if n_new == 1:
        return None
    return torch.ones(n_new, n_total, dtype=torch.bool, device=device).tril(n_total - n_new)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` computed in the weight's dtype, returned in ``x``'s dtype (the float32 residual stream)."""
    return F.linear(x.to(weight.dtype), weight).to(x.dtype)


class Model:
    """A loaded llama model: ``forward`` with a KV cache, ``logits``, ``generate``, ``perplexity``.

    Example:
        >>> model = load(default_model_path())
        >>> model.tokenizer.decode(model.generate("The capital of France is", 8))
    """

    def __init__(
        self,
        config: LlamaConfig,
        tokenizer: Tokenizer,
        weights: Weights,
        *,
        activations: str = "float",
        dtype_choice: DtypeChoice | None = None,
        cache_tokens: int = 256,
        unpack_integers: bool = True,
    ):
        self.config, self.tokenizer, self.weights = config, tokenizer, weights
        self.cache_tokens = cache_tokens  # positions a new KV cache holds at first (it doubles when full)
        self.device, self.dtype = weights.device, weights.dtype
        if activations not in ACTIVATION_MODES:
            raise ModelError(f"activations={activations!r}; choose one of {list(ACTIVATION_MODES)}")
        self.activations = activations  # "float", or "q8": llama.cpp's CPU arithmetic (ggml_forward)
        self.integer_weights: IntegerWeights | None = None  # q8: the matrices as integers and scales
        self.dtype_choice = dtype_choice  # why load() picked self.dtype, when the caller did not
        self._rotations = torch.empty(0, config.rope_dim // 2, dtype=torch.complex64, device=self.device)
        self.head_name = "token_embd.weight" if config.tied_embeddings else "output.weight"
        if activations == "q8":
            from labkit.runtime.ggml_forward import IntegerWeights

            self.integer_weights = IntegerWeights(weights, self.head_name, unpack_now=unpack_integers)
        self.block_names = [
            {short: f"blk.{layer}.{short}.weight" for short in BLOCK_WEIGHTS}
            for layer in range(config.n_layers)
        ]  # per layer: short name -> stored name
        self.block_bytes = [
            sum(weights.stored_bytes(name) for name in names.values()) for names in self.block_names
        ]

    def summary(self) -> str:
        """A few lines on what is loaded and how it computes (the dtype choice and its measured reason)."""
        c = self.config
        dtype = str(self.dtype).removeprefix("torch.")
        how = self.dtype_choice.reason if self.dtype_choice is not None else "chosen by the caller"
        mode = "quantized bytes" if self.weights.packed else "dequantized floats"
        resident = self.weights.total_bytes
        if self.activations == "q8":
            how = "llama.cpp's CPU arithmetic is float32"
            assert self.integer_weights is not None
            unpacked = self.integer_weights.unpacked is not None
            mode += ", unpacked to integers " + ("at load" if unpacked else "as used")
            resident += self.integer_weights.nbytes
        activations = (
            "llama.cpp's CPU arithmetic: 8-bit blocks into each quantized matmul, ggml's order and "
            "roundings everywhere (activations='q8')"
            if self.activations == "q8"
            else "float32 (activations='float')"
        )
        return "\n".join(
            [
                f"llama: {c.n_layers} layers, dim {c.dim}, {c.n_heads} heads ({c.n_kv_heads} KV heads), "
                f"vocab {c.vocab_size}, context {c.context_length}",
                f"weights: {mode}, {resident / 1e6:.1f} MB resident on {self.device} (counted)",
                f"compute dtype: {dtype} ({how})",
                f"activations: {activations}",
            ]
        )

    def rotations(self, start: int, end: int) -> torch.Tensor:
        """RoPE rotations of positions ``start..end-1`` ``(T, rope_dim/2)``, from a table grown on demand."""
        if end > self._rotations.shape[0]:
            size = min(max(end, 2 * self._rotations.shape[0], 256), self.config.context_length)
            positions = torch.arange(size, device=self.device)
            self._rotations = rope_rotations(positions, self.config.rope_base, self.config.rope_dim)
        return self._rotations[start:end]

    @property
    def weight_bytes_per_token(self) -> int:
        """Bytes of resident weights one decode step reads: every block's tensors, the norms and the head."""
        names = [n for n in self.weights.names if n != "token_embd.weight" or self.config.tied_embeddings]
        return sum(self.weights.stored_bytes(name) for name in names)

    def new_cache(self, *, batch: int = 1, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache (``dtype`` defaults to the compute dtype, float16 with activations='q8')."""
        c = self.config
        if dtype is None:  # llama.cpp's float16 cache when following its numerics
            dtype = torch.float16 if self.activations == "q8" else self.dtype
        return KVCache(
            n_layers=c.n_layers,
            n_kv_heads=c.n_kv_heads,
            head_dim=c.head_dim,
            max_length=c.context_length,
            batch=batch,
            dtype=dtype,
            device=self.device,
            initial_capacity=self.cache_tokens,
        )

    @torch.inference_mode()
    def forward(
        self,
        ids: Sequence[int] | torch.Tensor,
        cache: KVCache | None = None,
        *,
        log: TransferLog | None = None,
    ) -> torch.Tensor:
        """Run ``T`` new tokens through the model, after the ``cache.length`` tokens already cached.

        Args:
            ids: ``(T,)`` or ``(B, T)`` token ids (list or tensor, on the host).
            cache: the KV cache to read and extend (``None``: no past, nothing kept).
            log: a ``TransferLog`` to receive one record per hop of this call.
        Returns:
            Float32 logits ``(B, T, vocab)`` on the host.
        Raises:
            ModelError: an id outside the vocabulary, or the cache plus ``T`` would pass the context length.
        """
        c, log = self.config, log if log is not None else NullLog(self.device)
        ids = torch.as_tensor(ids, dtype=torch.long)
        ids = ids[None] if ids.dim() == 1 else ids  # (B, T)
        outside = ids[(ids < 0) | (ids >= c.vocab_size)]
        if outside.numel():  # a negative id would silently read a row from the end of token_embd
            raise ModelError(
                f"token id {int(outside[0])} is outside the vocabulary: ids run from 0 to "
                f"{c.vocab_size - 1} (vocab size {c.vocab_size})"
            )
        past = cache.length if cache is not None else 0
        if past + ids.shape[1] > c.context_length:
            raise ModelError(
                f"{past} cached + {ids.shape[1]} new tokens exceed the context length "
                f"{c.context_length}; shorten the prompt (labkit never truncates silently)"
            )
        ids = log.to_device(ids, "input ids in")
        x = self.weights.rows("token_embd.weight", ids).float()  # (B, T, C) the residual stream, float32
        log.add("embedding rows read", ids.numel() * self.weights.row_bytes("token_embd.weight"))
        if self.activations == "q8":  # the same blocks in llama.cpp's arithmetic
            from labkit.runtime import ggml_forward

            return log.to_host(ggml_forward.forward(self, x, past, cache, log), "logits out")
        T, S = ids.shape[1], past + ids.shape[1]  # new positions, all positions
        rotations = self.rotations(past, S)  # (T, rope_dim/2)
        mask = causal_mask(T, S, self.device)  # shared by all blocks, like the rotations
        for layer in range(c.n_layers):
            w = self._block_weights(layer, log)
            x = x + self._attention(
                rms_norm(x, w["attn_norm"], c.rms_eps), w, layer, rotations, mask, cache, log
            )
            h = rms_norm(x, w["ffn_norm"], c.rms_eps)
            gate, up = linear(h, w["ffn_gate_up"]).split(c.ffn_dim, dim=-1)
            x = x + linear(F.silu(gate) * up, w["ffn_down"])  # (B, T, C)
            log.add("activations to next layer", x, layer=layer, source="cores", destination=log.memory)
        if cache is not None:
            cache.advance(ids.shape[1])
        x = rms_norm(x, self.weights.get("output_norm.weight"), c.rms_eps)
        logits = torch.empty(*x.shape[:-1], c.vocab_size, device=self.device)  # (B, T, vocab) float32
        dequantized = 0
        for first, rows in self.weights.row_slabs(self.head_name):  # in "quantized" mode, a slab at a time
            logits[..., first : first + rows.shape[0]] = linear(x, rows)
            dequantized += rows.nbytes
        head_bytes = self.weights.stored_bytes("output_norm.weight") + self.weights.stored_bytes(
            self.head_name
        )
        log.add("weights read", head_bytes)
        if self.head_name in self.weights.packed:
            log.add("weights dequantized", dequantized, source="cores", destination=log.memory)
        return log.to_host(logits, "logits out")

    def _block_weights(self, layer: int, log: TransferLog) -> dict[str, torch.Tensor]:
        """One block's tensors as floats (dequantized here in ``"quantized"`` mode), with their reads logged."""
        names = self.block_names[layer]
        tensors = {short: self.weights.get(name) for short, name in names.items()}
        log.add("weights read", self.block_bytes[layer], layer=layer)
        packed = [short for short, name in names.items() if name in self.weights.packed]
        if packed:
            log.add(
                "weights dequantized",
                sum(tensors[s].nbytes for s in packed),
                layer=layer,
                source="cores",
                destination=log.memory,
            )
        return tensors

    def _attention(
        self,
        h: torch.Tensor,
        w: dict[str, torch.Tensor],
        layer: int,
        rotations: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        log: TransferLog,
    ) -> torch.Tensor:
        """Grouped-query self-attention of the ``T`` new positions over all ``S``: ``(B, T, C) -> (B, T, C)``."""
        c = self.config
        B, T, _ = h.shape
        heads = linear(h, w["attn_qkv"]).unflatten(
            -1, (c.n_heads + 2 * c.n_kv_heads, c.head_dim)
        )  # (B, T, H+2Hkv, D)
        qk = rope(heads[:, :, : c.n_heads + c.n_kv_heads], rotations)  # q and k heads turn by the same angles
        q, k, v = qk[:, :, : c.n_heads], qk[:, :, c.n_heads :], heads[:, :, c.n_heads + c.n_kv_heads :]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, Hkv, S, D): S = cached + new positions
            log.add(
                "kv written",
                2 * B * c.n_kv_heads * T * c.head_dim * k.element_size(),
                layer=layer,
                source="cores",
                destination=log.memory,
            )
            log.add("kv read", 2 * k.numel() * k.element_size(), layer=layer)
        # softmax(q k^T / sqrt(D), masked) v; each KV head serves n_heads / n_kv_heads query heads
        out = F.scaled_dot_product_attention(
            q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, enable_gqa=True
        )  # (B, H, T, D)
        out = out.transpose(1, 2).reshape(B, T, c.dim)  # (B, T, C)
        return linear(out, w["attn_output"])

    def logits(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Float32 logits ``(T, vocab)`` for one whole sequence (through a temporary KV cache)."""
        return self.forward(ids, self.new_cache())[0]

    def prompt_ids(self, prompt: str | Sequence[int], *, chat: bool = False) -> list[int]:
        """Token ids of a prompt: a string (chat-formatted with the file's template when ``chat``) or ids."""
        if not isinstance(prompt, str):
            if chat:
                raise ModelError(
                    "chat=True needs the prompt as text (the template formats text); "
                    "these are token ids: pass the text, or chat=False"
                )
            return [int(i) for i in prompt]
        if chat:
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
        return self.tokenizer.encode(prompt, add_special=True)

    def stream(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        *,
        chat: bool = False,
        stop_at_end: bool = True,
    ) -> Iterator[int]:
        """Yield new token ids one at a time (see ``generate``; bad arguments raise at once, not when iterated)."""
        if max_new_tokens < 0:
            raise ModelError(f"max_new_tokens={max_new_tokens}; ask for 0 or more new tokens")
        if not 0 <= temperature < math.inf:  # also catches NaN
            raise ModelError(
                f"temperature={temperature}; use 0 for greedy decoding or a positive finite value to sample"
            )
        ids = self.prompt_ids(prompt, chat=chat)
        if not ids or len(ids) + max_new_tokens > self.config.context_length:
            raise ModelError(
                f"the prompt has {len(ids)} tokens and {max_new_tokens} new ones were asked for; "
                f"together they must be between 1 and the context length {self.config.context_length}"
            )
        return self._decode(ids, max_new_tokens, temperature, seed, stop_at_end)

    def _decode(
        self, ids: list[int], max_new_tokens: int, temperature: float, seed: int | None, stop_at_end: bool
    ) -> Iterator[int]:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        cache = self.new_cache()
        for start in range(0, len(ids), SCORE_TOKENS):  # a long prompt a slice at a time: bounded logits
            logits = self.forward(ids[start : start + SCORE_TOKENS], cache)[0, -1]  # (vocab,)
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

    def generate(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        *,
        chat: bool = False,
        stop_at_end: bool = True,
    ) -> list[int]:
        """Continue a prompt; return only the new token ids.

        Args:
            prompt: text, or token ids.
            max_new_tokens: at most this many tokens are generated.
            temperature: 0 picks the most likely token (greedy); > 0 samples from ``softmax(logits / T)``.
            seed: makes sampling repeatable.
            chat: wrap a text prompt in the file's chat template as one user message.
            stop_at_end: stop after an end-of-generation token (it is included in the result).
        Raises:
            ModelError: prompt plus ``max_new_tokens`` would not fit the context (no silent truncation),
                ``max_new_tokens`` or ``temperature`` is negative, an id is outside the vocabulary,
                or ``chat=True`` with a prompt given as ids.
        """
        return list(
            self.stream(prompt, max_new_tokens, temperature, seed, chat=chat, stop_at_end=stop_at_end)
        )

    def perplexity(self, text: str, *, window: int | None = None) -> PerplexityResult:
        """Perplexity of ``text``: ``exp`` of the mean negative log-likelihood of each next token.

        The tokens are scored in consecutive windows of ``window`` tokens (default
        ``PERPLEXITY_WINDOW`` or the context length if shorter), each from an empty cache, as
        llama.cpp's ``llama-perplexity`` scores chunks of ``n_ctx``. Inside a window the tokens go
        through the KV cache ``SCORE_TOKENS`` at a time and only that slice's logits
        ``(SCORE_TOKENS, vocab)`` exist at once, so peak memory is set by the window, never by
        the length of the text (SmolLM2-135M, float32: about 1.1 GB whatever the text).
        """
        ids = self.tokenizer.encode(text, add_special=True)
        window = min(PERPLEXITY_WINDOW, self.config.context_length) if window is None else window
        if len(ids) < 2:
            raise ModelError(f"perplexity needs at least 2 tokens; the text gave {len(ids)}")
        if not (isinstance(window, int) and 2 <= window <= self.config.context_length):
            raise ModelError(
                f"window={window!r}; give a whole number of tokens from 2 to the context length "
                f"{self.config.context_length}"
            )
        nll_sum, n_scored = 0.0, 0
        for start in range(0, len(ids), window):
            chunk = ids[start : start + window]
            if len(chunk) < 2:
                break
            nll_sum += self._summed_nll(chunk)
            n_scored += len(chunk) - 1
        mean_nll = nll_sum / n_scored
        return PerplexityResult(len(ids), n_scored, mean_nll, float(torch.tensor(mean_nll).exp()))

    def _summed_nll(self, ids: list[int]) -> float:
        """Sum of ``-log p(ids[t+1] | ids[:t+1])``, the tokens fed ``SCORE_TOKENS`` at a time."""
        cache, total = self.new_cache(), 0.0
        for start in range(0, len(ids) - 1, SCORE_TOKENS):
            piece = ids[start : min(start + SCORE_TOKENS, len(ids) - 1)]
            targets = torch.tensor(ids[start + 1 : start + 1 + len(piece)])
            logits = self.forward(piece, cache)[0]  # (t, vocab)
            total += summed_nll(logits, targets)
        return total


@torch.inference_mode()
def summed_nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """``sum_t -log softmax(logits[t])[targets[t]]``, computed in place in ``logits`` (which it overwrites).

    ``-log p = logsumexp(row) - row[target]``, with the row's maximum taken out before ``exp`` so
    nothing overflows (the log-sum-exp trick). Working in place means no second ``(t, vocab)``
    array is allocated (``F.cross_entropy`` makes one): 29 MB for 150 tokens of a 49k vocabulary.
    """
    picked = logits.gather(1, targets[:, None]).squeeze(1)  # (t,) the target's logit
    top = logits.amax(dim=1, keepdim=True)  # (t, 1)
    log_sum = logits.sub_(top).exp_().sum(dim=1).log_() + top.squeeze(1)  # (t,) logsumexp of each row
    return float((log_sum - picked).double().sum())


def lab_text() -> str:
    """The short text written for this lab (``labkit/data/lab_text.txt``), the default perplexity text."""
    from importlib.resources import files

    return files("labkit").joinpath("data/lab_text.txt").read_text(encoding="utf-8")
