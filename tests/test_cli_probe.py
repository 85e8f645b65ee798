"""Tests of ``labkit probe``: table, JSON, options, errors and the progress-bar rule."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from labkit.cli import main
from labkit.cli.common import parse_size
from labkit.hierarchy import probe

MiB = 1 << 20


def test_json_output_parses_and_leaves_no_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["probe", "--size", "16M", "--repeats", "1", "--json", "--tmp-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0 and out.err == ""  # --json stays quiet
    data = json.loads(out.out)
    assert data["size_bytes"] == 16 * MiB and data["block_bytes"] == MiB
    kinds = {record["kind"] for record in data["records"]}
    assert {"measured", "quoted"} <= kinds
    assert all(record["source"] for record in data["records"] if record["kind"] != "measured")
    assert list(tmp_path.iterdir()) == []


def test_table_shows_measured_and_quoted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["probe", "--size", "16M", "--block", "256K", "--repeats", "1", "--quiet", "--tmp-dir", str(tmp_path)]
    )
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["kind", "tier", "operation"]
    assert any(line.startswith("measured  disk") for line in lines)
    assert any(line.startswith("quoted") and "source: article" in line for line in lines)
    assert any("262,144-byte blocks" in line for line in lines)


def test_bad_block_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "--size", "16M", "--block", "3000"]) == 2
    assert "multiple of 4096" in capsys.readouterr().err


def test_unparsable_size_exits_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["probe", "--size", "lots"])
    assert exit_info.value.code == 2 and "not a size" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "size_bytes"),
    [
        ("4096", 4096),
        ("256M", 256 * MiB),
        ("1GiB", 1 << 30),
        ("1.5K", 1536),
        ("500MB", 500 * 10**6),
        ("2 g", 2 << 30),
        ("64mib", 64 * MiB),
    ],
)
def test_parse_size(text: str, size_bytes: int) -> None:
    assert parse_size(text) == size_bytes


@pytest.mark.parametrize("text", ["", "12X", "M", "-5M", "0"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


@pytest.mark.parametrize(
    ("argv", "tty", "progress"),
    [
        ([], True, True),
        ([], False, False),
        (["--quiet"], True, False),
        (["--json"], True, False),
    ],
)
def test_progress_bar_only_on_a_terminal(
    argv: list[str], tty: bool, progress: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = {}
    fake = probe.ProbeReport(tuple(probe.quoted_records()), ("a note",), MiB, MiB)

    def fake_run(**kwargs: object) -> probe.ProbeReport:
        seen.update(kwargs)
        return fake

    monkeypatch.setattr(probe, "run", fake_run)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    assert main(["probe", *argv]) == 0
    assert seen["progress"] is progress and seen["size_bytes"] == 256 * MiB
