"""Chapter 4's figures, table and explorer draw what the records say."""

from __future__ import annotations

from pathlib import Path

import pytest

from labkit.loading.record import COLD, WARM, LoadRecord

figures = pytest.importorskip("labkit.figures.loading")


def _record(mode: str, cache_state: str, scale: float) -> LoadRecord:
    mib = 1 << 20
    series = tuple((t / 100, 200 * mib + int(scale * t * mib)) for t in range(-2, 11))
    return LoadRecord(
        path="/tmp/x.gguf",
        format="gguf",
        mode=mode,
        loader="labkit",
        layers=(0, 1) if mode == "partial" else None,
        file_size_bytes=10 * mib,
        tensor_bytes=10 * mib,
        n_tensors=3,
        open_s=0.001,
        first_tensor_s=0.002,
        all_touched_s=0.1,
        rss_before_bytes=200 * mib,
        open_peak_rss_bytes=200 * mib + 4096,
        peak_rss_bytes=200 * mib + int(10 * scale * mib),
        rss_series=series,
        major_faults=3,
        minor_faults=500,
        device_read_bytes=10 * mib if cache_state == COLD else 0,
        resident_before=0.0 if cache_state == COLD else 1.0,
        resident_after=1.0,
        cache_state=cache_state,
        cache_evidence="made up",
        checksum=7,
    )


def test_table_lists_every_load_with_its_numbers() -> None:
    records = [_record("eager", COLD, 1.0), _record("partial", WARM, 0.5)]
    text = figures.records_table(records)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["load", "cache"] and len(lines) == 2 + len(records) + 1
    assert "labkit gguf eager" in lines[2] and "cold" in lines[2] and "100.0" in lines[2]
    assert "labkit gguf partial L0-1" in lines[3] and "warm" in lines[3]
    assert "measured" in lines[-1] and "counted" in lines[-1]


def test_rss_figure_has_one_line_and_one_marker_per_load() -> None:
    records = [_record("eager", COLD, 1.0), _record("lazy", WARM, 0.2)]
    figure = figures.rss_figure(records)
    lines = [t for t in figure.data if t.mode == "lines"]
    assert [t.name for t in lines] == [r.label for r in records]
    assert list(lines[0].y)[-1] == pytest.approx(10.0) and lines[1].line.dash == "dot"
    markers = [t for t in figure.data if t.mode == "markers"]
    assert [m.x[0] for m in markers] == [100.0, 100.0]
    assert "measured" in figure.layout.title.text


def test_open_vs_loaded_and_pair_figures() -> None:
    figure = figures.open_vs_loaded_figure([_record("lazy", COLD, 1.0)])
    assert [t.name for t in figure.data] == ["open", "first tensor", "all touched"]
    assert [t.x[0] for t in figure.data] == pytest.approx([1.0, 2.0, 100.0])
    pair = figures.pair_figure(
        {"label": "F16", "size_bytes": 400, "seconds": 2.0},
        {"label": "Q4_0", "size_bytes": 100, "seconds": 1.0},
    )
    assert list(pair.data[0].y) == [4.0, 2.0] and list(pair.data[0].text) == ["4.00x", "2.00x"]


def test_explorer_measures_once_and_keeps_a_static_copy(tmp_path: Path) -> None:
    from labkit import loading
    from labkit.widgets.loading import load_explorer

    files = loading.write_model_set(tmp_path, 16 << 20, quantized=("Q4_0",))
    explorer = load_explorer(tmp_path, known={16 << 20: files})
    assert explorer.size.value == 16 and explorer.size.continuous_update is False
    record = explorer.update()
    assert record.format == "gguf" and record.mode == "lazy" and explorer.records == [record]
    assert len(explorer.figure.data) == 2 and "labkit gguf lazy" in explorer.table.value
    assert "static copy" in explorer.static()._repr_html_()
