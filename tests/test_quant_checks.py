"""Notebook 02's helpers: the Q8_0 exercise checker, the figures' measurements."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

import labkit.quant as lq
from labkit.checks.quant import check_q8_0


def _q8_0_block(block: torch.Tensor, *, rounding: str = "away", swap: bool = False) -> bytes:
    """A Q8_0 block written by hand, right (rounding='away') or with a classic mistake."""
    d = np.float32(float(block.abs().max())) / np.float32(127)
    inverse = np.float32(1) / d if d else np.float32(0)
    qs = []
    for v in block.tolist():
        y = float(np.float32(v) * inverse)
        if rounding == "away":
            qs.append(int(math.copysign(math.floor(abs(y) + 0.5), y)))
        elif rounding == "even":
            qs.append(round(y))
        else:
            qs.append(int(y))
    d_bytes = struct.pack("<e", float(d))
    return (d_bytes[::-1] if swap else d_bytes) + bytes(q & 0xFF for q in qs)


def test_a_right_solution_passes():
    result = check_q8_0(_q8_0_block)
    assert result.passed and result.n_cases > 20


@pytest.mark.parametrize(("mistake", "message"), [
    ({"rounding": "even"}, r"ties \*away from zero\*"),
    ({"rounding": "trunc"}, r"looks truncated"),
    ({"swap": True}, r"little-endian"),
])
def test_mistakes_are_explained(mistake, message):
    with pytest.raises(AssertionError, match=message):
        check_q8_0(lambda block: _q8_0_block(block, **mistake))


def test_wrong_length_and_type_are_explained():
    with pytest.raises(AssertionError, match=r"has 33 bytes"):
        check_q8_0(lambda block: _q8_0_block(block)[:33])
    with pytest.raises(AssertionError, match=r"not an array of float32"):
        check_q8_0(lambda block: block.numpy())


figures = pytest.importorskip("labkit.figures.quant")


def test_annotated_block_names_every_field():
    raw = bytes(lq.quantize((torch.arange(32.0) % 16)[None], "Q4_1")[0].numpy())
    text = figures.annotated_block(raw, "Q4_1")
    assert [line.split()[-1] for line in text.splitlines()] == ["d", "m", "qs"]
    assert text.splitlines()[0].startswith("   0  00 3c")  # d = 1.0


def test_sweep_sizes_and_errors():
    x = torch.randn(8, 512, generator=torch.Generator().manual_seed(0))
    points = figures.sweep({"x": x}, n_weights=1_000_000, qtypes=["F16", "Q8_0", "Q4_K"])
    assert [p.size_bytes for p in points] == [2_000_000, 1_062_500, 562_500]
    assert points[0].stats.snr_db > points[1].stats.snr_db > points[2].stats.snr_db
    assert figures.as_rows(torch.zeros(3, 576), 256).shape == (6, 256)
