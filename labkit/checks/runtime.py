"""Automatic checks for the exercise of notebook 05 (the runtime): the KV cache's size from metadata.

``check_kv_cache_size(kv_bytes)`` calls a student's function
``kv_bytes(metadata, context_length, batch, bytes_per_element) -> int`` on the default model's
metadata and on variants that catch the usual slips (query heads instead of KV heads, a missing
factor 2 for K *and* V, a missing ``head_count_kv`` key, which means "same as ``head_count``").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from labkit.checks import CheckResult, NotYet, attempt, verdict
from labkit.runtime.kvcache import kv_cache_size_bytes

KV_KEYS = (
    "llama.block_count",
    "llama.embedding_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
)


def expected_kv_bytes(
    metadata: Mapping[str, Any], context_length: int, batch: int, bytes_per_element: int
) -> int:
    """The reference answer, read from ``llama.*`` keys."""
    n_heads = int(metadata["llama.attention.head_count"])
    return kv_cache_size_bytes(
        n_layers=int(metadata["llama.block_count"]),
        n_kv_heads=int(metadata.get("llama.attention.head_count_kv", n_heads)),
        head_dim=int(metadata["llama.embedding_length"]) // n_heads,
        context_length=context_length,
        batch=batch,
        bytes_per_element=bytes_per_element,
    )


def kv_cases(metadata: Mapping[str, Any]) -> list[tuple[str, dict[str, Any], int, int, int]]:
    """``(label, metadata, context_length, batch, bytes_per_element)`` for every case the check runs."""
    base = {key: metadata[key] for key in KV_KEYS if key in metadata}
    llama2_7b = {"llama.block_count": 32, "llama.embedding_length": 4096, "llama.attention.head_count": 32}
    llama3_8b = {**llama2_7b, "llama.attention.head_count_kv": 8}
    return [
        ("the default model, 8192 tokens, float16", base, 8192, 1, 2),
        ("the default model, 100 tokens, batch 4, float32", base, 100, 4, 4),
        ("Llama-2-7B shape, no head_count_kv key (every head has its own K and V)", llama2_7b, 4096, 1, 2),
        ("Llama-3-8B shape (8 KV heads shared by 32 query heads), batch 2", llama3_8b, 8192, 2, 2),
    ]


def _hint(got: int, want: int) -> str:
    if got * 2 == want:
        return "half the answer: a cache holds K *and* V"
    if want and got % want == 0:
        return f"{got // want}x too big: use head_count_kv, not head_count, for the cache"
    return "2 (K and V) x layers x batch x context x KV heads x head_dim x bytes per element"


def check_kv_cache_size(
    kv_bytes: Callable[[Mapping[str, Any], int, int, int], int], metadata: Mapping[str, Any] | None = None
) -> CheckResult:
    """Check a function that computes a KV cache's size from GGUF metadata.

    Args:
        kv_bytes: ``kv_bytes(metadata, context_length, batch, bytes_per_element) -> int``.
        metadata: the default model's metadata (read from the file when not given).
    Returns:
        A ``CheckResult``: passed when every case is right; otherwise it names the first wrong
        case and the expected bytes, with a hint.
    """
    if metadata is None:
        from labkit import gguf
        from labkit.modelfiles import default_model_path

        with gguf.open(default_model_path()) as f:
            metadata = {key: f.metadata[key] for key in KV_KEYS if key in f.metadata}
    cases = kv_cases(metadata)

    def run() -> str:
        for label, meta, context_length, batch, element_bytes in cases:
            want = expected_kv_bytes(meta, context_length, batch, element_bytes)
            try:
                got = attempt(kv_bytes, dict(meta), context_length, batch, element_bytes, case=label)
            except NotYet as error:
                if "KeyError" in error.message:
                    error.hint = (
                        "a file may leave out llama.attention.head_count_kv: then it equals head_count"
                    )
                raise
            if got != want:
                raise NotYet(f"{label}: expected {want:,} bytes, got {got!r}", _hint(_as_int(got), want))
        return f"all {len(cases)} KV cache sizes right"

    return verdict(run, n_cases=len(cases))


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0
