"""``labkit generate`` and ``labkit perplexity`` on a small synthetic llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit.cli import main
from labkit.modelfiles import synthetic_llama
from labkit.runtime.model import load


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_llama(
        tmp_path_factory.mktemp("cli") / "tiny.gguf", n_layers=2, dim=64, qtype="Q8_0", context_length=128
    )


def test_generate_streams_the_greedy_continuation(
    tiny_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", str(tiny_path), "hello world", "-n", "5", "--quiet"]) == 0
    model = load(tiny_path)
    expected = model.tokenizer.decode(model.generate("hello world", 5))
    assert capsys.readouterr().out == expected + "\n"


def test_generate_reports_measured_speed_on_stderr(
    tiny_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "generate",
                str(tiny_path),
                "hi",
                "-n",
                "3",
                "--temperature",
                "0.8",
                "--seed",
                "1",
                "--weights",
                "quantized",
                "--dtype",
                "bfloat16",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "tokens in" in err and "measured" in err


def test_too_long_a_prompt_is_a_clean_error(tiny_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(tiny_path), "x" * 200, "-n", "4"]) == 2
    assert "context length 128" in capsys.readouterr().err


def test_negative_temperature_is_a_clean_error(tiny_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:  # refused by the parser, before the model loads
        main(["generate", str(tiny_path), "hi", "-n", "3", "--temperature", "-1"])
    assert exit_info.value.code == 2
    assert "'-1' is not a temperature; write 0 for greedy" in capsys.readouterr().err


def test_perplexity_of_text_and_of_a_file(
    tiny_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["perplexity", str(tiny_path), "hello world, hello model", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["text_source"] == "the command line"
    assert result["perplexity"] == pytest.approx(
        load(tiny_path).perplexity("hello world, hello model").perplexity
    )
    text_file = tmp_path / "t.txt"
    text_file.write_text("hello world, hello model", encoding="utf-8")
    assert main(["perplexity", str(tiny_path), "--file", str(text_file), "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert from_file["text_source"] == str(text_file) and from_file["perplexity"] == result["perplexity"]
    assert main(["perplexity", str(tiny_path), str(text_file), "--json"]) == 0  # TEXT is always literal text
    assert json.loads(capsys.readouterr().out)["text_source"] == "the command line"


def test_perplexity_defaults_to_the_lab_text(tiny_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the lab text is ~350 tokens, more than this model's 128-token context: scored in windows
    assert main(["perplexity", str(tiny_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "lab text" in result["text_source"] and result["n_tokens"] > 128


def test_missing_file_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["perplexity", str(tmp_path / "none.gguf")]) == 2
    assert "no model file" in capsys.readouterr().err


def test_perplexity_of_a_long_text_on_the_command_line(
    tiny_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "hello world " * 25  # 300 characters: too long for a file name
    assert main(["perplexity", str(tiny_path), text, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["text_source"] == "the command line" and result["timing"] == "measured on this machine"


def test_perplexity_text_file_errors(
    tiny_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["perplexity", str(tiny_path), "--file", str(tmp_path / "none.txt")]) == 2
    assert "cannot read --file" in capsys.readouterr().err
    (tmp_path / "t.txt").write_text("hi", encoding="utf-8")
    assert main(["perplexity", str(tiny_path), "hi", "--file", str(tmp_path / "t.txt")]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--threads", "-1"], ["--threads", "0"], ["-n", "0"], ["-n", "x"]])
def test_counts_must_be_positive(
    tiny_path: Path, option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["generate", str(tiny_path), "hi", *option])
    assert caught.value.code == 2
    assert f"{option[1]!r} is not a positive whole number" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "mps"])
def test_unknown_device_is_a_clean_error(
    tiny_path: Path, device: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["perplexity", str(tiny_path), "--device", device]) == 2
    err = capsys.readouterr().err
    assert f"--device {device!r}" in err and "cpu, cuda or cuda:N" in err


def test_device_check_raises_a_model_error() -> None:
    from labkit.cli.runtime import check_device
    from labkit.errors import ModelError

    with pytest.raises(ModelError, match=r"choose cpu, cuda or cuda:N"):
        check_device("tpu")
    assert check_device("cpu") == "cpu"
