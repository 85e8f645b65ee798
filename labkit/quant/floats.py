"""The plain float formats: F32, F16 and BF16 (one weight per "block").

They are not quantized in blocks, but a GGUF file stores them the same way
as the block types, so they share the kernel interface:

    quantize_*(blocks, out):   (n, 1) float32  ->  out (n, type_size) uint8
    dequantize_*(blocks, out): (n, type_size) uint8  ->  out (n, 1) float32

Conversions round to nearest, ties to even, as ggml does
(``GGML_FP32_TO_FP16`` and ``ggml_compute_fp32_to_bf16``); values too large
for the format become infinity, float32 subnormals are kept. Bytes are
little-endian, as in GGUF.
"""

from __future__ import annotations

import torch


def quantize_f32(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """F32: each weight as its 4 IEEE-754 bytes."""
    out.view(torch.float32).copy_(blocks)


def dequantize_f32(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """F32: each 4-byte group back to its float32."""
    out.copy_(blocks.view(torch.float32))


def quantize_f16(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """F16: IEEE half, sign | 5-bit exponent | 10-bit mantissa."""
    out.view(torch.float16).copy_(blocks)


def dequantize_f16(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """F16: each 2-byte IEEE half widened to float32 (exact: every half is a float32)."""
    out.copy_(blocks.view(torch.float16))


def quantize_bf16(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """BF16: the top 16 bits of a float32 (8-bit exponent, 7-bit mantissa), rounded to nearest even."""
    out.view(torch.bfloat16).copy_(blocks)


def dequantize_bf16(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """BF16: each 2-byte bfloat16 widened to float32 (exact: the 16 low mantissa bits become 0)."""
    out.copy_(blocks.view(torch.bfloat16))
