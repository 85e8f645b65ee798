"""labkit.quant writes exactly llama.cpp's bytes: checked against stored reference output.

The fixtures in tests/fixtures/quant/ were made by scripts/make_quant_fixtures.py
with ggml's own reference quantizers (``ggml_quantize_chunk``, no importance
matrix) from llama-cpp-python's libggml; these tests need neither.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import labkit.quant as lq

FIXTURES = Path(__file__).parent / "fixtures" / "quant"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
CLASSES = sorted(name.removesuffix(".npz") for name in MANIFEST["sha256"])


def _load(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def test_fixtures_are_the_ones_the_manifest_lists():
    assert set(MANIFEST["types"]) == set(lq.QUANT_TYPES)
    assert {
        "gaussian",
        "heavy_tailed",
        "zero_blocks",
        "constant_blocks",
        "outlier",
        "fp16_subnormal",
        "real_weights",
    } <= set(CLASSES)
    for file_name, digest in MANIFEST["sha256"].items():
        assert hashlib.sha256((FIXTURES / file_name).read_bytes()).hexdigest() == digest, file_name
    total_bytes = sum(p.stat().st_size for p in FIXTURES.iterdir())
    assert total_bytes < 2_000_000


@pytest.mark.parametrize("input_class", CLASSES)
@pytest.mark.parametrize("qtype", lq.QUANT_TYPES)
def test_quantize_matches_llama_cpp_bytes(input_class, qtype):
    data = _load(input_class)
    x, expected = data["x"], data[qtype]
    got = lq.quantize(torch.from_numpy(x), qtype).numpy()
    assert got.shape == expected.shape
    if not np.array_equal(got, expected):
        fmt = lq.resolve_format(qtype)
        bad = np.flatnonzero((got.reshape(-1, fmt.type_size) != expected.reshape(-1, fmt.type_size)).any(1))
        pytest.fail(
            f"{qtype} on {input_class}: {bad.size} of {got.size // fmt.type_size} blocks differ, "
            f"first block {bad[0]}"
        )


@pytest.mark.parametrize("input_class", CLASSES)
@pytest.mark.parametrize("qtype", lq.QUANT_TYPES)
def test_dequantize_of_llama_cpp_bytes_matches_gguf_py(input_class, qtype):
    data = _load(input_class)
    x, blob = data["x"], data[qtype]
    ours = lq.dequantize(torch.from_numpy(blob), qtype, x.shape).numpy()
    theirs = gguf.quants.dequantize(blob, gguf.GGMLQuantizationType[qtype])
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.reshape(x.shape).view(np.uint32))
