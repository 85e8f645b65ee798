"""labkit.quant.requant and ``labkit quantize``: llama.cpp's per-tensor type rules, and the requantized bytes.

The expected types below were worked out by reading ``llama_tensor_get_type`` in
llama.cpp's ``src/llama-quant.cpp``; ``tests/fixtures/requant/llama_cpp_types.json``
(made by ``scripts/make_requant_fixture.py``) holds what llama.cpp itself wrote.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import gguf as gguf_py
import pytest
import torch

from labkit.errors import QuantizationError
from labkit.quant import mixtures, requant
from labkit.quant.mixtures import ModelShape, plan_types, resolve_type, use_more_bits

FIXTURE = Path(__file__).parent / "fixtures" / "requant" / "llama_cpp_types.json"

# --- the default model (SmolLM2-135M: 30 layers, rows of 576, ffn_down rows of 1536, tied output) ---

# use_more_bits(i, 30): i < 30//8 = 3, i >= 7*30//8 = 26, or (i - 3) % 3 == 2.
MORE_BITS_LAYERS = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29}

# category -> type, or (type in a use_more_bits layer, type elsewhere). Rows of 576 don't
# split into 256-weight K blocks, so Q4_K falls back to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0.
EXPECTED = {
    "Q4_K_M": {
        "token_embd": "Q8_0",
        "attn_v": ("Q8_0", "Q5_0"),
        "ffn_down": ("Q6_K", "Q4_K"),
        "other": "Q5_0",
    },
    "Q5_K_M": {
        "token_embd": "Q8_0",
        "attn_v": ("Q8_0", "Q5_1"),
        "ffn_down": ("Q6_K", "Q5_K"),
        "other": "Q5_1",
    },
    "Q6_K": {"token_embd": "Q8_0", "attn_v": "Q8_0", "ffn_down": "Q6_K", "other": "Q8_0"},
    "Q8_0": {"token_embd": "Q8_0", "attn_v": "Q8_0", "ffn_down": "Q8_0", "other": "Q8_0"},
}


def expected_type(mixture: str, name: str) -> str:
    if name.endswith("norm.weight"):
        return "F32"
    rules = EXPECTED[mixture]
    kind = next((k for k in ("token_embd", "attn_v", "ffn_down") if k in name), "other")
    rule = rules[kind]
    if isinstance(rule, tuple):
        layer = int(name.split(".")[1])
        return rule[0] if layer in MORE_BITS_LAYERS else rule[1]
    return rule


@pytest.fixture(scope="module")
def default_header(default_model):
    from labkit import gguf

    with gguf.open(default_model) as f:
        return dict(f.tensors), dict(f.metadata)


def test_use_more_bits_matches_the_hand_worked_layers() -> None:
    assert {i for i in range(30) if use_more_bits(i, 30)} == MORE_BITS_LAYERS
    assert {i for i in range(8) if use_more_bits(i, 8)} == {0, 3, 6, 7}


@pytest.mark.parametrize("mixture", sorted(EXPECTED))
def test_default_model_types_follow_the_cpp_rules(default_header, mixture) -> None:
    tensors, metadata = default_header
    plans = plan_types(tensors, metadata, mixture)
    assert len(plans) == len(tensors) == 272
    wrong = {p.name: p.dst_qtype for p in plans if p.dst_qtype != expected_type(mixture, p.name)}
    assert wrong == {}


def test_plan_keeps_llama_cpp_order_and_says_why(default_header) -> None:
    tensors, metadata = default_header
    plans = plan_types(tensors, metadata, "Q4_K_M")
    assert [p.name for p in plans[:4]] == [
        "output_norm.weight",
        "token_embd.weight",
        "blk.0.attn_k.weight",
        "blk.0.attn_norm.weight",
    ]
    assert plans[-1].name == "blk.29.ffn_up.weight"
    by_name = {p.name: p for p in plans}
    embd = by_name["token_embd.weight"]
    assert embd.copied and "tied" in embd.reason
    assert "falls back to Q8_0" in by_name["blk.0.attn_v.weight"].reason
    assert "use_more_bits" in by_name["blk.0.ffn_down.weight"].reason


def test_order_sorts_layers_by_number() -> None:
    names = ["blk.10.a.weight", "blk.2.b.weight", "token_embd.weight", "blk.2.a.weight", "output_norm.weight"]
    assert mixtures.llama_cpp_order(names) == [
        "output_norm.weight",
        "token_embd.weight",
        "blk.2.a.weight",
        "blk.2.b.weight",
        "blk.10.a.weight",
    ]


# --- small hand-made tensor lists for the rules the default model does not reach ---


@dataclass(frozen=True)
class Info:
    name: str
    shape: tuple
    qtype: str = "F32"


def llama_meta(n_layer: int = 2, n_head: int = 4, n_head_kv: int = 4, **extra) -> dict:
    return {
        "general.architecture": "llama",
        "llama.block_count": n_layer,
        "llama.attention.head_count": n_head,
        "llama.attention.head_count_kv": n_head_kv,
        **extra,
    }


def tiny_model(n_layer: int = 2, dim: int = 256, ffn: int = 512, output: bool = True) -> list[Info]:
    infos = [Info("token_embd.weight", (1000, dim)), Info("output_norm.weight", (dim,))]
    if output:
        infos.append(Info("output.weight", (1000, dim)))
    for i in range(n_layer):
        for part, shape in [
            ("attn_q", (dim, dim)),
            ("attn_k", (dim, dim)),
            ("attn_v", (dim, dim)),
            ("attn_output", (dim, dim)),
            ("ffn_gate", (ffn, dim)),
            ("ffn_up", (ffn, dim)),
            ("ffn_down", (dim, ffn)),
            ("attn_norm", (dim,)),
            ("ffn_norm", (dim,)),
        ]:
            infos.append(Info(f"blk.{i}.{part}.weight", shape))
    return infos


def types_of(infos, meta, type_name, **kw) -> dict[str, str]:
    return {p.name: p.dst_qtype for p in plan_types(infos, meta, type_name, **kw)}


def test_untied_output_gets_q6_k_and_token_embd_the_default() -> None:
    types = types_of(tiny_model(), llama_meta(), "Q4_K_M")
    assert types["output.weight"] == "Q6_K"
    assert types["token_embd.weight"] == "Q4_K"
    assert types["blk.0.attn_q.weight"] == "Q4_K"
    assert types["output_norm.weight"] == "F32"


def test_tied_token_embd_is_treated_as_the_output() -> None:
    types = types_of(tiny_model(output=False), llama_meta(), "Q4_K_M")
    assert types["token_embd.weight"] == "Q6_K"
    assert types_of(tiny_model(output=False), llama_meta(), "Q8_0")["token_embd.weight"] == "Q8_0"
    assert types_of(tiny_model(output=False), llama_meta(), "Q4_0")["token_embd.weight"] == "Q6_K"


def test_k_mixture_rules_on_a_256_wide_model() -> None:
    infos, meta = tiny_model(n_layer=8), llama_meta(n_layer=8)
    q4km = types_of(infos, meta, "Q4_K_M")
    assert [q4km[f"blk.{i}.attn_v.weight"] for i in range(8)] == [
        "Q6_K",
        "Q4_K",
        "Q4_K",
        "Q6_K",
        "Q4_K",
        "Q4_K",
        "Q6_K",
        "Q6_K",
    ]
    q4ks = types_of(infos, meta, "Q4_K_S")
    assert [q4ks[f"blk.{i}.attn_v.weight"] for i in range(8)] == ["Q5_K"] * 4 + ["Q4_K"] * 4
    assert [q4ks[f"blk.{i}.ffn_down.weight"] for i in range(8)] == ["Q5_K"] + ["Q4_K"] * 7
    q3km = types_of(infos, meta, "Q3_K_M")
    assert [q3km[f"blk.{i}.attn_v.weight"] for i in range(3)] == ["Q5_K", "Q5_K", "Q4_K"]
    assert q3km["blk.0.attn_output.weight"] == "Q4_K" and q3km["blk.0.ffn_down.weight"] == "Q4_K"
    q2k = types_of(infos, meta, "Q2_K")
    assert (q2k["blk.0.attn_v.weight"], q2k["blk.0.ffn_down.weight"], q2k["blk.0.attn_q.weight"]) == (
        "Q3_K",
        "Q3_K",
        "Q2_K",
    )
    gqa = types_of(infos, llama_meta(n_layer=8, n_head=8, n_head_kv=2), "Q2_K")
    assert gqa["blk.0.attn_v.weight"] == "Q4_K"


def test_70b_gives_attn_v_q5_k() -> None:
    meta = llama_meta(n_layer=80, n_head=64, n_head_kv=8)
    infos = [Info(f"blk.{i}.attn_v.weight", (256, 256)) for i in range(80)]
    assert set(types_of(infos, meta, "Q3_K_S").values()) == {"Q5_K"}
    assert set(types_of(infos, llama_meta(n_layer=80, n_head=64, n_head_kv=64), "Q3_K_S").values()) == {
        "Q3_K"
    }


def test_fallbacks_for_rows_that_do_not_fit_blocks() -> None:
    infos = [Info("blk.0.attn_q.weight", (64, 96)), Info("blk.0.attn_k.weight", (64, 48))]
    assert types_of(infos, llama_meta(n_layer=1), "Q4_K_M") == {
        "blk.0.attn_q.weight": "Q5_0",
        "blk.0.attn_k.weight": "F16",
    }
    assert types_of(infos, llama_meta(n_layer=1), "Q6_K")["blk.0.attn_q.weight"] == "Q8_0"
    assert types_of(infos, llama_meta(n_layer=1), "Q5_K_S")["blk.0.attn_q.weight"] == "Q5_1"
    assert types_of(infos, llama_meta(n_layer=1), "Q3_K_S")["blk.0.attn_q.weight"] == "Q4_0"
    assert types_of(infos, llama_meta(n_layer=1), "Q8_0")["blk.0.attn_k.weight"] == "F16"


def test_what_is_never_quantized() -> None:
    infos = [
        Info("blk.0.attn_q.weight", (1, 256)),
        Info("blk.0.attn_q.bias", (256, 256)),
        Info("blk.0.ffn_gate_inp.weight", (256, 256)),
        Info("rope_freqs.weight", (32,)),
        Info("blk.0.attn_norm.weight", (256,), "F16"),
    ]
    plans = plan_types(infos, llama_meta(n_layer=1), "Q4_K_M")
    assert all(p.copied for p in plans)


def test_pure_and_float_types() -> None:
    infos, meta = tiny_model(), llama_meta()
    pure = types_of(infos, meta, "Q4_K")
    assert {t for n, t in pure.items() if not n.endswith("norm.weight")} == {"Q4_K"}
    assert types_of(infos, meta, "Q4_K_M", pure=True) == pure
    assert {t for n, t in types_of(infos, meta, "F16").items() if not n.endswith("norm.weight")} == {"F16"}
    assert resolve_type("q4_k_m") == (mixtures.FILE_TYPES["Q4_K_M"], False)


def test_bad_requests_raise_quantization_errors() -> None:
    with pytest.raises(QuantizationError, match=r"unknown quantization type 'Q7_K'.*Q4_K_M"):
        resolve_type("Q7_K")
    with pytest.raises(QuantizationError, match=r"llama-architecture models only.*'falcon'"):
        ModelShape.from_metadata({"general.architecture": "falcon"})
    with pytest.raises(QuantizationError, match=r"8 experts"):
        ModelShape.from_metadata(llama_meta(**{"llama.expert_count": 8}))


# --- confirmed against llama.cpp itself (fixture made by scripts/make_requant_fixture.py) ---


def load_fixture() -> dict:
    if not FIXTURE.exists():
        pytest.skip(
            f"{FIXTURE.name} missing: run scripts/make_requant_fixture.py with llama-cpp-python installed"
        )
    return json.loads(FIXTURE.read_text())


def test_fixture_types_equal_llama_cpp(default_header) -> None:
    fixture = load_fixture()
    tensors, metadata = default_header
    assert set(fixture["file_types"]) >= set(EXPECTED)
    for key, run in fixture["file_types"].items():
        plans = plan_types(tensors, metadata, run["type"], pure=run["pure"])
        assert [p.name for p in plans] == fixture["tensor_names"], key
        assert [p.dst_qtype for p in plans] == run["types"].split(), key
        assert resolve_type(run["type"], pure=run["pure"])[0].ftype_id == run["ftype"], key


def differing_tensors(path: Path, run: dict, names: list[str]) -> list[str]:
    """Tensors whose bytes differ from llama.cpp's (by the fixture's per-tensor hashes)."""
    from labkit import gguf

    with gguf.open(path) as f:
        return [
            f"{name} ({f.tensors[name].qtype})"
            for name, want in zip(names, run["tensor_sha256"], strict=True)
            if hashlib.sha256(f.raw(name).numpy().tobytes()).hexdigest()[:16] != want
        ]


@pytest.mark.slow
@pytest.mark.parametrize("mixture", sorted(EXPECTED))
def test_default_model_file_equals_llama_cpp_output(default_model, tmp_path, mixture) -> None:
    """Every byte of the file, not only the tensors: llama.cpp's sha256 is in the fixture."""
    fixture = load_fixture()
    run = fixture["file_types"][mixture]
    report = requant.requantize(default_model, tmp_path / f"{mixture}.gguf", mixture)
    if hashlib.sha256(report.dst_path.read_bytes()).hexdigest() != run["sha256"]:
        differing = differing_tensors(report.dst_path, run, fixture["tensor_names"])
        pytest.fail(f"{mixture}: {len(differing)} tensors differ from llama.cpp: {differing[:20]}")
    assert report.dst_size_bytes == run["size_bytes"]


# --- requantizing files ---


@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory) -> Path:
    """A 2-layer llama, 256 wide (K-quant rows fit), F32 weights, an untied output."""
    from labkit.modelfiles import synthetic_llama

    path = tmp_path_factory.mktemp("requant") / "tiny-f32.gguf"
    return synthetic_llama(
        path,
        n_layers=2,
        dim=256,
        n_heads=4,
        n_kv_heads=2,
        ffn_dim=256,
        vocab_size=260,
        tie_embeddings=False,
        seed=3,
    )


def test_requantize_writes_llama_cpp_types_order_and_metadata(tiny_f32, tmp_path) -> None:
    from labkit import gguf

    report = requant.requantize(tiny_f32, tmp_path / "q4km.gguf", "Q4_K_M")
    with gguf.open(tiny_f32) as src, gguf.open(report.dst_path) as out:
        assert list(out.tensors) == mixtures.llama_cpp_order(src.tensors) == [p.name for p in report.plans]
        assert {n: t.qtype for n, t in out.tensors.items()} == {p.name: p.dst_qtype for p in report.plans}
        assert out.tensors["output.weight"].qtype == "Q6_K"
        # use_more_bits(i, 2): only layer 1 (i >= 7 * 2 // 8)
        assert [out.tensors[f"blk.{i}.attn_v.weight"].qtype for i in range(2)] == ["Q4_K", "Q6_K"]
        assert list(out.metadata)[-2:] == ["general.quantization_version", "general.file_type"]
        assert out.metadata["general.file_type"] == 15 and out.metadata["general.quantization_version"] == 2
        assert out.metadata_types["general.file_type"] == "UINT32"
        for key, value in src.metadata.items():
            if key not in ("general.file_type", "general.quantization_version"):
                assert out.metadata_types[key] == src.metadata_types[key], key
                assert str(out.metadata[key]) == str(value) or list(out.metadata[key]) == list(value), key
    assert report.requantized_from == [] and report.dst_size_bytes == report.dst_path.stat().st_size


def test_requantized_bytes_equal_quantizing_the_decoded_tensor(tiny_f32, tmp_path) -> None:
    from labkit import gguf
    from labkit.quant import quantize

    report = requant.requantize(tiny_f32, tmp_path / "q5km.gguf", "Q5_K_M")
    with gguf.open(tiny_f32) as src, gguf.open(report.dst_path) as out:
        for plan in report.plans:
            got = out.raw(plan.name)
            if plan.copied:
                assert torch.equal(got, src.raw(plan.name)), plan.name
            else:
                want = quantize(src.tensor(plan.name), plan.dst_qtype).reshape(-1)
                assert torch.equal(got, want), plan.name
    reader = gguf_py.GGUFReader(report.dst_path)  # gguf-py reads it too
    assert [t.name for t in reader.tensors] == [p.name for p in report.plans]


def test_requantizing_a_quantized_file_decodes_to_f32_first(tiny_f32, tmp_path) -> None:
    from labkit import gguf
    from labkit.quant import dequantize, quantize

    q4_1 = requant.requantize(tiny_f32, tmp_path / "q4_1.gguf", "Q4_1", pure=True).dst_path
    report = requant.requantize(q4_1, tmp_path / "q8_0.gguf", "Q8_0")
    assert report.requantized_from == ["Q4_1"]
    with gguf.open(q4_1) as src, gguf.open(report.dst_path) as out:
        name = "blk.1.ffn_up.weight"
        info = src.tensors[name]
        want = quantize(dequantize(src.raw(name), "Q4_1", info.shape), "Q8_0").reshape(-1)
        assert out.tensors[name].qtype == "Q8_0" and torch.equal(out.raw(name), want)
    again = requant.requantize(report.dst_path, tmp_path / "q8_0-again.gguf", "Q8_0")
    assert all(p.copied for p in again.plans)  # already Q8_0: copied byte for byte
    assert (
        hashlib.sha256(report.dst_path.read_bytes()).digest()
        == hashlib.sha256(again.dst_path.read_bytes()).digest()
    )


def test_slabs_give_the_same_bytes_as_one_pass(tiny_f32) -> None:
    from labkit import gguf

    with gguf.open(tiny_f32) as f:
        raw, shape = f.raw("token_embd.weight"), f.tensors["token_embd.weight"].shape
        whole = requant.requantize_tensor(raw, "F32", "Q4_K", shape)
        slabs = requant.requantize_tensor(raw, "F32", "Q4_K", shape, slab_bytes=7 * 256 * 4)
    assert torch.equal(whole, slabs) and whole.numel() == 260 * 144


def test_requantize_refuses_bad_requests(tiny_f32, tmp_path) -> None:
    with pytest.raises(QuantizationError, match=r"is the input file"):
        requant.requantize(tiny_f32, tiny_f32, "Q8_0")
    with pytest.raises(QuantizationError, match=r"unknown quantization type"):
        requant.requantize(tiny_f32, tmp_path / "x.gguf", "Q9_K")
    assert not (tmp_path / "x.gguf").exists()


def test_cli_quantize_and_dry_run(tiny_f32, tmp_path, capsys) -> None:
    from labkit.cli import main

    out = tmp_path / "cli-q8.gguf"
    assert main(["quantize", str(tiny_f32), str(out), "--type", "Q8_0", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert out.exists() and "as Q8_0" in text and "Q8_0 16" in text and "(measured)" in text
    assert main(["quantize", str(tiny_f32), "--type", "Q4_K_M", "--dry-run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["tensors"]
    assert {r["name"]: r["to"] for r in rows}["output.weight"] == "Q6_K"
    assert main(["quantize", str(tiny_f32), "--type", "Q4_K_M"]) == 2
    assert "OUTPUT" in capsys.readouterr().err
    assert main(["quantize", str(tiny_f32), str(out), "--type", "IQ2_XXS"]) == 2


def test_cli_quantize_json_says_the_timing_is_measured(tiny_f32, tmp_path, capsys) -> None:
    from labkit.cli import main

    assert main(["quantize", str(tiny_f32), str(tmp_path / "q8.gguf"), "--type", "Q8_0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["elapsed_s"] > 0 and result["timing"] == "measured on this machine"


def test_missing_input_and_bad_output_fail_before_any_work(tiny_f32, tmp_path, monkeypatch) -> None:
    from labkit.errors import LabkitError, OutputPathError

    def never(*args, **kwargs):
        raise AssertionError("requantized before checking the paths")

    monkeypatch.setattr(requant, "requantize_tensor", never)
    with pytest.raises(FileNotFoundError, match=r"cannot open .*missing\.gguf: no such file") as caught:
        requant.requantize(tmp_path / "missing.gguf", tmp_path / "out.gguf", "Q8_0")
    assert isinstance(caught.value, LabkitError)
    with pytest.raises(OutputPathError, match=r"the folder .*nowhere does not exist"):
        requant.requantize(tiny_f32, tmp_path / "nowhere" / "out.gguf", "Q8_0")
    with pytest.raises(OutputPathError, match=r"is a folder"):
        requant.requantize(tiny_f32, tmp_path, "Q8_0")


def test_cli_quantize_path_errors_are_clean(tiny_f32, tmp_path, capsys) -> None:
    from labkit.cli import main

    missing = str(tmp_path / "missing.gguf")
    for argv in (
        [missing, str(tmp_path / "out.gguf")],
        [missing, "--dry-run"],
        [str(tiny_f32), str(tmp_path / "nowhere" / "out.gguf")],
        [str(tiny_f32), str(tmp_path)],
    ):
        assert main(["quantize", *argv, "--type", "Q8_0", "--quiet"]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("labkit quantize: error: ") and ".tmp" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_cli_turns_any_os_error_into_a_clean_exit(tiny_f32, tmp_path, capsys, monkeypatch) -> None:
    from labkit import gguf
    from labkit.cli import main

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf, "write", disk_full)
    assert main(["quantize", str(tiny_f32), str(tmp_path / "out.gguf"), "--type", "Q8_0"]) == 2
    assert capsys.readouterr().err == "labkit quantize: error: [Errno 28] No space left on device\n"


# --- against llama.cpp itself, when llama-cpp-python is installed ---


def llama_cpp_quantize(src: Path, dst: Path, type_name: str, *, pure: bool = False) -> Path:
    """Quantize with llama.cpp's ``llama_model_quantize`` (requantize allowed, no imatrix)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    file_type, pure = resolve_type(type_name, pure=pure)
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread, params.ftype, params.allow_requantize, params.pure = 2, file_type.ftype_id, True, pure
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    return dst


@pytest.mark.llama_cpp
@pytest.mark.parametrize("type_name", list(mixtures.FILE_TYPES) + list(mixtures.PURE_ALIASES))
def test_tiny_model_file_equals_llama_cpp(tiny_f32, tmp_path, type_name) -> None:
    theirs = llama_cpp_quantize(tiny_f32, tmp_path / "theirs.gguf", type_name)
    ours = requant.requantize(tiny_f32, tmp_path / "ours.gguf", type_name).dst_path
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.llama_cpp
def test_tiny_quantized_model_requantizes_like_llama_cpp(tiny_f32, tmp_path) -> None:
    """A Q4_1 input (like the default model's) with rows of 256: decoded to f32, then Q4_K_M."""
    q4_1 = requant.requantize(tiny_f32, tmp_path / "q4_1.gguf", "Q4_1", pure=True).dst_path
    theirs = llama_cpp_quantize(q4_1, tmp_path / "theirs.gguf", "Q4_K_M")
    ours = requant.requantize(q4_1, tmp_path / "ours.gguf", "Q4_K_M").dst_path
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.llama_cpp
@pytest.mark.slow
@pytest.mark.parametrize("mixture", sorted(EXPECTED))
def test_default_model_tensors_equal_llama_cpp(default_model, tmp_path, mixture) -> None:
    from labkit import gguf

    theirs = llama_cpp_quantize(default_model, tmp_path / "theirs.gguf", mixture)
    ours = requant.requantize(default_model, tmp_path / "ours.gguf", mixture).dst_path
    with gguf.open(ours) as a, gguf.open(theirs) as b:
        assert {n: t.qtype for n, t in a.tensors.items()} == {n: t.qtype for n, t in b.tensors.items()}
        differing = [n for n in a.tensors if not torch.equal(a.raw(n), b.raw(n))]
    assert differing == [], f"{len(differing)} tensors differ from llama.cpp"
    assert ours.read_bytes() == theirs.read_bytes()
