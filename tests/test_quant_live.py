"""Live cross-check against llama.cpp's own quantizers (needs llama-cpp-python).

Runs ggml's reference quantizer (``ggml_quantize_chunk``, no importance
matrix) and its dequantizer through ctypes on fresh inputs, and compares
bytes and floats with labkit. Skipped when llama-cpp-python is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import labkit.quant as lq

pytest.importorskip("llama_cpp")
from labkit.quant import reference  # noqa: E402

pytestmark = pytest.mark.llama_cpp
if not reference.available():
    pytest.skip("llama-cpp-python is installed but its libggml-base was not found", allow_module_level=True)


def _fixture_script():
    path = Path(__file__).parents[1] / "scripts" / "make_quant_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_quant_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


SCRIPT = _fixture_script()


def _assert_same_blocks(ours: torch.Tensor, theirs: torch.Tensor, qtype: str, what: str) -> None:
    fmt = lq.resolve_format(qtype)
    differ = (ours.reshape(-1, fmt.type_size) != theirs.reshape(-1, fmt.type_size)).any(dim=1)
    assert not bool(differ.any()), f"{qtype} {what}: {int(differ.sum())} blocks differ"


@pytest.mark.parametrize("qtype", lq.QUANT_TYPES)
@pytest.mark.parametrize("input_class", sorted(SCRIPT.INPUT_CLASSES))
def test_fresh_seeds_match_llama_cpp(qtype, input_class):
    for seed in (101, 102, 103):
        x = SCRIPT.make_input(input_class, rows=8, seed=seed)
        ours = lq.quantize(torch.from_numpy(x), qtype, allow_overflow=True)  # llama.cpp stores inf
        _assert_same_blocks(ours, reference.ggml_quantize(x, qtype), qtype, f"{input_class} seed {seed}")


@pytest.mark.parametrize("qtype", lq.QUANT_TYPES)
def test_dequantize_matches_llama_cpp(qtype):
    x = SCRIPT.make_input("heavy_tailed", rows=8, seed=7)
    blob = reference.ggml_quantize(x, qtype)
    ours = lq.dequantize(blob, qtype, x.shape).reshape(-1)
    theirs = reference.ggml_dequantize(blob, qtype, x.size)
    assert torch.equal(ours.view(torch.int32), theirs.view(torch.int32))


any_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(x=hnp.arrays(np.float32, (1, 256), elements=any_f32), qtype=st.sampled_from(lq.QUANT_TYPES))
def test_any_finite_floats_match_llama_cpp(x, qtype):
    with np.errstate(all="ignore"):
        theirs = reference.ggml_quantize(x, qtype)
    _assert_same_blocks(
        lq.quantize(torch.from_numpy(x), qtype, allow_overflow=True), theirs, qtype, "hypothesis input"
    )


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(1e-12, 1e12), seed=st.integers(0, 2**31), qtype=st.sampled_from(lq.QUANT_TYPES))
def test_random_scales_match_llama_cpp(scale, seed, qtype):
    x = (np.random.default_rng(seed).standard_normal((2, 512)) * scale).astype(np.float32)
    _assert_same_blocks(
        lq.quantize(torch.from_numpy(x), qtype, allow_overflow=True),
        reference.ggml_quantize(x, qtype),
        qtype,
        f"scale {scale}",
    )
