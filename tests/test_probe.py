"""Tests of labkit.hierarchy.probe and labkit.hierarchy.pagecache: records, eviction checks, errors, clean-up.

No test asserts a speed: timings depend on the machine. They assert what the numbers mean.
"""

from __future__ import annotations

import json
import math
import os
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.checks.hierarchy import check_cold_load_time
from labkit.errors import ProbeError
from labkit.hierarchy import pagecache, probe, tiers

MiB = 1 << 20
SMALL = 16 * MiB


def _fs_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` (from /proc/self/mounts)."""
    best, kind = "", ""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            _, mount_point, fs_type, *_ = line.split()
            if str(path.resolve()).startswith(mount_point) and len(mount_point) > len(best):
                best, kind = mount_point, fs_type
    return kind


@pytest.fixture()
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    pagecache.write_test_file(path, SMALL, MiB)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> probe.ProbeReport:
    return probe.run(SMALL, MiB, tmp_dir=tmp_path_factory.mktemp("probe"), repeats=2, cuda=False)


def _needs_evictable(path: Path) -> None:
    if pagecache.resident_fraction(path) is None or not hasattr(os, "posix_fadvise"):
        pytest.skip("mincore/posix_fadvise unavailable on this system")
    if _fs_type(path) in ("tmpfs", "ramfs"):
        pytest.skip("files on tmpfs live in RAM and cannot be evicted")


# ---------------------------------------------------------------- records from numbers


def test_measured_record_reports_first_run_apart_and_median_of_rest() -> None:
    record = probe.measured_record("RAM", "copy", 10**9, [1.0, 0.5, 0.25, 0.75], "how")
    assert record.kind == "measured" and record.source == ""
    assert record.elapsed_s == 0.5 and record.repetitions == 3
    assert record.gb_per_s == 2.0
    assert record.first_run_gb_per_s == 1.0


def test_measured_record_with_one_run_has_no_first_run() -> None:
    record = probe.measured_record("disk", "write", 500, [0.25], "how")
    assert record.first_run_gb_per_s is None and record.repetitions == 1
    assert record.gb_per_s == 500 / 0.25 / 1e9
    with pytest.raises(ValueError, match="at least one run"):
        probe.measured_record("disk", "write", 500, [], "how")


def test_quoted_rows_carry_the_article_figures_and_their_sources() -> None:
    rows = {row.operation: row for row in probe.quoted_records()}
    expected = {
        "HDD (article)": (0.1, None),
        "SSD (article)": (0.5, 5.0),
        "RAM (article)": (20.0, 50.0),
        "VRAM bandwidth (article)": (500.0, None),
    }
    for operation, (low, high) in expected.items():
        assert (rows[operation].gb_per_s, rows[operation].gb_per_s_max) == (low, high)
        assert "From disk to VRAM" in rows[operation].source
    assert round(rows["PCIe 4.0 x16, theoretical"].gb_per_s, 1) == 31.5
    assert round(rows["PCIe 5.0 x16, theoretical"].gb_per_s, 1) == 63.0
    for row in rows.values():
        assert row.kind == "quoted" and ("PCI-SIG" in row.source or "article" in row.source)
        assert math.isclose(row.gb_per_s, row.moved_bytes / row.elapsed_s / 1e9)


def test_modelled_hop_is_capped_by_ram_and_by_pcie() -> None:
    slow_ram = probe.measured_record("RAM", "copy_, 2 threads", 10**9, [0.1], "how")
    fast_ram = probe.measured_record("RAM", "copy_, 2 threads", 10**9, [0.01], "how")
    assert probe.modelled_host_to_device(slow_ram).gb_per_s == pytest.approx(10.0)
    capped = probe.modelled_host_to_device(fast_ram)
    assert capped.gb_per_s == pytest.approx(tiers.PCIE4_X16_GB_PER_S)
    assert capped.kind == "modelled" and "modelled" in capped.operation
    assert "PCI-SIG" in capped.source


def test_time_runs_uses_the_given_clock() -> None:
    calls = []
    times = probe.time_runs(lambda: calls.append(1), 3, clock=lambda step: (step(), 0.5)[1])
    assert times == [0.5, 0.5, 0.5] and len(calls) == 3


def test_ram_read_rows_are_measured_sums_at_1_and_all_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = iter([0.5, 0.25, 0.125, 0.2, 0.1, 0.05])  # 1 thread: warm-up, 2 runs; then 2 threads
    real_time_runs = probe.time_runs
    monkeypatch.setattr(
        probe,
        "time_runs",
        lambda step, runs: real_time_runs(step, runs, clock=lambda s: (s(), next(fake))[1]),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the lab's 2 cores: both rows appear
    try:
        rows = probe.measure_ram_read(SMALL + 3, repeats=2)  # rounded down to whole float32 numbers
        assert torch.get_num_threads() == 2  # the thread count is put back
    finally:
        torch.set_num_threads(threads)
    assert [row.operation for row in rows] == ["sum() read, 1 thread", "sum() read, 2 threads"]
    for row in rows:
        assert (row.tier, row.kind, row.source, row.repetitions) == ("RAM", "measured", "", 2)
        assert row.moved_bytes == SMALL and "sum()" in row.method
        assert math.isclose(row.gb_per_s, row.moved_bytes / row.elapsed_s / 1e9)
    assert math.isclose(rows[0].elapsed_s, 0.1875) and math.isclose(rows[1].elapsed_s, 0.075)
    assert math.isclose(rows[0].gb_per_s, SMALL / 0.1875 / 1e9)
    assert math.isclose(rows[0].first_run_gb_per_s, SMALL / 0.5 / 1e9)
    assert math.isclose(rows[1].first_run_gb_per_s, SMALL / 0.2 / 1e9)


@pytest.mark.parametrize(
    ("size_bytes", "repeats", "message"),
    [
        (3, 2, "size_bytes=3 holds no float32 number"),
        (SMALL, 0, "repeats=0 must be at least 1"),
    ],
)
def test_ram_read_refuses_bad_input(size_bytes: int, repeats: int, message: str) -> None:
    with pytest.raises(ProbeError, match=message):
        probe.measure_ram_read(size_bytes, repeats)


def test_cuda_cases_copy_the_right_way_round_on_cpu_tensors() -> None:
    pageable, pinned = torch.arange(8, dtype=torch.uint8), torch.zeros(8, dtype=torch.uint8)
    device_a, device_b = torch.zeros(8, dtype=torch.uint8), torch.zeros(8, dtype=torch.uint8)
    cases = probe.cuda_cases(pageable, pinned, device_a, device_b)
    assert [(tier, op) for tier, op, _, _ in cases] == [
        ("PCIe", "host→device, pageable"),
        ("PCIe", "host→device, pinned"),
        ("PCIe", "device→host, pinned"),
        ("VRAM", "device→device copy"),
    ]
    pageable_to_device = cases[0]
    pageable_to_device[2].copy_(pageable_to_device[3])
    for _, _, dst, src in cases[2:]:
        dst.copy_(src)
    assert torch.equal(device_b, pageable) and torch.equal(pinned, pageable)


# ---------------------------------------------------------------- eviction verification


@pytest.mark.parametrize(
    ("resident", "device", "verified", "evidence"),
    [
        (0.0, None, True, "mincore"),
        (0.005, 0, True, "mincore"),
        (None, 15 * MiB, True, "/proc/self/io"),
        (0.5, 16 * MiB, True, "/proc/self/io"),
        (1.0, 0, False, "100% still cached"),
        (None, 2 * MiB, False, "12% from the device"),
        (None, None, False, "no way to check"),
    ],
)
def test_classify_eviction(resident: float | None, device: int | None, verified: bool, evidence: str) -> None:
    verdict = pagecache.classify_eviction(SMALL, resident, device)
    assert verdict.verified is verified
    assert evidence in verdict.how


def test_residency_after_read_and_after_eviction(data_file: Path) -> None:
    _needs_evictable(data_file)
    pagecache.read_file(data_file, bytearray(MiB))
    assert pagecache.resident_fraction(data_file) > 0.99
    assert pagecache.evict(data_file)
    assert pagecache.resident_fraction(data_file) <= pagecache.MAX_RESIDENT_FRACTION


def test_cold_read_comes_from_the_device(data_file: Path) -> None:
    _needs_evictable(data_file)
    times, verdicts = pagecache.timed_cold_runs(
        data_file, 2, lambda: pagecache.read_file(data_file, bytearray(MiB))
    )
    assert len(times) == 2 and all(verdict.verified for verdict in verdicts)
    if pagecache.device_read_bytes() is not None:
        pagecache.evict(data_file)
        before = pagecache.device_read_bytes()
        pagecache.read_file(data_file, bytearray(MiB))
        assert pagecache.device_read_bytes() - before >= 0.9 * SMALL


def test_read_file_and_touch_pages_see_every_byte(data_file: Path) -> None:
    data = np.fromfile(data_file, dtype=np.uint8)
    assert pagecache.read_file(data_file, pagecache.aligned_buffer(3 * 4096)) == SMALL
    assert pagecache.touch_pages(data_file) == int(data[:: pagecache.PAGE_BYTES].sum())
    copy = np.zeros(SMALL, dtype=np.uint8)
    pagecache.touch_pages(data_file, copy)
    assert np.array_equal(copy, data)


def test_test_file_is_exact_page_unique_and_incompressible(tmp_path: Path) -> None:
    path = tmp_path / "odd.bin"
    pagecache.write_test_file(path, 3 * MiB + 4096, MiB)
    data = path.read_bytes()
    assert len(data) == 3 * MiB + 4096
    stamps = np.frombuffer(data, dtype=np.uint8).reshape(-1, 4096)[:, :8].copy().view(np.uint64)
    assert len(np.unique(stamps)) == len(stamps)
    assert len(zlib.compress(data[:MiB])) > 0.99 * MiB


# ---------------------------------------------------------------- the whole probe


def test_run_returns_records_from_disk_to_vram(report: probe.ProbeReport) -> None:
    assert set(record.kind for record in report) <= set(tiers.KINDS)
    measured = {(r.tier, r.operation) for r in report.of_kind("measured")}
    assert {
        ("disk", "write + fsync (new file)"),
        ("page cache", "warm read()"),
        ("page cache", "mmap + touch every page"),
        ("RAM", "copy_, 1 thread"),
        ("RAM", "first touch of fresh memory"),
        ("RAM", "sum() read, 1 thread"),
    } <= measured
    for record in report:
        assert math.isclose(record.gb_per_s, record.moved_bytes / record.elapsed_s / 1e9)
        assert (record.source == "") == (record.kind == "measured")
        assert record.tier in tiers.TIERS
    for record in report.of_kind("measured"):
        assert record.moved_bytes == SMALL
        if record.repetitions > 1:
            assert record.first_run_gb_per_s is not None
    assert not any(r.tier in ("PCIe", "VRAM") for r in report.of_kind("measured"))
    assert len(report.of_kind("modelled")) == 1
    assert json.loads(json.dumps(report.to_dict()))["size_bytes"] == SMALL


def test_cold_row_says_how_eviction_was_checked(report: probe.ProbeReport) -> None:
    cold = report.cold_disk()
    if cold.tier == "disk":
        assert "mincore" in cold.note or "/proc/self/io" in cold.note
    else:
        assert "NOT a disk number" in cold.note


def test_failed_eviction_falls_back_to_o_direct(data_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fd = pagecache.open_direct(data_file)
    if fd is None or pagecache.device_read_bytes() is None:
        pytest.skip("O_DIRECT or /proc/self/io unavailable here")
    os.close(fd)
    monkeypatch.setattr(pagecache, "evict", lambda path: True)  # the advice is ignored
    pagecache.read_file(data_file, bytearray(MiB))
    rows = probe.measure_cold_read(data_file, MiB, 1, "auto")
    assert [(r.tier, r.operation) for r in rows] == [("disk", "O_DIRECT read()")]
    assert "fadvise eviction did not work" in rows[0].note


def test_unverified_eviction_is_not_called_a_disk_number(
    data_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pagecache, "evict", lambda path: True)
    monkeypatch.setattr(pagecache, "open_direct", lambda path: None)
    pagecache.read_file(data_file, bytearray(MiB))
    rows = probe.measure_cold_read(data_file, MiB, 1, "auto")
    assert [r.tier for r in rows] == ["page cache (not evicted)"]
    assert "NOT a disk number" in rows[0].note


def test_direct_method_on_a_real_disk(data_file: Path) -> None:
    fd = pagecache.open_direct(data_file)
    if fd is None or pagecache.device_read_bytes() is None:
        pytest.skip("O_DIRECT or /proc/self/io unavailable here")
    os.close(fd)
    rows = probe.measure_cold_read(data_file, MiB, 1, "direct")
    assert rows[0].operation == "O_DIRECT read()" and "/proc/self/io" in rows[0].note


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size_bytes": 10**15}, "free space"),
        ({"block_bytes": 3000}, "multiple of 4096"),
        ({"size_bytes": 4096, "block_bytes": 8192}, "smaller than block_bytes"),
        ({"repeats": 0}, "at least 1"),
        ({"cold_method": "magic"}, "cold_method"),
    ],
)
def test_bad_input_fails_before_any_work(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ProbeError, match=message):
        probe.run(**{"size_bytes": SMALL, "tmp_dir": tmp_path, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_size_that_does_not_fit_ram_is_refused() -> None:
    with pytest.raises(ProbeError, match="RAM"):
        probe.check_fits(3 * 2**30, free_disk_bytes=10**12, free_ram_bytes=8 * 2**30)
    probe.check_fits(2**30, free_disk_bytes=10**12, free_ram_bytes=8 * 2**30)


def test_missing_or_unwritable_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ProbeError, match="not an existing folder"):
        probe.run(SMALL, tmp_dir=tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ProbeError, match="not an existing folder"):
        probe.run(SMALL, tmp_dir=tmp_path / "file")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root may write anywhere: pretend the permission bits hold
        monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ProbeError, match="not writable"):
        probe.run(SMALL, tmp_dir=locked)


def test_temp_file_removed_on_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        assert len(list(tmp_path.iterdir())) == 1  # the file exists while measuring
        raise KeyboardInterrupt

    monkeypatch.setattr(probe, "measure_warm_read", interrupted)
    with pytest.raises(KeyboardInterrupt):
        probe.run(SMALL, tmp_dir=tmp_path, repeats=1, cuda=False)
    assert list(tmp_path.iterdir()) == []


def test_temp_file_removed_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(path: Path, size_bytes: int, block_bytes: int) -> float:
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pagecache, "write_test_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        probe.run(SMALL, tmp_dir=tmp_path, repeats=1, cuda=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gpu
def test_cuda_rows_are_measured(tmp_path: Path) -> None:
    report = probe.run(64 * MiB, tmp_dir=tmp_path, repeats=2, cuda=True)
    measured = {r.operation for r in report.of_kind("measured")}
    assert {
        "host→device, pageable",
        "host→device, pinned",
        "device→host, pinned",
        "device→device copy",
    } <= measured
    assert report.cuda_device and not report.of_kind("modelled")


# ---------------------------------------------------------------- the exercise check


def _fake_report(tier: str = "disk") -> probe.ProbeReport:
    cold = probe.measured_record(tier, "cold read()", 2 * 10**9, [1.0, 1.0], "how", "mincore: 0%")
    return probe.ProbeReport((cold, *probe.quoted_records()), (), 2 * 10**9, MiB)


def _right(report, size_bytes):
    return size_bytes / (report.cold_disk().gb_per_s * 1e9)


def test_check_accepts_the_right_answer() -> None:
    result = check_cold_load_time(_right, _fake_report(), 10**8)  # 1e8 bytes at 2 GB/s
    assert result.passed and result.verdict == "passed" and "0.05 s" in result.message
    assert str(result).startswith("✅ passed")
    result = check_cold_load_time(_right, _fake_report("page cache (not evicted)"), 10**8)
    assert result.passed and "NOT a disk number" in result.message


def test_check_answers_a_stub_with_a_hint() -> None:
    def stub(report, size_bytes):
        raise NotImplementedError()

    result = check_cold_load_time(stub, _fake_report(), 10**8)
    assert not result.passed and result.verdict == "not answered" and "NotImplementedError" in result.hint


def test_check_rejects_a_hard_coded_number_and_a_crash() -> None:
    result = check_cold_load_time(lambda report, size: 0.05, _fake_report(), 10**8)
    assert result.verdict == "not yet" and "1,000,000,000 bytes" in result.message
    result = check_cold_load_time(lambda report, size: report.nope, _fake_report(), 10**8)
    assert result.verdict == "not yet" and "AttributeError" in result.message


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (10**8 / (2 * 2**30), "10\\^9"),
        (2 * 10**9 / 10**8, "divide the bytes"),
        (50.0, "milliseconds"),
        (1.0, "seconds = file size"),
        (float("nan"), "seconds = file size"),
    ],
)
def test_check_explains_wrong_answers(answer: float, hint: str) -> None:
    result = check_cold_load_time(lambda report, size: answer * size / 10**8, _fake_report(), 10**8)
    assert not result.passed and result.verdict == "not yet"
    assert re.search(hint, result.hint), result.hint


def test_report_without_cold_row_raises() -> None:
    with pytest.raises(ProbeError, match="no cold-read row"):
        probe.ProbeReport(tuple(probe.quoted_records()), (), 0, 0).cold_disk()


# ---------------------------------------------------------------- figures and widgets


def test_tier_figure_keeps_kinds_apart(report: probe.ProbeReport) -> None:
    pytest.importorskip("plotly")
    from labkit.figures.hierarchy import tier_figure

    fig = tier_figure(report)
    assert fig.layout.xaxis.type == "log"
    assert [trace.name.split()[0] for trace in fig.data] == ["measured", "quoted", "modelled"]
    for trace, kind in zip(fig.data, tiers.KINDS, strict=False):
        assert len(trace.y) == len(report.of_kind(kind))
        assert all(kind in text for text in trace.text)


def test_load_times_are_modelled_and_only_load_paths(report: probe.ProbeReport) -> None:
    pytest.importorskip("plotly")
    from labkit.figures.hierarchy import is_load_path, load_time_figure, load_time_table_html, load_times

    rows = load_times(report, {"m": 10**9})
    assert all(row.seconds == pytest.approx(1 / row.record.gb_per_s) for row in rows)
    operations = {row.record.operation for row in rows}
    assert "cold read()" in operations or "O_DIRECT read()" in operations
    assert any(op.startswith("RAM → VRAM hop") for op in operations)
    for not_a_load in ("mmap + touch every page", "write + fsync (new file)", "VRAM bandwidth (article)"):
        assert not_a_load not in operations
    assert not any(op.startswith(("copy_", "sum()", "first touch")) for op in operations)
    assert all(is_load_path(row.record) for row in rows)
    table = load_time_table_html(report, {"a": 10**10, "b": 10**9})
    assert "<b>modelled</b>" in table and "(measured here)" in table and "(quoted)" in table
    fig = load_time_figure(report, {"a": 10**10, "b": 10**9})
    assert [trace.name for trace in fig.data] == ["a", "b"] and "MODELLED" in fig.layout.title.text


def test_modelled_host_to_device_says_upper_bound(report: probe.ProbeReport) -> None:
    row = next(r for r in report if r.kind == "modelled")
    assert "upper bound" in row.operation and "upper bound" in row.note


def test_copy_sweep_measures_each_size() -> None:
    from labkit.hierarchy import caches

    rates = caches.copy_sweep((16 * 1024, 1 * MiB), repeats=1)
    assert [rate.size_bytes for rate in rates] == [16 * 1024, MiB]
    assert rates[0].record.moved_bytes == caches.MIN_BYTES_PER_RUN  # 4096 copies of 16 KiB per run
    assert all(rate.record.kind == "measured" and rate.record.gb_per_s > 0 for rate in rates)
    with pytest.raises(ProbeError, match="below one page"):
        caches.copy_rate(100)


def test_widgets_handlers_run_headless(report: probe.ProbeReport, tmp_path: Path) -> None:
    pytest.importorskip("ipywidgets")
    from labkit.widgets.hierarchy import CopySweepDemo, ProbePanel

    panel = ProbePanel(report, repeats=1, tmp_dir=str(tmp_path))
    panel.block.value = 4 * MiB  # fires the handler, as a student's slider move would
    assert panel.report.block_bytes == 4 * MiB and "measured" in panel.status.value
    assert list(tmp_path.iterdir()) == []
    assert max(value for _, value in panel.size.options) <= probe.max_size_bytes()
    static = panel.static()._repr_html_()
    assert "<table>" in static and "█" in static and "<script" not in static  # shown by every viewer
    demo = CopySweepDemo(rates=[])
    demo.size.value = 64 * 1024  # fires the handler
    assert "64 KiB" in demo.status.value and "measured" in demo.status.value
    assert len(demo.figure.data) == 2 and "64 KiB" in demo.static()._repr_html_()


def test_text_bar_is_a_figure_in_characters() -> None:
    pytest.importorskip("ipywidgets")
    from labkit.widgets.common import BAR_WIDTH, text_bar

    assert text_bar(10.0, 10.0) == "█" * BAR_WIDTH and text_bar(5.0, 10.0) == "█" * (BAR_WIDTH // 2)
    assert text_bar(1.0, 100.0, log_floor=0.1) == "█" * (BAR_WIDTH // 3)  # one decade of three
    assert text_bar(0.0, 10.0) == "" and text_bar(1e-9, 10.0) == "█"  # never an invisible non-zero bar


def test_panel_offers_only_sizes_that_fit(report: probe.ProbeReport, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ipywidgets")
    from labkit.hierarchy import memory
    from labkit.widgets.hierarchy import ProbePanel

    small = memory.MemoryBudget(400 * MiB, "cgroup v2", 20 * 2**30, 24 * 2**30, "fake", None, "fake")
    monkeypatch.setattr(memory, "read_memory", lambda root="/": small)
    panel = ProbePanel(report)
    offered = [value for _, value in panel.size.options]
    assert max(offered) <= 400 * MiB * 0.8 / probe.PEAK_BUFFERS and 256 * MiB not in offered


def test_cuda_without_a_cuda_device_fails_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: object, **kwargs: object) -> float:
        raise AssertionError("the probe started measuring before checking for CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(pagecache, "write_test_file", never)
    with pytest.raises(ProbeError, match=r"cuda=True.*no CUDA device.*cuda=None"):
        probe.run(SMALL, tmp_dir=tmp_path, repeats=1, cuda=True)
    assert list(tmp_path.iterdir()) == []
