"""Write tests/bad_gguf/: one small crafted GGUF file per class of malformed or hostile input.

Each file is a tiny valid GGUF with exactly one thing broken, built byte by byte here
(not with labkit's writer, which refuses to write such files). The classes follow the
GGUF parser CVEs and the checks in ggml's ``src/gguf.cpp`` (see
``shared/research/anchors-features.md`` section 4). ``tests/test_gguf_hostile.py``
opens every file and expects a ``GGUFFormatError`` naming the byte offset and field,
and checks that this script still produces the committed bytes.

Run: ``python scripts/make_bad_gguf.py [OUT_DIR]`` (default ``tests/bad_gguf``).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
F32_TYPE, Q8_0_TYPE = 0, 8  # ggml tensor type ids


def s(text: str | bytes) -> bytes:
    """A GGUF string: u64 length + bytes."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def kv(key: str | bytes, value_type: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", value_type) + payload


def info(
    name: str | bytes, ne: list[int], type_id: int = F32_TYPE, offset: int = 0, n_dims: int | None = None
) -> bytes:
    n_dims = len(ne) if n_dims is None else n_dims
    return s(name) + struct.pack(f"<I{len(ne)}Q", n_dims, *ne) + struct.pack("<IQ", type_id, offset)


ARCH = kv("general.architecture", STRING, s("demo"))


def gguf(
    kvs: list[bytes],
    infos: list[bytes],
    data: bytes = b"",
    *,
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    alignment: int = 32,
) -> bytes:
    """Assemble header + metadata + tensor infos + padding + data."""
    head = b"GGUF" + struct.pack(
        "<IQQ", version, len(infos) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    body = head + b"".join(kvs) + b"".join(infos)
    return body + bytes(-len(body) % alignment) + data


def valid() -> bytes:
    """The file every case starts from: two F32 tensors of 8 values."""
    infos = [info("a", [8]), info("b", [8], offset=32)]
    return gguf([ARCH], infos, bytes(range(32)) + bytes(range(32)))


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, old
    return data.replace(old, new)


def cases() -> dict[str, bytes]:
    """name -> file bytes, one per class of bad input."""
    t8 = [info("a", [8])]
    d32 = bytes(32)
    return {
        "empty": b"",
        "bad_magic": b"GGML" + valid()[4:],
        "version_1": _replace_once(valid()[:8], struct.pack("<I", 3), struct.pack("<I", 1)) + valid()[8:],
        "version_4": valid()[:4] + struct.pack("<I", 4) + valid()[8:],
        "big_endian": valid()[:4] + struct.pack(">I", 3) + valid()[8:],
        "truncated_header": valid()[:13],
        "huge_tensor_count": gguf([ARCH], t8, d32, n_tensors=2**63),
        "huge_kv_count": gguf([ARCH], t8, d32, n_kv=2**64 - 1),
        "huge_key_length": gguf([struct.pack("<Q", 2**64 - 1) + b"x"], [], b""),
        "key_not_utf8": gguf([kv(b"general.\xff", U32, struct.pack("<I", 1))], t8, d32),
        "empty_key": gguf([kv("", U32, struct.pack("<I", 1))], t8, d32),
        "duplicate_key": gguf([ARCH, ARCH], t8, d32),
        "unknown_value_type": gguf([kv("x.y", 13, struct.pack("<I", 1))], t8, d32),
        "bool_value_2": gguf([kv("x.flag", BOOL, b"\x02")], t8, d32),
        "string_past_end": gguf([kv("x.s", STRING, struct.pack("<Q", 1 << 40) + b"abc")], [], b""),
        "string_not_utf8": gguf([kv("x.s", STRING, s(b"caf\xe9"))], t8, d32),
        "huge_array_count": gguf([kv("x.a", ARRAY, struct.pack("<IQ", U32, 2**62))], [], b""),
        "array_string_overflow": gguf(
            [
                kv(
                    "x.a",
                    ARRAY,
                    struct.pack("<IQ", STRING, 2) + s("ok") + struct.pack("<Q", 2**64 - 1) + b"xx",
                )
            ],
            [],
            b"",
        ),
        "nested_array": gguf(
            [kv("x.a", ARRAY, struct.pack("<IQ", ARRAY, 1) + struct.pack("<IQ", U8, 1) + b"\x01")], t8, d32
        ),
        "array_unknown_type": gguf([kv("x.a", ARRAY, struct.pack("<IQ", 99, 1) + b"\x00" * 8)], t8, d32),
        "bool_array_7": gguf([kv("x.a", ARRAY, struct.pack("<IQ", BOOL, 3) + b"\x01\x00\x07")], t8, d32),
        "alignment_wrong_type": gguf([ARCH, kv("general.alignment", U64, struct.pack("<Q", 32))], t8, d32),
        "alignment_not_pow2": gguf(
            [ARCH, kv("general.alignment", U32, struct.pack("<I", 48))], t8, d32, alignment=48
        ),
        "alignment_zero": gguf([ARCH, kv("general.alignment", U32, struct.pack("<I", 0))], t8, d32),
        "tensor_name_too_long": gguf([ARCH], [info("n" * 64, [8])], d32),
        "tensor_name_not_utf8": gguf([ARCH], [info(b"w\xc3(", [8])], d32),
        "duplicate_tensor_name": gguf([ARCH], [info("a", [8]), info("a", [8], offset=32)], d32 + d32),
        "n_dims_0": gguf([ARCH], [info("a", [], n_dims=0)], d32),
        "n_dims_5": gguf([ARCH], [info("a", [8, 1, 1, 1, 1])], d32),
        "dim_zero": gguf([ARCH], [info("a", [8, 0])], d32),
        "dims_overflow": gguf([ARCH], [info("a", [4194305, 4194305, 211106198978564])], d32),
        "unknown_tensor_type": gguf([ARCH], [info("a", [32], type_id=4)], d32),
        "row_not_whole_blocks": gguf([ARCH], [info("a", [33], type_id=Q8_0_TYPE)], d32 + d32),
        "offset_unaligned": gguf([ARCH], [info("a", [8], offset=4)], d32 + d32),
        "data_past_end": gguf([ARCH], [info("a", [8], offset=2**40)], d32),
        "overlapping_tensors": gguf([ARCH], [info("a", [16]), info("b", [8], offset=32)], d32 + d32),
        "truncated_data": valid()[:-40],
        "truncated_metadata": gguf([kv("x.s", STRING, s("z" * 200))], t8, d32)[:150],
        "array_string_not_utf8": gguf(
            [kv("x.a", ARRAY, struct.pack("<IQ", STRING, 2) + s("ok") + s(b"\xc0\xaf"))], t8, d32
        ),
    }


def main(out_dir: str | None = None) -> None:
    folder = Path(out_dir) if out_dir else Path(__file__).resolve().parents[1] / "tests" / "bad_gguf"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in cases().items():
        (folder / f"{name}.gguf").write_bytes(data)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
