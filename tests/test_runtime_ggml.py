"""``activations="q8"``: labkit computing as llama.cpp's CPU backend does, checked to the bit.

- the pieces of ``labkit.runtime.ggml_cpu`` against their formulas (exp, softmax, RMS norm, RoPE
  angles, the Q4_1/Q8_0 block dot products, the lane orders of the float16 sums);
- the model option: bad values, both weight modes giving the same bits, the float16 KV cache;
- against llama.cpp's stored outputs (``scripts/make_llama_cpp_numerics_fixture.py``): the last
  position's logits on 10 varied prompts *equal*, and greedy continuations of 64 tokens equal on the
  prompts with the narrowest margins (the bench, ``bench/bench_runtime.py``, runs all 10);
- live (marker ``llama_cpp``): a prompt not in the fixture, every position's logits and a few
  decoded tokens' logits equal llama.cpp's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from labkit.errors import ModelError
from labkit.modelfiles import synthetic_llama
from labkit.quant import dequantize, quantize
from labkit.runtime import ggml_cpu
from labkit.runtime.model import load

NUMERICS = Path(__file__).parent / "fixtures" / "llama_cpp" / "smollm2_135m_q4_1_numerics.json"
GREEDY_CASES = 2  # prompts whose 64 greedy tokens are replayed here (about 30 s each); the bench runs all 10


def test_expf_is_within_ggml_stated_error_and_saturates() -> None:
    x = torch.linspace(-87.0, 88.0, 20001)
    ours = ggml_cpu.expf(x).double()
    exact = torch.exp(x.double())
    assert ((ours - exact).abs() / exact).max() < 2.0 * 2**-23  # ggml: 1.45 ulp + 0.5
    edges = ggml_cpu.expf(torch.tensor([float("-inf"), -200.0, 0.0, 200.0]))
    assert edges.tolist() == [0.0, 0.0, 1.0, math.inf]


def test_softmax_masks_and_sums_to_one() -> None:
    scores = torch.randn(3, 2, 48, generator=torch.Generator().manual_seed(0)) * 4
    mask = torch.zeros(2, 48)
    mask[0, 40:] = float("-inf")
    probs = ggml_cpu.softmax(scores, mask, 0.125)
    assert (probs[:, 0, 40:] == 0).all()
    assert torch.allclose(probs.double().sum(-1), torch.ones(3, 2, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(probs, torch.softmax(scores * 0.125 + mask, -1), atol=1e-6)


def test_rms_norm_and_rope_follow_their_formulas() -> None:
    x = torch.randn(4, 576, generator=torch.Generator().manual_seed(1))
    w = torch.rand(576, generator=torch.Generator().manual_seed(2))
    reference = x.double() / (x.double().pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * w.double()
    assert torch.allclose(ggml_cpu.rms_norm(x, w, 1e-5).double(), reference, rtol=4e-7, atol=1e-7)
    cos, sin = ggml_cpu.rope_table(0, 300, 100000.0, 64)
    angles = torch.arange(300, dtype=torch.float64)[:, None] * 100000.0 ** (-torch.arange(0, 64, 2) / 64)
    assert cos.shape == (300, 32)
    assert torch.allclose(cos.double(), angles.cos(), atol=1e-4)  # theta carries one rounding per pair
    assert torch.allclose(sin.double(), angles.sin(), atol=1e-4)
    pairs = torch.randn(300, 1, 64, generator=torch.Generator().manual_seed(3))
    turned = ggml_cpu.rope(pairs, cos, sin)
    norms = lambda t: t.unflatten(-1, (32, 2)).norm(dim=-1)  # noqa: E731 (a rotation keeps each pair's length)
    assert torch.allclose(norms(turned), norms(pairs), rtol=1e-5)
    partial = ggml_cpu.rope(pairs, cos[:, :8], sin[:, :8])  # rope_dim 16 of head_dim 64
    assert torch.equal(partial[..., :16], turned[..., :16]) and torch.equal(
        partial[..., 16:], pairs[..., 16:]
    )


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
def test_linear_is_the_block_dot_product(qtype: str) -> None:
    generator = torch.Generator().manual_seed(4)
    w = torch.randn(40, 96, generator=generator) * 0.05
    raw = quantize(w, qtype)
    x = torch.randn(3, 96, generator=generator)
    got = ggml_cpu.linear(x, ggml_cpu.IntegerMatrix.from_bytes(raw, qtype, (40, 96))).double()
    # the same dot product written out in float64: d_w*d_a*sum(q_w*q_a) (+ m_w*s_a for Q4_1) per block
    dense = dequantize(raw, qtype, (40, 96)).double().reshape(40, 3, 32)
    blocks = x.reshape(3, 3, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    q_a = torch.round(blocks * (127 / amax)).double()
    d_a = (amax / 127).half().double()
    expected = torch.einsum("rbi,tbi->tr", dense, q_a * d_a)
    if qtype == "Q4_1":  # the minimum meets Q8_1's stored sum s, not the rounded values' sum
        m_w = raw.reshape(40, 3, 20)[..., 2:4].contiguous().view(torch.float16).squeeze(-1).double()
        s_a = ((amax / 127) * q_a.float().sum(-1, keepdim=True)).half().double().squeeze(-1)
        expected += torch.einsum("rb,tb->tr", m_w, s_a - (q_a * d_a).sum(-1))
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_float16_sums_take_ggml_lane_orders() -> None:
    values = torch.randint(-50, 50, (5, 7, 300)).float()  # small integers: every order gives the same sum
    for dot in (ggml_cpu._dot_tinyblas, ggml_cpu._dot_vec_f16):
        assert torch.equal(dot(values), values.sum(-1))
    # with rounding the orders differ: 2^24 + 1 + 1 ... loses the ones one at a time in a single lane
    big = torch.zeros(64)
    big[0], big[16:64:16] = 2.0**24, 1.0
    assert ggml_cpu._dot_tinyblas(big) == 2.0**24  # lane 0 adds 1 three times, each rounded away
    assert ggml_cpu._dot_vec_f16(big) == 2.0**24 + 2  # r0 + r2 loses its 1; then r1 + r3 = 2 is added whole


def test_q8_option_refuses_what_it_cannot_reproduce(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    q5 = synthetic_llama(tmp_path / "q5.gguf", qtype="Q5_0")
    with pytest.raises(ModelError, match="Q5_0"):
        load(q5, activations="q8")
    dense = synthetic_llama(tmp_path / "f32.gguf", qtype="F32")
    with pytest.raises(ModelError, match="stored as floats"):
        load(dense, activations="q8")
    q8 = synthetic_llama(tmp_path / "q8.gguf", qtype="Q8_0")
    with pytest.raises(ModelError, match="dtype"):
        load(q8, dtype=torch.bfloat16, activations="q8")
    with pytest.raises(ModelError, match="activations='int4'"):
        load(q8, activations="int4")
    with pytest.raises(ModelError, match="Q5_0"):
        ggml_cpu.IntegerMatrix.from_bytes(torch.zeros(22, dtype=torch.uint8), "Q5_0", (1, 32))
    model = load(q8, activations="q8")
    with pytest.raises(ModelError, match="float16 KV cache"):
        model.forward([1, 2], model.new_cache(dtype=torch.float32))

    def no_library() -> None:
        raise ModelError("no C math library: use activations='float'")

    monkeypatch.setattr(ggml_cpu, "c_math_library", no_library)
    with pytest.raises(ModelError, match="activations='float'"):
        load(q8, activations="q8")  # at load, not at the first token


def test_q8_weight_modes_give_the_same_bits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = synthetic_llama(tmp_path / "q4.gguf", qtype="Q4_1", n_layers=2, dim=64, vocab_size=300)
    unpacked = load(path, activations="q8")
    monkeypatch.setattr("labkit.runtime.weights.slab_rows", lambda n_cols: 50)  # the head in 6 slabs
    packed = load(path, activations="q8", weights="quantized")
    assert unpacked.dtype == torch.float32 and unpacked.new_cache().dtype == torch.float16
    assert "activations='q8'" in unpacked.summary()
    ids = [5, 17, 200, 3, 99]
    assert torch.equal(unpacked.logits(ids), packed.logits(ids))
    float_mode = load(path, dtype=torch.float32).logits(ids)
    assert (unpacked.logits(ids) - float_mode).abs().max() < 0.5  # rounding noise, not another model


def test_q8_pieces_and_batches_give_the_same_bits(tmp_path: Path) -> None:
    model = load(
        synthetic_llama(tmp_path / "q4.gguf", qtype="Q4_1", n_layers=2, dim=64, vocab_size=300),
        activations="q8",
    )
    ids = [5, 17, 200, 3, 99, 42]
    whole = model.logits(ids)  # (T, vocab): one prompt pass
    cache = model.new_cache()
    model.forward(ids[:2], cache)
    assert torch.equal(model.forward(ids[2:], cache)[0], whole[2:])  # the rest after a cached piece
    other = [7, 8, 9, 10, 11, 12]
    batch = model.forward(torch.tensor([ids, other]), None)  # (2, T, vocab), no cache kept
    assert torch.equal(batch[0], whole) and torch.equal(batch[1], model.logits(other))


@pytest.fixture(scope="module")
def numerics() -> dict:
    return json.loads(NUMERICS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def smol_q8(default_model: Path):
    return load(default_model, activations="q8")


@pytest.mark.slow
def test_last_logits_equal_llama_cpp_on_every_prompt(smol_q8, numerics: dict) -> None:
    for case in numerics["cases"]:
        logits = smol_q8.logits(case["ids"])[-1].double()
        stored = torch.tensor(case["last_top_logits"], dtype=torch.float64)  # float32 values, exactly
        assert torch.equal(logits[case["last_top_ids"]], stored), case["text"]


@pytest.mark.slow
def test_greedy_continuations_equal_llama_cpp(smol_q8, numerics: dict) -> None:
    cases = sorted(numerics["cases"], key=lambda case: min(case["greedy_margins"]))[:GREEDY_CASES]
    assert min(cases[0]["greedy_margins"]) < 0.05  # the test includes a near-tie llama.cpp resolved
    for case in cases:
        got = smol_q8.generate(case["ids"], len(case["greedy_ids"]), stop_at_end=False)
        assert got == case["greedy_ids"], case["text"]


@pytest.mark.slow
@pytest.mark.llama_cpp
def test_live_logits_equal_llama_cpp(smol_q8, default_model: Path) -> None:
    np = pytest.importorskip("numpy")
    pytest.importorskip("llama_cpp")
    from labkit.peers import open_llama

    llm = open_llama(default_model, n_ctx=256)
    ids = smol_q8.tokenizer.encode("Weights travel from the disk to RAM, then to the GPU, and")
    llm.reset()
    llm.eval(ids)
    cache = smol_q8.new_cache()
    ours = smol_q8.forward(ids, cache)[0]
    theirs = torch.tensor(np.asarray(llm.scores[: len(ids)]))
    assert torch.equal(ours, theirs)  # every position of the prompt
    for _ in range(4):  # then one token at a time (llama.cpp sums attention in another order here)
        token = int(ours[-1].argmax())
        llm.eval([token])
        ours = smol_q8.forward([token], cache)[0]
        assert torch.equal(ours[-1], torch.tensor(np.asarray(llm.scores[llm.n_tokens - 1])))
