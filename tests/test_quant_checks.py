"""Notebook 02's helpers: the Q8_0 exercise checker, the measurements, the figures and the explorer."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import labkit.gguf as lg
import labkit.quant as lq
from labkit.checks.quant import check_q8_0
from labkit.modelfiles import synthetic_llama
from labkit.quant import tradeoff


def _q8_0_block(
    block: torch.Tensor, *, rounding: str = "away", swap: bool = False, divide: bool = False
) -> bytes:
    """A Q8_0 block written by hand, right (rounding='away') or with a classic mistake."""
    d = np.float32(float(block.abs().max())) / np.float32(127)
    inverse = np.float32(1) / d if d else np.float32(0)
    qs = []
    for v in block.tolist():
        y = float(np.float32(v) / d if divide and d else np.float32(v) * inverse)
        if rounding == "away":
            qs.append(int(math.copysign(math.floor(abs(y) + 0.5), y)))
        elif rounding == "even":
            qs.append(round(y))
        else:
            qs.append(int(y))
    d_bytes = struct.pack("<e", float(d))
    return (d_bytes[::-1] if swap else d_bytes) + bytes(q & 0xFF for q in qs)


def test_a_right_solution_passes():
    result = check_q8_0(_q8_0_block)
    assert result.passed and result.n_cases > 20


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        ({"rounding": "even"}, r"ties \*away from zero\*"),
        ({"rounding": "trunc"}, r"looks truncated"),
        ({"swap": True}, r"little-endian"),
        ({"divide": True}, r"multiplies by the inverse"),
    ],
)
def test_mistakes_are_explained(mistake, message):
    result = check_q8_0(lambda block: _q8_0_block(block, **mistake))
    assert result.verdict == "not yet" and re.search(message, result.hint), result


def test_wrong_length_and_type_are_explained():
    result = check_q8_0(lambda block: _q8_0_block(block)[:33])
    assert not result.passed and "has 33 bytes" in result.message and "34 bytes" in result.hint
    result = check_q8_0(lambda block: block.numpy())
    assert not result.passed and "array of float32" in result.message


def test_a_stub_and_a_crash_get_a_verdict_not_a_traceback():
    def stub(block):
        raise NotImplementedError()

    assert check_q8_0(stub).verdict == "not answered"
    result = check_q8_0(lambda block: 1 / 0)
    assert result.verdict == "not yet" and "ZeroDivisionError" in result.message


def test_sweep_sizes_and_errors():
    x = torch.randn(8, 512, generator=torch.Generator().manual_seed(0))
    points = tradeoff.sweep({"x": x}, n_weights=1_000_000, qtypes=["F16", "Q8_0", "Q4_K"])
    assert [p.size_bytes for p in points] == [2_000_000, 1_062_500, 562_500]
    assert points[0].stats.snr_db > points[1].stats.snr_db > points[2].stats.snr_db
    assert tradeoff.as_rows(torch.zeros(3, 576), 256).shape == (6, 256)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory):
    path = synthetic_llama(tmp_path_factory.mktemp("q") / "small.gguf", qtype="Q8_0", n_layers=1)
    with lg.open(path) as f:
        yield f


def test_model_sample_takes_every_nth_row_of_the_matrices(small_model):
    sample = tradeoff.model_sample(small_model, every_nth_row=4)
    assert set(sample) == {n for n, info in small_model.tensors.items() if len(info.shape) == 2}
    assert torch.equal(sample["blk.0.ffn_up.weight"], small_model.tensor("blk.0.ffn_up.weight")[::4])


def test_load_path_times_describe_the_file(small_model):
    times = tradeoff.time_load_path(small_model, with_gguf_py=False)
    assert times.file_bytes == Path(small_model.path).stat().st_size
    assert times.n_weights == sum(t.n_elements for t in small_model.tensors.values())
    assert times.gguf_py_s is None and times.read_warm_s > 0 and times.dequantize_s > 0
    # a device time only comes with evidence that the read reached the device
    assert (times.read_device_s is None) == ("NOT a disk number" in times.device_how)


figures = pytest.importorskip("labkit.figures.quant")


def test_annotated_block_names_every_field():
    raw = bytes(lq.quantize((torch.arange(32.0) % 16)[None], "Q4_1")[0].numpy())
    text = figures.annotated_block(raw, "Q4_1")
    assert [line.split()[-1] for line in text.splitlines()] == ["d", "m", "qs"]
    assert text.splitlines()[0].startswith("   0  00 3c")  # d = 1.0


def test_explorer_controls_name_what_is_shown(small_model, monkeypatch):
    widgets = pytest.importorskip("labkit.widgets.quant")
    explorer = widgets.error_explorer(small_model)
    assert (explorer.type_picker.value, explorer.tensor_picker.value) == ("Q4_K", "token_embd.weight")
    redraws, pair = [], widgets._pair

    def counting_pair(f, name, qtype):
        redraws.append((name, qtype))
        return pair(f, name, qtype)

    monkeypatch.setattr(widgets, "_pair", counting_pair)
    explorer.show("Q6_K", "blk.0.attn_q.weight")
    assert (explorer.type_picker.value, explorer.tensor_picker.value) == ("Q6_K", "blk.0.attn_q.weight")
    assert redraws == [("blk.0.attn_q.weight", "Q6_K")]  # setting the pickers did not redraw again
    explorer.tensor_picker.value = "blk.0.ffn_up.weight"  # what a user's pick does
    assert redraws[1:] == [("blk.0.ffn_up.weight", "Q6_K")]
    assert explorer.figure.layout.title.text.startswith("blk.0.ffn_up.weight as Q6_K")


def test_float_stand_in_lies_within_half_a_step_of_the_file(small_model):
    name = "blk.0.ffn_up.weight"  # Q8_0: the step d is each block's first two bytes
    x, how = tradeoff.float_stand_in(small_model, name, every_nth_row=2, max_rows=8)
    n_rows, n_per_row = small_model.tensors[name].shape
    decoded = small_model.tensor(name)[::2][:8]
    blocks = small_model.raw(name).reshape(n_rows, n_per_row // 32, 34)[::2][:8]  # (rows, blocks, bytes)
    step = blocks[..., :2].contiguous().view(torch.float16).float().abs()  # (rows, blocks, 1)
    half_step = (step / 2).expand(-1, -1, 32).reshape(8, n_per_row)
    assert x.shape == decoded.shape and not torch.equal(x, decoded)
    assert bool(((x - decoded).abs() <= half_step + 1e-7).all())
    assert "within its own quantization step" in how
    again, _ = tradeoff.float_stand_in(small_model, name, every_nth_row=2, max_rows=8)
    assert torch.equal(x, again)  # seeded


def test_float_stand_in_refuses_k_quants(tmp_path):
    path = synthetic_llama(tmp_path / "k.gguf", qtype="Q4_K", n_layers=1, dim=256)
    with lg.open(path) as f:
        name = next(n for n, t in f.tensors.items() if t.qtype == "Q4_K")
        with pytest.raises(lq.QuantizationError, match="no single step per block"):
            tradeoff.float_stand_in(f, name)


def test_file_type_size_matches_llama_cpp_on_llama_2_7b():
    tensors, metadata = tradeoff.llama_shapes(**tradeoff.LLAMA_2_7B)
    f16 = tradeoff.file_type_size(tensors, metadata, "F16")
    q4_0 = tradeoff.file_type_size(tensors, metadata, "Q4_0")
    q4_k_m = tradeoff.file_type_size(tensors, metadata, "Q4_K_M")
    assert f16.n_weights == 6_738_415_616  # Llama-2-7B's parameter count
    # llama.cpp's Q4_K_M of Llama-2-7B is a 4.08 GB file (3.80 GiB); Q4_0 keeps output.weight in Q6_K
    assert q4_k_m.size_bytes == 4_080_263_168 and 4.8 < q4_k_m.bits_per_weight < 4.9
    assert 4.5 < q4_0.bits_per_weight < 4.55 and f16.bits_per_weight == pytest.approx(16, abs=0.01)


def test_explorer_measures_against_a_float_original(small_model):
    widgets = pytest.importorskip("labkit.widgets.quant")
    explorer = widgets.error_explorer(small_model)
    numbers = explorer.show("Q8_0", "blk.0.attn_q.weight")  # the file's own type: no longer zero error
    assert "inf" not in numbers and "stand-in for the float original" in numbers
    view = explorer.static()._repr_html_()
    assert view.startswith("<details>") and "blk.0.attn_q.weight as Q8_0" in view and "<script" not in view
