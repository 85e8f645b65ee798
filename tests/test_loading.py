"""labkit.loading: the same tensors from every format and mode; tables; every bad input refused clearly."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch

from labkit import loading
from labkit.errors import GGUFFormatError, LoadError, MissingInputError
from labkit.loading import safetensors_file
from labkit.quant import dequantize

SIZE_BYTES = 3 << 20


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("loading")
    return loading.write_model_set(folder, SIZE_BYTES, quantized=("Q4_0",))


@pytest.fixture(scope="module")
def reference(files: dict[str, Path]) -> dict[str, torch.Tensor]:
    return loading.load(files["F16 gguf"], "eager").tensors


def test_the_set_holds_the_same_weights_in_every_format(files: dict[str, Path]) -> None:
    assert {path.suffix for path in files.values()} == {".gguf", ".safetensors", ".pt"}
    assert {label: loading.detect_format(p) for label, p in files.items()} == {
        "F16 gguf": "gguf",
        "Q4_0 gguf": "gguf",
        "F16 safetensors": "safetensors",
        "F16 pt": "pt",
    }
    assert not [p for p in files["F16 gguf"].parent.iterdir() if p.name.startswith(".")], "no temp files left"


@pytest.mark.parametrize("label", ["F16 gguf", "F16 safetensors", "F16 pt"])
@pytest.mark.parametrize("mode", ["eager", "lazy"])
def test_identical_tensors_across_modes_and_formats(
    files: dict[str, Path], reference: dict[str, torch.Tensor], label: str, mode: str
) -> None:
    weights = loading.load(files[label], mode)
    assert list(weights.tensors) == list(reference)
    for name, tensor in reference.items():
        got = weights.tensors[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(got, tensor), name
    assert weights.n_bytes == sum(t.numel() * t.element_size() for t in reference.values())


@pytest.mark.parametrize("label", ["F16 gguf", "F16 safetensors", "F16 pt"])
def test_partial_loads_the_layers_asked_for_and_the_shared_tensors(
    files: dict[str, Path], reference: dict[str, torch.Tensor], label: str
) -> None:
    weights = loading.load(files[label], "partial", layers=[1])
    assert set(weights.tensors) == {n for n in reference if loading.layer_of(n) in (1, None)}
    assert {"token_embd.weight", "output_norm.weight", "blk.1.ffn_down.weight"} <= set(weights.tensors)
    for name, tensor in weights.tensors.items():
        assert torch.equal(tensor, reference[name]), name
    only_layer = loading.load(files[label], "partial", layers=[1], shared=False)
    assert {loading.layer_of(n) for n in only_layer.tensors} == {1}


def test_quantized_tensors_come_back_as_their_blocks(
    files: dict[str, Path], reference: dict[str, torch.Tensor]
) -> None:
    weights = loading.load(files["Q4_0 gguf"], "lazy")
    spans = {s.name: s for s in weights.spans}
    q = weights.tensors["blk.0.attn_q.weight"]
    assert spans["blk.0.attn_q.weight"].dtype == "Q4_0"
    assert q.dtype == torch.uint8 and q.shape == (spans["blk.0.attn_q.weight"].n_bytes,)
    want = reference["blk.0.attn_q.weight"].float()
    got = dequantize(q, "Q4_0", tuple(want.shape))
    assert (got - want).pow(2).mean().sqrt() < 0.2 * want.pow(2).mean().sqrt(), "the same weights, 4-bit"
    assert torch.equal(weights.tensors["output_norm.weight"], reference["output_norm.weight"].float())


@pytest.mark.parametrize("label", ["F16 gguf", "F16 safetensors", "F16 pt"])
def test_the_table_points_at_each_tensors_bytes(files: dict[str, Path], label: str) -> None:
    spans = loading.tensor_table(files[label])
    data = files[label].read_bytes()
    tensors = loading.load(files[label], "lazy").tensors
    assert [s.offset for s in spans] == sorted(s.offset for s in spans)  # type: ignore[type-var]
    for span in spans:
        assert span.offset is not None, span
        expected = tensors[span.name].reshape(-1).view(torch.uint8).numpy().tobytes()
        assert data[span.offset : span.offset + span.n_bytes] == expected, span.name


def test_exact_table_equals_the_plain_one(files: dict[str, Path]) -> None:
    assert loading.tensor_table(files["F16 gguf"], exact=True) == loading.tensor_table(files["F16 gguf"])


def test_byte_ranges_merge_neighbours_and_keep_gaps() -> None:
    spans = [
        loading.TensorSpan(n, "F32", (1,), off, size)
        for n, off, size in [("a", 0, 100), ("b", 100, 28), ("c", 160, 40), ("d", 1000, 8)]
    ]
    assert loading.byte_ranges(spans) == [(0, 128), (160, 40), (1000, 8)]
    assert loading.byte_ranges(spans, max_gap_bytes=32) == [(0, 200), (1000, 8)]
    with pytest.raises(LoadError, match="place in the file is not known"):
        loading.byte_ranges([loading.TensorSpan("x", "F32", (1,), None, 4)])


def test_layer_numbers_from_names() -> None:
    assert loading.layer_of("blk.12.attn_q.weight") == 12
    assert loading.layer_of("model.layers.3.mlp.up_proj.weight") == 3
    assert loading.layer_of("token_embd.weight") is None
    assert loading.parse_layers("0-3,8, 2") == [0, 1, 2, 3, 8]
    for bad in ["3-1", "a", "1-", ""]:
        with pytest.raises(LoadError, match="not a list of layers"):
            loading.parse_layers(bad)


def test_our_safetensors_match_the_safetensors_package(files: dict[str, Path], tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.torch")
    ours = loading.load(files["F16 safetensors"], "eager").tensors
    theirs = st.load_file(files["F16 safetensors"])
    assert set(ours) == set(theirs) and all(torch.equal(ours[n], theirs[n]) for n in ours)
    other = {
        "w": torch.arange(12, dtype=torch.bfloat16).reshape(3, 4),
        "i": torch.tensor([7, -1], dtype=torch.int8),
    }
    st.save_file(other, tmp_path / "theirs.safetensors")
    back = loading.load(tmp_path / "theirs.safetensors", "lazy").tensors
    assert set(back) == set(other) and all(torch.equal(back[n], other[n]) for n in other)


# --- bad input -------------------------------------------------------------------------------


def _safetensors_bytes(header: object, data: bytes = b"", n_header: int | None = None) -> bytes:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(text) if n_header is None else n_header) + text + data


HOSTILE_SAFETENSORS = {
    "huge length": (_safetensors_bytes({}, n_header=2**62), "header length .* is impossible"),
    "not JSON": (_safetensors_bytes(b"{nope"), "not valid UTF-8 JSON"),
    "not an object": (_safetensors_bytes([1, 2]), "must be a JSON object"),
    "unknown dtype": (
        _safetensors_bytes({"w": {"dtype": "F8", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
        "dtype 'F8'",
    ),
    "size mismatch": (
        _safetensors_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4),
        "hold 4 bytes, but F32 of shape",
    ),
    "negative shape": (
        _safetensors_bytes({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
        "non-negative integers",
    ),
    "hole": (
        _safetensors_bytes({"w": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}, b"\0" * 4),
        "leaves a hole of 2 bytes",
    ),
    "overlap": (
        _safetensors_bytes(
            {
                "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]},
            },
            b"\0" * 4,
        ),
        "overlaps the tensor before it",
    ),
    "truncated": (
        _safetensors_bytes({"w": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}, b"\0" * 5),
        "the file is truncated or has trailing bytes",
    ),
    "extra keys": (
        _safetensors_bytes({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": 1}}, b"\0"),
        "expected keys dtype, shape, data_offsets",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SAFETENSORS))
def test_hostile_safetensors_get_a_clear_error(tmp_path: Path, case: str) -> None:
    data, message = HOSTILE_SAFETENSORS[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(LoadError, match=message):
        safetensors_file.read_header(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (b"hello, world", "unknown weights format"),
        (b"\x00" * 64, "unknown weights format"),
    ],
)
def test_unknown_formats_are_named(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    with pytest.raises(LoadError, match=message):
        loading.load(path)


def test_missing_files_and_folders(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match="no such file"):
        loading.load(tmp_path / "nope.gguf")
    with pytest.raises(LoadError, match="is a folder"):
        loading.load(tmp_path)


class _Payload:
    """Pickles into "call os.makedirs(marker)": harmless, and visible if it ever runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.makedirs, (str(self.marker),))


@pytest.mark.parametrize("mode", ["eager", "lazy"])
def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path: Path, mode: str) -> None:
    marker = tmp_path / "code-ran"
    torch.save({"w": torch.ones(2), "payload": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(LoadError, match=r"weights_only=True\) refused .*GLOBAL os.makedirs.*safety feature"):
        loading.load(tmp_path / "evil.pt", mode)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # what a plain unpickler would have done
    assert marker.exists()


def test_legacy_checkpoints_load_eagerly_but_cannot_be_mapped(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"w": torch.arange(4.0)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(loading.load(path, "eager").tensors["w"], torch.arange(4.0))
    with pytest.raises(LoadError, match="legacy .* cannot be mapped"):
        loading.load(path, "lazy")


def test_a_checkpoint_without_tensors_and_a_broken_archive(tmp_path: Path) -> None:
    torch.save({"epoch": 3}, tmp_path / "meta.pt")
    with pytest.raises(LoadError, match="holds no tensors"):
        loading.load(tmp_path / "meta.pt", "eager")
    good = tmp_path / "w.pt"
    torch.save({"w": torch.ones(1000)}, good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:700])
    with pytest.raises(LoadError, match="not a readable PyTorch checkpoint|refused"):
        loading.load(tmp_path / "cut.pt", "eager")


def test_truncated_gguf_is_a_format_error(files: dict[str, Path], tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(files["F16 gguf"].read_bytes()[:-4096])
    with pytest.raises(GGUFFormatError, match="past the end of the file"):
        loading.load(cut, "eager")


def test_bad_modes_and_layers(files: dict[str, Path]) -> None:
    path = files["F16 gguf"]
    n = loading.n_layers(loading.tensor_table(path))
    with pytest.raises(LoadError, match="mode 'fast' is not one of eager, lazy, partial"):
        loading.load(path, "fast")
    with pytest.raises(LoadError, match="needs the layers"):
        loading.load(path, "partial")
    with pytest.raises(LoadError, match="only make sense with mode='partial'"):
        loading.load(path, "lazy", layers=[0])
    with pytest.raises(LoadError, match=rf"layers \[{n}\] are out of range: .* has layers 0-{n - 1}"):
        loading.load(path, "partial", layers=[0, n])


def test_writing_refuses_what_the_containers_cannot_hold(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="holds quantized tensors"):
        loading.write_as(files["Q4_0 gguf"], tmp_path / "q.safetensors", "safetensors")
    with pytest.raises(LoadError, match="container 'npz' is not one of"):
        loading.write_as(files["F16 gguf"], tmp_path / "q.npz", "npz")
    with pytest.raises(LoadError, match="appears twice"):
        safetensors_file.write(tmp_path / "d.safetensors", [("w", torch.ones(1)), ("w", torch.ones(1))])
    with pytest.raises(LoadError, match="which safetensors lacks"):
        safetensors_file.write(tmp_path / "c.safetensors", [("w", torch.ones(1, dtype=torch.complex64))])
    assert sorted(os.listdir(tmp_path)) == [], "nothing left behind"
