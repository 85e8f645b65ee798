"""Activations move too: llama.cpp rounds them to 8-bit blocks before each quantized matmul.

llama.cpp's CPU backend never multiplies float activations by quantized weights. For each
weight type, ggml names the type its input is converted to first, the type's ``vec_dot_type``
(``type_traits_cpu`` in ggml's ``src/ggml-cpu/ggml-cpu.c``), and then takes integer dot products
block by block::

    Q4_0, Q5_0, Q8_0 weights  ->  Q8_0 activations: 32 int8 + fp16 scale d              (34 bytes)
    Q4_1, Q5_1 weights        ->  Q8_1 activations: 32 int8 + fp16 d + fp16 s = d*sum(q) (36 bytes)
    K-quant weights           ->  Q8_K activations: 256 int8 + float32 d + 16 int16 sums (292 bytes)
    F16 (the KV cache)        ->  F16 activations

A Q4_1 row times a Q8_1 activation block is then ``d_w*d_a*sum(q_w*q_a) + m_w*s_a``: the
block's minimum ``m_w`` meets the *stored* sum ``s_a``, itself rounded to fp16.

``round_activations(x, "Q8_1")`` gives ``x`` as those integer dot products see it, as floats
(``d_a * q_a``, exact in float32), plus for Q8_1 the per-block difference between ``s_a`` and
``d_a * sum(q_a)``; ``activation_bytes`` counts what the rounded activations weigh. A float matmul
of the rounded values is llama.cpp's product only up to the order of its additions, and that is
not enough to follow llama.cpp over a whole model: ``labkit.runtime.ggml_cpu`` reproduces the
order too, and every other operation (``load(..., activations="q8")``).

The rounding follows the x86 (AVX) kernels of ``ggml-cpu/arch/x86/quants.c``: ``id = 127/amax``,
``q = round-to-nearest-even(x * id)``, ``d = amax/127`` (the portable ``_ref`` versions round ties
away from zero and multiply by ``1/d``; the two differ on rare ties by one step). Q8_K follows
``quantize_row_q8_K_ref`` (signed extreme, ``iscale = -127/max``, float32 ``d``).
"""

from __future__ import annotations

import torch

from labkit.errors import ModelError
from labkit.quant.rounding import constant, divide_by, divide_into, fp16_round, nearest_int

# ggml-cpu's type_traits_cpu[weight type].vec_dot_type: what the activations are rounded to.
VEC_DOT_TYPE = {
    "F32": "F32",
    "F16": "F16",
    "BF16": "BF16",
    "Q4_0": "Q8_0",
    "Q5_0": "Q8_0",
    "Q8_0": "Q8_0",
    "Q4_1": "Q8_1",
    "Q5_1": "Q8_1",
    "Q2_K": "Q8_K",
    "Q3_K": "Q8_K",
    "Q4_K": "Q8_K",
    "Q5_K": "Q8_K",
    "Q6_K": "Q8_K",
}
# (values per block, bytes per block) of each activation type, as a visible sum.
ACTIVATION_BLOCKS = {
    "Q8_0": (32, 2 + 32),  # d, qs
    "Q8_1": (32, 2 + 2 + 32),  # d, s, qs
    "Q8_K": (256, 4 + 256 + 2 * 16),  # d (float32), qs, bsums (int16 per 16 values)
    "F16": (1, 2),
    "BF16": (1, 2),
    "F32": (1, 4),
}


def vec_dot_type(weight_type: str) -> str:
    """The type llama.cpp's CPU backend rounds activations to before a matmul with ``weight_type``."""
    if weight_type not in VEC_DOT_TYPE:
        raise ModelError(
            f"weight type {weight_type!r} has no known activation type; activations='q8' supports "
            f"{sorted(VEC_DOT_TYPE)}: load with activations='float'"
        )
    return VEC_DOT_TYPE[weight_type]


def activation_bytes(n_values: int, activation_type: str) -> int:
    """Bytes ``n_values`` activations take once rounded to ``activation_type`` (whole blocks)."""
    per_block, block_bytes = ACTIVATION_BLOCKS[activation_type]
    return -(-n_values // per_block) * block_bytes


def q8_blocks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x86 ``quantize_row_q8_0``/``_q8_1``: blocks ``(N, 32)`` -> (q as float, d as float32, d as fp16)."""
    amax = x.abs().amax(dim=1, keepdim=True)  # (N, 1)
    inverse = torch.where(amax != 0, divide_into(127.0, amax), constant(0.0, amax))  # id = 127/amax
    q = torch.round(x * inverse)  # round half to even, as _mm256_round_ps(_MM_ROUND_NEAREST)
    d = divide_by(amax, 127.0)
    return q, d, fp16_round(d)


def _q8_k_blocks(x: torch.Tensor) -> torch.Tensor:
    """``quantize_row_q8_K_ref`` on blocks ``(N, 256)``, returned as ``d * q`` floats."""
    hi, lo = x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)
    extreme = torch.where(hi >= -lo, hi, lo)  # the value of largest magnitude, with its sign
    iscale = torch.where(extreme != 0, divide_into(-127.0, extreme), constant(0.0, extreme))
    q = nearest_int(iscale * x).clamp(max=127).to(torch.float32)
    d = torch.where(iscale != 0, divide_into(1.0, iscale), constant(0.0, iscale))
    return q * d


def round_activations(x: torch.Tensor, activation_type: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x`` as llama.cpp's dot products see it after rounding to ``activation_type``.

    Args:
        x: float32 ``(..., n)``; ``n`` a multiple of the type's block size.
        activation_type: ``"Q8_0"``, ``"Q8_1"``, ``"Q8_K"``, ``"F16"``, ``"BF16"`` or ``"F32"``.
    Returns:
        ``(values, sum_error)``: float32 values of ``x``'s shape; for Q8_1, ``sum_error`` is
        ``s - d*sum(q)`` per block, float32 ``(..., n / 32)`` (the stored fp16 sum minus the sum the
        values add up to); ``None`` for the other types.
    """
    if activation_type == "F32":
        return x, None
    if activation_type in ("F16", "BF16"):
        narrow = torch.float16 if activation_type == "F16" else torch.bfloat16
        return x.to(narrow).to(torch.float32), None
    per_block = ACTIVATION_BLOCKS[activation_type][0]
    blocks = x.reshape(-1, per_block)  # (N, block)
    if activation_type == "Q8_K":
        return _q8_k_blocks(blocks).view(x.shape), None
    q, d, d16 = q8_blocks(blocks)
    values = (q * d16).view(x.shape)
    if activation_type == "Q8_0":
        return values, None
    q_sum = q.sum(dim=1, keepdim=True)  # exact: at most 32 * 127
    s16 = fp16_round(d * q_sum)  # Q8_1's s, from the float32 d, stored as fp16
    return values, (s16 - d16 * q_sum).view(*x.shape[:-1], -1)
