"""llama.cpp's CPU arithmetic, operation by operation, so labkit's logits equal llama.cpp's to the bit.

Why bit for bit? llama.cpp rounds the input of every quantized matmul to 8-bit blocks
(``labkit.runtime.activations``). Rounding has boundaries: a value a hair below ``k + 0.5`` steps
of its block becomes ``k``, a hair above becomes ``k + 1``. So a difference of one float ulp
*before* the rounding can become a whole 8-bit step after it. Measured on the default model and the
first test prompt (5 tokens): torch's RMS norm differs from ggml's in the last bit of a third of its
2,880 outputs; after rounding, 2 of them are a whole step apart, and that alone changed the first
layer's queries by 2e-3; after 30 layers the logits differed by a few tenths. Matching llama.cpp
therefore means matching *every* operation exactly: the same formula, the same float32 roundings,
the same order of additions.

What each function reproduces (ggml's CPU backend, ``ggml/src/ggml-cpu``)::

    rms_norm          ggml_compute_forward_rms_norm_f32: squares summed in double, 1/sqrtf, scale
    rope_table/rope   ggml_rope_cache_init: theta *= theta_scale per pair, the C library's
                      cosf/sinf; each pair rotated with one fused multiply-add
    linear            vec_dot_q4_1_q8_1, vec_dot_q8_0_q8_0 (x86): int8 dot products in 8 lanes of 4 values,
                      each block added as fma(d_w*d_a, lane, acc), lanes summed in a fixed tree
    attention         q and the softmax weights rounded to float16 before their products with
                      the float16 KV cache (F16's vec_dot type); sums in llamafile's tinyBLAS
                      order (16 lanes) for a prompt, ggml_vec_dot_f16's (4 x 16 lanes) for one
                      token; softmax with ggml_v_expf and a double sum of 16-value pieces
    silu              ggml_v_silu: x / (1 + ggml_v_expf(-x))

Scope, said plainly: this is the arithmetic of llama.cpp built for an x86-64 CPU with AVX512F and
AVX512DQ (what llama-cpp-python compiles on the lab machine), flash attention off, a float16 KV
cache, no repacked "extra" weight buffers. Another build (AVX2 only, ARM, a GPU) adds in another
order and llama.cpp's own logits differ between machines by about as much as labkit's did. The
weight types covered are Q4_1 and Q8_0, the default model's (Q4_1 with a Q8_0 head). Two more
assumptions, true of llama.cpp's defaults: its KV length is padded to a multiple of 256 (so the
zero padding below adds nothing it does not), and a prompt reaches it in one batch (labkit feeds
prompts in pieces of 256 tokens; a last piece of one token would take the one-token kernels).
Checked by ``tests/test_runtime_ggml.py``: the 64 largest last-position logits of 10 stored prompts
equal llama.cpp's bit for bit, two of their greedy continuations of 64 tokens are equal (the
benchmark replays all 10), and a live prompt's logits at every position and 4 decoded tokens equal
llama.cpp's. While it was written, each function was matched to llama.cpp's own intermediate
tensors, read through its eval callback (``cb_eval``).

Each float32 fused multiply-add ``fma(a, b, c)`` is computed in float64 and rounded once: ``a*b``
is exact in float64, so only the final rounding remains (it differs from a true fma only when the
float64 sum lands exactly halfway between two float32 values, about once in 2^29).

This is slow (integer dot products in float tensors, fused multiply-adds in float64): a teaching
and checking tool, not the fast path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from labkit.errors import ModelError
from labkit.formats import FORMATS
from labkit.runtime.activations import q8_blocks

FLOAT32, FLOAT64 = torch.float32, torch.float64
EXACT_WEIGHT_TYPES = ("Q4_1", "Q8_0")  # weight types whose x86 vec_dot is reproduced (and checked) here
SOFTMAX_LANES = 16  # ggml_vec_soft_max_f32 sums 16 values at a time (one AVX512 register)


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 ``a*b + c`` with one rounding, like ``_mm512_fmadd_ps`` (see the module docstring)."""
    return (a.to(FLOAT64) * b.to(FLOAT64) + c.to(FLOAT64)).to(FLOAT32)


def _f32(value: float | str) -> torch.Tensor:
    """A float32 constant; a string is C's hexadecimal float (``"0x1.715476p+0"``)."""
    return torch.tensor(float.fromhex(value) if isinstance(value, str) else value, dtype=FLOAT32)


# --- normalisation and RoPE ----------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``ggml_rms_norm`` then ``ggml_mul``: ``x * (1/sqrtf(mean(x*x) + eps)) * weight``.

    ggml squares in float32, adds the squares in double, divides the sum by the width in double,
    rounds the mean to float32, and scales by ``1.0f / sqrtf(mean + eps)``.
    """
    squares = (x * x).to(FLOAT64).sum(dim=-1, keepdim=True)  # in double, as ggml (its order: unseen here)
    mean = (squares / x.shape[-1]).to(FLOAT32)
    root = torch.sqrt((mean + _f32(eps)).to(FLOAT64)).to(FLOAT32)  # sqrtf: correctly rounded
    return (x * (_f32(1.0) / root)) * weight


@functools.cache
def c_math_library() -> ctypes.CDLL:
    """The C math library llama.cpp calls ``cosf``/``sinf``/``powf`` from.

    Raises:
        ModelError: none was found on this system.
    """
    name = ctypes.util.find_library("m")
    if name is None:
        raise ModelError(
            "activations='q8' calls the C math library's cosf/sinf, as llama.cpp does, and none was found "
            "on this system: use activations='float'"
        )
    library = ctypes.CDLL(name)
    for function, n_args in (("cosf", 1), ("sinf", 1), ("powf", 2)):
        getattr(library, function).restype = ctypes.c_float
        getattr(library, function).argtypes = [ctypes.c_float] * n_args
    return library


def rope_table(start: int, end: int, base: float, n_dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` float32 ``(end - start, n_dims/2)``, as ``ggml_rope_cache_init`` makes them.

    ggml does not compute ``position * base^(-2i/n_dims)`` per pair: it starts from
    ``theta = position`` and multiplies by ``theta_scale = powf(base, -2/n_dims)`` once per pair, so
    pair ``i``'s angle carries ``i`` float32 roundings; then it calls the C library's ``cosf`` and
    ``sinf``, which are not always the correctly rounded values. Both details change the last bit.
    """
    libm = c_math_library()
    theta_scale = _f32(libm.powf(base, -2.0 / n_dims))
    theta = torch.arange(start, end, dtype=FLOAT32)
    angles = []
    for _ in range(n_dims // 2):
        angles.append(theta)
        theta = theta * theta_scale
    table = torch.stack(angles, dim=-1)  # (T, n_dims/2)
    values = table.flatten().tolist()
    cos = torch.tensor([libm.cosf(v) for v in values], dtype=FLOAT32).view(table.shape)
    sin = torch.tensor([libm.sinf(v) for v in values], dtype=FLOAT32).view(table.shape)
    return cos, sin


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of ``x`` ``(T, heads, head_dim)`` as ggml's compiled ``rope_f32`` does:
    ``x0*cos - x1*sin`` and ``x0*sin + x1*cos``, each with the first product fused into the add.
    The first ``2 * cos.shape[-1]`` dims of each head turn; the rest pass unchanged."""
    n_dims = 2 * cos.shape[-1]
    x0, x1 = x[..., 0:n_dims:2], x[..., 1:n_dims:2]
    c, s = cos[:, None, :], sin[:, None, :]
    y0 = fma(x0, c, -(x1 * s))
    y1 = fma(x0, s, x1 * c)
    turned = torch.stack((y0, y1), dim=-1).flatten(-2)
    return turned if n_dims == x.shape[-1] else torch.cat((turned, x[..., n_dims:]), dim=-1)


# --- quantized matmuls ---------------------------------------------------------------------------


def check_weight_type(qtype: str, name: str = "a matrix") -> None:
    """Raise ``ModelError`` unless ``qtype`` is one of ``EXACT_WEIGHT_TYPES`` (``name``: for the message)."""
    if qtype not in EXACT_WEIGHT_TYPES:
        raise ModelError(
            f"activations='q8' reproduces llama.cpp's arithmetic for {list(EXACT_WEIGHT_TYPES)} weights; "
            f"{name} is {qtype}: load this file with activations='float'"
        )


@dataclass(frozen=True)
class IntegerMatrix:
    """A quantized matrix as its dot products see it: integer weights and per-block scales.

    Attributes:
        qtype: the file's type (``"Q4_1"`` or ``"Q8_0"``).
        q: int8 ``(n_blocks, n_rows, 32)``: each block's 32 values in order (blocks outermost, as the
            dot product walks them); one byte per weight.
        d: float32 ``(n_blocks, n_rows)`` block scales (fp16 in the file).
        m: float32 ``(n_blocks, n_rows)`` block minimums (Q4_1 only), else ``None``.
    """

    qtype: str
    q: torch.Tensor
    d: torch.Tensor
    m: torch.Tensor | None = None

    @classmethod
    def from_bytes(cls, raw: torch.Tensor, qtype: str, shape: tuple[int, ...]) -> IntegerMatrix:
        """Unpack a matrix's bytes (rows of whole blocks) without dequantizing them."""
        check_weight_type(qtype)
        n_rows, n_cols = shape
        blocks = raw.reshape(n_rows, n_cols // 32, FORMATS[qtype].type_size)  # (rows, blocks, bytes)
        d = _fp16_field(blocks[..., 0:2])
        if qtype == "Q8_0":  # d, then 32 int8
            return cls(qtype, _blocks_first(blocks[..., 2:].contiguous().view(torch.int8)), d)
        nibbles = blocks[..., 4:]  # Q4_1: d, m, then 16 bytes: value j in the low nibble, j+16 in the high
        q = _blocks_first(torch.cat((nibbles & 15, nibbles >> 4), dim=-1))
        return cls(qtype, q, d, _fp16_field(blocks[..., 2:4]))

    @property
    def nbytes(self) -> int:
        """Bytes this unpacked copy takes (one per weight, plus float32 scales and minimums)."""
        return sum(t.nbytes for t in (self.q, self.d, self.m) if t is not None)


def _fp16_field(field: torch.Tensor) -> torch.Tensor:
    """``(rows, blocks, 2)`` bytes of an fp16 field -> float32 ``(blocks, rows)``."""
    return field.contiguous().view(torch.float16).squeeze(-1).to(FLOAT32).T.contiguous()


def _blocks_first(values: torch.Tensor) -> torch.Tensor:
    """``(rows, blocks, 32)`` small integers -> int8 ``(blocks, rows, 32)``."""
    return values.transpose(0, 1).to(torch.int8).contiguous()


def _lane_sum8(acc: torch.Tensor) -> torch.Tensor:
    """``hsum_float_8``: 8 lanes -> 1 as ``(0+4, 1+5, 2+6, 3+7)``, then ``(0+2) + (1+3)``."""
    pairs = acc[..., :4] + acc[..., 4:]
    return (pairs[..., 0] + pairs[..., 2]) + (pairs[..., 1] + pairs[..., 3])


def linear(x: torch.Tensor, matrix: IntegerMatrix, scratch_bytes: int = 16 << 20) -> torch.Tensor:
    """``x @ W.T`` as llama.cpp's x86 ``ggml_vec_dot_q4_1_q8_1`` / ``_q8_0_q8_0`` computes each output.

    The input row is rounded to Q8_1/Q8_0 blocks. Per block, the 32 integer products are summed in
    8 lanes of 4 (exact), each lane is added to its accumulator as ``fma(d_w*d_a, lane, acc)``, and at
    the end the 8 lanes are summed in ``hsum_float_8``'s tree. Q4_1 also adds ``m_w * s_a`` per block
    to a float32 running sum (``summs``, an fma per block as compiled), added last; here it runs as a
    ninth lane of the same loop.

    Args:
        x: float32 ``(T, n_cols)``.
        matrix: the weights.
        scratch_bytes: bounds the products held at once (rows are taken in groups to fit).
    Returns:
        float32 ``(T, n_rows)``.
    """
    T = x.shape[0]
    n_blocks, n_rows, _ = matrix.q.shape
    q_a, d_a, d_a16 = q8_blocks(x.reshape(-1, 32))  # rounded as quantize_row_q8_0/_q8_1 (x86)
    s_a = (d_a.view(T, n_blocks) * q_a.sum(dim=1).view(T, n_blocks)).to(torch.float16).to(FLOAT32)
    # The lane sums as one batched matmul per block: block b's (rows, 32) integers times a (32, 8*T)
    # matrix holding value 4*lane + i of token t's block at row 4*lane + i, column lane*T + t (zeros
    # elsewhere). Every product and sum is a small integer, exact in float32 in any order.
    spread = torch.zeros(n_blocks, 8, 4, 8, T)
    lane = torch.arange(8)
    # two index arrays on dims 1 and 3 select (blocks, 4, T) per lane, the lane dim first: (8, blocks, 4, T)
    spread[:, lane, :, lane, :] = q_a.view(T, n_blocks, 8, 4).permute(2, 1, 3, 0)
    spread = spread.view(n_blocks, 32, 8 * T)
    d_a16 = d_a16.view(T, n_blocks).T[:, :, None]  # (blocks, T, 1)
    s_a = s_a.T[:, :, None].to(FLOAT64)  # (blocks, T, 1)
    n_lanes = 8 if matrix.m is None else 9  # Q4_1: a ninth lane sums m_w * s_a
    out = torch.empty(T, n_rows, dtype=FLOAT32)
    step = max(1, scratch_bytes // (T * n_blocks * n_lanes * 8))
    for first in range(0, n_rows, step):
        rows = slice(first, first + step)
        lanes = torch.bmm(matrix.q[:, rows].to(FLOAT32), spread)  # (blocks, r, 8*T)
        lanes = lanes.view(n_blocks, -1, 8, T).permute(0, 3, 1, 2)  # (blocks, T, r, 8)
        products = torch.empty(*lanes.shape[:3], n_lanes, dtype=FLOAT64)  # (blocks, T, r, lanes)
        scales = (matrix.d[:, None, rows] * d_a16).to(FLOAT64)  # d_w*d_a, rounded in float32
        torch.mul(scales[..., None], lanes, out=products[..., :8])  # exact in float64
        if matrix.m is not None:
            torch.mul(matrix.m[:, None, rows].to(FLOAT64), s_a, out=products[..., 8])
        del lanes
        acc = torch.zeros(products.shape[1:], dtype=FLOAT32)  # (T, r, lanes)
        exact_sum = torch.empty(acc.shape, dtype=FLOAT64)
        for b in range(n_blocks):  # the blocks in order; each fma rounds once to float32
            torch.add(products[b], acc, out=exact_sum)  # acc + d_w*d_a*lane, exact in float64
            acc.copy_(exact_sum)  # rounded to float32
        result = _lane_sum8(acc[..., :8])
        out[:, rows] = result + acc[..., 8] if matrix.m is not None else result
    return out


# --- attention -----------------------------------------------------------------------------------


def _sum16(values: torch.Tensor) -> torch.Tensor:
    """``_mm512_reduce_add_ps``: 16 lanes -> 1 by halves (8, 4, 2, 1)."""
    for width in (8, 4, 2):
        values = values[..., :width] + values[..., width:]
    return values[..., 0] + values[..., 1]


def _dot_tinyblas(products: torch.Tensor) -> torch.Tensor:
    """Sum ``(..., K)`` exact products as llamafile's ``tinyBLAS<16, __m512>``: 16 lanes, each adding
    its chunk of every 16 in order, then one reduce. ggml uses it for float16 matmuls of a prompt.
    ``K`` is padded with zeros to a multiple of 16 (adding exact zeros changes nothing)."""
    chunks = F.pad(products, (0, -products.shape[-1] % 16)).unflatten(-1, (-1, 16))
    acc = chunks[..., 0, :]
    for i in range(1, chunks.shape[-2]):
        acc = acc + chunks[..., i, :]
    return _sum16(acc)


def _dot_vec_f16(products: torch.Tensor) -> torch.Tensor:
    """Sum ``(..., K)`` exact products as ``ggml_vec_dot_f16`` (AVX512): 4 registers of 16 lanes take
    64 values per step; then ``(r0 + r2) + (r1 + r3)`` and one reduce. ggml uses it for one token.
    ``K`` is padded with zeros to a multiple of 64 (adding exact zeros changes nothing)."""
    products = F.pad(products, (0, -products.shape[-1] % 64))
    steps = products.unflatten(-1, (-1, 4, 16))
    acc = steps[..., 0, :, :]
    for i in range(1, steps.shape[-3]):
        acc = acc + steps[..., i, :, :]
    return _sum16((acc[..., 0, :] + acc[..., 2, :]) + (acc[..., 1, :] + acc[..., 3, :]))


def expf(x: torch.Tensor) -> torch.Tensor:
    """``ggml_v_expf`` (AVX512): exp as ``2^n * p(b)`` with ggml's polynomial, op for op."""
    r = _f32("0x1.8p23")
    z = fma(x, _f32("0x1.715476p+0"), r)
    n = z - r  # round(x / ln 2)
    b = fma(-n, _f32("0x1.7f7d1cp-20"), fma(-n, _f32("0x1.62e4p-1"), x))  # x - n ln 2, in two parts
    u = b * b
    j = fma(
        fma(
            fma(_f32("0x1.0e4020p-7"), b, _f32("0x1.573e2ep-5")),
            u,
            fma(_f32("0x1.555e66p-3"), b, _f32("0x1.fffdb6p-2")),
        ),
        u,
        fma(_f32("0x1.ffffecp-1"), b, _f32(1.0)),
    )
    scaled = (j.to(FLOAT64) * torch.exp2(n.to(FLOAT64))).to(FLOAT32)  # _mm512_scalef_ps: one rounding
    overflow = torch.where(n <= 0, torch.zeros_like(x), torch.full_like(x, float("inf")))
    return torch.where(n.abs() > 192, overflow, scaled)


def silu(x: torch.Tensor) -> torch.Tensor:
    """``ggml_v_silu``: ``x / (1 + expf(0 - x))``."""
    return x / (_f32(1.0) + expf(_f32(0.0) - x))


def softmax(scores: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """``ggml_soft_max_ext`` on rows of ``scores`` ``(..., S)``, ``S`` a multiple of 16.

    ``w = scores*scale + mask``; ``e = expf(w - max)``; each 16 values of ``e`` are summed in float32
    (one register's reduce) and those sums added in double; the row is multiplied by
    ``(float)(1.0/sum)``.
    """
    w = scores * _f32(scale) + mask
    e = expf(w - w.amax(dim=-1, keepdim=True))
    pieces = _sum16(e.unflatten(-1, (-1, SOFTMAX_LANES))).to(FLOAT64)  # (..., S/16)
    total = torch.zeros(pieces.shape[:-1], dtype=FLOAT64)
    for i in range(pieces.shape[-1]):
        total = total + pieces[..., i]
    return e * (1.0 / total).to(FLOAT32)[..., None]


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int, scratch_bytes: int = 32 << 20
) -> torch.Tensor:
    """One sequence's grouped-query attention as llama.cpp computes it without flash attention.

    Args:
        q: float32 ``(T, n_heads, head_dim)`` after RoPE.
        k, v: float16 ``(S, n_kv_heads, head_dim)``: the cache, the ``T`` new positions last.
        past: positions cached before these ``T``.
        scratch_bytes: bounds the products held at once (query positions are taken in groups to fit).
    Returns:
        float32 ``(T, n_heads * head_dim)``, the input of ``attn_output``.
    """
    T, n_heads, head_dim = q.shape
    S = k.shape[0]
    group = n_heads // k.shape[1]
    dot = _dot_tinyblas if T > 1 else _dot_vec_f16  # which kernel ggml picks, see the module docstring
    q16 = q.to(torch.float16).to(FLOAT32).transpose(0, 1)  # (H, T, D): rounded to F16, F16's vec_dot type
    k32 = k.to(FLOAT32).repeat_interleave(group, dim=1).transpose(0, 1)  # (H, S, D)
    v32 = v.to(FLOAT32).repeat_interleave(group, dim=1).permute(1, 2, 0)  # (H, D, S)
    padded = S + (-S % SOFTMAX_LANES)
    seen = torch.ones(T, S, dtype=torch.bool).tril(past)  # new token t sees positions <= past + t
    mask = torch.full((T, padded), float("-inf"))
    mask[:, :S] = torch.where(seen, 0.0, float("-inf"))  # (T, padded)
    out = torch.empty(n_heads, T, head_dim)
    step = max(1, scratch_bytes // (4 * 2 * n_heads * padded * head_dim))  # query rows per group
    for first in range(0, T, step):
        rows = slice(first, first + step)
        scores = dot(q16[:, rows, None, :] * k32[:, None, :, :])  # (H, t, S): products of halves, exact
        weights = softmax(F.pad(scores, (0, padded - S)), mask[rows], 1.0 / head_dim**0.5)[..., :S]
        weights16 = weights.to(torch.float16).to(FLOAT32)  # rounded to F16 before the product with V
        out[:, rows] = dot(weights16[:, :, None, :] * v32[:, None, :, :])  # (H, t, D)
    return out.transpose(0, 1).reshape(T, n_heads * head_dim)
