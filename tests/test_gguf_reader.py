"""labkit.gguf.open: equal to gguf-py on the default model, lazy, zero-copy, and a complete layout."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import labkit.gguf as lg
from labkit.errors import QuantizationError
from labkit.gguf.strings import StringArray


@pytest.fixture(scope="module")
def reference(default_model: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(default_model)  # ~2 s: built once for the module


@pytest.fixture()
def model(default_model: Path):
    with lg.open(default_model) as f:
        yield f


def _plain(value):
    return value.tolist() if isinstance(value, (np.ndarray, StringArray)) else value


def test_default_model_metadata_equals_gguf_py(model: lg.GGUFFile, reference: gguf.GGUFReader) -> None:
    fields = {k: v for k, v in reference.fields.items() if not k.startswith("GGUF.")}
    assert list(model.metadata) == list(fields)
    for key, field in fields.items():
        assert _plain(model.metadata[key]) == field.contents(), key
        expected_type = field.types[0].name
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            expected_type = f"ARRAY[{field.types[-1].name}]"
        assert model.metadata_types[key] == expected_type, key


def test_default_model_tensors_equal_gguf_py(model: lg.GGUFFile, reference: gguf.GGUFReader) -> None:
    assert [t.name for t in reference.tensors] == list(model.tensors)
    assert model.data_offset == reference.data_offset
    for ref in reference.tensors:
        info = model.tensors[ref.name]
        assert info.qtype == ref.tensor_type.name
        assert info.ne == tuple(int(d) for d in ref.shape)
        assert info.offset == ref.data_offset
        assert info.n_bytes == ref.n_bytes
        expected = np.asarray(ref.data).reshape(-1).view(np.uint8)
        assert np.array_equal(model.raw(ref.name).numpy(), expected), ref.name


def test_default_model_summary_numbers(model: lg.GGUFFile) -> None:
    assert model.version == 3 and model.alignment == 32
    assert model.file_size_bytes == 98_362_432
    assert len(model.tensors) == 272 and len(model.metadata) == 33
    assert model.metadata["general.architecture"] == "llama"
    assert len(model.metadata["tokenizer.ggml.tokens"]) == 49_152
    assert len(model.metadata["tokenizer.ggml.merges"]) == 48_900
    assert model.tensors["token_embd.weight"].shape == (49_152, 576)
    assert model.tensors["token_embd.weight"].qtype == "Q8_0"


def test_raw_is_a_zero_copy_view_of_the_file(model: lg.GGUFFile, default_model: Path) -> None:
    info = model.tensors["blk.0.attn_q.weight"]
    first, second = model.raw(info.name), model.raw(info.name)
    assert first.dtype == torch.uint8 and first.shape == (info.n_bytes,)
    assert first.data_ptr() == second.data_ptr()  # the same mapped memory, no copy
    with open(default_model, "rb") as handle:
        handle.seek(info.offset)
        assert first.numpy().tobytes() == handle.read(info.n_bytes)


def test_tensor_decodes_float_and_quantized(model: lg.GGUFFile, reference: gguf.GGUFReader) -> None:
    by_name = {t.name: t for t in reference.tensors}
    norm = model.tensor("output_norm.weight")
    assert norm.dtype == torch.float32 and norm.shape == (576,)
    assert torch.equal(norm, torch.from_numpy(np.array(by_name["output_norm.weight"].data)))
    ref = by_name["blk.0.attn_q.weight"]
    expected = gguf.quants.dequantize(np.asarray(ref.data), ref.tensor_type).reshape(576, 576)
    decoded = model.tensor("blk.0.attn_q.weight")
    assert decoded.shape == (576, 576)
    torch.testing.assert_close(decoded, torch.from_numpy(expected), rtol=0, atol=1e-6)
    assert model.tensor("output_norm.weight", dtype=torch.float16).dtype == torch.float16


def test_tensor_returns_a_fresh_writable_copy(model: lg.GGUFFile) -> None:
    norm = model.tensor("output_norm.weight")
    norm.zero_()  # must not touch the (read-only) mapping
    assert model.tensor("output_norm.weight").abs().sum() > 0


def test_unknown_tensor_name_is_a_key_error(model: lg.GGUFFile) -> None:
    with pytest.raises(KeyError, match="no tensor 'nope'"):
        model.raw("nope")


def test_layout_covers_every_byte_once(model: lg.GGUFFile) -> None:
    regions = model.layout()
    assert regions[0] == lg.Region("header", "", 0, 24)
    assert all(a.end == b.start for a, b in zip(regions, regions[1:], strict=False))
    assert regions[-1].end == model.file_size_bytes
    assert sum(r.n_bytes for r in regions) == model.file_size_bytes
    assert {r.kind for r in regions} <= set(lg.REGION_KINDS)
    kinds = [r.kind for r in regions]
    assert (
        kinds.count("metadata") == 33 and kinds.count("tensor") == 272 and kinds.count("tensor_info") == 272
    )
    tokens = next(r for r in regions if r.name == "tokenizer.ggml.tokens" and r.kind == "metadata")
    assert tokens.n_bytes > 49_152 * 8  # the vocabulary's length prefixes alone


def test_layout_shows_padding_and_unused_gaps(tmp_path: Path) -> None:
    path = lg.write(tmp_path / "gaps.gguf", {"a": torch.ones(3), "b": torch.ones(5)}, {}, alignment=64)
    data = bytearray(path.read_bytes())
    with lg.open(path) as f:
        regions = f.layout()
    kinds = [r.kind for r in regions]
    assert kinds == [
        "header",
        "metadata",
        "tensor_info",
        "tensor_info",
        "padding",
        "tensor",
        "padding",
        "tensor",
        "padding",
    ]
    assert regions[5].n_bytes == 12 and regions[6].n_bytes == 64 - 12
    # move tensor "b" one more alignment step out: the 64 bytes it skips are "unused"
    info_b = regions[3]
    offset_at = info_b.start + info_b.n_bytes - 8
    (relative,) = struct.unpack_from("<Q", data, offset_at)
    struct.pack_into("<Q", data, offset_at, relative + 64)
    b_start = regions[7].start
    data[b_start:b_start] = bytes(64)
    moved = tmp_path / "moved.gguf"
    moved.write_bytes(bytes(data))
    with lg.open(moved) as f:
        regions = f.layout()
        assert [r.kind for r in regions][5:] == ["tensor", "padding", "unused", "tensor", "padding"]
        assert sum(r.n_bytes for r in regions) == f.file_size_bytes
        assert torch.equal(f.tensor("b"), torch.ones(5))


def test_string_array_behaves_like_a_list(model: lg.GGUFFile) -> None:
    tokens = model.metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, StringArray)
    assert tokens[0] == "<|endoftext|>" and tokens[1] == "<|im_start|>"
    assert tokens[-1] == tokens[len(tokens) - 1]
    assert tokens[1:3] == ["<|im_start|>", "<|im_end|>"]
    assert list(tokens)[:3] == tokens[:3] and tokens == tokens.tolist()
    assert tokens.raw_bytes(0) == b"<|endoftext|>"
    assert "StringArray(n=49152" in repr(tokens)
    with pytest.raises(IndexError):
        tokens[49_152]


def test_close_releases_and_then_refuses(default_model: Path) -> None:
    f = lg.open(default_model)
    tokens = f.metadata["tokenizer.ggml.tokens"]
    view = f.raw("output_norm.weight")
    f.close()
    f.close()  # twice is fine
    assert tokens[2] == "<|im_end|>"  # metadata stays readable: it keeps the mapping alive
    assert view.numel() == 576 * 4  # so do views already handed out
    with pytest.raises(ValueError, match="closed"):
        f.raw("output_norm.weight")


def test_version_2_files_read_the_same(tmp_path: Path) -> None:
    path = lg.write(tmp_path / "v3.gguf", {"w": torch.arange(8.0)}, {"general.architecture": "demo"})
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 4, 2)
    (tmp_path / "v2.gguf").write_bytes(bytes(data))
    with lg.open(tmp_path / "v2.gguf") as f:
        assert f.version == 2
        assert torch.equal(f.tensor("w"), torch.arange(8.0))


def test_types_labkit_cannot_decode_are_still_readable_raw(tmp_path: Path) -> None:
    encoded = torch.arange(64, dtype=torch.uint8)
    source = lg.TensorSource("i8", (64,), "I8", lambda: encoded)
    path = lg.write(tmp_path / "i8.gguf", [source], {})
    with lg.open(path) as f:
        assert f.tensors["i8"].qtype == "I8"
        assert torch.equal(f.raw("i8"), encoded)
        with pytest.raises(QuantizationError, match="raw"):
            f.tensor("i8")
    assert gguf.GGUFReader(path).tensors[0].tensor_type == gguf.GGMLQuantizationType.I8


def test_typed_metadata_round_trips_exact_types(model: lg.GGUFFile, tmp_path: Path) -> None:
    path = lg.write(tmp_path / "copy.gguf", {"w": torch.zeros(4)}, model.typed_metadata())
    with lg.open(path) as copy:
        assert copy.metadata_types == model.metadata_types
        for key, value in model.metadata.items():
            assert _plain(copy.metadata[key]) == _plain(value), key


# --- labkit inspect -----------------------------------------------------------------------


def test_cli_inspect_prints_summary_metadata_and_tensors(
    default_model: Path, capsys: pytest.CaptureFixture
) -> None:
    from labkit.cli import main

    assert main(["inspect", str(default_model)]) == 0
    out = capsys.readouterr().out
    assert "architecture   llama" in out
    assert "file size      98,362,432 bytes (measured)" in out
    assert (
        "Q4_1       210 tensors" in out
        and "Q8_0         1 tensors" in out
        and "F32         61 tensors" in out
    )
    assert "tokenizer.ggml.tokens" in out and "[49152 items: '<|endoftext|>', '<|im_start|>'" in out
    assert "..." in out and "Ġ t" in out  # long arrays are elided after a few items
    assert "token_embd.weight                  Q8_0   49152x576" in out
    assert len(out.splitlines()) < 33 + 272 + 30


def test_cli_inspect_json(default_model: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    from labkit.cli import main

    assert main(["inspect", str(default_model), "--json", "--items", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["summary"]["n_tensors"] == 272 and report["summary"]["architecture"] == "llama"
    assert report["summary"]["types"]["Q4_1"]["count"] == 210
    assert (
        sum(row["n_bytes"] for row in report["summary"]["types"].values())
        == report["summary"]["tensor_data_bytes"]
    )
    tokens = next(m for m in report["metadata"] if m["key"] == "tokenizer.ggml.tokens")
    assert tokens == {
        "key": "tokenizer.ggml.tokens",
        "type": "ARRAY[STRING]",
        "value": {"length": 49152, "head": ["<|endoftext|>", "<|im_start|>"]},
    }
    first = report["tensors"][0]
    assert first["name"] == "token_embd.weight" and first["shape"] == [49152, 576] and first["type"] == "Q8_0"


def test_cli_inspect_reports_bad_files_as_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from labkit.cli import main

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + struct.pack("<I", 1) + bytes(16))
    assert main(["inspect", str(bad)]) == 2
    assert "byte 4 (header.version): version 1" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.gguf")]) == 2
    assert "cannot open" in capsys.readouterr().err


def test_missing_file_is_a_labkit_and_file_not_found_error(tmp_path: Path) -> None:
    from labkit.errors import LabkitError

    with pytest.raises(FileNotFoundError, match=r"cannot open .*missing\.gguf: no such file") as caught:
        lg.open(tmp_path / "missing.gguf")
    assert isinstance(caught.value, LabkitError)
