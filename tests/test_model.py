"""labkit.runtime.model on small synthetic llamas: cache, weight modes, errors, transfer records, generation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from labkit import gguf
from labkit.errors import ModelError
from labkit.modelfiles import synthetic_llama
from labkit.runtime.kvcache import KVCache, kv_cache_size_bytes
from labkit.runtime.model import LlamaConfig, lab_text, load, rope, rope_rotations
from labkit.runtime.timing import DecodeTiming, time_decode
from labkit.runtime.transfers import HOPS, TransferLog, bytes_by_hop, bytes_per_step


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    return synthetic_llama(
        folder / "tiny.gguf",
        n_layers=2,
        dim=64,
        n_heads=4,
        n_kv_heads=2,
        qtype="Q8_0",
        context_length=64,
        seed=3,
    )


@pytest.fixture(scope="module")
def tiny(tiny_path: Path):
    return load(tiny_path)


IDS = [107, 104, 111, 111, 114, 35, 122, 114, 117, 111, 103, 47]


def test_config_comes_from_metadata(tiny) -> None:
    c = tiny.config
    assert (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim) == (2, 64, 4, 2, 16)
    assert c.context_length == 64 and c.vocab_size == 512 and c.tied_embeddings
    assert c.rope_dim == 16 and c.rms_eps == pytest.approx(1e-5)


def test_cached_decoding_equals_one_full_pass(tiny) -> None:
    full = tiny.logits(IDS)  # (T, vocab)
    cache = tiny.new_cache()
    steps = [tiny.forward(IDS[:5], cache)[0]] + [tiny.forward([i], cache)[0] for i in IDS[5:]]
    assert cache.length == len(IDS)
    torch.testing.assert_close(torch.cat(steps), full, atol=1e-4, rtol=1e-4)


def test_batch_rows_are_independent(tiny) -> None:
    other = list(reversed(IDS))
    both = tiny.forward(torch.tensor([IDS, other]))  # (2, T, vocab)
    torch.testing.assert_close(both[0], tiny.logits(IDS), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(both[1], tiny.logits(other), atol=1e-4, rtol=1e-4)


def test_quantized_mode_gives_the_same_logits_with_less_memory(tiny_path: Path, tiny) -> None:
    packed = load(tiny_path, weights="quantized")
    torch.testing.assert_close(packed.logits(IDS), tiny.logits(IDS), atol=1e-5, rtol=1e-5)
    assert packed.weights.total_bytes < tiny.weights.total_bytes / 3  # Q8_0 bytes vs float32
    with gguf.open(tiny_path) as f:
        file_tensor_bytes = sum(info.n_bytes for info in f.tensors.values())
    assert packed.weights.total_bytes == file_tensor_bytes  # the quantized bytes, as stored


def test_bfloat16_is_close_to_float32(tiny_path: Path, tiny) -> None:
    half = load(tiny_path, dtype=torch.bfloat16)
    a, b = tiny.logits(IDS), half.logits(IDS)
    assert b.dtype == torch.float32
    assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def test_rope_rotates_adjacent_pairs() -> None:
    x = torch.randn(1, 3, 2, 8, generator=torch.Generator().manual_seed(0))  # (B, T, H, D)
    positions = torch.tensor([0, 1, 5])
    y = rope(x, rope_rotations(positions, base=10000.0, rope_dim=8))
    torch.testing.assert_close(y[:, 0], x[:, 0])  # position 0 is not rotated
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))  # rotations keep lengths
    # pair (0, 1) at position 1 turns by exactly 1 radian (frequency base^0 = 1)
    x0, x1 = x[0, 1, 0, 0], x[0, 1, 0, 1]
    torch.testing.assert_close(y[0, 1, 0, 0], x0 * math.cos(1) - x1 * math.sin(1))
    torch.testing.assert_close(y[0, 1, 0, 1], x0 * math.sin(1) + x1 * math.cos(1))


def test_rope_leaves_dims_past_rope_dim_alone() -> None:
    x = torch.randn(1, 2, 1, 8)
    y = rope(x, rope_rotations(torch.tensor([3, 4]), base=10000.0, rope_dim=4))
    torch.testing.assert_close(y[..., 4:], x[..., 4:])


def test_kv_cache_size_matches_the_formula_and_grows(tiny) -> None:
    cache = tiny.new_cache(dtype=torch.float16)
    assert cache.size_bytes == 0
    tiny.forward(IDS, cache)
    c = tiny.config
    expected = kv_cache_size_bytes(
        n_layers=c.n_layers,
        n_kv_heads=c.n_kv_heads,
        head_dim=c.head_dim,
        context_length=len(IDS),
        bytes_per_element=2,
    )
    assert cache.size_bytes == expected == 2 * 2 * len(IDS) * 2 * 16 * 2


def test_kv_cache_doubles_capacity_and_keeps_contents() -> None:
    cache = KVCache(n_layers=1, n_kv_heads=1, head_dim=2, max_length=10, initial_capacity=2)
    k = torch.arange(6.0).view(1, 1, 3, 2)  # (B, Hkv, T, D)
    keys, _ = cache.update(0, k, k)
    cache.advance(3)
    assert cache.capacity == 4 and keys.shape == (1, 1, 3, 2)
    keys, _ = cache.update(0, k[:, :, :1] + 100, k[:, :, :1])
    torch.testing.assert_close(keys[:, :, :3], k)
    assert cache.capacity == 4 and cache.allocated_bytes == 2 * 4 * 2 * 4


def test_kv_cache_refuses_to_pass_the_context() -> None:
    cache = KVCache(n_layers=1, n_kv_heads=1, head_dim=2, max_length=4)
    with pytest.raises(ModelError, match="context length is 4"):
        cache.update(0, torch.zeros(1, 1, 5, 2), torch.zeros(1, 1, 5, 2))


def test_prompt_longer_than_context_is_an_error(tiny) -> None:
    with pytest.raises(ModelError, match="exceed the context length 64"):
        tiny.logits([5] * 65)
    with pytest.raises(ModelError, match="context length 64"):
        tiny.generate([5] * 60, max_new_tokens=10)


def test_generation_is_greedy_by_default_and_seeded_when_sampling(tiny) -> None:
    greedy = tiny.generate(IDS, 6, stop_at_end=False)
    assert len(greedy) == 6
    cache = tiny.new_cache()
    assert greedy[0] == int(tiny.forward(IDS, cache)[0, -1].argmax())
    a = tiny.generate(IDS, 6, temperature=1.0, seed=7, stop_at_end=False)
    b = tiny.generate(IDS, 6, temperature=1.0, seed=7, stop_at_end=False)
    assert a == b
    assert tiny.generate("hello", 3, stop_at_end=False) == tiny.generate(
        tiny.tokenizer.encode("hello"), 3, stop_at_end=False
    )


def test_perplexity_is_exp_of_mean_cross_entropy(tiny) -> None:
    text = "hello world, hello model"
    result = tiny.perplexity(text)
    ids = tiny.tokenizer.encode(text, add_special=True)
    logits = tiny.logits(ids)
    nll = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]))
    assert result.n_scored == len(ids) - 1
    assert result.perplexity == pytest.approx(math.exp(float(nll)), rel=1e-4)
    with pytest.raises(ModelError, match="at least 2 tokens"):
        tiny.perplexity("h")


def test_lab_text_ships_with_the_package() -> None:
    text = lab_text()
    assert len(text.split()) > 150 and "VRAM" in text


def test_transfer_log_accounts_for_every_hop(tiny) -> None:
    log, cache = TransferLog(), tiny.new_cache()
    tiny.forward(IDS, cache, log=log)
    log.next_step()
    tiny.forward([5], cache, log=log)
    assert {r.time_basis for r in log.records} == {"modelled"}  # on a CPU nothing is timed
    assert {r.size_basis for r in log.records} == {"counted"}  # sizes are exact everywhere
    assert all(r.elapsed_s is None for r in log.records)
    assert set(bytes_by_hop(log.records)) == set(HOPS) - {"weights dequantized"}
    step1 = [r for r in log.records if r.step == 1]
    by_hop = bytes_by_hop(step1)
    c = tiny.config
    assert by_hop["input ids in"] == 8  # one int64 id
    assert by_hop["logits out"] == c.vocab_size * 4
    assert by_hop["weights read"] == tiny.weight_bytes_per_token
    assert by_hop["kv written"] == 2 * c.n_layers * c.n_kv_heads * c.head_dim * 4
    assert by_hop["kv read"] == cache.size_bytes
    assert by_hop["activations to next layer"] == c.n_layers * c.dim * 4
    assert sorted(bytes_per_step(log.records)) == [0, 1]


def test_quantized_mode_logs_dequantization(tiny_path: Path) -> None:
    packed, log = load(tiny_path, weights="quantized"), TransferLog()
    packed.forward([5], log=log)
    dequantized = [r for r in log.records if r.hop == "weights dequantized"]
    c = packed.config
    floats = c.dim * (2 * c.dim + 2 * c.n_kv_heads * c.head_dim) + 3 * c.dim * c.ffn_dim
    assert [r.layer for r in dequantized] == [*range(c.n_layers), None]  # every block, then the tied head
    assert all(r.size_bytes == floats * 4 for r in dequantized[:-1])
    assert dequantized[-1].size_bytes == c.vocab_size * c.dim * 4


def test_narrow_dtypes_are_decoded_a_slab_of_rows_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from labkit.quant import dequantize, quantize
    from labkit.runtime import weights

    matrix = torch.randn(10, 64, generator=torch.Generator().manual_seed(1))
    raw = quantize(matrix, "Q4_1").reshape(-1)  # (10 rows x 2 blocks of 20 bytes,)
    whole = dequantize(raw, "Q4_1", (10, 64))
    monkeypatch.setattr(weights, "SLAB_FLOAT32_BYTES", 3 * 64 * 4)  # 3 rows per slab: 4 slabs, the last short
    slabbed = weights.dequantize_rows(raw, "Q4_1", (10, 64), torch.bfloat16)
    assert slabbed.dtype == torch.bfloat16 and torch.equal(slabbed, whole.to(torch.bfloat16))
    assert torch.equal(weights.dequantize_rows(raw, "Q4_1", (10, 64), torch.float32), whole)


def test_bfloat16_load_equals_float32_weights_rounded(tiny_path: Path, tiny) -> None:
    half = load(tiny_path, dtype=torch.bfloat16)
    for name, tensor in half.weights.dense.items():
        torch.testing.assert_close(tensor, tiny.weights.dense[name].to(tensor.dtype), atol=0, rtol=0)


def test_bad_options_and_files_are_clear_errors(tiny_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="weights='packed'"):
        load(tiny_path, weights="packed")
    with pytest.raises(ModelError, match="no model file"):
        load(tmp_path / "nothing.gguf")
    with gguf.open(tiny_path) as f:
        metadata = dict(f.metadata)
        tensors = {name: f.tensor(name) for name in f.tensors}
    gguf.write(tmp_path / "gpt2.gguf", tensors, {**metadata, "general.architecture": "gpt2"})
    with pytest.raises(
        ModelError,
        match=r"'gpt2'; labkit runs only \['llama'\] GGUF files with a byte-level BPE "
        r"tokenizer .*'smollm'.*SmolLM2 and labkit's synthetic llamas",
    ):
        load(tmp_path / "gpt2.gguf")
    del tensors["blk.1.ffn_up.weight"]
    gguf.write(tmp_path / "missing.gguf", tensors, metadata)
    with pytest.raises(ModelError, match="blk.1.ffn_up.weight"):
        load(tmp_path / "missing.gguf")


def test_missing_metadata_key_is_named() -> None:
    with pytest.raises(ModelError, match=r"metadata key .llama\.embedding_length. is missing"):
        LlamaConfig.from_gguf({"general.architecture": "llama"}, {"token_embd.weight": (10, 4)})


@pytest.mark.parametrize("bad_id", [-1, 512, 99999])
def test_token_ids_outside_the_vocabulary_are_named(tiny, bad_id: int) -> None:
    message = rf"token id {bad_id} is outside the vocabulary: ids run from 0 to 511 \(vocab size 512\)"
    with pytest.raises(ModelError, match=message):
        tiny.forward([5, bad_id, 6])  # a negative id must not read a row from the end of token_embd
    with pytest.raises(ModelError, match=message):
        tiny.forward(torch.tensor([[5, 6], [bad_id, 7]]))
    with pytest.raises(ModelError, match=message):
        tiny.generate([5, bad_id], 2)
    assert tiny.logits([0, 511]).shape == (2, 512)  # both ends of the vocabulary are fine


def test_bad_generation_arguments_are_errors(tiny) -> None:
    with pytest.raises(ModelError, match="max_new_tokens=-2; ask for 0 or more"):
        tiny.generate(IDS, max_new_tokens=-2)
    with pytest.raises(ModelError, match="temperature=-0.5; use 0 for greedy"):
        tiny.generate(IDS, 3, temperature=-0.5)
    with pytest.raises(ModelError, match="temperature=nan"):
        tiny.generate(IDS, 3, temperature=float("nan"))
    with pytest.raises(ModelError, match="chat=True needs the prompt as text"):
        tiny.generate(IDS, 3, chat=True)
    with pytest.raises(ModelError, match="max_new_tokens=-1"):
        tiny.stream(IDS, -1)  # raised when called, before the first token is asked for
    assert tiny.generate(IDS, 0) == []


def test_time_decode_measures_steps_and_counts_bytes(tiny) -> None:
    timing = time_decode(tiny, IDS, 3)
    assert timing.n_tokens == 3 and timing.elapsed_s > 0
    assert timing.tokens_per_s == 3 / timing.elapsed_s
    assert timing.weight_bytes_per_token == tiny.weight_bytes_per_token
    assert DecodeTiming(4, 2.0, 10**9).tokens_per_s == 2.0
    assert DecodeTiming(4, 2.0, 10**9).bound_tokens_per_s(25.0) == 25.0  # 25 GB/s / 1 GB per token
    with pytest.raises(ModelError, match="n_tokens=0; time at least 1"):
        time_decode(tiny, IDS, 0)
    with pytest.raises(ModelError, match="context length 64"):
        time_decode(tiny, [5] * 60, 8)  # prompt + warm-up + 8 steps pass the context


@pytest.mark.gpu
@pytest.mark.parametrize("weights", ["dequantized", "quantized"])
def test_cuda_matches_cpu_and_times_the_bus_hops(tiny_path: Path, tiny, weights: str) -> None:
    gpu = load(tiny_path, device="cuda", weights=weights)
    torch.testing.assert_close(gpu.logits(IDS), tiny.logits(IDS), atol=1e-3, rtol=1e-3)
    log = TransferLog(device=torch.device("cuda"))
    gpu.forward(IDS, gpu.new_cache(), log=log)
    measured = [r for r in log.records if r.time_basis == "measured"]
    assert {r.hop for r in measured} == {"input ids in", "logits out"}
    assert all(r.elapsed_s is not None and r.elapsed_s > 0 for r in measured)
    assert {r.source for r in log.records if r.hop == "weights read"} == {"VRAM"}


@pytest.mark.parametrize("scale", [1.0, 30.0, 1000.0])
def test_summed_nll_matches_cross_entropy_without_a_second_array(scale: float) -> None:
    """The in-place log-sum-exp gives F.cross_entropy's sum, even for logits large enough to overflow exp."""
    import torch.nn.functional as F

    from labkit.runtime.model import summed_nll

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 5000, generator=generator) * scale
    targets = torch.randint(0, 5000, (40,), generator=generator)
    expected = float(F.cross_entropy(logits.double(), targets, reduction="sum"))
    assert summed_nll(logits.clone(), targets) == pytest.approx(expected, rel=1e-6)
