"""labkit.gguf.write: exact bytes, gguf-py round trips, type rules, streaming, atomicity."""

from __future__ import annotations

import struct
import weakref
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import labkit.gguf as lg
from labkit import quant
from labkit.gguf.strings import StringArray


def _plain(value):
    return value.tolist() if isinstance(value, (np.ndarray, StringArray)) else value


def test_bytes_equal_a_hand_built_file(tmp_path: Path) -> None:
    path = lg.write(tmp_path / "tiny.gguf", {"w": torch.tensor([1.0, 2.0])}, {"a.b": 5})
    header = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
    kv = struct.pack("<Q", 3) + b"a.b" + struct.pack("<II", 4, 5)  # key, UINT32, 5
    info = struct.pack("<Q", 1) + b"w" + struct.pack("<IQIQ", 1, 2, 0, 0)  # 1 dim of 2, F32, offset 0
    head = header + kv + info
    expected = head + bytes(-len(head) % 32) + struct.pack("<2f", 1.0, 2.0) + bytes(24)
    assert path.read_bytes() == expected


def test_bytes_equal_gguf_py_writer(tmp_path: Path) -> None:
    a, b = np.arange(12, dtype=np.float32).reshape(3, 4), np.arange(5, dtype=np.float16)
    writer = gguf.GGUFWriter(tmp_path / "ref.gguf", arch="demo")
    writer.add_uint32("x.u", 7)
    writer.add_string("x.s", "hé")
    writer.add_array("x.ls", ["a", "bb"])
    writer.add_float32("x.f", 0.5)
    writer.add_bool("x.b", True)
    writer.add_tensor("a", a)
    writer.add_tensor("b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    metadata = {
        "general.architecture": "demo",
        "x.u": 7,
        "x.s": "hé",
        "x.ls": ["a", "bb"],
        "x.f": 0.5,
        "x.b": True,
    }
    mine = lg.write(tmp_path / "mine.gguf", {"a": torch.from_numpy(a), "b": torch.from_numpy(b)}, metadata)
    assert mine.read_bytes() == (tmp_path / "ref.gguf").read_bytes()


METADATA_RULES = [  # value, expected GGUF type, value as read back
    ("text", "STRING", "text"),
    (True, "BOOL", True),
    (7, "UINT32", 7),
    (-7, "INT32", -7),
    (2**40, "UINT64", 2**40),
    (-(2**40), "INT64", -(2**40)),
    (0.5, "FLOAT32", 0.5),
    (["a", "é"], "ARRAY[STRING]", ["a", "é"]),
    ([True, False], "ARRAY[BOOL]", [True, False]),
    ([1, -2], "ARRAY[INT32]", [1, -2]),
    ([1, 2**40], "ARRAY[INT64]", [1, 2**40]),
    ([0.5, 2], "ARRAY[FLOAT32]", [0.5, 2.0]),
    (np.array([0.25, 1.5]), "ARRAY[FLOAT32]", [0.25, 1.5]),
    (np.array([1, 2], dtype=np.uint16), "ARRAY[UINT16]", [1, 2]),
    (lg.Typed("UINT64", 5), "UINT64", 5),
    (lg.Typed("INT8", [-1, 1]), "ARRAY[INT8]", [-1, 1]),
    (lg.Typed("ARRAY[FLOAT64]", [0.1]), "ARRAY[FLOAT64]", [0.1]),
    (lg.Typed("STRING", []), "ARRAY[STRING]", []),
]


@pytest.mark.parametrize(("value", "type_name", "read_back"), METADATA_RULES)
def test_metadata_type_rules(tmp_path: Path, value, type_name: str, read_back) -> None:
    path = lg.write(tmp_path / "m.gguf", {}, {"k.v": value})
    with lg.open(path) as f:
        assert f.metadata_types["k.v"] == type_name
        assert _plain(f.metadata["k.v"]) == read_back
    field = gguf.GGUFReader(path).fields["k.v"]
    assert field.contents() == read_back


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "empty list"),
        ([[1], [2]], "only str, only bool, or only numbers"),
        (2**70, "does not fit in 64 bits"),
        (lg.Typed("UINT128", 1), "unknown type"),
        (lg.Typed("UINT8", [300]), "do not fit in ARRAY\\[UINT8\\]"),
        (lg.Typed("INT32", [1.5]), "do not fit"),
        (lg.Typed("UINT32", -1), "not a valid UINT32"),
        (lg.Typed("BOOL", 2), "must be True/False"),
        ({"a": 1}, "cannot store a dict"),
    ],
)
def test_bad_metadata_is_refused(tmp_path: Path, value, message: str) -> None:
    with pytest.raises(lg.GGUFFormatError, match=message):
        lg.write(tmp_path / "m.gguf", {}, {"k.v": value})
    assert list(tmp_path.iterdir()) == []


def test_round_trip_through_gguf_py_and_labkit(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 32, generator=generator),
        "f16": torch.randn(64, generator=generator).half(),
        "bf16": torch.randn(2, 2, 32, generator=generator).bfloat16(),
    }
    path = lg.write(tmp_path / "rt.gguf", tensors, {"general.architecture": "demo"})
    reference = {t.name: t for t in gguf.GGUFReader(path).tensors}
    with lg.open(path) as f:
        for name, tensor in tensors.items():
            assert f.tensors[name].shape == tuple(tensor.shape)
            assert f.tensors[name].qtype == {"f32": "F32", "f16": "F16", "bf16": "BF16"}[name]
            assert torch.equal(f.tensor(name, tensor.dtype), tensor)
            expected = tensor.contiguous().view(torch.uint8).reshape(-1).numpy()
            assert np.array_equal(np.asarray(reference[name].data).reshape(-1).view(np.uint8), expected)


@pytest.mark.parametrize(
    "qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
)
def test_quantized_sources_are_written_with_labkit_quant(tmp_path: Path, qtype: str) -> None:
    values = torch.randn(4, 512, generator=torch.Generator().manual_seed(1))
    path = lg.write(tmp_path / "q.gguf", [lg.TensorSource("w", (4, 512), qtype, lambda: values)], {})
    with lg.open(path) as f:
        assert f.tensors["w"].qtype == qtype
        assert torch.equal(f.raw("w"), quant.quantize(values, qtype).reshape(-1))
        torch.testing.assert_close(
            f.tensor("w"), quant.dequantize(quant.quantize(values, qtype), qtype, (4, 512))
        )
    ref = gguf.GGUFReader(path).tensors[0]
    decoded = gguf.quants.dequantize(np.asarray(ref.data), ref.tensor_type).reshape(4, 512)
    torch.testing.assert_close(torch.from_numpy(decoded), lg.open(path).tensor("w"), rtol=0, atol=1e-6)


def test_encoded_bytes_are_written_as_is(tmp_path: Path) -> None:
    encoded = quant.quantize(torch.linspace(-1, 1, 64).reshape(2, 32), "Q8_0")
    path = lg.write(tmp_path / "e.gguf", [lg.TensorSource("w", (2, 32), "Q8_0", lambda: encoded)], {})
    with lg.open(path) as f:
        assert torch.equal(f.raw("w"), encoded.reshape(-1))


def test_sources_load_one_at_a_time_in_order(tmp_path: Path) -> None:
    calls: list[str] = []
    alive: list[weakref.ref] = []

    def loader(name: str):
        def load() -> torch.Tensor:
            assert all(ref() is None for ref in alive), "the previous tensor is still held"
            calls.append(name)
            tensor = torch.full((1024,), float(len(calls)))
            alive.append(weakref.ref(tensor))
            return tensor

        return load

    sources = [lg.TensorSource(f"t{i}", (1024,), "F32", loader(f"t{i}")) for i in range(4)]
    path = lg.write(tmp_path / "s.gguf", sources, {})
    assert calls == ["t0", "t1", "t2", "t3"]
    with lg.open(path) as f:
        assert [float(f.tensor(f"t{i}")[0]) for i in range(4)] == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("error", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "model.gguf"
    target.write_bytes(b"the old file")

    def explode() -> torch.Tensor:
        raise error

    sources = [
        lg.TensorSource("ok", (8,), "F32", lambda: torch.ones(8)),
        lg.TensorSource("bad", (8,), "F32", explode),
    ]
    with pytest.raises(type(error)):
        lg.write(target, sources, {})
    assert target.read_bytes() == b"the old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]  # no temp file left behind
    with pytest.raises(type(error)):
        lg.write(tmp_path / "new.gguf", sources, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]  # and no new file at all


def test_same_input_same_bytes(tmp_path: Path) -> None:
    tensors = {"w": torch.arange(64.0).reshape(2, 32)}
    first = lg.write(tmp_path / "a.gguf", tensors, {"k": "v"}).read_bytes()
    assert lg.write(tmp_path / "b.gguf", tensors, {"k": "v"}).read_bytes() == first


@pytest.mark.parametrize("alignment", [1, 8, 64, 4096])
def test_alignment_is_written_and_honoured(tmp_path: Path, alignment: int) -> None:
    tensors = {"a": torch.ones(3), "b": torch.arange(5.0)}
    path = lg.write(tmp_path / "al.gguf", tensors, {}, alignment=alignment)
    with lg.open(path) as f:
        assert f.alignment == alignment
        assert ("general.alignment" in f.metadata) == (alignment != 32)
        assert all(t.offset % alignment == 0 for t in f.tensors.values())
        assert torch.equal(f.tensor("b"), torch.arange(5.0))
    assert gguf.GGUFReader(path).alignment == alignment


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alignment": 48}, "power of two"),
        ({"alignment": 0}, "power of two"),
        ({"metadata": {"general.alignment": 64}}, "disagrees"),
    ],
)
def test_bad_alignment_is_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    metadata = kwargs.pop("metadata", {})
    with pytest.raises(lg.GGUFFormatError, match=message):
        lg.write(tmp_path / "x.gguf", {"a": torch.ones(2)}, metadata, **kwargs)


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ([lg.TensorSource("", (4,), "F32", torch.ones)], "names are 1..63"),
        ([lg.TensorSource("n" * 64, (4,), "F32", torch.ones)], "names are 1..63"),
        ([lg.TensorSource("a", (4,), "F32", torch.ones)] * 2, "twice"),
        ([lg.TensorSource("a", (0, 4), "F32", torch.ones)], "each >= 1"),
        ([lg.TensorSource("a", (1, 1, 1, 1, 4), "F32", torch.ones)], "1..4 dims"),
        ([lg.TensorSource("a", (2, 48), "Q8_0", torch.ones)], "not a multiple of the block size 32"),
        ([lg.TensorSource("a", (4,), "Q9_9", torch.ones)], "unknown type"),
        ([lg.TensorSource("a", (4,), "F32", lambda: torch.ones(5))], "expected floats of shape"),
        ([lg.TensorSource("a", (4,), "F32", lambda: torch.ones(4, dtype=torch.int32))], "expected floats"),
        ([lg.TensorSource("a", (32,), "Q8_0", lambda: torch.zeros(33, dtype=torch.uint8))], "takes 34"),
        ([lg.TensorSource("a", (32,), "IQ4_NL", lambda: torch.zeros(32))], "cannot encode IQ4_NL"),
        ({"a": torch.zeros(4, dtype=torch.uint8)}, "use TensorSource"),
    ],
)
def test_bad_tensors_are_refused(tmp_path: Path, sources, message: str) -> None:
    with pytest.raises(lg.GGUFFormatError, match=message):
        lg.write(tmp_path / "x.gguf", sources, {})
    assert list(tmp_path.iterdir()) == []


def _never_loaded() -> torch.Tensor:
    raise AssertionError("the writer loaded a tensor before checking the output path")


def test_bad_output_paths_fail_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labkit.errors import LabkitError, OutputPathError

    sources = [lg.TensorSource("w", (4,), "F32", _never_loaded)]
    with pytest.raises(OutputPathError, match=r"the folder .*missing does not exist; create it") as caught:
        lg.write(tmp_path / "missing" / "out.gguf", sources, {})
    assert ".tmp" not in str(caught.value) and isinstance(caught.value, (LabkitError, OSError))
    with pytest.raises(OutputPathError, match=r"is a folder; give a file name"):
        lg.write(tmp_path, sources, {})
    (tmp_path / "plain").write_bytes(b"x")
    with pytest.raises(OutputPathError, match=r"plain is not a folder"):
        lg.write(tmp_path / "plain" / "out.gguf", sources, {})
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    import os

    if os.geteuid() == 0:  # root may write anywhere: pretend the permission bits hold
        monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(OutputPathError, match=r"locked is not writable"):
        lg.write(locked / "out.gguf", sources, {})
    assert list(locked.iterdir()) == []
