"""Automatic check for the exercise of notebook 04 (loading): the bytes a partial load reads.

``check_partial_bytes(predict)`` calls a student's function
``predict(table, layers) -> int`` on tensor tables (lists of ``labkit.loading.TensorSpan``) and
compares it with the reference: the bytes of every tensor in one of ``layers`` plus the bytes of
every tensor outside all layers (embeddings, final norm, output head), which a partial load
reads too. The cases catch the usual slips: forgetting the shared tensors, counting elements
instead of bytes, and matching ``layers.1`` inside ``layers.10``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod
from pathlib import Path

from labkit.checks import CheckResult, NotYet, attempt, verdict
from labkit.loading.table import TensorSpan, tensor_table


def expected_partial_bytes(table: Sequence[TensorSpan], layers: Sequence[int]) -> int:
    """The reference answer: bytes of the tensors in ``layers`` and of those outside every layer."""
    wanted = set(layers)
    return sum(span.n_bytes for span in table if span.layer is None or span.layer in wanted)


def _hand_made_table() -> list[TensorSpan]:
    """Hugging Face names, eleven layers: ``layers.1.`` must not match ``layers.10.``."""
    spans, offset = [TensorSpan("model.embed_tokens.weight", "BF16", (1000, 64), 0, 128_000)], 128_000
    for layer in range(11):
        for part, shape in [("self_attn.q_proj.weight", (64, 64)), ("mlp.up_proj.weight", (256, 64))]:
            n_bytes = 2 * prod(shape)
            spans.append(TensorSpan(f"model.layers.{layer}.{part}", "BF16", shape, offset, n_bytes))
            offset += n_bytes
    spans.append(TensorSpan("lm_head.weight", "BF16", (1000, 64), offset, 128_000))
    return spans


def partial_cases(path: str | Path | None = None) -> list[tuple[str, list[TensorSpan], list[int]]]:
    """``(label, table, layers)`` for every case; the first two use the default model's table."""
    if path is None:
        from labkit.modelfiles import default_model_path

        path = default_model_path()
    model, hand_made = tensor_table(path), _hand_made_table()
    return [
        (f"{Path(path).name}, layers 0-3", model, [0, 1, 2, 3]),
        (f"{Path(path).name}, the last layer only", model, [max(s.layer or 0 for s in model)]),
        ("Hugging Face names, layer 1 (not 10)", hand_made, [1]),
        ("Hugging Face names, no layers at all", hand_made, []),
    ]


def _hint(got: object, want: int, table: Sequence[TensorSpan], layers: Sequence[int]) -> str:
    shared = sum(s.n_bytes for s in table if s.layer is None)
    elements = sum(prod(s.shape) for s in table if s.layer is None or s.layer in set(layers))
    if not isinstance(got, int):
        return f"return a whole number of bytes (an int), not {type(got).__name__}"
    if got == want - shared:
        return "short by exactly the tensors outside every layer: a partial load reads the embeddings too"
    if got == elements:
        return "that counts elements; a table row's n_bytes already holds the bytes as stored"
    if got > want:
        return "too many bytes: use span.layer (a number) rather than looking for a substring in the name"
    return "add n_bytes of each span whose layer is in `layers` or is None"


def check_partial_bytes(
    predict: Callable[[list[TensorSpan], list[int]], int], path: str | Path | None = None
) -> CheckResult:
    """Check a prediction of the bytes a partial load reads.

    Args:
        predict: ``predict(table, layers) -> int``; ``table`` is a list of ``TensorSpan``.
        path: a GGUF file for the first two cases (default: the default model).

    Returns:
        A ``CheckResult``: passed when every case is right; otherwise the first wrong case,
        the expected bytes and a hint.
    """
    cases = partial_cases(path)

    def run() -> str:
        for label, table, layers in cases:
            got = attempt(predict, list(table), list(layers), case=label)
            want = expected_partial_bytes(table, layers)
            if not isinstance(got, int) or got != want:
                raise NotYet(
                    f"{label}: expected {want:,} bytes, got {got!r}", _hint(got, want, table, layers)
                )
        return f"all {len(cases)} tables right: a partial load's bytes follow from the tensor table alone"

    return verdict(run, n_cases=len(cases))
