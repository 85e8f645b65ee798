"""The capstone's journey records, its claims and its explorer, on a small synthetic llama.

One quick journey (module fixture, two types, files kept) feeds every test; the default model's
journey is what notebook 07 and ``labkit tour`` run (nbval and tests/test_tour.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from labkit import journey
from labkit.errors import OutputPathError, PlanError, QuantizationError
from labkit.journey.claims import HELD, NOT_HELD, NOT_MEASURABLE, PARTLY, claim_rows
from labkit.journey.records import EAGER, HOP, LAZY, OPEN, PROBE, STAGED, STAGES
from labkit.modelfiles import synthetic_llama

TYPES = ["Q8_0", "Q4_0"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> journey.JourneyReport:
    folder = tmp_path_factory.mktemp("capstone")
    model = synthetic_llama(folder / "tiny.gguf", n_layers=2, dim=128, n_heads=4, n_kv_heads=2, qtype="F16")
    keep = folder / "kept"
    keep.mkdir()
    return journey.run(TYPES, quick=True, source=model, budget_bytes=64 << 20, keep_dir=keep)


def test_every_stage_of_every_type_is_recorded(report: journey.JourneyReport) -> None:
    assert report.qtypes == TYPES
    assert [r.stage for r in report.stages if r.qtype == ""] == [PROBE]
    for qtype in TYPES:
        assert [r.stage for r in report.stages if r.qtype == qtype] == [s for s in STAGES if s != PROBE]


def test_bytes_are_counted_from_the_files(report: journey.JourneyReport) -> None:
    for v in report.variants:
        assert Path(v.path).stat().st_size == v.file_bytes  # the kept file is the one measured
        assert report.stage(OPEN, v.qtype).size_bytes + report.stage(LAZY, v.qtype).size_bytes == v.file_bytes
        assert report.stage(EAGER, v.qtype).size_bytes == report.stage(LAZY, v.qtype).size_bytes
        assert (
            v.weight_types and sum(v.weight_types.values()) == 2 * 7 + 1
        )  # 7 matrices a block, + token_embd
    assert report.variant("Q8_0").file_bytes > report.variant("Q4_0").file_bytes
    assert report.n_params > 0 and report.source_bytes > report.variant("Q8_0").file_bytes  # F16 source


def test_times_are_measured_or_modelled_never_faked(report: journey.JourneyReport) -> None:
    for r in report.stages:
        if r.stage == HOP:
            assert r.measured_s is None and r.kinds["measured_s"] == "not run here"  # no GPU pass ran
            assert r.predicted_s is not None and "modelled" in r.prediction
        else:
            assert r.measured_s is not None and r.measured_s > 0, r
        if r.predicted_s is not None and r.stage != PROBE:
            assert r.prediction and ("measured" in r.prediction or "modelled" in r.prediction), r
    data = report.to_dict()
    assert all(s["kinds"]["size_bytes"] == "counted" for s in data["stages"])
    assert data["variants"][0]["kinds"]["perplexity"] == "measured"


def test_predictions_follow_the_probed_rates(report: journey.JourneyReport) -> None:
    rates = journey.Rates.from_probe(report.probe)
    lazy = report.stage(LAZY, "Q4_0")
    cold = "cold (eviction verified)" in lazy.note
    rate = rates.cold_read if cold else rates.warm_read
    assert lazy.predicted_s == pytest.approx(lazy.size_bytes / (rate.gb_per_s * 1e9))


def test_claims_one_row_each_with_a_verdict(report: journey.JourneyReport) -> None:
    rows = claim_rows(report)
    assert [r.number for r in rows] == list(range(1, 10))
    assert {r.verdict for r in rows} <= {HELD, NOT_HELD, PARTLY, NOT_MEASURABLE}
    assert rows[0].verdict == PARTLY  # no GPU: disk -> RAM measured, RAM -> VRAM modelled only
    assert all(("measured" in r.measured or "counted" in r.measured or "not" in r.measured) for r in rows)


def test_segments_claim_needs_bytes_streamed(report: journey.JourneyReport) -> None:
    big = max(report.variants, key=lambda v: v.file_bytes).qtype

    def with_streamed(n_bytes: int) -> journey.JourneyReport:
        stages = tuple(
            dataclasses.replace(r, size_bytes=n_bytes) if (r.stage, r.qtype) == (STAGED, big) else r
            for r in report.stages
        )
        return dataclasses.replace(report, stages=stages)

    assert claim_rows(with_streamed(0))[4].verdict == NOT_MEASURABLE
    assert claim_rows(with_streamed(1 << 20))[4].verdict == HELD
    missing = dataclasses.replace(report, missing={STAGED: "chapter 6 is not installed here yet"})
    assert (
        claim_rows(missing)[4].verdict == NOT_MEASURABLE
        and "not installed" in claim_rows(missing)[4].measured
    )


def test_explorer_redraws_for_type_and_budget(report: journey.JourneyReport) -> None:
    pytest.importorskip("ipywidgets")
    from labkit.widgets.capstone import journey_explorer

    explorer = journey_explorer(report)
    first = explorer.update()
    assert (
        first["qtype"] == "Q8_0"
        and "(measured)" in first["summary"]
        and "plan (no pass run)" in first["summary"]
    )
    assert explorer.figure.layout.annotations[0].text.startswith("Q8_0")
    explorer.type.value = "Q4_0"  # a real change: the observer redraws
    assert explorer.figure.layout.annotations[0].text.startswith("Q4_0")
    explorer.budget.value = explorer.budget.min  # below what streaming needs: the planner says the smallest
    assert "smallest RAM budget" in explorer.summary.value
    assert all(q in explorer.static()._repr_html_() for q in TYPES)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"types": []}, PlanError, "is empty"),
        ({"types": ["Q9_9"]}, QuantizationError, "Q9_9"),
        ({"types": ["Q8_0", "Q8_0"]}, PlanError, "twice"),
        ({"types": ["Q8_0"], "budget_bytes": 0}, PlanError, "must be positive"),
        ({"types": ["Q8_0"], "budget_bytes": 1}, PlanError, "smallest RAM budget that works"),
        ({"types": ["Q8_0"], "keep_dir": "/no/such/folder"}, OutputPathError, "not a writable folder"),
    ],
)
def test_bad_requests_fail_before_any_work(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        journey.run(**kwargs)
