"""labkit.modelfiles.synthetic_llama: deterministic, llama-shaped, streamed, and loadable by llama.cpp."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import gguf
import pytest
import torch

import labkit.gguf as lg
from labkit.errors import ModelError
from labkit.modelfiles import synthetic_llama

LAYER_TENSORS = [
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
]
REQUIRED_KEYS = [
    "general.architecture",
    "llama.context_length",
    "llama.embedding_length",
    "llama.block_count",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.dimension_count",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_llama(tmp_path_factory.mktemp("syn") / "tiny.gguf")


def test_names_shapes_and_types_are_llama_cpps(tiny: Path) -> None:
    expected = ["token_embd.weight"]
    expected += [f"blk.{i}.{t}.weight" for i in range(2) for t in LAYER_TENSORS]
    expected += ["output_norm.weight"]
    with lg.open(tiny) as f:
        assert list(f.tensors) == expected
        shapes = {name: info.shape for name, info in f.tensors.items()}
        assert all(info.qtype == "F32" for info in f.tensors.values())
        assert f.metadata["general.architecture"] == "llama"
        assert all(key in f.metadata for key in REQUIRED_KEYS)
        ffn = f.metadata["llama.feed_forward_length"]
    assert ffn == 192  # 8/3 * 64 rounded up to a multiple of 64
    assert shapes["token_embd.weight"] == (512, 64)
    assert shapes["blk.0.attn_q.weight"] == (64, 64)
    assert shapes["blk.1.attn_k.weight"] == shapes["blk.1.attn_v.weight"] == (32, 64)  # 2 kv heads of 16
    assert shapes["blk.0.ffn_gate.weight"] == (192, 64) and shapes["blk.0.ffn_down.weight"] == (64, 192)
    assert shapes["output_norm.weight"] == (64,)


def test_gguf_py_reads_it(tiny: Path) -> None:
    reader = gguf.GGUFReader(tiny)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert len(reader.tensors) == 20


def test_same_seed_same_bytes_other_seed_other_bytes(tiny: Path, tmp_path: Path) -> None:
    assert synthetic_llama(tmp_path / "again.gguf").read_bytes() == tiny.read_bytes()
    assert synthetic_llama(tmp_path / "other.gguf", seed=1).read_bytes() != tiny.read_bytes()


def test_weights_look_like_weights(tiny: Path) -> None:
    with lg.open(tiny) as f:
        norm = f.tensor("blk.0.attn_norm.weight")
        q = f.tensor("blk.0.attn_q.weight")
    assert 0.5 < float(norm.mean()) < 1.5
    assert 0.05 < float(q.std()) < 0.25  # about 1/sqrt(64)


def test_tokenizer_is_byte_level_and_consistent(tiny: Path) -> None:
    with lg.open(tiny) as f:
        tokens = f.metadata["tokenizer.ggml.tokens"].tolist()
        merges = f.metadata["tokenizer.ggml.merges"].tolist()
        types = f.metadata["tokenizer.ggml.token_type"].tolist()
        bos, eos = f.metadata["tokenizer.ggml.bos_token_id"], f.metadata["tokenizer.ggml.eos_token_id"]
    assert len(tokens) == len(set(tokens)) == len(types) == 512
    assert (tokens[bos], tokens[eos]) == ("<|im_start|>", "<|im_end|>") and types[bos] == types[eos] == 3
    assert "Ġ" in tokens and "Ċ" in tokens and "a" in tokens  # byte tokens: space, newline, a letter
    index = {t: i for i, t in enumerate(tokens)}
    for merge in merges:
        left, right = merge.split(" ")
        assert index[left] < index[left + right] and index[right] < index[left + right]


def test_every_text_round_trips_through_the_vocabulary(tiny: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    with lg.open(tiny) as f:
        tokens = f.metadata["tokenizer.ggml.tokens"].tolist()
        merges = [tuple(m.split(" ")) for m in f.metadata["tokenizer.ggml.merges"]]
    model = tokenizers.models.BPE({t: i for i, t in enumerate(tokens)}, merges)
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    text = "Hello, wörld!\n\t日本 🙂 \x00\x7f"
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids) == text


# file_type: llama.h's llama_ftype; an all-Q4_K file is labelled Q4_K_M (15), as `labkit quantize --type Q4_K` does
@pytest.mark.parametrize(("qtype", "dim", "file_type"), [("Q8_0", 64, 7), ("Q4_K", 256, 15), ("F16", 64, 1)])
def test_quantized_weights_keep_norms_f32(tmp_path: Path, qtype: str, dim: int, file_type: int) -> None:
    path = synthetic_llama(tmp_path / "q.gguf", qtype=qtype, dim=dim, n_layers=1)
    with lg.open(path) as f:
        assert f.metadata["general.file_type"] == file_type
        assert f.tensors["blk.0.ffn_up.weight"].qtype == qtype
        assert f.tensors["blk.0.ffn_norm.weight"].qtype == "F32"
        assert ("general.quantization_version" in f.metadata) == (qtype != "F16")
        assert f.tensor("blk.0.ffn_down.weight").shape == (dim, f.metadata["llama.feed_forward_length"])


def test_untied_embeddings_add_output_weight(tmp_path: Path) -> None:
    with lg.open(synthetic_llama(tmp_path / "u.gguf", tie_embeddings=False)) as f:
        assert list(f.tensors)[-1] == "output.weight" and f.tensors["output.weight"].shape == (512, 64)


@pytest.mark.parametrize("target", [1_000_000, 4_000_000, 30_000_000])
def test_target_size_picks_the_shape(tmp_path: Path, target: int) -> None:
    path = synthetic_llama(tmp_path / "t.gguf", target_size_bytes=target)
    size = path.stat().st_size
    assert abs(size - target) / target < 0.2
    with lg.open(path) as f:
        assert 1 <= f.metadata["llama.block_count"] <= 32


def test_tensors_are_streamed_not_built_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_write(path, tensors, metadata, **kwargs):
        seen["tensors"] = list(tensors)
        return Path(path)

    monkeypatch.setattr(lg, "write", fake_write)
    synthetic_llama(tmp_path / "s.gguf", target_size_bytes=10**12)  # a terabyte: fine, nothing is generated
    assert all(isinstance(t, lg.TensorSource) for t in seen["tensors"])
    assert sum(t.n_bytes for t in seen["tensors"]) > 0.8 * 10**12


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"qtype": "Q4_K"}, "multiples of Q4_K's block size 256"),
        ({"n_heads": 3, "n_kv_heads": 1}, "split into 3 heads"),
        ({"n_heads": 4, "n_kv_heads": 3}, "multiple of n_kv_heads=3"),
        ({"vocab_size": 100}, "at least 259"),
        ({"n_layers": 0}, "at least 1"),
        ({"qtype": "IQ2_XXS"}, "not one labkit can write"),
    ],
)
def test_bad_shapes_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        synthetic_llama(tmp_path / "bad.gguf", **kwargs)
    assert not (tmp_path / "bad.gguf").exists()


@pytest.mark.llama_cpp
@pytest.mark.parametrize(("qtype", "dim"), [("F32", 64), ("Q8_0", 64), ("Q4_K", 256)])
def test_llama_cpp_loads_tokenizes_and_evaluates_it(tmp_path: Path, qtype: str, dim: int) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    path = synthetic_llama(tmp_path / "l.gguf", qtype=qtype, dim=dim)
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    if hasattr(params, "use_extra_bufts"):
        params.use_extra_bufts = False  # the AMX buffer path crashes on this machine
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    assert model, "llama.cpp refused the file"
    try:
        assert llama_cpp.llama_model_n_params(model) == _n_params(path)
        vocab = llama_cpp.llama_model_get_vocab(model)
        assert _llama_cpp_round_trip(llama_cpp, vocab, "Hello, wörld! 🙂") == "Hello, wörld! 🙂"
        assert _llama_cpp_last_logits(llama_cpp, model, [1, 70, 80]).std() > 0
    finally:
        llama_cpp.llama_model_free(model)


def _llama_cpp_round_trip(llama_cpp, vocab, text: str) -> str:  # noqa: ANN001 - ctypes handles
    data = text.encode()
    tokens = (llama_cpp.llama_token * 64)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), tokens, 64, False, False)
    assert 0 < n <= len(data)
    out = (ctypes.c_char * 256)()
    n_out = llama_cpp.llama_detokenize(vocab, tokens, n, out, 256, False, False)
    return out.raw[:n_out].decode()


def _llama_cpp_last_logits(llama_cpp, model, ids: list[int]) -> torch.Tensor:  # noqa: ANN001
    context_params = llama_cpp.llama_context_default_params()
    context_params.n_ctx, context_params.n_batch, context_params.n_threads = 64, 64, 1
    context = llama_cpp.llama_init_from_model(model, context_params)
    assert context
    try:
        tokens = (llama_cpp.llama_token * len(ids))(*ids)
        assert llama_cpp.llama_decode(context, llama_cpp.llama_batch_get_one(tokens, len(ids))) == 0
        n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
        logits = llama_cpp.llama_get_logits_ith(context, -1)
        row = torch.tensor([logits[i] for i in range(n_vocab)])
        assert n_vocab == 512 and torch.isfinite(row).all()
        return row
    finally:
        llama_cpp.llama_free(context)


def _n_params(path: Path) -> int:
    with lg.open(path) as f:
        return sum(t.n_elements for t in f.tensors.values())
