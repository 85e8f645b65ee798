"""The 8-bit activation blocks llama.cpp's CPU kernels round each quantized matmul's input to.

- the rounding itself, against labkit's own Q8_0 quantizer (same blocks; x86's ``127/amax`` with
  ties to even vs the reference's ``1/d`` with ties away can differ by one step on rare ties);
- Q8_1's stored sum term, the vec_dot types and the bytes an activation takes once rounded.

The whole ``activations="q8"`` mode (these roundings plus ggml's arithmetic everywhere else) is
checked against llama.cpp in ``tests/test_runtime_ggml.py``.
"""

from __future__ import annotations

import pytest
import torch

from labkit.errors import ModelError
from labkit.quant import dequantize, quantize
from labkit.runtime.activations import activation_bytes, round_activations, vec_dot_type


def test_q8_0_rounding_matches_labkit_quantizer_but_for_rare_ties() -> None:
    x = torch.randn(4096, 64, generator=torch.Generator().manual_seed(0)) * 3
    ours, extra = round_activations(x, "Q8_0")
    reference = dequantize(quantize(x, "Q8_0"), "Q8_0", tuple(x.shape))
    differ = ours != reference
    assert extra is None
    assert differ.float().mean() < 1e-3
    step = x.reshape(-1, 32).abs().amax(1, keepdim=True) / 127  # one step of each block
    assert ((ours - reference).abs().reshape(-1, 32) <= 1.01 * step).all()


def test_q8_1_sum_term_is_the_stored_fp16_sum() -> None:
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(1))
    values, sum_error = round_activations(x, "Q8_1")
    assert sum_error is not None and sum_error.shape == (3, 3)
    blocks = x.reshape(-1, 32)
    d = blocks.abs().amax(1) / 127
    q = torch.round(blocks * (127 / blocks.abs().amax(1, keepdim=True)))
    s16 = (d * q.sum(1)).half().float()
    expected = s16 - values.reshape(-1, 32).sum(1)  # s minus what the rounded values add up to
    assert torch.allclose(sum_error.reshape(-1), expected, atol=1e-5)


def test_vec_dot_types_and_bytes() -> None:
    assert [vec_dot_type(t) for t in ("Q4_0", "Q4_1", "Q5_1", "Q8_0", "Q4_K", "F16")] == [
        "Q8_0", "Q8_1", "Q8_1", "Q8_0", "Q8_K", "F16",
    ]  # fmt: skip
    assert activation_bytes(576, "Q8_1") == 18 * 36
    assert activation_bytes(1536, "Q8_0") == 48 * 34
    assert activation_bytes(576, "F32") == 2304
    with pytest.raises(ModelError, match="IQ2_XXS"):
        vec_dot_type("IQ2_XXS")


def test_q8_k_rounding_keeps_the_signed_extreme() -> None:
    x = torch.linspace(-2, 1, 256)
    values, _ = round_activations(x, "Q8_K")
    assert values[0] == pytest.approx(-2.0, rel=1e-6)  # the extreme maps to -127 * d exactly
    assert (values - x).abs().max() <= 2 / 127


def test_bound_reading_follows_the_measured_fraction() -> None:
    from labkit.runtime.timing import bound_reading

    assert bound_reading(0.8).startswith("bandwidth-bound")
    assert bound_reading(0.5).startswith("partly bandwidth-bound")
    assert bound_reading(0.28).startswith("compute- or overhead-bound")
