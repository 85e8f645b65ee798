"""``activations="q8"``: the activations rounded to the 8-bit blocks llama.cpp's CPU kernels use.

- the rounding itself, against labkit's own Q8_0 quantizer (same blocks; x86's ``127/amax`` with
  ties to even vs the reference's ``1/d`` with ties away can differ by one step on rare ties);
- the Q4_1 x Q8_1 product, against the block formula ``d_w*d_a*sum(q_w*q_a) + m_w*s_a`` written out;
- the model option: bad values, the summary, float16 KV cache, logits near the float mode's;
- live (marker ``llama_cpp``): one token through the real model, closer to llama.cpp with q8 than without.

What this does NOT reach (measured, see bench/results/runtime.md): the issue's target of logits within
0.02 of llama.cpp's on whole prompts. Where the inputs are bit-identical the rounding reproduces
llama.cpp's product (the head's logits to 1e-5 from llama.cpp's own final hidden state); but RMS norm,
softmax, SiLU and RoPE differ from ggml's by a float ulp here and there, and an ulp that moves a value
across an 8-bit rounding boundary changes it by a whole step; over 30 layers those flips add up to
logit differences of the same order as the rounding itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from labkit.errors import ModelError
from labkit.quant import dequantize, quantize
from labkit.runtime.activations import (
    ActivationPart,
    activation_bytes,
    block_mins,
    quantized_linear,
    round_activations,
    vec_dot_type,
)
from labkit.runtime.model import load

NUMERICS = Path(__file__).parent / "fixtures" / "llama_cpp" / "smollm2_135m_q4_1_numerics.json"


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


def test_q4_1_times_q8_1_is_the_block_formula() -> None:
    generator = torch.Generator().manual_seed(2)
    w = torch.randn(8, 64, generator=generator) * 0.05
    raw = quantize(w, "Q4_1")
    dense = dequantize(raw, "Q4_1", (8, 64))
    x = torch.randn(2, 64, generator=generator)
    part = ActivationPart(8, "Q4_1", "Q8_1", block_mins(raw, "Q4_1", (8, 64)))
    got = quantized_linear(x, dense, [part]).double()
    # llama.cpp's ggml_vec_dot_q4_1_q8_1, block by block, in float64
    blocks = raw.reshape(8, 2, 20)
    d_w = blocks[..., 0:2].contiguous().view(torch.float16).squeeze(-1).double()
    m_w = blocks[..., 2:4].contiguous().view(torch.float16).squeeze(-1).double()
    q_w = ((dense.double().reshape(8, 2, 32) - m_w[..., None]) / d_w[..., None]).round()
    xb = x.reshape(2, 2, 32)
    amax = xb.abs().amax(-1, keepdim=True)
    q_a = torch.round(xb * (127 / amax)).double()
    d_a = (amax / 127).half().double()
    s_a = ((amax / 127) * q_a.float().sum(-1, keepdim=True)).half().double()
    expected = (d_w[None] * d_a[:, None, :, 0] * (q_w[None] * q_a[:, None]).sum(-1)).sum(-1) + (
        m_w[None] * s_a[:, None, :, 0]
    ).sum(-1)
    assert torch.allclose(got, expected, atol=1e-5)


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


@pytest.fixture(scope="module")
def smol_q8(default_model: Path):
    return load(default_model, activations="q8")


def test_q8_model_option(smol_q8, default_model: Path) -> None:
    with pytest.raises(ModelError, match="activations='int4'"):
        load(default_model, dtype=torch.float32, activations="int4")
    assert smol_q8.dtype == torch.float32  # q8 without a dtype: float32, the exact products
    assert "activations='q8'" in smol_q8.summary()
    assert smol_q8.new_cache().dtype == torch.float16  # llama.cpp's cache type
    parts = smol_q8.activations["blk.0.attn_qkv.weight"]
    assert [p.n_rows for p in parts] == [576, 192, 192]
    assert {p.vec_dot_type for p in parts} == {"Q8_1"}
    assert smol_q8.activations["token_embd.weight"][0].vec_dot_type == "Q8_0"


def test_q8_logits_stay_near_the_float_mode(smol_q8, default_model: Path) -> None:
    reference = json.loads(NUMERICS.read_text(encoding="utf-8"))
    ids = reference["cases"][0]["ids"]
    ours = smol_q8.logits(ids)[-1]
    plain = load(default_model, dtype=torch.float32).logits(ids)[-1]
    assert (ours - plain).abs().max() < 2.0  # rounding noise, not a different model
    assert int(ours.argmax()) == int(plain.argmax()) == reference["cases"][0]["greedy_ids"][0]


@pytest.mark.llama_cpp
def test_single_token_is_closer_to_llama_cpp_with_q8(smol_q8, default_model: Path) -> None:
    np = pytest.importorskip("numpy")
    pytest.importorskip("llama_cpp")
    from labkit.peers import open_llama

    llm = open_llama(default_model)
    plain = load(default_model, dtype=torch.float32)
    closer = 0
    for token in (26843, 504, 2000, 9001):
        llm.reset()
        llm.eval([token])
        theirs = torch.tensor(np.asarray(llm.scores[0]), dtype=torch.float64)
        q8 = float((smol_q8.logits([token])[-1].double() - theirs).abs().max())
        float_mode = float((plain.logits([token])[-1].double() - theirs).abs().max())
        closer += q8 < float_mode
    assert closer >= 3  # measured: 0.20-0.35 with q8 against 0.46-0.83 without, on every token tried


def test_bound_reading_follows_the_measured_fraction() -> None:
    from labkit.runtime.timing import bound_reading

    assert bound_reading(0.8).startswith("bandwidth-bound")
    assert bound_reading(0.5).startswith("partly bandwidth-bound")
    assert bound_reading(0.28).startswith("compute- or overhead-bound")
