"""labkit.quant: hand-built goldens, round trips, gguf-py cross-checks, error paths."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import labkit.quant as lq
from labkit.errors import LabkitError, QuantizationError
from labkit.formats import FORMATS
from labkit.quant.rounding import nearest_int, roundf_to_int8, sequential_sum, sqrtf

LEGACY = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


def _bytes(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)


def _ggml_type(qtype: str) -> gguf.GGMLQuantizationType:
    return gguf.GGMLQuantizationType[qtype]


# --- hand-built single-block goldens ------------------------------------------
# Each block is chosen so that the bytes can be worked out on paper
# (d = 1.0 is fp16 0x3C00, stored little-endian as 00 3C).

ONE = [0x00, 0x3C]
J = torch.arange(32, dtype=torch.float32)


def test_q8_0_golden_rounds_ties_away_from_zero():
    x = torch.tensor([127.0, -2.5, 2.5, 0.5, -0.5, 0.49999997] + [0.0] * 26)
    # max |x| = 127 -> d = 1; roundf: 2.5 -> 3, -2.5 -> -3, 0.5 -> 1, -0.5 -> -1, 0.49999997 -> 0
    expected = ONE + [127, 0xFD, 3, 1, 0xFF, 0] + [0] * 26
    assert lq.quantize(x[None], "Q8_0")[0].tolist() == expected


def test_q4_0_golden_nibbles_hold_weights_j_and_j_plus_16():
    x = (J % 16) - 8  # the first weight, -8, has the largest magnitude -> d = -8 / -8 = 1
    expected = ONE + [j * 0x11 for j in range(16)]  # q = x + 8; weight j low nibble, j+16 high
    assert lq.quantize(x[None], "Q4_0")[0].tolist() == expected


def test_q4_1_golden():
    expected = ONE + [0, 0] + [j * 0x11 for j in range(16)]  # d = (15 - 0) / 15 = 1, m = 0
    assert lq.quantize((J % 16)[None], "Q4_1")[0].tolist() == expected


def test_q5_0_golden_high_bits_in_qh():
    # max magnitude -16 -> d = 1, q = x + 16 = j: weights 16..31 have bit 4 set -> qh = 0xFFFF0000
    expected = ONE + [0x00, 0x00, 0xFF, 0xFF] + [j * 0x11 for j in range(16)]
    assert lq.quantize((J - 16)[None], "Q5_0")[0].tolist() == expected


def test_q5_1_golden():
    expected = ONE + [0, 0] + [0x00, 0x00, 0xFF, 0xFF] + [j * 0x11 for j in range(16)]
    assert lq.quantize(J[None], "Q5_1")[0].tolist() == expected


def test_float_goldens():
    x = torch.tensor([[1.0, -2.0, 65520.0, 1e-8]])
    f16 = lq.quantize(x, "F16", allow_overflow=True)[0]  # 65520 rounds to inf, as in ggml
    assert f16.tolist() == [0x00, 0x3C, 0x00, 0xC0, 0x00, 0x7C, 0x00, 0x00]
    assert lq.quantize(x[:, :2], "BF16")[0].tolist() == [0x80, 0x3F, 0x00, 0xC0]
    assert lq.quantize(x[:, :1], "F32")[0].tolist() == [0x00, 0x00, 0x80, 0x3F]


def test_q4_k_golden_exact_grid():
    # every sub-block of 32 holds 0..15 twice: the plain grid is exact (scale 1, min 0)
    x = (torch.arange(256) % 16).float()
    got = lq.quantize(x[None], "Q4_K")[0]
    assert got[0:2].tolist() == [0x10, 0x24]  # d = fp16(1/63) = 0x2410
    assert got[2:4].tolist() == [0x00, 0x00]  # dmin = 0
    assert got[4:16].tolist() == [0xFF] * 4 + [0x00] * 4 + [0x0F] * 4  # 6-bit scales 63, mins 0
    assert got[16:].tolist() == [(i % 16) * 0x11 for i in range(32)] * 4


@pytest.mark.parametrize("qtype", lq.QUANT_TYPES)
def test_all_zero_block(qtype):
    got = lq.quantize(torch.zeros(1, 256), qtype)[0]
    if qtype in ("Q4_0", "Q5_0"):
        # d = max / -8 with max = +0.0 gives -0.0: the sign bit lands in the file
        assert got[0:2].tolist() == [0x00, 0x80]
        assert torch.equal(lq.dequantize(got, qtype, (256,)), torch.zeros(256))
    else:
        assert int(got.sum()) == 0


# --- shapes and round trips ---------------------------------------------------


@pytest.mark.parametrize("qtype", lq.QUANT_TYPES)
def test_shapes_and_dtypes(qtype):
    fmt = FORMATS[qtype]
    x = torch.randn(2, 3, 512, generator=torch.Generator().manual_seed(1))
    q = lq.quantize(x, qtype)
    assert q.dtype == torch.uint8 and q.shape == (2, 3, fmt.row_bytes(512))
    back = lq.dequantize(q.reshape(-1), qtype, x.shape)  # a flat byte view works too
    assert back.dtype == torch.float32 and back.shape == x.shape


def test_format_object_and_lower_case_names_are_accepted():
    x = torch.randn(1, 32)
    assert torch.equal(lq.quantize(x, FORMATS["Q8_0"]), lq.quantize(x, "q8_0"))


def test_half_precision_and_float64_inputs_are_read_as_float32():
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(2))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        y = x.to(dtype)
        assert torch.equal(lq.quantize(y, "Q4_K"), lq.quantize(y.float(), "Q4_K"))
    assert torch.equal(lq.quantize(x.numpy(), "Q8_0"), lq.quantize(x, "Q8_0"))


# SNR (dB) of a gaussian round trip: each type's typical value minus a margin.
MIN_SNR_DB = {
    "F16": 70,
    "BF16": 50,
    "Q8_0": 42,
    "Q6_K": 33,
    "Q5_1": 26,
    "Q5_K": 27,
    "Q5_0": 25,
    "Q4_K": 21,
    "Q4_1": 20,
    "Q4_0": 19,
    "Q3_K": 14.5,
    "Q2_K": 9,
}


@pytest.mark.parametrize("qtype", lq.QUANT_TYPES)
def test_round_trip_error(qtype):
    x = torch.randn(32, 1024, generator=torch.Generator().manual_seed(3))
    back = lq.dequantize(lq.quantize(x, qtype), qtype, x.shape)
    stats = lq.error_metrics(x, back, qtype)
    assert stats.bits_per_weight == FORMATS[qtype].bits_per_weight
    assert stats.n_weights == x.numel()
    if qtype == "F32":
        assert torch.equal(back, x) and stats.snr_db == float("inf") and stats.mse == 0
    else:
        assert stats.snr_db > MIN_SNR_DB[qtype]
        assert stats.max_abs_error < x.abs().max()


def test_q8_0_error_is_at_most_half_a_step():
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(4))
    back = lq.dequantize(lq.quantize(x, "Q8_0"), "Q8_0", x.shape)
    step = x.abs().amax(dim=1, keepdim=True) / 127
    # half a step, plus d's fp16 rounding (relative 2**-11) times |q| <= 127
    assert bool(((back - x).abs() <= step * (0.5 + 127 * 2.0**-11)).all())


def test_k_quants_beat_legacy_4_bit_at_the_same_size():
    x = torch.randn(64, 1024, generator=torch.Generator().manual_seed(5))
    snr = {
        t: lq.error_metrics(x, lq.dequantize(lq.quantize(x, t), t, x.shape)).snr_db for t in ("Q4_0", "Q4_K")
    }
    assert FORMATS["Q4_K"].bits_per_weight == FORMATS["Q4_0"].bits_per_weight
    assert snr["Q4_K"] > snr["Q4_0"] + 1.0


def test_model_error_metrics_weights_tensors_by_size():
    a, b = torch.ones(100), torch.ones(300)
    pairs = [(a, a + 0.1), (b, b)]
    stats = lq.model_error_metrics(pairs, "Q8_0")
    assert stats.n_weights == 400
    assert stats.mse == pytest.approx(100 * 0.01 / 400)
    assert stats.max_abs_error == pytest.approx(0.1)
    assert stats.snr_db == pytest.approx(10 * np.log10(400 / 1.0), rel=1e-4)


# --- cross-checks against gguf-py ---------------------------------------------


def _legacy_inputs(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-6, 3, (16, 1))
    x = rng.standard_normal((16, 256)) * scale
    x[1] = rng.standard_t(2, 256)
    x[2, ::7] = 0.0
    x[3, :64] = 0.0
    x[4] = np.round(x[4] * 4) / 4  # many exact ties
    x[5, ::32] = 1e4
    # + 0.0 turns -0.0 into +0.0: gguf-py does not follow C on the sign of zeros (labkit does)
    return x.astype(np.float32) + np.float32(0.0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # gguf-py's numpy overflow warnings
@pytest.mark.parametrize("qtype", LEGACY)
def test_legacy_types_match_gguf_py_on_seeded_inputs(qtype):
    for seed in range(25):
        x = _legacy_inputs(seed)
        theirs = np.ascontiguousarray(gguf.quants.quantize(x, _ggml_type(qtype))).view(np.uint8)
        ours = lq.quantize(torch.from_numpy(x), qtype).numpy()
        np.testing.assert_array_equal(ours, theirs.reshape(ours.shape), err_msg=f"seed {seed}")


finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float32, (2, 64), elements=finite_f32), qtype=st.sampled_from(LEGACY))
def test_legacy_types_match_gguf_py_property(x, qtype):
    # gguf-py does not track the sign of a zero minimum the way C does; labkit
    # follows C (see test_quant_fixtures: zero_blocks), so compare on +0.0 only.
    x = x + np.float32(0.0)
    theirs = np.ascontiguousarray(gguf.quants.quantize(x, _ggml_type(qtype))).view(np.uint8)
    ours = lq.quantize(torch.from_numpy(x), qtype, allow_overflow=True).numpy()  # inf scales, as in gguf-py
    np.testing.assert_array_equal(ours, theirs.reshape(ours.shape))


def _assert_same_floats(ours: np.ndarray, theirs: np.ndarray) -> None:
    nan = np.isnan(theirs)
    np.testing.assert_array_equal(np.isnan(ours), nan)
    np.testing.assert_array_equal(ours[~nan].view(np.uint32), theirs[~nan].view(np.uint32))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("qtype", lq.QUANT_TYPES)
def test_dequantize_random_bytes_matches_gguf_py(qtype):
    # every byte pattern is a valid block, so random bytes exercise every bit of the layout
    fmt = FORMATS[qtype]
    rng = np.random.default_rng(6)
    blob = rng.integers(0, 256, (8, fmt.row_bytes(512)), dtype=np.uint8)
    if qtype not in ("F32", "F16", "BF16"):  # keep scales finite so that no NaN*0 ambiguity arises
        scale_bytes = {"Q2_K": [81, 83], "Q3_K": [109], "Q6_K": [209]}.get(qtype, [1, 3])
        blocks = blob.reshape(-1, fmt.type_size)
        for i in scale_bytes:
            blocks[:, i] &= 0x3F  # clear the top exponent bits of each fp16 field
    ours = lq.dequantize(torch.from_numpy(blob), qtype, (8, 512)).numpy()
    theirs = gguf.quants.dequantize(blob, _ggml_type(qtype)).reshape(8, 512)
    _assert_same_floats(ours, theirs)


# --- the rounding rules ---------------------------------------------------------


def _c_roundf(a: np.ndarray) -> np.ndarray:
    """C's roundf, exactly: float64 holds |a| + 0.5 without rounding for every float32 below 2**28."""
    return np.sign(a) * np.floor(np.abs(a.astype(np.float64)) + 0.5)


@pytest.mark.slow
def test_roundf_to_int8_is_c_roundf_for_every_float_in_q8_0_range():
    # every float32 from 0.25 to 127.5, both signs; below 0.25, adding 0.49999997 cannot reach 1
    bits = np.arange(np.float32(0.25).view(np.uint32), np.float32(127.5).view(np.uint32), dtype=np.uint32)
    for sign in (1, -1):
        a = bits.view(np.float32) * np.float32(sign)
        assert np.array_equal(roundf_to_int8(torch.from_numpy(a)).numpy(), _c_roundf(a))


def test_roundf_to_int8_ties_and_neighbours():
    ties = np.arange(-127, 127, dtype=np.float32) + np.float32(0.5)
    near = np.concatenate(
        [
            ties,
            np.nextafter(ties, np.float32(0)),
            np.nextafter(ties, np.float32(200)),
            np.float32([0.49999997, -0.49999997, 0.5, -0.5, 0.0, -0.0]),
        ]
    )
    sample = np.random.default_rng(7).uniform(-127.4, 127.4, 200_000).astype(np.float32)
    for a in (near, sample):
        assert np.array_equal(roundf_to_int8(torch.from_numpy(a)).numpy(), _c_roundf(a))


def test_nearest_int_is_round_half_even_in_range():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 3.49999, 4194303.0])
    assert nearest_int(x).tolist() == [0, 2, 2, 0, -2, 3, 4194303]


def test_sequential_sum_adds_in_order_and_sqrtf_is_correctly_rounded():
    terms = torch.tensor([[1e8], [1.0], [-1e8], [1.0]])
    assert sequential_sum(terms).item() == 1.0  # ((1e8 + 1) - 1e8) + 1 in float32: the first 1 is lost
    x = torch.rand(10_000) * 1e4
    assert torch.equal(sqrtf(x), torch.from_numpy(np.sqrt(x.numpy())))


# --- errors ---------------------------------------------------------------------


def test_nan_is_reported_with_row_and_column():
    x = torch.randn(4, 64)
    x[2, 5] = float("nan")
    with pytest.raises(QuantizationError, match=r"tensor 'blk.0.w' holds nan at row 2, column 5"):
        lq.quantize(x, "Q8_0", name="blk.0.w")


def test_inf_in_a_3d_tensor_names_the_leading_index():
    x = torch.zeros(2, 3, 256)
    x[1, 2, 7] = float("-inf")
    with pytest.raises(QuantizationError, match=r"holds -inf at row \(1, 2\), column 7"):
        lq.quantize(x, "Q4_K")


def test_row_length_must_be_whole_blocks():
    with pytest.raises(QuantizationError, match=r"rows of 100 weights.*Q4_K packs blocks of 256"):
        lq.quantize(torch.randn(3, 100), "Q4_K")
    with pytest.raises(QuantizationError, match=r"multiple of 32"):
        lq.quantize(torch.randn(3, 48), "Q8_0")


@pytest.mark.parametrize(
    "bad", [torch.arange(32), torch.ones(32, dtype=torch.bool), torch.zeros(32, dtype=torch.uint8)]
)
def test_non_float_dtypes_are_rejected(bad):
    with pytest.raises(
        QuantizationError, match=r"has dtype torch\.\w+, but quantization needs floating-point"
    ):
        lq.quantize(bad, "Q8_0")


@pytest.mark.parametrize("empty", [torch.zeros(0, 32), torch.zeros(0), torch.tensor(1.0)])
def test_empty_tensors_are_rejected(empty):
    with pytest.raises(QuantizationError, match=r"is empty"):
        lq.quantize(empty, "Q8_0")


def test_unknown_type_and_non_tensors():
    with pytest.raises(QuantizationError, match=r"unknown or unsupported quantization type 'Q1_X'"):
        lq.quantize(torch.randn(32), "Q1_X")
    with pytest.raises(QuantizationError, match=r"must be a torch.Tensor, got list"):
        lq.quantize([1.0] * 32, "Q8_0")


def test_dequantize_checks_bytes_and_shape():
    q = lq.quantize(torch.randn(2, 64), "Q8_0")
    with pytest.raises(QuantizationError, match=r"take 136 bytes, but 68 bytes were given"):
        lq.dequantize(q[0], "Q8_0", (2, 64))
    with pytest.raises(QuantizationError, match=r"raw bytes as a uint8 tensor, got torch.float32"):
        lq.dequantize(q.float(), "Q8_0", (2, 64))
    with pytest.raises(QuantizationError, match=r"does not split into Q8_0 blocks of 32"):
        lq.dequantize(q, "Q8_0", (4, 34))


def test_errors_are_labkit_errors_and_value_errors():
    with pytest.raises(LabkitError):
        lq.quantize(torch.randn(3, 100), "Q8_0")
    with pytest.raises(ValueError):
        lq.quantize(torch.randn(3, 100), "Q8_0")
