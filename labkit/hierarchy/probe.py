"""Measure this machine's I/O tiers honestly: disk, page cache, RAM and, with CUDA, PCIe and VRAM.

``run()`` writes one temporary file and times how fast its bytes move at each tier of a
weight's journey, beside the article's speed table (quoted, with sources):

    disk (cold) --read()--> page cache --copy--> RAM --PCIe--> VRAM

Honesty rules every number here follows:

- A cold read counts as a *disk* read only when the eviction was checked (``labkit.hierarchy.pagecache``:
  ``mincore`` residency, ``/proc/self/io``), or when ``O_DIRECT`` bypassed the cache. Otherwise
  the row says "page cache (not evicted)".
- The first run of every measurement is reported apart (``first_run_gb_per_s``): the first touch
  of a buffer pays a page fault per page and the kernel zeroing that page (a VM that hands idle
  memory back to its host adds more). The headline is the median of the runs after it.
- ``kind`` says where a number comes from: ``"measured"`` here, ``"quoted"`` from a source, or
  ``"modelled"`` from measured and quoted numbers (the formula is in ``method``).

Units: GB/s = 10^9 bytes/s; ``moved_bytes`` counts each byte once: copied once (a copy reads
and writes, so memory traffic is about twice that), or read once (the ``sum()`` rows, which
write nothing). Inspired by the template of pytorch/tutorials
``intermediate_source/pinmem_nonblock.py``: one timing helper, one table. The table's rows
(``TierRecord``) and the quoted figures live in ``labkit.hierarchy.tiers``.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from labkit.errors import ProbeError
from labkit.hierarchy import memory, pagecache
from labkit.hierarchy.tiers import (
    TIERS,
    ProbeReport,
    TierRecord,
    measured_record,
    modelled_host_to_device,
    quoted_records,
)

MiB = 1 << 20
DEFAULT_SIZE_BYTES = 256 * MiB
DEFAULT_BLOCK_BYTES = 1 * MiB
_RAM_SAFETY = 0.8  # use at most this share of available RAM
PEAK_BUFFERS = 3  # buffers of size_bytes alive at once: copy source and destination, and the mapped file
_DISK_SAFETY = 0.9  # and of free disk space


# ---------------------------------------------------------------- checks before any work


def available_ram_bytes() -> int:
    """Return the bytes a new allocation can get: the smaller of the host's ``MemAvailable`` and
    the container's cgroup headroom (``labkit.hierarchy.memory``)."""
    return memory.available_bytes()


def max_size_bytes(cap_bytes: int = 1024 * MiB) -> int:
    """Return the largest ``size_bytes`` whose probe fits the memory this process has now
    (``PEAK_BUFFERS`` buffers within the safety margin), at most ``cap_bytes``."""
    return memory.safe_size_bytes(_RAM_SAFETY / PEAK_BUFFERS, cap_bytes)


def check_fits(size_bytes: int, free_disk_bytes: int, free_ram_bytes: int) -> None:
    """Raise ``ProbeError`` unless a probe of ``size_bytes`` fits: one file on disk and, at the
    peak, ``PEAK_BUFFERS`` buffers of that size in RAM, each within a safety margin."""
    if size_bytes > free_disk_bytes * _DISK_SAFETY:
        raise ProbeError(
            f"size_bytes={size_bytes:,} does not fit the temp folder's free space "
            f"({free_disk_bytes:,} bytes free, at most {_DISK_SAFETY:.0%} used); "
            "pass a smaller size or tmp_dir= a folder on a bigger disk"
        )
    if PEAK_BUFFERS * size_bytes > free_ram_bytes * _RAM_SAFETY:
        raise ProbeError(
            f"size_bytes={size_bytes:,} needs {PEAK_BUFFERS * size_bytes:,} bytes of RAM at its peak "
            f"(copy source, destination and the mapped file) but only {free_ram_bytes:,} are available "
            f"to this process; pass at most {int(free_ram_bytes * _RAM_SAFETY / PEAK_BUFFERS):,}"
        )


def _check_request(
    size_bytes: int,
    block_bytes: int,
    tmp_dir: str | os.PathLike[str] | None,
    repeats: int,
    cuda: bool | None = None,
) -> Path:
    if cuda and not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "torch sees no CUDA device"
        raise ProbeError(
            f"cuda=True, but there is no CUDA device to measure ({why}); "
            "pass cuda=None to measure PCIe/VRAM only when a GPU is present"
        )
    if block_bytes <= 0 or block_bytes % pagecache.DIRECT_IO_ALIGN_BYTES:
        raise ProbeError(
            f"block_bytes={block_bytes} must be a positive multiple of 4096 "
            "(O_DIRECT reads need aligned blocks); try 1 MiB = 1048576"
        )
    if size_bytes < block_bytes:
        raise ProbeError(
            f"size_bytes={size_bytes} is smaller than block_bytes={block_bytes}; "
            "the file must hold at least one block"
        )
    if repeats < 1:
        raise ProbeError(f"repeats={repeats} must be at least 1")
    folder = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.gettempdir())
    if not folder.is_dir():
        raise ProbeError(f"tmp_dir {str(folder)!r} is not an existing folder; create it or pass another")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ProbeError(f"tmp_dir {str(folder)!r} is not writable; pass tmp_dir= a writable folder")
    check_fits(size_bytes, shutil.disk_usage(folder).free, available_ram_bytes())
    return folder


# ---------------------------------------------------------------- timing helpers


def _wall_clock(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def time_runs(
    step: Callable[[], object], runs: int, clock: Callable[[Callable[[], object]], float] = _wall_clock
) -> list[float]:
    """Run ``step`` ``runs`` times and return the seconds each took, as ``clock`` measures."""
    return [clock(step) for _ in range(runs)]


# ---------------------------------------------------------------- the measurements


def measure_cold_read(path: Path, block_bytes: int, repeats: int, method: str = "auto") -> list[TierRecord]:
    """Time reads of ``path`` from the device: fadvise eviction, verified; else O_DIRECT;
    else a row honestly labelled "page cache (not evicted)". Adds a cold mmap row when the
    eviction works.

    Args:
        method: "auto", "fadvise" (no O_DIRECT fallback) or "direct" (O_DIRECT only).
    """
    size_bytes, runs = os.path.getsize(path), repeats + 1
    direct_what = f"O_DIRECT read() of {block_bytes:,}-byte aligned blocks (skips the page cache)"
    if method == "direct":
        direct = pagecache.timed_direct_runs(path, block_bytes, runs)
        if direct is None or not direct[1].verified:
            raise ProbeError(
                f"O_DIRECT reads of {path} are refused or not verifiable here; use method='auto'"
            )
        return [measured_record("disk", "O_DIRECT read()", size_bytes, direct[0], direct_what, direct[1].how)]
    buffer = pagecache.aligned_buffer(block_bytes)
    times, verdicts = pagecache.timed_cold_runs(path, runs, lambda: pagecache.read_file(path, buffer))
    what = f"read() of {block_bytes:,}-byte blocks after fsync + posix_fadvise(DONTNEED)"
    if all(verdict.verified for verdict in verdicts):
        how = f"{verdicts[0].how} (checked before each of the {runs} runs)"
        rows = [measured_record("disk", "cold read()", size_bytes, times, what, how)]
        map_times, map_verdicts = pagecache.timed_cold_runs(path, runs, lambda: pagecache.touch_pages(path))
        if all(verdict.verified for verdict in map_verdicts):
            rows.append(
                measured_record(
                    "disk",
                    "cold mmap + touch every page",
                    size_bytes,
                    map_times,
                    "mmap, read 1 byte per page after eviction",
                    map_verdicts[0].how,
                )
            )
        return rows
    direct = pagecache.timed_direct_runs(path, block_bytes, runs) if method == "auto" else None
    if direct is not None and direct[1].verified:
        return [
            measured_record(
                "disk",
                "O_DIRECT read()",
                size_bytes,
                direct[0],
                direct_what,
                f"{direct[1].how}; fadvise eviction did not work here (pages a process maps stay cached)",
            )
        ]
    why = next(verdict.how for verdict in verdicts if not verdict.verified)
    return [
        measured_record(
            "page cache (not evicted)",
            "cold read() (eviction not verified)",
            size_bytes,
            times,
            what,
            f"NOT a disk number: {why}",
        )
    ]


def measure_warm_read(path: Path, block_bytes: int, repeats: int) -> TierRecord:
    """Time ``read()`` of a file already in the page cache into one reused buffer."""
    buffer = pagecache.aligned_buffer(block_bytes)
    pagecache.read_file(path, buffer)  # make sure the whole file is cached
    size_bytes = os.path.getsize(path)
    resident = pagecache.resident_fraction(path)
    times = time_runs(lambda: pagecache.read_file(path, buffer), repeats + 1)
    note = "" if resident is None else f"mincore: {resident:.0%} of the file cached"
    return measured_record(
        "page cache",
        "warm read()",
        size_bytes,
        times,
        f"read() of {block_bytes:,}-byte blocks into one reused buffer",
        note,
    )


def measure_ram(size_bytes: int, repeats: int, path: Path | None = None) -> list[TierRecord]:
    """Time the first touch of fresh memory, ``copy_`` at 1 and all threads, and (with
    ``path``) warm mmap touch and mmap → RAM copy. Destinations are pre-faulted."""
    src = torch.empty(size_bytes, dtype=torch.uint8)
    first = _wall_clock(lambda: src.fill_(1))
    dst = torch.zeros(size_bytes, dtype=torch.uint8)  # pre-faulted destination
    rows = [
        measured_record(
            "RAM",
            "first touch of fresh memory",
            size_bytes,
            [first],
            "fill_ of a new tensor (page faults + zeroing); one run",
            "each new page costs a page fault and the kernel zeroing it before fill_ writes it",
        )
    ]
    if path is not None:
        rows.append(
            measured_record(
                "page cache",
                "mmap + touch every page",
                size_bytes,
                time_runs(lambda: pagecache.touch_pages(path), repeats + 1),
                "mmap, read 1 byte per page (maps pages, copies nothing)",
            )
        )
        rows.append(
            measured_record(
                "page cache",
                "mmap + copy into RAM",
                size_bytes,
                time_runs(lambda: pagecache.touch_pages(path, dst.numpy()), repeats + 1),
                "mmap, np.copyto into a pre-faulted buffer (1 thread)",
            )
        )
    for threads, label, times in _time_at_1_and_all_threads(lambda: dst.copy_(src), repeats + 1):
        rows.append(
            measured_record(
                "RAM",
                f"copy_, {threads} {label}",
                size_bytes,
                times,
                "torch copy_ into a pre-faulted tensor (memcpy class)",
            )
        )
    return rows


def _time_at_1_and_all_threads(work: Callable[[], object], runs: int) -> list[tuple[int, str, list[float]]]:
    """Run ``time_runs(work, runs)`` with 1 torch thread, then with all: [(threads, "thread(s)", times)]."""
    all_threads = torch.get_num_threads()
    results = []
    for threads in sorted({1, all_threads}):
        torch.set_num_threads(threads)
        try:
            times = time_runs(work, runs)
        finally:
            torch.set_num_threads(all_threads)
        results.append((threads, "thread" if threads == 1 else "threads", times))
    return results


def measure_ram_read(size_bytes: int, repeats: int) -> list[TierRecord]:
    """Time a torch ``sum()`` over a pre-faulted float32 buffer: RAM *read* bandwidth, at 1 and all threads.

    A sum reads every byte once and writes almost nothing, as a matrix-vector product does with
    its weights, so this is the bandwidth that bounds decoding speed (notebook 05,
    ``bench/bench_runtime.py``). A copy (``copy_`` rows) reads *and* writes each byte instead.

    Args:
        size_bytes: buffer size; rounded down to whole float32 numbers (at least 4 bytes).
            Make it far larger than the CPU's last-level cache, or the cache is measured.
        repeats: timed runs behind each median (one more warm-up run is reported apart).

    Returns:
        Two ``TierRecord`` rows, kind "measured", tier "RAM": "sum() read, 1 thread", then
        "sum() read, N threads" for torch's current thread count N (one row when N is 1).

    Raises:
        ProbeError: ``size_bytes`` holds no float32 number, or ``repeats`` is below 1.
    """
    if size_bytes < 4:
        raise ProbeError(
            f"size_bytes={size_bytes} holds no float32 number; pass at least 4 "
            "(far more than the CPU cache, e.g. 256 MiB = 268435456)"
        )
    if repeats < 1:
        raise ProbeError(f"repeats={repeats} must be at least 1")
    buffer = torch.ones(size_bytes // 4)  # float32; ones() touches, so faults in, every page
    moved_bytes = buffer.numel() * buffer.element_size()
    return [
        measured_record(
            "RAM",
            f"sum() read, {threads} {label}",
            moved_bytes,
            times,
            "torch sum() over a pre-faulted float32 buffer (reads each byte once)",
        )
        for threads, label, times in _time_at_1_and_all_threads(buffer.sum, repeats + 1)
    ]


def cuda_cases(
    pageable: torch.Tensor, pinned: torch.Tensor, device_a: torch.Tensor, device_b: torch.Tensor
) -> list[tuple[str, str, torch.Tensor, torch.Tensor]]:
    """Return the CUDA copies to time as (tier, operation, destination, source)."""
    return [
        ("PCIe", "host→device, pageable", device_a, pageable),
        ("PCIe", "host→device, pinned", device_a, pinned),
        ("PCIe", "device→host, pinned", pinned, device_a),
        ("VRAM", "device→device copy", device_b, device_a),
    ]


def _cuda_clock(step: Callable[[], object]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def measure_cuda(size_bytes: int, repeats: int) -> list[TierRecord]:
    """Time RAM ↔ VRAM and VRAM → VRAM copies with CUDA events (needs a CUDA device)."""
    free_bytes, _ = torch.cuda.mem_get_info()
    size_bytes = min(size_bytes, int(free_bytes * 0.4))  # two device buffers
    pageable = torch.ones(size_bytes, dtype=torch.uint8)
    pinned = torch.empty(size_bytes, dtype=torch.uint8, pin_memory=True).fill_(1)
    device_a = torch.ones(size_bytes, dtype=torch.uint8, device="cuda")
    device_b = torch.zeros(size_bytes, dtype=torch.uint8, device="cuda")
    rows = []
    for tier, operation, dst, src in cuda_cases(pageable, pinned, device_a, device_b):
        times = time_runs(functools.partial(dst.copy_, src, non_blocking=True), repeats + 1, _cuda_clock)
        note = "a copy reads and writes: memory traffic is 2x this" if tier == "VRAM" else ""
        rows.append(measured_record(tier, operation, size_bytes, times, "copy_ timed with CUDA events", note))
    return rows


# ---------------------------------------------------------------- the whole probe


def _progress_bar(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm  # only the progress bar needs tqdm

    return tqdm(total=total, desc="probe", unit="step", leave=False)


def run(
    size_bytes: int = DEFAULT_SIZE_BYTES,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    tmp_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    *,
    repeats: int = 5,
    cold_method: str = "auto",
    cuda: bool | None = None,
) -> ProbeReport:
    """Measure every tier this machine has, and list the quoted ones beside them.

    Args:
        size_bytes: size of the temporary test file and of each RAM/VRAM buffer.
        block_bytes: read size, a multiple of 4096 (O_DIRECT alignment).
        tmp_dir: folder for the temporary file (default: the system temp folder). Its disk
            is the one measured. The file is removed at the end, also on Ctrl-C.
        progress: show a tqdm progress bar.
        repeats: timed runs behind each median (one more warm-up run is reported apart).
        cold_method: "auto" (fadvise eviction, else O_DIRECT), "fadvise" or "direct".
        cuda: measure PCIe/VRAM (None: when ``torch.cuda.is_available()``).

    Returns:
        A ``ProbeReport``; its records run from disk to VRAM, measured rows first.

    Raises:
        ProbeError: before any work, if the size does not fit the free disk space or RAM,
            the block size is not aligned, ``tmp_dir`` is not a writable folder, or
            ``cuda=True`` without a CUDA device.
    """
    if cold_method not in ("auto", "fadvise", "direct"):
        raise ProbeError(f"cold_method={cold_method!r} must be 'auto', 'fadvise' or 'direct'")
    folder = _check_request(size_bytes, block_bytes, tmp_dir, repeats, cuda)
    use_cuda = torch.cuda.is_available() if cuda is None else cuda
    bar = _progress_bar(progress, 6 if use_cuda else 5)
    handle, name = tempfile.mkstemp(prefix="labkit-probe-", suffix=".bin", dir=folder)
    os.close(handle)
    path = Path(name)
    records: list[TierRecord] = []
    try:
        steps: list[Callable[[], list[TierRecord]]] = [
            lambda: [
                measured_record(
                    "disk",
                    "write + fsync (new file)",
                    size_bytes,
                    [pagecache.write_test_file(path, size_bytes, block_bytes)],
                    "write() blocks, then fsync; one run",
                    "one run: includes block allocation",
                )
            ],
            lambda: measure_cold_read(path, block_bytes, repeats, cold_method),
            lambda: [measure_warm_read(path, block_bytes, repeats)],
            lambda: measure_ram(size_bytes, repeats, path),
            lambda: measure_ram_read(size_bytes, repeats),
        ]
        if use_cuda:
            steps.append(lambda: measure_cuda(size_bytes, repeats))
        for step in steps:
            records += step()
            if bar is not None:
                bar.update()
    finally:
        path.unlink(missing_ok=True)
        if bar is not None:
            bar.close()
    return _assemble(records, size_bytes, block_bytes, use_cuda)


def _assemble(measured: list[TierRecord], size_bytes: int, block_bytes: int, use_cuda: bool) -> ProbeReport:
    extra = quoted_records()
    notes = [
        "GB/s = 10^9 bytes per second; moved_bytes counts each byte copied (or, for sum(), read) once.",
        "Headline = median of the runs after the first; the first (warm-up) run is "
        "reported apart: fresh memory pays a page fault and zeroing per page on first touch.",
        "'cold' means: not in this OS's page cache (a VM host may still cache the file).",
    ]
    if use_cuda:
        device = torch.cuda.get_device_name()
    else:
        device = None
        ram_rows = [r for r in measured if r.tier == "RAM" and r.operation.startswith("copy_")]
        extra.append(modelled_host_to_device(max(ram_rows, key=lambda r: r.gb_per_s)))
        notes.append("No CUDA device: PCIe and VRAM rows are quoted or modelled, not measured.")
    order = {tier: index for index, tier in enumerate(TIERS)}
    rows = sorted(measured, key=lambda r: order[r.tier])
    rows += sorted(extra, key=lambda r: order[r.tier])
    return ProbeReport(tuple(rows), tuple(notes), size_bytes, block_bytes, device)
