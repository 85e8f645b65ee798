"""How fast a model decodes (measured), beside the weight bytes each token reads (counted).

``time_decode(model, ids, n_tokens)`` times greedy decoding at batch 1 with a KV cache;
``DecodeTiming.bound_tokens_per_s`` turns a RAM read bandwidth into the memory-bandwidth
bound: a token cannot be faster than the time it takes to read every weight once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from labkit.errors import ModelError
from labkit.runtime.model import Model


@dataclass(frozen=True)
class DecodeTiming:
    """How fast a model decoded (measured), beside the weight bytes each token read (counted).

    Attributes:
        n_tokens: decode steps timed, at batch 1 (after the prompt and one untimed warm-up step).
        elapsed_s: wall time of those steps (measured).
        weight_bytes_per_token: bytes of resident weights one step reads (counted).
    """

    n_tokens: int
    elapsed_s: float
    weight_bytes_per_token: int

    @property
    def tokens_per_s(self) -> float:
        """Decode speed (measured): ``n_tokens / elapsed_s``."""
        return self.n_tokens / self.elapsed_s

    def bound_tokens_per_s(self, read_gb_per_s: float) -> float:
        """The memory-bandwidth bound (modelled): ``read_gb_per_s`` / weight bytes per token.

        Args:
            read_gb_per_s: RAM read bandwidth, e.g. a ``labkit.hierarchy.probe.measure_ram_read`` row's ``gb_per_s``.
        """
        return read_gb_per_s * 1e9 / self.weight_bytes_per_token


def time_decode(model: Model, prompt_ids: Sequence[int], n_tokens: int) -> DecodeTiming:
    """Time ``n_tokens`` greedy decode steps at batch 1 with a KV cache.

    The prompt and one more step (allocations, thread start-up) run first, untimed; then each
    timed step feeds the previous step's most likely token back in, as ``Model.generate`` does.

    Args:
        model: a loaded ``labkit.runtime.model.Model``.
        prompt_ids: the prompt's token ids.
        n_tokens: decode steps to time.
    Returns:
        A ``DecodeTiming``.
    Raises:
        ModelError: ``n_tokens`` is below 1, or the prompt plus ``n_tokens + 1`` steps pass the context.
    """
    if n_tokens < 1:
        raise ModelError(f"n_tokens={n_tokens}; time at least 1 decode step")
    cache = model.new_cache()
    token = int(model.forward(prompt_ids, cache)[0, -1].argmax())
    token = int(model.forward([token], cache)[0, -1].argmax())  # warm-up step, not timed
    start_s = time.perf_counter()
    for _ in range(n_tokens):
        token = int(model.forward([token], cache)[0, -1].argmax())
    return DecodeTiming(n_tokens, time.perf_counter() - start_s, model.weight_bytes_per_token)


def bound_reading(fraction: float) -> str:
    """What a measured share of the bandwidth bound says about where decode time goes.

    Args:
        fraction: measured tokens/s divided by the modelled bound (``DecodeTiming.bound_tokens_per_s``).
    Returns:
        One sentence: bandwidth-bound (>= 70%), partly (35-70%), or compute-/overhead-bound (< 35%).
    """
    if fraction >= 0.7:
        return (
            "bandwidth-bound: the weights stream near the measured read rate, so fewer bytes would be faster"
        )
    if fraction >= 0.35:
        return "partly bandwidth-bound: streaming the weights is a large share, compute and overhead the rest"
    return (
        "compute- or overhead-bound: far below the read rate, so fewer bytes alone would not make it faster; "
        "the arithmetic and the per-operation overhead set the pace"
    )
