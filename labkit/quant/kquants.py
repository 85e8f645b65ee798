"""K-quants: super-blocks of 256 weights with quantized per-sub-block scales.

A K-quant block splits 256 weights into sub-blocks of 16 or 32. Each
sub-block gets its own scale (and for Q2_K/Q4_K/Q5_K its own minimum), found
by a search (``labkit.quant.search``). Those scales are themselves quantized
to 4, 6 or 8 bits against one fp16 super-scale ``d`` (and ``dmin``), and the
weights are then re-rounded with the scales as they will be decoded. Ports of
``quantize_row_q{2..6}_K_ref`` in ggml's ``src/ggml-quants.c``.

    quantize_*(blocks, out):   (n_blocks, 256) float32  ->  out (n_blocks, type_size) uint8
    dequantize_*(blocks, out): (n_blocks, type_size) uint8  ->  out (n_blocks, 256) float32
"""

from __future__ import annotations

import torch

from labkit.formats import QK_K
from labkit.quant.rounding import (
    divide_by,
    divide_into,
    fp16_bits,
    fp16_round,
    nearest_int,
    read_fp16,
    sequential_sum,
    sqrtf,
)
from labkit.quant.search import GROUP_MAX_EPS, make_q3_quants, make_qkx2_quants, make_qx_quants, signed_absmax

_SHIFTS_2BIT = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
_SHIFTS_1BIT = torch.arange(8, dtype=torch.uint8)


# --- shared pieces ------------------------------------------------------------


def _columns(blocks: torch.Tensor, sub_size: int) -> torch.Tensor:
    """(B, 256) -> (sub_size, B * 256/sub_size): element index first (see ``search``)."""
    return blocks.reshape(-1, sub_size).T.contiguous()  # (sub_size, S)


def _rows(levels: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_columns``: (sub_size, S) -> (B, 256/sub_size, sub_size).

    A strided view, no copy: ``_requantize`` reads only the few sub-blocks it
    falls back on.
    """
    sub_size = levels.shape[0]
    return levels.T.reshape(-1, QK_K // sub_size, sub_size)  # (B, k, sub_size)


def _positive_max(values: torch.Tensor) -> torch.Tensor:
    """C's ``max = 0; if (v > max) max = v`` over each block's sub-blocks: (B, k) -> (B,).

    (Not ``clamp(min=0)``: that would keep a ``-0.0``, whose sign bit C never stores.)
    """
    largest = values.amax(dim=1)
    return torch.where(largest > 0, largest, 0.0)


def _as_uint8(values: torch.Tensor) -> torch.Tensor:
    """C's assignment of an int to a ``uint8_t``: keep the low 8 bits."""
    return (values & 0xFF).to(torch.uint8)


def _requantize(
    x: torch.Tensor, d_sub: torch.Tensor, dm_sub: torch.Tensor | None, lo: int, hi: int, levels: torch.Tensor
) -> torch.Tensor:
    """Round each weight again with the scales it will be decoded with.

    ``q = clamp(round((x + dm) / d), lo, hi)`` where ``d``, ``dm`` are the
    sub-block's quantized scale and min, returned as stored: ``q - lo``, in
    ``0..hi-lo``. Sub-blocks whose scale rounded to 0 keep the (stored)
    levels of the search (C: ``if (!d) continue;``).
    x: (B, k, sub) float32, d_sub/dm_sub: (B, k), levels: (B, k, sub) int32.
    """
    shifted = x if dm_sub is None else x + dm_sub.unsqueeze(2)
    new = nearest_int(shifted / d_sub.unsqueeze(2)).clamp_(lo, hi)
    if lo:
        new -= lo
    skipped = d_sub == 0  # (B, k): usually none, so copy just those (a where over all is slower)
    new[skipped] = levels[skipped]
    return new


def _pack_2bit(levels: torch.Tensor) -> torch.Tensor:
    """(B, 256) values 0..3 -> qs[64]: byte 32h + l holds weights 128h + l + 32k at bits 2k."""
    q = levels.to(torch.uint8).reshape(-1, 2, 4, 32)  # (B, h, k, l)
    packed = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)  # (B, h, l)
    return packed.reshape(-1, 64)  # (B, 64); ORing four slices is faster than a uint8 sum over k


def _unpack_2bit(qs: torch.Tensor) -> torch.Tensor:
    """qs[64] -> (B, 256) values 0..3 (inverse of ``_pack_2bit``)."""
    q = qs.reshape(-1, 2, 1, 32) >> _SHIFTS_2BIT.to(qs.device).view(1, 1, 4, 1)
    return (q & 3).reshape(-1, QK_K)


def _pack_bits(high: torch.Tensor) -> torch.Tensor:
    """(B, 8, 32) bits -> 32 bytes: byte j bit k = high[k, j]."""
    q = high.to(torch.uint8)
    packed = q[:, 0].clone()  # (B, 32); ORing the 8 rows is faster than a uint8 sum over them
    for k in range(1, 8):
        packed |= q[:, k] << k
    return packed


def _unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    """32 bytes -> (B, 8, 32) bits (inverse of ``_pack_bits``)."""
    return (packed.unsqueeze(1) >> _SHIFTS_1BIT.to(packed.device).view(1, 8, 1)) & 1


# --- Q2_K ---------------------------------------------------------------------


def quantize_q2_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q2_K: 256 weights -> 84 bytes, ``x = d*sc * q - dmin*m`` per sub-block of 16.

    Byte layout::

        0            16                        80    82     84
        | scales[16] | qs[64]                  | d   | dmin |
          low nibble = 4-bit scale sc, high nibble = 4-bit min m, per sub-block
                       2-bit levels: byte 32h+l, bits 2k = weight 128h + 32k + l
    """
    # 1. search each sub-block's scale and min (weights |x|: big weights matter more)
    x = _columns(blocks, 16)  # (16, S)
    scales, mins, levels = make_qkx2_quants(x, x.abs(), 3, -0.5, 0.1, 15, use_mad=True)
    scales, mins = scales.reshape(-1, 16), mins.reshape(-1, 16)  # (B, 16)
    # 2. quantize the 16 scales and 16 mins to 4 bits against d = max/15, dmin = max_min/15
    max_scale, max_min = _positive_max(scales), _positive_max(mins)
    sc = torch.where(
        (max_scale > 0).unsqueeze(1), nearest_int(divide_into(15.0, max_scale).unsqueeze(1) * scales), 0
    )
    m = nearest_int(divide_into(15.0, max_min).unsqueeze(1) * mins)
    packed = torch.where((max_min > 0).unsqueeze(1), _as_uint8(sc | (m << 4)), _as_uint8(sc))  # (B, 16)
    d = torch.where(max_scale > 0, divide_by(max_scale, 15), 0.0)
    dmin = torch.where(max_min > 0, divide_by(max_min, 15), 0.0)
    # 3. re-round every weight with the scales as the decoder will see them, 4. pack
    d_sub = fp16_round(d).unsqueeze(1) * (packed & 0xF).float()
    dm_sub = fp16_round(dmin).unsqueeze(1) * (packed >> 4).float()
    levels = _requantize(blocks.reshape(-1, 16, 16), d_sub, dm_sub, 0, 3, _rows(levels))
    out[:, 0:16] = packed
    out[:, 16:80] = _pack_2bit(levels.reshape(-1, QK_K))
    out[:, 80:82] = fp16_bits(d)
    out[:, 82:84] = fp16_bits(dmin)


def dequantize_q2_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q2_K bytes -> weights: ``(d * sc) * q - (dmin * m)`` per sub-block of 16."""
    scales = blocks[:, 0:16]
    d, dmin = read_fp16(blocks[:, 80:82]).unsqueeze(1), read_fp16(blocks[:, 82:84]).unsqueeze(1)
    dl = (d * (scales & 0xF).float()).unsqueeze(2)  # (B, 16, 1)
    ml = (dmin * (scales >> 4).float()).unsqueeze(2)
    q = _unpack_2bit(blocks[:, 16:80]).reshape(-1, 16, 16)
    torch.mul(dl, q.float(), out=out.view(-1, 16, 16)).sub_(ml)


# --- Q3_K ---------------------------------------------------------------------


def _pack_scales_q3(l6: torch.Tensor) -> torch.Tensor:
    """16 six-bit scales (B, 16) -> 12 bytes.

    Bytes 0-7: low nibbles of scales j (bits 0-3) and j+8 (bits 4-7);
    bytes 8-11: the top two bits, byte 8+k bits 2g = scale 4g + k.
    """
    low = (l6[:, :8] & 0xF) | ((l6[:, 8:] & 0xF) << 4)  # (B, 8)
    top = (l6 >> 4).reshape(-1, 4, 4) << _SHIFTS_2BIT.to(l6.device).view(1, 4, 1)  # (B, g, k)
    return torch.cat([low, top.sum(dim=1, dtype=torch.uint8)], dim=1)  # (B, 12)


def quantize_q3_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q3_K: 256 weights -> 110 bytes, ``x = d * (sc - 32) * (q - 4)`` per sub-block of 16.

    Byte layout::

        0            32         96           108  110
        | hmask[32]  | qs[64]   | scales[12] | d  |
          bit 2 of each level: byte j bit k = weight 32k + j
                       low 2 bits, packed as in Q2_K
                                  6-bit scales (see ``_pack_scales_q3``)
    """
    # 1. search each sub-block's (signed) scale
    x = _columns(blocks, 16)
    scales, levels = make_q3_quants(x, 4)
    scales = scales.reshape(-1, 16)  # (B, 16)
    # 2. quantize the 16 scales to 6 bits: the one of largest magnitude maps to -32
    _, max_scale = signed_absmax(scales, dim=1)
    has_scale = max_scale != 0
    iscale = divide_into(-32.0, max_scale)
    l6 = nearest_int(iscale.unsqueeze(1) * scales)
    l6 = (((l6 + 128) & 0xFF) - 128).clamp_(-32, 31) + 32  # int8_t, then MAX(-32, MIN(31, l)) + 32
    l6 = torch.where(has_scale.unsqueeze(1), l6, 0).to(torch.uint8)
    d = torch.where(has_scale, divide_into(1.0, iscale), 0.0)
    # 3. re-round every weight with the decoded scales, 4. pack: bit 2 to hmask, bits 0-1 to qs
    d_sub = fp16_round(d).unsqueeze(1) * (l6.to(torch.int32) - 32).float()
    levels = _requantize(blocks.reshape(-1, 16, 16), d_sub, None, -4, 3, _rows(levels))  # 0..7
    levels = levels.to(torch.uint8).reshape(-1, 8, 32)  # (B, 8, 32): weight 32k + j
    out[:, 0:32] = _pack_bits(levels >> 2)
    out[:, 32:96] = _pack_2bit((levels & 3).reshape(-1, QK_K))
    out[:, 96:108] = _pack_scales_q3(l6)
    out[:, 108:110] = fp16_bits(d)


def dequantize_q3_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q3_K bytes -> weights: ``(d * (sc - 32)) * q`` with ``q = low2 - (4 if hmask bit is 0)``."""
    packed = blocks[:, 96:108]
    low = torch.cat([packed[:, :8] & 0xF, packed[:, :8] >> 4], dim=1)  # (B, 16)
    top = (packed[:, 8:12].unsqueeze(1) >> _SHIFTS_2BIT.to(blocks.device).view(1, 4, 1)) & 3  # (B, g, k)
    sc = (low | (top.reshape(-1, 16) << 4)).view(torch.int8) - 32
    dl = (read_fp16(blocks[:, 108:110]).unsqueeze(1) * sc.float()).unsqueeze(2)  # (B, 16, 1)
    high = _unpack_bits(blocks[:, 0:32]).reshape(-1, QK_K)
    q = _unpack_2bit(blocks[:, 32:96]).view(torch.int8) - ((high ^ 1) << 2).view(torch.int8)
    torch.mul(dl, q.reshape(-1, 16, 16).float(), out=out.view(-1, 16, 16))


# --- Q4_K and Q5_K ------------------------------------------------------------


def _pack_scales_k4(sc: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """8 six-bit scales and 8 six-bit mins (B, 8) each -> 12 bytes (ggml's ``get_scale_min_k4``).

    ::

        bytes 0-3:  sc[0..3]  | top 2 bits of sc[4..7] in bits 6-7
        bytes 4-7:  m[0..3]   | top 2 bits of m[4..7]  in bits 6-7
        bytes 8-11: low 4 bits of sc[4..7] | low 4 bits of m[4..7] << 4
    """
    first = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    second = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    third = (sc[:, 4:] & 0xF) | ((m[:, 4:] & 0xF) << 4)
    return torch.cat([first, second, third], dim=1)  # (B, 12)


def _unpack_scales_k4(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 bytes -> (sc, m), each (B, 8) uint8 (inverse of ``_pack_scales_k4``)."""
    first, second, third = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    sc = torch.cat([first & 63, (third & 0xF) | ((first >> 6) << 4)], dim=1)
    m = torch.cat([second & 63, (third >> 4) | ((second >> 6) << 4)], dim=1)
    return sc, m


def _quantize_k4(blocks: torch.Tensor, nmax: int, rmin: float, nstep: int) -> tuple[torch.Tensor, ...]:
    """Shared core of Q4_K and Q5_K: search, 6-bit scales and mins, re-rounding.

    Returns the packed scales (B, 12), ``d`` and ``dmin`` (B,) as float32 and
    the levels (B, 8, 32) int32.
    """
    # 1. search each sub-block's scale and min; a weight counts by its size plus the sub-block's RMS
    x = _columns(blocks, 32)  # (32, S)
    rms = sqrtf(divide_by(sequential_sum(x * x), 32))
    scales, mins, levels = make_qkx2_quants(x, rms + x.abs(), nmax, rmin, 0.1, nstep, use_mad=False)
    scales, mins = scales.reshape(-1, 8), mins.reshape(-1, 8)  # (B, 8)
    # 2. quantize the 8 scales and 8 mins to 6 bits against d = max_scale/63, dmin = max_min/63
    max_scale, max_min = _positive_max(scales), _positive_max(mins)
    inv_scale = torch.where(max_scale > 0, divide_into(63.0, max_scale), 0.0).unsqueeze(1)
    inv_min = torch.where(max_min > 0, divide_into(63.0, max_min), 0.0).unsqueeze(1)
    sc = _as_uint8(nearest_int(inv_scale * scales)).clamp_(max=63)  # uint8_t, then MIN(63, .)
    m = _as_uint8(nearest_int(inv_min * mins)).clamp_(max=63)
    d, dmin = divide_by(max_scale, 63), divide_by(max_min, 63)
    # 3. re-round every weight with the scales and mins as the decoder will see them
    d_sub = fp16_round(d).unsqueeze(1) * sc.float()
    dm_sub = fp16_round(dmin).unsqueeze(1) * m.float()
    levels = _requantize(blocks.reshape(-1, 8, 32), d_sub, dm_sub, 0, nmax, _rows(levels))
    return _pack_scales_k4(sc, m), d, dmin, levels


def quantize_q4_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q4_K: 256 weights -> 144 bytes, ``x = d*sc * q - dmin*m`` per sub-block of 32.

    Byte layout::

        0     2      4            16                       144
        | d  | dmin | scales[12] | qs[128]                 |
                      6-bit sc and m (see ``_pack_scales_k4``)
                                   4-bit levels: byte 32c + l holds weight 64c + l (low
                                   nibble) and weight 64c + 32 + l (high nibble)
    """
    packed, d, dmin, levels = _quantize_k4(blocks, 15, -1.0, 20)
    q = levels.to(torch.uint8).reshape(-1, 4, 2, 32)  # (B, chunk of 64, half, 32)
    out[:, 0:2] = fp16_bits(d)
    out[:, 2:4] = fp16_bits(dmin)
    out[:, 4:16] = packed
    out[:, 16:] = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def _dequantize_k4(blocks: torch.Tensor, q: torch.Tensor, out: torch.Tensor) -> None:
    """``(d * sc) * q - (dmin * m)`` for Q4_K/Q5_K; q: (B, 8, 32) uint8."""
    sc, m = _unpack_scales_k4(blocks[:, 4:16])
    d, dmin = read_fp16(blocks[:, 0:2]).unsqueeze(1), read_fp16(blocks[:, 2:4]).unsqueeze(1)
    dl = (d * sc.float()).unsqueeze(2)  # (B, 8, 1)
    ml = (dmin * m.float()).unsqueeze(2)
    torch.mul(dl, q.float(), out=out.view(-1, 8, 32)).sub_(ml)


def dequantize_q4_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q4_K bytes -> weights."""
    qs = blocks[:, 16:].reshape(-1, 4, 1, 32)
    q = torch.cat([qs & 0xF, qs >> 4], dim=2).reshape(-1, 8, 32)  # (B, 8, 32)
    _dequantize_k4(blocks, q, out)


def quantize_q5_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q5_K: 256 weights -> 176 bytes, ``x = d*sc * q - dmin*m``, 5-bit levels.

    Byte layout::

        0     2      4            16        48                144
        | d  | dmin | scales[12] | qh[32]  | qs[128]          |
                      as in Q4_K   bit 4 of each level: byte j bit k = weight 32k + j
                                             low 4 bits, as in Q4_K
    """
    packed, d, dmin, levels = _quantize_k4(blocks, 31, -0.5, 15)
    q = levels.to(torch.uint8)  # (B, 8, 32): weight 32k + j
    low = (q & 0xF).reshape(-1, 4, 2, 32)
    out[:, 0:2] = fp16_bits(d)
    out[:, 2:4] = fp16_bits(dmin)
    out[:, 4:16] = packed
    out[:, 16:48] = _pack_bits(q >> 4)
    out[:, 48:] = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)


def dequantize_q5_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q5_K bytes -> weights."""
    qs = blocks[:, 48:].reshape(-1, 4, 1, 32)
    low = torch.cat([qs & 0xF, qs >> 4], dim=2).reshape(-1, 8, 32)
    _dequantize_k4(blocks, low | (_unpack_bits(blocks[:, 16:48]) << 4), out)


# --- Q6_K ---------------------------------------------------------------------


def quantize_q6_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q6_K: 256 weights -> 210 bytes, ``x = d * sc * (q - 32)`` per sub-block of 16.

    Byte layout::

        0           128        192           208  210
        | ql[128]   | qh[64]   | scales[16] | d  |
          low 4 bits: byte 64h + l     = weights 128h + l      | 128h + l + 64 << 4
                      byte 64h + 32 + l = weights 128h + l + 32 | 128h + l + 96 << 4
                    top 2 bits: byte 32h + l bits 2k = weight 128h + 32k + l
                               int8 scales
    """
    # 1. search each sub-block's (signed) scale
    x = _columns(blocks, 16)
    scales, levels = make_qx_quants(x, 32)
    scales = scales.reshape(-1, 16)  # (B, 16)
    # 2. quantize the 16 scales to int8: the one of largest magnitude maps to -128
    max_abs, max_scale = signed_absmax(scales, dim=1)
    zero = max_abs < GROUP_MAX_EPS
    iscale = divide_into(-128.0, max_scale)
    sc = nearest_int(iscale.unsqueeze(1) * scales).clamp_(max=127)
    sc = ((sc + 128) & 0xFF) - 128  # stored as int8_t
    d = divide_into(1.0, iscale)
    # 3. re-round every weight with the decoded scales, 4. pack low nibbles and top 2 bits
    d_sub = fp16_round(d).unsqueeze(1) * sc.float()
    levels = _requantize(blocks.reshape(-1, 16, 16), d_sub, None, -32, 31, _rows(levels))  # 0..63
    q = levels.to(torch.uint8).reshape(-1, 2, 4, 32)  # (B, half, quarter, 32)
    low = q & 0xF
    out[:, 0:128] = torch.cat(
        [low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], dim=2
    ).reshape(-1, 128)
    out[:, 128:192] = _pack_2bit((q >> 4).reshape(-1, QK_K))  # the top 2 bits, packed like Q2_K's levels
    out[:, 192:208] = sc.to(torch.int8).view(torch.uint8)
    out[:, 208:210] = fp16_bits(d)
    out[zero] = 0  # an all-zero super-block is all zero bytes


def dequantize_q6_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q6_K bytes -> weights: ``(d * sc) * (q - 32)``."""
    ql = blocks[:, 0:128].reshape(-1, 2, 1, 64)
    low = torch.cat([ql & 0xF, ql >> 4], dim=2).reshape(-1, 2, 4, 32)  # (B, half, quarter, 32)
    qh = blocks[:, 128:192].reshape(-1, 2, 1, 32) >> _SHIFTS_2BIT.to(blocks.device).view(1, 1, 4, 1)
    q = (low | ((qh & 3) << 4)).view(torch.int8) - 32
    d = read_fp16(blocks[:, 208:210]).unsqueeze(1)
    dl = (d * blocks[:, 192:208].view(torch.int8).float()).unsqueeze(2)  # (B, 16, 1)
    torch.mul(dl, q.reshape(-1, 16, 16).float(), out=out.view(-1, 16, 16))
