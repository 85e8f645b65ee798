"""Every bad input gets labkit's own error naming the value and the fix; nothing wrong is written silently.

Each case below was once a raw Python error (IsADirectoryError, TypeError, OverflowError,
UnicodeEncodeError, KeyError, RuntimeError) or, worse, silently accepted (NaN or overflowed
values written to a file, a fractional shape truncated, a temperature of inf).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import labkit.gguf as lg
from labkit import quant, runtime
from labkit.cli import main
from labkit.errors import (
    ClosedFileError,
    GGUFFormatError,
    LabkitError,
    MissingInputError,
    MissingTensorError,
    ModelError,
    QuantizationError,
)
from labkit.gguf.writer import TensorSource
from labkit.modelfiles import synthetic_llama

META = {"general.architecture": "demo"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_llama(
        tmp_path_factory.mktemp("hard") / "tiny.gguf", n_layers=1, dim=64, context_length=128
    )


# --- opening files ------------------------------------------------------------------------------


def test_open_a_folder_names_it_and_a_file_inside(tiny: Path) -> None:
    with pytest.raises(MissingInputError, match=r"it is a folder, not a GGUF file; .*tiny\.gguf"):
        lg.open(tiny.parent)


def test_open_none_asks_for_a_path() -> None:
    with pytest.raises(MissingInputError, match=r"gguf\.open\(None\): give the path of a \.gguf file"):
        lg.open(None)  # type: ignore[arg-type]


def test_a_missing_tensor_is_our_error_with_close_names(tiny: Path) -> None:
    with lg.open(tiny) as f:
        with pytest.raises(MissingTensorError, match=r"no tensor 'nope' \(\d+ tensors\).*f\.tensors"):
            f.tensor("nope")
        with pytest.raises(MissingTensorError, match=r"did you mean 'output_norm\.weight'"):
            f.raw("output_norm.weigth")
    assert issubclass(MissingTensorError, KeyError)  # code that caught KeyError still does


def test_use_after_close_is_our_error(tiny: Path) -> None:
    with lg.open(tiny) as f:
        pass
    with pytest.raises(ClosedFileError, match=r"tiny\.gguf is closed; read tensors inside its `with"):
        f.tensor("output_norm.weight")


# --- writing metadata and tensors -----------------------------------------------------------------


def test_a_float_too_large_for_float32_metadata(tmp_path: Path) -> None:
    with pytest.raises(
        GGUFFormatError, match=r"'x\.big': 1e\+300 is too large for FLOAT32; .*Typed\('FLOAT64'"
    ):
        lg.write(tmp_path / "a.gguf", {}, {**META, "x.big": 1e300})
    lg.write(tmp_path / "b.gguf", {}, {**META, "x.big": lg.Typed("FLOAT64", 1e300)})  # the fix works
    with lg.open(tmp_path / "b.gguf") as f:
        assert f.metadata["x.big"] == 1e300
    with pytest.raises(GGUFFormatError, match=r"'x\.arr': values of float64 do not fit in ARRAY\[FLOAT32\]"):
        lg.write(tmp_path / "c.gguf", {}, {**META, "x.arr": np.array([1.0, 1e300])})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.gguf"]


def test_a_lone_surrogate_in_a_string_key_or_name(tmp_path: Path) -> None:
    with pytest.raises(
        GGUFFormatError, match=r"'x\.s': .*'\\udc80' at character 2, which is not valid in UTF-8"
    ):
        lg.write(tmp_path / "a.gguf", {}, {**META, "x.s": "ab\udc80cd"})
    with pytest.raises(GGUFFormatError, match=r"not valid in UTF-8"):
        lg.write(tmp_path / "a.gguf", {}, {**META, "x.\ud800": 1})
    with pytest.raises(GGUFFormatError, match=r"'x\.a': .*not valid in UTF-8"):
        lg.write(tmp_path / "a.gguf", {}, {**META, "x.a": ["ok", "\ud800"]})
    with pytest.raises(GGUFFormatError, match=r"valid UTF-8 \(no lone surrogates\); rename it"):
        lg.write(tmp_path / "a.gguf", {"w\udc80": torch.ones(32)}, META)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_values_are_refused_unless_asked_for(
    tmp_path: Path, dtype: torch.dtype, bad: float
) -> None:
    w = torch.zeros(3, 32, dtype=dtype)
    w[1, 5] = bad
    with pytest.raises(
        QuantizationError, match=rf"tensor 'w' holds {bad} at index \[1, 5\].*allow_nonfinite=True"
    ):
        lg.write(tmp_path / "a.gguf", {"w": w}, META)
    assert list(tmp_path.iterdir()) == []
    lg.write(tmp_path / "a.gguf", {"w": w}, META, allow_nonfinite=True)
    with lg.open(tmp_path / "a.gguf") as f:
        back = f.tensor("w")
    assert torch.equal(back.isnan(), w.float().isnan()) and bool(
        (back[~back.isnan()] == w.float()[~back.isnan()]).all()
    )


def test_finite_values_that_would_become_inf_in_f16(tmp_path: Path) -> None:
    w = torch.ones(2, 32, dtype=torch.float32)
    w[1, 3] = 70000.0
    source = TensorSource("w", (2, 32), "F16", lambda: w)
    with pytest.raises(
        QuantizationError, match=r"'w': the value 70000 at index \[1, 3\] is beyond F16's largest"
    ):
        lg.write(tmp_path / "a.gguf", [source], META)
    w[1, 3] = 65519.0  # rounds to 65504: finite, so it is fine
    lg.write(tmp_path / "a.gguf", [source], META)
    with lg.open(tmp_path / "a.gguf") as f:
        assert float(f.tensor("w")[1, 3]) == 65504.0


@pytest.mark.parametrize(
    ("qtype", "value"),
    [("F16", 7e4), ("Q8_0", 65504 * 127 * 1.01), ("Q4_0", 1e6), ("Q4_1", 1e7), ("Q4_K", 1e7), ("Q2_K", 1e7)],
)
def test_quantized_scales_that_overflow_f16(qtype: str, value: float) -> None:
    x = torch.randn(4, 256)
    x[2, 40], x[2, 41] = value, -value
    with pytest.raises(
        QuantizationError,
        match=rf"row 2, column \d+ overflows F16's largest value 65504 .*{re.escape(f'{value:g}')}",
    ):
        quant.quantize(x, qtype, name="w")


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_f16_overflows_from_exactly_65520(sign: float) -> None:
    """65504 + half a step is where round-to-nearest-even reaches inf: the float just below is fine."""
    below = torch.nextafter(torch.tensor(65520.0), torch.tensor(0.0))
    x = torch.zeros(3, 32)
    x[1, 5] = sign * below
    assert float(quant.dequantize(quant.quantize(x, "F16"), "F16", (3, 32))[1, 5]) == sign * 65504.0
    x[1, 5] = sign * 65520.0
    with pytest.raises(QuantizationError, match=r"row 1, column 5 overflows F16's largest value 65504"):
        quant.quantize(x, "F16", name="w")


def test_q8_0_scales_just_inside_f16_are_fine() -> None:
    x = torch.randn(1, 32)
    x[0, 0] = 65504 * 127 * 0.99
    back = quant.dequantize(quant.quantize(x, "Q8_0"), "Q8_0", (1, 32))
    assert torch.isfinite(back).all()


def test_a_fractional_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GGUFFormatError, match=r"shape \(4\.5, 256\): 1\.\.4 dims, each >= 1"):
        lg.write(
            tmp_path / "a.gguf", [TensorSource("w", (4.5, 256), "F32", lambda: torch.ones(4, 256))], META
        )  # type: ignore[arg-type]


# --- dequantize arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (None, r"shape=None is not a shape"),
        ((-4, -256), r"shape \(-4, -256\) has the dimension -4"),
        ((4.5, 256), r"shape \(4\.5, 256\) has the dimension 4\.5"),
        ((0, 32), r"has the dimension 0"),
        ("4,32", r"shape='4,32' is not a shape"),
    ],
)
def test_dequantize_shapes(shape: object, message: str) -> None:
    q = quant.quantize(torch.randn(4, 32), "Q8_0")
    with pytest.raises(QuantizationError, match=message + r".*whole numbers >= 1"):
        quant.dequantize(q, "Q8_0", shape)  # type: ignore[arg-type]
    assert quant.dequantize(q, "Q8_0", torch.Size([4, 32])).shape == (4, 32)
    assert quant.dequantize(q, "Q8_0", np.array([4, 32])).shape == (4, 32)


# --- the runtime ----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["mps", "tpu", None, "meta", 3, "cpuu"])
def test_devices_the_runtime_cannot_use(tiny: Path, device: object) -> None:
    with pytest.raises(ModelError, match=rf"device={device!r} is not a device labkit's runtime runs on"):
        runtime.load(tiny, device=device)  # type: ignore[arg-type]


@pytest.mark.parametrize("temperature", [math.inf, math.nan, -0.5])
def test_temperatures_that_are_not_a_temperature(tiny: Path, temperature: float) -> None:
    model = runtime.load(tiny)
    with pytest.raises(ModelError, match="positive finite value"):
        model.generate("hi", 2, temperature=temperature)


# --- the command line -----------------------------------------------------------------------------


def test_inspect_items_must_not_be_negative(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", str(tiny), "--items", "-1"])
    assert exit_info.value.code == 2
    assert "'-1' is not a whole number >= 0" in capsys.readouterr().err
    assert main(["inspect", str(tiny), "--items", "0"]) == 0


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "hot"])
def test_generate_temperature_must_be_finite(
    tiny: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["generate", str(tiny), "hi", "--temperature", value])
    assert f"{value!r} is not a temperature" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["probe", "inspect", "quantize", "generate", "perplexity"])
def test_every_command_takes_threads(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--threads" in capsys.readouterr().out


def test_bad_open_from_the_command_line_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labkit inspect: error: cannot open") and "folder" in err and "Traceback" not in err


def test_every_new_error_is_a_labkit_error() -> None:
    for error in (ClosedFileError, MissingTensorError, MissingInputError, QuantizationError, GGUFFormatError):
        assert issubclass(error, LabkitError)
