"""Fuzz labkit.gguf.open with mutated valid files: it either works or raises GGUFFormatError.

Hypothesis flips bytes, overwrites u32/u64 fields with boundary values (0, 2**32, 2**63,
2**64 - 1, the file size, ...), truncates, inserts and deletes bytes, mostly inside the
header / metadata / tensor-info part of two small valid files. Every mutant must either
raise ``GGUFFormatError`` on open, or open and then survive being read completely
(every metadata value decoded, the layout summed, every tensor's bytes and values read),
where the only other allowed error is a lazy ``GGUFFormatError`` (a bad UTF-8 string in an
array) or ``QuantizationError`` (a tensor type labkit cannot decode).

CI runs 300 examples (a few seconds). For a long run (e.g. before a release)::

    LABKIT_FUZZ_EXAMPLES=200000 .venv/bin/pytest tests/test_gguf_fuzz.py -q

(20,000 examples took 290 s on the busy 2-core development VM).
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import labkit.gguf as lg
from labkit import quant
from labkit.errors import LabkitError, QuantizationError
from labkit.gguf.strings import StringArray

MAX_EXAMPLES = int(os.environ.get("LABKIT_FUZZ_EXAMPLES", "300"))
U64_VALUES = [
    0,
    1,
    2,
    3,
    7,
    8,
    31,
    32,
    33,
    63,
    64,
    255,
    256,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**62,
    2**63 - 1,
    2**63,
    2**64 - 1,
]
U32_VALUES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 12, 13, 30, 31, 39, 42, 255, 2**16, 2**31, 2**32 - 1]


def _seed_files() -> list[bytes]:
    folder = Path(tempfile.mkdtemp(prefix="labkit-fuzz-seed-"))
    metadata = {
        "general.architecture": "demo",
        "x.s": "héllo",
        "x.strings": ["ab", "", "cde", "ü"],
        "x.ints": [1, -2, 3],
        "x.f": 0.5,
        "x.b": True,
        "x.u64": lg.Typed("UINT64", 2**40),
        "x.bools": [True, False],
        "x.i8": lg.Typed("INT8", [-1, 2]),
        "x.f64": lg.Typed("FLOAT64", 1.25),
    }
    first = lg.write(folder / "a.gguf", {"a": torch.ones(2, 8), "b": torch.arange(8.0).half()}, metadata)
    q8 = quant.quantize(torch.linspace(-1, 1, 64).reshape(2, 32), "Q8_0")
    sources = [
        lg.TensorSource("q", (2, 32), "Q8_0", lambda: q8),
        lg.TensorSource("bf", (4,), "BF16", lambda: torch.ones(4)),
    ]
    second = lg.write(folder / "b.gguf", sources, {"tokenizer.ggml.tokens": ["<s>", "a", "b"]}, alignment=8)
    seeds = [first.read_bytes(), second.read_bytes()]
    shutil.rmtree(folder)
    return seeds


SEEDS = _seed_files()


@st.composite
def mutants(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.integers(0, len(SEEDS) - 1))])
    head_end = min(len(data), 700)  # where the structure lives; the rest is tensor bytes
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["byte", "u32", "u64", "u64", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(head_end - 1, 0)))
        if kind == "byte" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == "u32" and pos + 4 <= len(data):
            struct.pack_into("<I", data, pos, draw(st.sampled_from(U32_VALUES)))
        elif kind == "u64" and pos + 8 <= len(data):
            value = draw(st.sampled_from([*U64_VALUES, len(data), len(data) - pos]))
            struct.pack_into("<Q", data, pos, value % 2**64)
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
    return bytes(data)


def _read_everything(f: lg.GGUFFile) -> None:
    for value in f.metadata.values():
        if isinstance(value, StringArray):
            try:
                value.tolist()
            except lg.GGUFFormatError:
                pass  # a bad UTF-8 string inside an array: reported when read, as designed
    regions = f.layout()
    assert sum(r.n_bytes for r in regions) == f.file_size_bytes
    assert all(a.end == b.start for a, b in zip(regions, regions[1:], strict=False))
    for name, info in f.tensors.items():
        assert f.raw(name).numel() == info.n_bytes
        try:
            values = f.tensor(name)
        except QuantizationError:
            continue  # a valid type labkit cannot decode (e.g. IQ2_XXS): raw() still works
        assert tuple(values.shape) == info.shape and values.dtype == torch.float32


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=5000,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=mutants())
def test_mutated_files_open_or_raise_gguf_format_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.gguf"
        path.write_bytes(data)
        try:
            f = lg.open(path)
        except lg.GGUFFormatError as error:
            assert "byte " in str(error)
            return
        with f:
            _read_everything(f)


@pytest.mark.parametrize("index", range(len(SEEDS)))
def test_seed_files_are_valid(index: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "s.gguf"
        path.write_bytes(SEEDS[index])
        with lg.open(path) as f:
            _read_everything(f)
            assert np.all(np.isfinite(f.tensor(next(iter(f.tensors))).numpy()))


# --- the writer's inputs ------------------------------------------------------------------------
#
# Hypothesis draws metadata values (huge and non-finite floats, 64-bit-overflowing ints, strings
# with lone surrogates, mixed lists, numpy arrays, Typed values of every type name) and tensors
# (odd shapes, NaN/Inf, values beyond F16, every writable type). ``gguf.write`` must either write a
# file that reads back with the same metadata, or raise a ``LabkitError``, and leave nothing else.

_ODD_FLOATS = st.sampled_from([math.nan, math.inf, 1e300, -1e39, 3.5e38, 65520.0])
_ANY_FLOAT = st.floats(width=32, allow_nan=False, allow_infinity=False) | _ODD_FLOATS
_TEXT = st.text(max_size=8) | st.sampled_from(["ok\udc80", "\ud800"])  # UTF-8 text, or a lone surrogate
_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.sampled_from([2**64, -(2**63) - 1])
_SCALARS = st.one_of(_TEXT, st.booleans(), _INTS, _ANY_FLOAT)
_TYPED = st.one_of(
    st.builds(lg.Typed, st.sampled_from(["UINT8", "INT16", "UINT64", "INT64"]), st.integers(-300, 300)),
    st.builds(lg.Typed, st.sampled_from(["FLOAT64", "FLOAT32"]), _ANY_FLOAT),
    st.builds(lg.Typed, st.sampled_from(["ARRAY[INT32]", "STRING", "NOPE"]), st.lists(_INTS, max_size=3)),
)
_ARRAYS = hnp.arrays(
    st.sampled_from([np.float64, np.float32]), st.integers(0, 4), elements=st.floats(-1e6, 1e6) | _ODD_FLOATS
) | hnp.arrays(
    st.sampled_from([np.int64, np.uint8, np.int16]), st.integers(0, 4), elements=st.integers(0, 200)
)
_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, min_size=1, max_size=4), _TYPED, _ARRAYS)
_SHAPES = st.sampled_from(
    [(2, 256), (256,), (1, 2, 32), (3, 32)] * 3 + [(0, 32), (-1, 32), (2, 33), (4.5, 32)]
)
_NAMES = st.sampled_from(["w", "blk.0.attn_q.weight"] * 3 + ["", "x" * 70, "w\udc80"])
_TENSOR_VALUES = st.floats(width=32, min_value=-100, max_value=100) | _ODD_FLOATS


@st.composite
def _tensors(draw: st.DrawFn) -> list[lg.TensorSource]:
    sources = []
    for index in range(draw(st.integers(0, 3))):
        qtype = draw(
            st.sampled_from(["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"] * 2 + ["IQ2_XXS"])
        )
        shape = draw(_SHAPES)
        values = draw(hnp.arrays(np.float32, 8, elements=_TENSOR_VALUES))

        def load(values: np.ndarray = values, shape: tuple[int, ...] = shape) -> torch.Tensor:
            n = math.prod(shape)  # the writer refuses bad shapes before it loads anything
            return torch.from_numpy(values).repeat(n // 8 + 1)[:n].reshape(shape)

        sources.append(lg.TensorSource(f"{draw(_NAMES)}.{index}", shape, qtype, load))
    return sources


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow warnings while drawing
@settings(max_examples=MAX_EXAMPLES // 2, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    metadata=st.dictionaries(st.text(min_size=1, max_size=6) | st.just(""), _VALUES, max_size=3),
    tensors=_tensors(),
    alignment=st.sampled_from([32, 32, 1, 64, 3]),
)
def test_the_writer_writes_faithfully_or_raises_labkit_error(
    metadata: dict[str, object], tensors: list[lg.TensorSource], alignment: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "out.gguf"
        try:
            lg.write(path, tensors, metadata, alignment=alignment)
        except LabkitError as error:
            event(f"refused: {type(error).__name__}")
            assert os.listdir(folder) == []  # nothing written, nothing left behind
            return
        event(f"written with {len(tensors)} tensors")
        assert os.listdir(folder) == ["out.gguf"]
        with lg.open(path) as f:
            assert list(f.metadata)[: len(metadata)] == list(metadata)
            for key, value in metadata.items():
                _assert_same_value(f.metadata[key], value.value if isinstance(value, lg.Typed) else value)
            for source in tensors:
                back = f.tensor(source.name)
                assert tuple(back.shape) == source.shape and bool(torch.isfinite(back).all())


def _assert_same_value(read: object, written: object) -> None:
    """What the reader returns for a value the writer accepted (floats are stored as FLOAT32)."""
    if isinstance(written, np.ndarray):
        written = written.tolist()
    if isinstance(read, np.ndarray):
        read = read.tolist()
    if isinstance(written, (list, tuple)) or isinstance(read, StringArray):
        assert len(list(read)) == len(list(written))  # type: ignore[arg-type]
        for r, w in zip(list(read), list(written), strict=True):  # type: ignore[arg-type]
            _assert_same_value(r, w)
    elif isinstance(written, float):
        assert (
            math.isnan(written) == math.isnan(float(read))
            if math.isnan(written)
            else (
                float(read) == pytest.approx(written, rel=1e-6, abs=1e-38)
                or float(read) == float(np.float32(written))
            )
        )
    else:
        assert read == written
