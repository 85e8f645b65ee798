"""The C arithmetic rules llama.cpp's quantizers depend on, written as torch ops.

Bit-exact quantization is mostly about *rounding*. ggml's reference
quantizers (``src/ggml-quants.c``) use four different ways to turn a float
into an integer, and each one is copied here so that the kernels can say
which rule they follow:

========================  =======================================  ====================
C spelling                rule                                     used by
========================  =======================================  ====================
``roundf(x)``             nearest, ties **away from zero**         Q8_0
``(int8_t)(x + 8.5f)``    add a constant, **truncate toward 0**    Q4_0 Q4_1 Q5_0 Q5_1
``nearest_int(x)``        nearest, ties **to even** (float trick)  every K-quant
``GGML_FP32_TO_FP16``     nearest even, to IEEE half               every block scale
========================  =======================================  ====================

Three more details matter for bit-exactness:

* **Float32 arithmetic, in C's order.** ``a*b + c`` is two roundings in the
  libggml this project builds (its ggml-base library is compiled without
  ``-march``, so no fused multiply-add). torch keeps float32 tensors in
  float32, so writing the same expression in the same order gives the same
  bits. Sums over a sub-block are accumulated *one element at a time*
  (``sequential_sum``) because float addition is not associative.
* **Correctly rounded square roots.** ``sqrtf`` is exact to the last bit;
  ``torch.sqrt`` on float32 is not always (``sqrtf`` below).
* **Signed zeros.** ``max / -8`` turns ``+0`` into ``-0``, and the sign bit
  lands in the file; the kernels keep track of it where C does.
"""

from __future__ import annotations

import torch

# 1.5 * 2**23: adding it to a float32 of magnitude < 2**22 pushes the integer
# part into the low mantissa bits, rounded to nearest-even by the float adder.
_MAGIC = 12582912.0
_MANTISSA_MASK = 0x007FFFFF
_MAGIC_OFFSET = 0x00400000


def nearest_int(x: torch.Tensor) -> torch.Tensor:
    """ggml's ``nearest_int``: round float32 to int32, ties to even.

    C adds the magic number ``12582912.f`` and reads the low 23 bits of the
    result as an integer. Doing the same here (instead of ``torch.round``)
    also reproduces what C does for out-of-range values.

    Args:
        x: float32 tensor.

    Returns:
        int32 tensor of the same shape.
    """
    bits = (x + constant(_MAGIC, x)).view(torch.int32)
    bits &= constant(_MANTISSA_MASK, bits)
    bits -= constant(_MAGIC_OFFSET, bits)
    return bits


def constant(value: float, like: torch.Tensor) -> torch.Tensor:
    """A one-element tensor of ``like``'s dtype and device.

    torch runs ``tensor op tensor`` faster than ``tensor op python_number``
    on CPU, and it makes the float32 type of the constant explicit.
    """
    return torch.full((1,), value, dtype=like.dtype, device=like.device)


_JUST_BELOW_HALF = 0.49999997  # the largest float32 below 0.5 (0.5 - 2**-25)


def roundf_to_int8(x: torch.Tensor) -> torch.Tensor:
    """C's ``(int8_t)roundf(x)``: nearest, ties **away from zero**, for ``|x| < 128``.

    Adding 0.5 and truncating is *not* the same: for ``x = 0.49999997`` the
    float sum rounds up to 1.0. Adding the largest float below one half
    instead gives ``roundf`` exactly for every float32 (the tests check all
    of them in Q8_0's range); the cast to int8 truncates toward zero.
    """
    y = x + torch.copysign(constant(_JUST_BELOW_HALF, x), x)
    return y.to(torch.int8)


def fp16_bits(x: torch.Tensor) -> torch.Tensor:
    """``GGML_FP32_TO_FP16``: float32 -> IEEE half, round to nearest even, as raw bytes.

    torch's conversion follows the same IEEE rule (overflow to inf,
    subnormals kept). Returns uint8 of shape ``(*x.shape, 2)``, little-endian.
    """
    return x.to(torch.float16).view(torch.uint8).reshape(*x.shape, 2)


def fp16_round(x: torch.Tensor) -> torch.Tensor:
    """The float32 value a scale has after a round trip through fp16.

    C often stores ``d`` as fp16 and reads it back (``GGML_FP16_TO_FP32``)
    before using it again; this is that value.
    """
    return x.to(torch.float16).to(torch.float32)


def read_fp16(block_bytes: torch.Tensor) -> torch.Tensor:
    """Decode little-endian fp16 fields: uint8 ``(..., 2)`` -> float32 ``(...)``."""
    return block_bytes.contiguous().view(torch.float16).squeeze(-1).to(torch.float32)


def sqrtf(x: torch.Tensor) -> torch.Tensor:
    """C's ``sqrtf``: the correctly rounded float32 square root.

    ``torch.sqrt`` on float32 CPU tensors may be off by one unit in the last
    place (it uses a fast vector approximation); the float64 root rounded
    once to float32 is always the correctly rounded result.
    """
    return torch.sqrt(x.to(torch.float64)).to(torch.float32)


def divide_into(numerator: float, x: torch.Tensor) -> torch.Tensor:
    """C's ``numerator / x`` for a float32 constant, one correctly rounded division.

    (Python's ``15.0 / tensor`` is computed by torch as ``reciprocal(x) * 15``:
    two roundings, sometimes a different last bit.)
    """
    return torch.div(torch.tensor(numerator, dtype=x.dtype, device=x.device), x)


def divide_by(x: torch.Tensor, denominator: float) -> torch.Tensor:
    """C's ``x / 127.f``: a true division by a float32 constant.

    (On CUDA, dividing by a Python number is done as a multiply by its
    reciprocal, which can differ in the last bit; a one-element tensor is not.)
    """
    return torch.div(x, constant(denominator, x))


def sequential_sum(terms: torch.Tensor) -> torch.Tensor:
    """Sum over dim 0 one row at a time, in float32, like a C ``for`` loop.

    ``torch.sum`` adds in a tree (and ``cumsum`` accumulates in float64), so
    neither gives C's bits. The loop runs over the few elements of a
    sub-block (16 or 32), each step is one vector add over every sub-block.

    Args:
        terms: ``(n, ...)`` float32, element index first.

    Returns:
        ``(...)`` float32: ``((terms[0] + terms[1]) + terms[2]) + ...``.
    """
    total = torch.zeros_like(terms[0])  # C starts its accumulators at 0.0f
    for i in range(terms.shape[0]):
        total += terms[i]
    return total
