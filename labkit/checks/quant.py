"""Automatic check for the exercise of notebook 02: write Q8_0 quantization yourself.

``check_q8_0(quantize_block)`` gives a student's function blocks of 32 float32
weights and compares the 34 bytes it returns with ``labkit.quant.quantize``
(which writes what llama.cpp writes). On the first mismatch its verdict says
which block and byte differ, and its hint names the usual cause. The block,
little-endian::

    bytes 0-1   d        fp16, max|x| / 127
    bytes 2-33  qs[32]   int8, roundf(x * (1/d)): nearest, ties away from zero

llama.cpp multiplies by the float32 inverse ``id = 1/d`` instead of dividing by ``d``. The two differ
in the last bit now and then (about 5 blocks in 200,000 gaussian ones), enough to move a value that
sits next to a tie; one case below is such a block, so ``x / d`` does not pass.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from labkit.checks import CheckResult, NotYet, attempt, verdict
from labkit.quant import quantize


def q8_0_cases(seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """The blocks the check tries: (what the block tests, 32 float32 weights)."""
    g = torch.Generator().manual_seed(seed)
    ties = torch.zeros(32)
    ties[0] = 127.0  # d = 1.0, so x / d is x itself
    ties[1:9] = torch.tensor([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, 126.5])
    negative_max = torch.randn(32, generator=g)
    negative_max[7] = -5.0
    inverse_differs = torch.zeros(32)
    inverse_differs[0], inverse_differs[1] = -1.8147878646850586, 1.1074491739273071
    # x / d = 77.49999237 rounds to 77, x * (1/d) = 77.5 rounds to 78 (llama.cpp's byte)
    return [
        ("gaussian weights", torch.randn(32, generator=g)),
        ("small weights (d is an fp16 subnormal)", torch.randn(32, generator=g) * 1e-6),
        ("ties: x / d exactly halfway, or just below one half", ties),
        ("the largest magnitude is negative", negative_max),
        ("an all-zero block (d = 0: every q must be 0)", torch.zeros(32)),
        ("large weights", torch.randn(32, generator=g) * 1000),
        ("x * (1/d) and x / d round apart", inverse_differs),
    ] + [(f"gaussian weights, seed {i}", torch.randn(32, generator=g)) for i in range(20)]


def _as_bytes(result: Any) -> bytes:
    if isinstance(result, (bytes, bytearray, memoryview)):
        return bytes(result)
    if isinstance(result, torch.Tensor):
        result = result.detach().cpu().numpy()
    if isinstance(result, np.ndarray):
        if result.dtype not in (np.uint8, np.int8):
            raise NotYet(
                f"your function returned an array of {result.dtype}", "return bytes (or a uint8 array)"
            )
        return result.astype(np.uint8).tobytes()
    if isinstance(result, (list, tuple)):
        return bytes(int(v) & 0xFF for v in result)
    raise NotYet(
        f"your function returned a {type(result).__name__}",
        "return the block as bytes: struct.pack('<e', d) + the 32 int8 values' bytes",
    )


def _explain(block: torch.Tensor, expected: bytes, got: bytes) -> tuple[str, str]:
    """Say which byte differs first (the message) and the usual reason (the hint)."""
    if len(got) != len(expected):
        return f"your block has {len(got)} bytes", "a Q8_0 block has 34 bytes: 2 for d, then 32 int8 values"
    d_expected, d_got = struct.unpack("<e", expected[:2])[0], struct.unpack("<e", got[:2])[0]
    if expected[:2] != got[:2]:
        hint = (
            "the bytes are swapped: GGUF is little-endian, use struct.pack('<e', d)"
            if expected[:2] == got[1::-1]
            else "d is max|x| / 127 (largest magnitude, not largest value), stored as IEEE fp16"
        )
        return (
            f"d (bytes 0-1) should be {expected[:2].hex(' ')} = {d_expected!r}, "
            f"yours is {got[:2].hex(' ')} = {d_got!r}"
        ), hint
    q_expected, q_got = np.frombuffer(expected[2:], np.int8), np.frombuffer(got[2:], np.int8)
    j = int(np.flatnonzero(q_expected != q_got)[0])
    d32 = np.float32(float(block.abs().max())) / np.float32(127)  # the float32 d, before fp16
    y = np.float32(float(block[j])) * (
        np.float32(1) / d32 if d32 else np.float32(0)
    )  # x / d as C computes it
    want, have = int(q_expected[j]), int(q_got[j])
    divided = np.float32(float(block[j])) / d32 if d32 else np.float32(0)
    if have == _roundf(divided) and want == _roundf(y) and have != want:
        hint = (
            f"you divided: x / d = {float(divided)!r}, but llama.cpp multiplies by the inverse, "
            f"x * (1/d) = {float(y)!r}; in float32 the two differ in the last bit here. "
            "Compute inverse = 1 / d once, then x * inverse"
        )
    elif abs(float(y)) % 1 == 0.5:
        hint = (
            "x / d is exactly halfway: C's roundf rounds ties *away from zero* (2.5 -> 3, -2.5 -> -3), "
            "but Python's round() and torch.round round to even (2.5 -> 2)"
        )
    elif abs(have) == abs(want) + 1 and abs(float(y)) % 1 > 0.4999:
        hint = (
            f"x / d = {float(y)!r} is just *below* one half; adding 0.5 in float32 rounds the sum up to "
            f"{abs(want) + 1}.0. Add 0.5 in float64 (a Python float) before flooring"
        )
    elif have == int(np.trunc(y)):
        hint = "it looks truncated: int() cuts toward zero, but q must be rounded to the nearest integer"
    elif have == -want:
        hint = "the sign is flipped"
    else:
        hint = "q = roundf(x * (1/d)) with the float32 d (before it is rounded to fp16 for storage)"
    return (
        f"qs[{j}] (byte {j + 2}) should be {want}, yours is {have} (x = {float(block[j])!r}, x/d = {float(y)!r})"
    ), hint


def _roundf(y: np.float32) -> int:
    """C's roundf of a float32: nearest, ties away from zero (exact: the sum is taken in float64)."""
    value = float(y)
    return int(np.sign(value) * np.floor(abs(value) + 0.5))


def check_q8_0(quantize_block: Callable[[torch.Tensor], Any]) -> CheckResult:
    """Check a student's Q8_0 quantizer of one block.

    Args:
        quantize_block: takes a float32 tensor of 32 weights and returns the 34
            block bytes (``bytes``, a list of ints, or a uint8 array).

    Returns:
        A ``CheckResult``: passed when every block matches byte for byte; otherwise it names the
        first block and byte that differ, with the usual cause as its hint.
    """
    cases = q8_0_cases()

    def run() -> str:
        for what, block in cases:
            expected = bytes(quantize(block[None], "Q8_0")[0].numpy())
            got = _as_bytes(attempt(quantize_block, block.clone(), case=f"block '{what}'"))
            if got != expected:
                message, hint = _explain(block, expected, got)
                raise NotYet(f"block '{what}': {message}", hint)
        return f"all {len(cases)} blocks match llama.cpp's Q8_0 bytes"

    return verdict(run, n_cases=len(cases))
