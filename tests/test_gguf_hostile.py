"""Malformed and hostile GGUF files: every one raises GGUFFormatError naming the byte offset and field.

The corpus in tests/bad_gguf/ has one small file per class of attack (the GGUF parser CVEs and
ggml's own checks); ``scripts/make_bad_gguf.py`` generates it.
"""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import pytest
import torch

import labkit.gguf as lg

CORPUS = Path(__file__).parent / "bad_gguf"
SCRIPT = Path(__file__).parents[1] / "scripts" / "make_bad_gguf.py"

# file -> what the error must say: "byte N (field...)" plus the reason
EXPECTED = {
    "empty": r"byte 0 \(header\.magic\): the file is empty",
    "bad_magic": r"byte 0 \(header\.magic\): expected b'GGUF', found b'GGML'",
    "version_1": r"byte 4 \(header\.version\): version 1; .*v1 used 32-bit counts",
    "version_4": r"byte 4 \(header\.version\): version 4; labkit reads versions 2 and 3",
    "big_endian": r"byte 4 \(header\.version\): reads as 0x03000000: a big-endian GGUF",
    "truncated_header": r"byte 8 \(header\.tensor_count\): needs 8 bytes but only 5",
    "huge_tensor_count": r"byte 8 \(header\.tensor_count\): 9223372036854775808 tensor infos",
    "huge_kv_count": r"byte 16 \(header\.kv_count\): .*18446744073709551615 key-value pairs",
    "huge_key_length": r"byte 24 \(metadata\[0\]\.key\): string of 18446744073709551615 bytes; at most 65535",
    "key_not_utf8": r"byte 40 \(metadata\[0\]\.key\): not valid UTF-8",
    "empty_key": r"byte 24 \(metadata\[0\]\.key\): empty key",
    "duplicate_key": r"byte 68 \(metadata\[1\] 'general\.architecture'\): duplicate key \(first defined at byte 24\)",
    "unknown_value_type": r"byte 35 \(metadata\[0\] 'x\.y' value_type\): unknown value type 13",
    "bool_value_2": r"byte 42 \(metadata\[0\] 'x\.flag'\): BOOL byte is 2",
    "string_past_end": r"byte 47 \(metadata\[0\] 'x\.s'\): needs 1099511627776 bytes but only 17",
    "string_not_utf8": r"byte 50 \(metadata\[0\] 'x\.s'\): not valid UTF-8",
    "huge_array_count": r"byte 43 \(metadata\[0\] 'x\.a' count\): 4611686018427387904 UINT32 elements",
    "array_string_overflow": r"byte 61 \(metadata\[0\] 'x\.a'\[1\] length\): string of 18446744073709551615 bytes",
    "nested_array": r"byte 51 \(metadata\[0\] 'x\.a'\[0\]\): arrays nested 2 deep",
    "array_unknown_type": r"byte 39 \(metadata\[0\] 'x\.a' element type\): unknown value type 99",
    "bool_array_7": r"byte 53 \(metadata\[0\] 'x\.a'\[2\]\): BOOL byte is 7",
    "alignment_wrong_type": r"byte 68 \(metadata 'general\.alignment'\): type UINT64; must be UINT32",
    "alignment_not_pow2": r"byte 68 \(metadata 'general\.alignment'\): 48; must be a power of two",
    "alignment_zero": r"byte 68 \(metadata 'general\.alignment'\): 0; must be a power of two",
    "tensor_name_too_long": r"byte 68 \(tensor_info\[0\]\.name\): string of 64 bytes; at most 63",
    "tensor_name_not_utf8": r"byte 77 \(tensor_info\[0\]\.name\): not valid UTF-8",
    "duplicate_tensor_name": r"byte 101 \(tensor_info\[1\] 'a'\): duplicate tensor name \(first defined at byte 68\)",
    "n_dims_0": r"byte 77 \(tensor_info\[0\] 'a'\.n_dims\): 0; must be 1\.\.4",
    "n_dims_5": r"byte 77 \(tensor_info\[0\] 'a'\.n_dims\): 5; must be 1\.\.4",
    "dim_zero": r"byte 89 \(tensor_info\[0\] 'a'\.ne\[1\]\): dimension is 0",
    "dims_overflow": r"byte 97 \(tensor_info\[0\] 'a'\.ne\[2\]\): .*more than 2\*\*63 - 1 elements",
    "unknown_tensor_type": r"byte 89 \(tensor_info\[0\] 'a'\.type\): unknown ggml type 4",
    "row_not_whole_blocks": r"byte 68 \(tensor_info\[0\] 'a'\): row length ne\[0\]=33 .*block size 32",
    "offset_unaligned": r"byte 93 \(tensor_info\[0\] 'a'\.offset\): 4 is not a multiple of the alignment 32",
    "data_past_end": r"byte 93 \(tensor_info\[0\] 'a'\.offset\): data .* ends past the end of the file",
    "overlapping_tensors": r"byte 126 \(tensor_info\[1\] 'b'\.offset\): data starts at byte 192, inside tensor 'a'",
    "truncated_data": r"byte 93 \(tensor_info\[0\] 'a'\.offset\): data \[160, 192\) ends past the end of the file "
    r"\(184 bytes\)",
    "truncated_metadata": r"byte 47 \(metadata\[0\] 'x\.s'\): needs 200 bytes but only 103 are left",
}
LAZY = {  # opens (the value is only decoded on access), then fails when read
    "array_string_not_utf8": r"byte 69 \(metadata\[0\] 'x\.a'\[1\]\): not valid UTF-8",
}


def _script():
    spec = importlib.util.spec_from_file_location("make_bad_gguf", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_corpus_is_what_the_script_generates(tmp_path: Path) -> None:
    _script().main(str(tmp_path))
    generated = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_bytes() for p in CORPUS.glob("*.gguf")}
    assert generated == committed
    assert set(generated) == {f"{name}.gguf" for name in [*EXPECTED, *LAZY]}
    assert all(len(data) < 1024 for data in generated.values())  # small files


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_file_is_rejected_naming_offset_and_field(name: str) -> None:
    path = CORPUS / f"{name}.gguf"
    with pytest.raises(lg.GGUFFormatError, match=EXPECTED[name]) as caught:
        lg.open(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("name", sorted(LAZY))
def test_bad_string_in_an_array_is_rejected_when_read(name: str) -> None:
    with lg.open(CORPUS / f"{name}.gguf") as f:
        strings = f.metadata["x.a"]
        assert strings[0] == "ok"
        with pytest.raises(lg.GGUFFormatError, match=LAZY[name]):
            strings[1]
        with pytest.raises(lg.GGUFFormatError, match=LAZY[name]):
            strings.tolist()


@pytest.fixture(scope="module")
def small_valid(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    metadata = {
        "general.architecture": "demo",
        "x.s": ["ab", "", "cde"],
        "x.n": [1, 2, 3],
        "x.f": 0.5,
        "x.b": True,
    }
    tensors = {"a": torch.ones(2, 8), "b": torch.arange(8.0).half()}
    return lg.write(tmp_path_factory.mktemp("valid") / "v.gguf", tensors, metadata).read_bytes()


def test_every_truncation_is_rejected(small_valid: bytes, tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(small_valid)
    with lg.open(path) as f:
        data_end = max(t.offset + t.n_bytes for t in f.tensors.values())
    for size in range(len(small_valid)):
        path.write_bytes(small_valid[:size])
        if size < data_end:
            with pytest.raises(lg.GGUFFormatError, match=r"byte \d+ \("):
                lg.open(path)
        else:  # only trailing padding is missing: still a complete file
            lg.open(path).close()


def test_deep_array_nesting_is_refused_without_recursion(tmp_path: Path) -> None:
    nested = struct.pack("<IQ", 9, 1) * 100_000 + struct.pack("<IQ", 0, 0)  # ARRAY of ARRAY of ... 100k deep
    body = (
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 3) + b"x.a" + struct.pack("<I", 9) + nested
    )
    path = tmp_path / "deep.gguf"
    path.write_bytes(body)
    with pytest.raises(
        lg.GGUFFormatError, match=r"byte 51 \(metadata\[0\] 'x\.a'\[0\]\): arrays nested 2 deep"
    ):
        lg.open(path)


def test_many_empty_strings_cost_no_more_than_the_file(tmp_path: Path) -> None:
    count = 200_000  # 8 bytes each on disk, one int64 each in labkit
    body = (
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + struct.pack("<Q", 3)
        + b"x.a"
        + struct.pack("<IIQ", 9, 8, count)
    )
    path = tmp_path / "empties.gguf"
    path.write_bytes(body + bytes(8 * count))
    with lg.open(path) as f:
        strings = f.metadata["x.a"]
        assert len(strings) == count and strings[count - 1] == ""
        assert strings._bounds.nbytes <= path.stat().st_size + 8


def test_string_array_ending_exactly_at_the_file_end_is_fine(tmp_path: Path) -> None:
    body = (
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 3) + b"x.a" + struct.pack("<IIQ", 9, 8, 1)
    )
    path = tmp_path / "exact.gguf"
    path.write_bytes(body + struct.pack("<Q", 3) + b"abc")
    with lg.open(path) as f:
        assert f.metadata["x.a"] == ["abc"]
    path.write_bytes(body + struct.pack("<Q", 4) + b"abc")
    with pytest.raises(
        lg.GGUFFormatError, match=r"byte 51 \(metadata\[0\] 'x\.a'\[0\] length\): string of 4 bytes"
    ):
        lg.open(path)


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        lg.open(tmp_path / "nope.gguf")


@pytest.mark.parametrize(
    ("n_tensors", "n_kv", "message"),
    [
        (2**17 + 1, 0, r"byte 8 \(header\.tensor_count\): 131073 tensors; labkit reads at most 131072"),
        (0, 2**16 + 1, r"byte 16 \(header\.kv_count\): 65537 key-value pairs; labkit reads at most 65536"),
    ],
)
def test_absurd_counts_are_capped_even_when_the_bytes_are_there(
    tmp_path: Path, n_tensors: int, n_kv: int, message: str
) -> None:
    path = tmp_path / "many.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + bytes(33 * n_tensors + 14 * n_kv))
    with pytest.raises(lg.GGUFFormatError, match=message):
        lg.open(path)
