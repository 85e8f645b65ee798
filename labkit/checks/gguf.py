"""Automatic checks for the exercises of notebook 03 (the GGUF file).

``check_header_parser(parse_header)`` runs a student's parser of the 24-byte GGUF
header on the default model and on crafted headers; its verdict names the first
case it gets wrong. The header is, little-endian::

    offset 0   magic        4 bytes  b"GGUF"
    offset 4   version      u32      3
    offset 8   tensor_count u64
    offset 16  kv_count     u64
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from labkit.checks import CheckResult, NotYet, attempt, verdict

HEADER_FIELDS = ("magic", "version", "n_tensors", "n_kv")
_HEADER = struct.Struct("<4sIQQ")


def crafted_header(
    version: int, n_tensors: int, n_kv: int, magic: bytes = b"GGUF", tail: bytes = b""
) -> bytes:
    """A GGUF header with the given fields, followed by ``tail`` (bytes the parser must ignore)."""
    return _HEADER.pack(magic, version, n_tensors, n_kv) + tail


def header_cases(path: str | Path | None = None) -> list[tuple[bytes, dict[str, Any]]]:
    """The cases the check runs: ``(bytes, expected fields)``.

    The first is the start of the default model (its expected values come from
    ``labkit.gguf.open``); the others catch a u32 read where a u64 belongs, and a
    parser that reads past byte 24.
    """
    from labkit import gguf
    from labkit.modelfiles import default_model_path

    path = Path(path) if path is not None else default_model_path()
    with gguf.open(path) as f:
        expected = {
            "magic": b"GGUF",
            "version": f.version,
            "n_tensors": len(f.tensors),
            "n_kv": len(f.metadata),
        }
    with path.open("rb") as handle:
        cases = [(handle.read(64), expected)]
    for version, n_tensors, n_kv in [(3, 0, 0), (2, 7, 5), (3, 2**32 + 5, 2**40 + 3), (3, 1, 2**63)]:
        data = crafted_header(version, n_tensors, n_kv, tail=b"\xff" * 16)
        cases.append((data, {"magic": b"GGUF", "version": version, "n_tensors": n_tensors, "n_kv": n_kv}))
    return cases


def _as_fields(result: Any) -> dict[str, Any]:
    """Accept a mapping with ``HEADER_FIELDS`` keys or a 4-tuple in that order."""
    if isinstance(result, Mapping):
        missing = [k for k in HEADER_FIELDS if k not in result]
        if missing:
            raise NotYet(f"your parser's result has no {missing}", f"return a dict with keys {HEADER_FIELDS}")
        fields = {k: result[k] for k in HEADER_FIELDS}
    elif isinstance(result, Sequence) and not isinstance(result, (bytes, str)) and len(result) == 4:
        fields = dict(zip(HEADER_FIELDS, result, strict=True))
    else:
        raise NotYet(
            f"your parser returned a {type(result).__name__}",
            f"return a dict with keys {HEADER_FIELDS} or a 4-tuple in that order",
        )
    if isinstance(fields["magic"], str):
        fields["magic"] = fields["magic"].encode("ascii")
    return fields


def check_header_parser(parse_header: Callable[[bytes], Any], path: str | Path | None = None) -> CheckResult:
    """Check a parser of the 24-byte GGUF header.

    Args:
        parse_header: takes ``bytes`` (at least 24; more may follow) and returns the
            fields ``magic``, ``version``, ``n_tensors``, ``n_kv`` (a dict or a tuple);
            it must raise ``ValueError`` when the magic is not ``b"GGUF"``.
        path: the GGUF file whose header is the first case (default: the default model).

    Returns:
        A ``CheckResult``: passed when every case is right; otherwise it names the first case that
        failed, what was expected and what came back.
    """
    cases = header_cases(path)

    def run() -> str:
        for data, expected in cases:
            case = f"header {data[:24].hex(' ')}"
            got = _as_fields(attempt(parse_header, bytes(data), case=case))
            if got != expected:
                raise NotYet(f"{case}: expected {expected}, got {got}", _header_hint(got, expected))
        _check_rejects_bad_magic(parse_header)
        return f"all {len(cases)} headers parsed right, and a bad magic was rejected"

    return verdict(run, n_cases=len(cases) + 1)


def _header_hint(got: dict[str, Any], expected: dict[str, Any]) -> str:
    if got["n_tensors"] == expected["n_tensors"] & 0xFFFFFFFF != expected["n_tensors"]:
        return "the counts are u64 ('Q', 8 bytes), not u32 ('I')"
    return "unpack '<4sIQQ' from offset 0: little-endian magic, u32 version, u64 n_tensors, u64 n_kv"


def _check_rejects_bad_magic(parse_header: Callable[[bytes], Any]) -> None:
    bad = crafted_header(3, 1, 1, magic=b"GGML")
    try:
        parse_header(bad)
    except NotImplementedError:
        raise
    except ValueError:
        return
    except Exception as error:  # noqa: BLE001 - any other error becomes a hint
        raise NotYet(
            f"a header starting with b'GGML' raised {type(error).__name__}",
            "raise ValueError for a bad magic",
        ) from None
    raise NotYet(
        "a header starting with b'GGML' was accepted",
        "check the magic first and raise ValueError if it is wrong",
    )
