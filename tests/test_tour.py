"""``labkit tour``: the whole journey headless, its summary, its JSON and its self-contained HTML report.

The tour runs once (module fixture) on a small synthetic llama so that the test stays fast; the
same code runs on the default model (``labkit tour --quick``). The browser test opens the report
this module writes (``report_path`` fixture's file: ``<tmp>/labkit-tour.html``).
"""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from labkit import journey
from labkit.cli import main
from labkit.cli.tour import REPORT_NAME, write_outputs
from labkit.errors import PlanError
from labkit.figures.tour import KIND_LABELS
from labkit.journey.records import STAGES
from labkit.modelfiles import synthetic_llama

TYPES = ("Q8_0", "Q4_0")


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("tour")
    model = synthetic_llama(folder / "tiny.gguf", n_layers=2, dim=128, n_heads=4, n_kv_heads=2, qtype="F16")
    budget = _smallest_budget(model)
    out = folder / "out"
    out.mkdir()
    argv = [
        "tour",
        "--quick",
        "--quiet",
        "--out",
        str(out),
        "--model",
        str(model),
        "--types",
        ",".join(TYPES),
        "--budget",
        str(budget),
    ]
    return {"argv": argv, "out": out, "model": model, "budget": budget}


def _smallest_budget(model: Path) -> int:
    """The planner's own answer to "what is the smallest RAM budget that works" for this model."""
    from labkit.journey.runner import check_budget

    try:
        check_budget(model, 1)
    except PlanError as error:
        return int(re.search(r"works is ([\d,]+) bytes", str(error)).group(1).replace(",", ""))
    raise AssertionError("a 1-byte budget was accepted")


@pytest.fixture(scope="module")
def ran(tour: dict) -> dict:
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(tour["argv"])
    return {**tour, "code": code, "stdout": stdout.getvalue()}


class _Cells(HTMLParser):
    """Every ``<td>``: its attributes and text."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[dict[str, str | None], str]] = []
        self._open: tuple[dict[str, str | None], list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "td":
            self._open = (dict(attrs), [])

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[1].append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._open is not None:
            self.cells.append((self._open[0], "".join(self._open[1])))
            self._open = None


def test_tour_prints_a_measured_summary(ran: dict) -> None:
    assert ran["code"] == 0
    out = ran["stdout"]
    assert "whole tour" in out and "(measured)" in out
    for qtype in TYPES:
        assert re.search(rf"^{qtype}\s+\d", out, re.M), f"{qtype} has no row in the summary"
    assert "the article's claims on this machine" in out
    assert f"report: {ran['out'] / REPORT_NAME}" in out


def test_report_is_self_contained(ran: dict) -> None:
    page = (ran["out"] / REPORT_NAME).read_text(encoding="utf-8")
    assert page.count("<script") >= 3  # plotly.js once, then one call per figure
    assert not re.search(r"<script[^>]+src=", page), "a script loaded from elsewhere"
    assert not re.search(r"<link[^>]+href=\"?https?:", page), "a stylesheet loaded from elsewhere"
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js itself is embedded


def test_report_holds_every_stage_and_type(ran: dict) -> None:
    page = (ran["out"] / REPORT_NAME).read_text(encoding="utf-8")
    cells = _Cells()
    cells.feed(page)
    stages = {text for _, text in cells.cells}
    for stage in STAGES:
        assert stage in stages, f"stage {stage!r} missing from the report"
    for qtype in TYPES:
        assert f"{qtype}: seconds per stage, measured vs predicted" in page


def test_every_number_in_the_report_is_labelled(ran: dict) -> None:
    cells = _Cells()
    cells.feed((ran["out"] / REPORT_NAME).read_text(encoding="utf-8"))
    numbered = [(attrs, text) for attrs, text in cells.cells if re.search(r"\d", text)]
    assert len(numbered) > 50
    for attrs, text in numbered:
        assert attrs.get("data-kind") in KIND_LABELS, f"unlabelled number in a cell: {text!r}"
        if attrs["data-kind"] == "labelled":
            assert re.search(r"measured|counted|modelled|quoted", text), f"no inline label: {text!r}"
        else:
            assert text.rstrip().endswith(attrs["data-kind"]), f"the label is not shown: {text!r}"


def test_report_describes_the_machine(ran: dict) -> None:
    page = (ran["out"] / REPORT_NAME).read_text(encoding="utf-8")
    assert re.search(r"<b>Machine</b> \(read here\): .*\d+ cores", page)
    assert "no GPU" in page or "NVIDIA" in page


def test_json_names_every_numbers_kind(ran: dict) -> None:
    data = json.loads((ran["out"] / "tour.json").read_text())
    assert data["timing"] == "measured on this machine"
    assert {s["stage"] for s in data["stages"]} == set(STAGES)
    for stage in data["stages"]:
        assert stage["kinds"]["size_bytes"] == "counted"
        assert stage["kinds"]["measured_s"] in ("measured", "not run here")
        assert (stage["measured_s"] is None) == (stage["kinds"]["measured_s"] == "not run here")
    hop = [s for s in data["stages"] if s["stage"] == journey.STAGES[7]]
    assert all(s["measured_s"] is None and "modelled only" in s["note"] for s in hop), (
        "the hop was not measured"
    )
    assert [v["qtype"] for v in data["variants"]] == list(TYPES)


def test_without_plotly_the_tour_says_how_to_get_the_report(
    ran: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = journey.run(["Q8_0"], quick=True, source=ran["model"], budget_bytes=None)
    monkeypatch.setitem(sys.modules, "labkit.figures.tour", None)  # import now raises ImportError
    lines = write_outputs(report, tmp_path)
    assert "pip install plotly" in lines[0]
    assert not (tmp_path / REPORT_NAME).exists() and (tmp_path / "tour.json").exists()
    assert "did not run: no budget was given" in report.stage("staged run", "Q8_0").note
    assert not report.stage("RAM → VRAM hop", "Q8_0").ran


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tour", "--out", "/no/such/folder"], "is not an existing folder"),
        (["tour", "--types", "Q9_9"], "Q9_9"),
        (["tour", "--types", "Q8_0,Q8_0"], "names a type twice"),
        (["tour", "--budget", "1M"], "smallest RAM budget that works"),
    ],
)
def test_bad_input_is_a_clear_error_before_any_work(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("labkit tour: error:") and message in err
    assert not list(tmp_path.iterdir()), "a failed tour left files behind"
