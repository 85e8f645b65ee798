"""The "legacy" block formats: one scale (and maybe a minimum) per 32 weights.

Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 are ggml's oldest quantizers. Each block of
32 float32 weights becomes one fp16 scale ``d`` (plus an fp16 minimum ``m``
for the ``_1`` types) and 32 small integers. They are ports of
``quantize_row_q*_ref`` in ggml's ``src/ggml-quants.c``: same float32
arithmetic, same rounding rule, same byte layout (see ``labkit.quant.rounding``).

Every kernel here works on a batch of blocks and fills a given output:

    quantize_*(blocks, out):   (n_blocks, 32) float32  ->  out (n_blocks, type_size) uint8
    dequantize_*(blocks, out): (n_blocks, type_size) uint8  ->  out (n_blocks, 32) float32

Nibble order (a classic bug): byte ``qs[j]`` holds weight ``j`` in its low
four bits and weight ``j + 16`` in its high four bits.
"""

from __future__ import annotations

import torch

from labkit.quant.rounding import divide_by, divide_into, fp16_bits, read_fp16, roundf_to_int8

QK = 32  # weights per legacy block
_BIT_INDEX = torch.arange(32, dtype=torch.int32)

# --- shared pieces ------------------------------------------------------------
#
# C scans each block with ``if (v > max) max = v``-style loops. ``amax``/``amin``
# give the same values (and are much faster than ``argmax``); only the *sign
# of a zero* and the *first* of two equal extremes depend on the scan order,
# and those rare blocks are fixed up separately.


def _first_index(blocks: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Index of the first weight equal to ``value`` in each block (B, 32) -> (B,)."""
    return (blocks == value.unsqueeze(1)).to(torch.uint8).argmax(dim=1)


def _signed_absmax(blocks: torch.Tensor) -> torch.Tensor:
    """The weight of largest magnitude, with its sign: C's ``max`` in Q4_0/Q5_0.

    C keeps the *first* weight whose ``fabsf`` beats the running maximum,
    starting from 0.0f: if ``+a`` and ``-a`` both occur, the earlier one
    wins, and an all-zero block keeps ``+0.0``.
    """
    hi, lo = blocks.amax(dim=1), blocks.amin(dim=1)
    signed = torch.where(hi >= -lo, hi, lo) + 0.0  # (B,); + 0.0 turns -0.0 into +0.0
    tie = (hi == -lo) & (hi > 0)
    if bool(tie.any()):
        rows = tie.nonzero().squeeze(1)
        negative_first = _first_index(blocks[rows], lo[rows]) < _first_index(blocks[rows], hi[rows])
        signed[rows] = torch.where(negative_first, lo[rows], hi[rows])
    return signed


def _first_min_max(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """C's running ``min``/``max`` (``if (v < min) min = v``): the first occurrence wins.

    It matters only for the sign of a zero minimum, which is stored in ``m``:
    C keeps the first zero it meets, ``+0.0`` or ``-0.0``.
    """
    lo, hi = blocks.amin(dim=1), blocks.amax(dim=1)
    zero_min = lo == 0
    if bool(zero_min.any()):
        rows = zero_min.nonzero().squeeze(1)
        first = _first_index(blocks[rows], lo[rows]).unsqueeze(1)
        lo[rows] = blocks[rows].gather(1, first).squeeze(1)
    return lo, hi


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """C's ``id = d ? 1.0f/d : 0.0f``."""
    return torch.where(d != 0, divide_into(1.0, d), 0.0)


def _pack_nibbles(q: torch.Tensor, out: torch.Tensor) -> None:
    """(B, 32) values 0..15 -> out (B, 16): weight j in the low nibble, weight j+16 in the high one."""
    torch.bitwise_or(q[:, :16], q[:, 16:] << 4, out=out)


def _pack_high_bits(q: torch.Tensor, out: torch.Tensor) -> None:
    """Bit 4 of each of 32 values -> out ``qh[4]``: a little-endian uint32, bit j = weight j's."""
    bits = (q >> 4).to(torch.int32) << _BIT_INDEX.to(q.device)  # (B, 32): bit j at position j
    out.copy_(bits.sum(dim=1, dtype=torch.int32).view(torch.uint8).reshape(-1, 4))  # distinct bits: sum = OR


def _unpack_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(B, 16) bytes -> (B, 32) values 0..15 (inverse of ``_pack_nibbles``)."""
    qs = qs.contiguous()
    return torch.cat([qs & 0x0F, qs >> 4], dim=1)


def _unpack_high_bits(qh: torch.Tensor) -> torch.Tensor:
    """``qh[4]`` -> (B, 32) values 0 or 16: bit 4 of each weight."""
    word = qh.contiguous().view(torch.int32)  # (B, 1) little-endian uint32
    return (((word >> _BIT_INDEX.to(qh.device)) & 1) << 4).to(torch.uint8)


def _scale_into(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, out: torch.Tensor) -> None:
    """out = d * q (+ m): the float32 arithmetic of ggml's and gguf-py's dequantizers."""
    torch.mul(q.to(torch.float32), d.unsqueeze(1), out=out)
    if m is not None:
        out += m.unsqueeze(1)


# --- Q8_0 ---------------------------------------------------------------------


def quantize_q8_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q8_0: 32 weights -> 34 bytes, ``x = d * q``.

    Byte layout::

        0     2                                   34
        | d  | qs[0] qs[1] ...           qs[31] |
        fp16   int8 each, weight j in qs[j]

    ``d = max|x| / 127``, ``q = roundf(x / d)`` (ties away from zero).
    """
    amax = torch.maximum(blocks.amax(dim=1), -blocks.amin(dim=1)) + 0.0  # (B,) max |x|, never -0.0
    d = divide_by(amax, 127)
    out[:, 0:2] = fp16_bits(d)
    out[:, 2:] = roundf_to_int8(blocks * _inverse(d).unsqueeze(1)).view(torch.uint8)


def dequantize_q8_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q8_0 bytes -> weights: ``d * qs[j]``."""
    _scale_into(blocks[:, 2:].view(torch.int8), read_fp16(blocks[:, 0:2]), None, out)


# --- Q4_0 and Q5_0: symmetric, offset integers ---------------------------------


def _quantize_symmetric(blocks: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared core of Q4_0 (16 levels) and Q5_0 (32 levels).

    ``d = max / -(levels/2)`` maps the signed extreme to level 0, so the
    extreme gets the extra negative step. ``q = (int8)(x/d + levels/2 + 0.5)``
    truncates (not rounds), capped at ``levels - 1``.
    """
    half = levels // 2
    d = divide_by(_signed_absmax(blocks), -half)  # (B,)  (an all-zero block gets d = -0.0)
    scaled = blocks * _inverse(d).unsqueeze(1)
    scaled += half + 0.5
    q = scaled.to(torch.int8).clamp_(max=levels - 1).view(torch.uint8)  # C: MIN(levels-1, (int8_t)...)
    return d, q


def quantize_q4_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q4_0: 32 weights -> 18 bytes, ``x = d * (q - 8)``.

    Byte layout::

        0     2                          18
        | d  | qs[16]: low nibble = weight j, high nibble = weight j+16 |
        fp16
    """
    d, q = _quantize_symmetric(blocks, 16)
    out[:, 0:2] = fp16_bits(d)
    _pack_nibbles(q, out[:, 2:])


def dequantize_q4_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q4_0 bytes -> weights: ``d * (q - 8)``."""
    q = _unpack_nibbles(blocks[:, 2:]).view(torch.int8) - 8  # (B, 32) in -8..7
    _scale_into(q, read_fp16(blocks[:, 0:2]), None, out)


def quantize_q5_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q5_0: 32 weights -> 22 bytes, ``x = d * (q - 16)``.

    Byte layout::

        0     2       6                  22
        | d  | qh[4] | qs[16] |
        fp16   bit j of the little-endian uint32 = bit 4 of weight j
                        low nibble = low 4 bits of weight j, high = of weight j+16
    """
    d, q = _quantize_symmetric(blocks, 32)
    out[:, 0:2] = fp16_bits(d)
    _pack_high_bits(q, out[:, 2:6])
    _pack_nibbles(q & 0x0F, out[:, 6:])


def dequantize_q5_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q5_0 bytes -> weights: ``d * (q - 16)``."""
    q = _unpack_nibbles(blocks[:, 6:]) | _unpack_high_bits(blocks[:, 2:6])
    _scale_into(q.view(torch.int8) - 16, read_fp16(blocks[:, 0:2]), None, out)


# --- Q4_1 and Q5_1: scale and minimum ------------------------------------------


def _quantize_affine(blocks: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shared core of Q4_1 and Q5_1: ``d = (max - min) / (levels - 1)``, ``q = trunc((x - min)/d + 0.5)``."""
    lo, hi = _first_min_max(blocks)
    d = divide_by((hi - lo) + 0.0, levels - 1)  # (B,); C's max - min is never -0.0
    scaled = blocks - lo.unsqueeze(1)
    scaled *= _inverse(d).unsqueeze(1)
    scaled += 0.5
    if levels == 16:  # Q4_1 caps with MIN(15, (int8_t)...)
        q = scaled.to(torch.int8).clamp_(max=15).view(torch.uint8)
    else:  # Q5_1 casts straight to uint8_t (no cap)
        q = scaled.to(torch.int32).to(torch.uint8)
    return d, lo, q


def quantize_q4_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q4_1: 32 weights -> 20 bytes, ``x = d * q + m``.

    Byte layout::

        0     2     4                    20
        | d  | m  | qs[16]: weight j low nibble, weight j+16 high nibble |
        fp16  fp16 (m = the block's minimum)
    """
    d, m, q = _quantize_affine(blocks, 16)
    out[:, 0:2] = fp16_bits(d)
    out[:, 2:4] = fp16_bits(m)
    _pack_nibbles(q, out[:, 4:])


def dequantize_q4_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q4_1 bytes -> weights: ``d * q + m``."""
    _scale_into(_unpack_nibbles(blocks[:, 4:]), read_fp16(blocks[:, 0:2]), read_fp16(blocks[:, 2:4]), out)


def quantize_q5_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q5_1: 32 weights -> 24 bytes, ``x = d * q + m``.

    Byte layout::

        0     2     4       8            24
        | d  | m  | qh[4] | qs[16] |
        fp16  fp16  bit 4 of each weight (as in Q5_0), then low nibbles
    """
    d, m, q = _quantize_affine(blocks, 32)
    out[:, 0:2] = fp16_bits(d)
    out[:, 2:4] = fp16_bits(m)
    _pack_high_bits(q, out[:, 4:8])
    _pack_nibbles(q & 0x0F, out[:, 8:])


def dequantize_q5_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q5_1 bytes -> weights: ``d * q + m``."""
    q = _unpack_nibbles(blocks[:, 8:]) | _unpack_high_bits(blocks[:, 4:8])
    _scale_into(q, read_fp16(blocks[:, 0:2]), read_fp16(blocks[:, 2:4]), out)
