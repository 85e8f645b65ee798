"""Copy speed against buffer size: the CPU's caches are tiers too (notebook 00's widget).

"RAM ≈ 20–50 GB/s" is one number for what is really a ladder. A buffer that fits the CPU's
caches (tens of KiB to tens of MiB, on the chip) is copied several times faster than one that
must stream from the RAM chips. ``copy_rate`` times one size; sweep sizes and the steps show
where this CPU's caches end -- something no formula predicts without knowing the chip.

Each timed run copies the source into a pre-faulted destination ``loops`` times, enough to move
at least ``MIN_BYTES_PER_RUN`` bytes, so even a 16 KiB copy is timed over many microseconds.
``moved_bytes`` counts each byte once (a copy reads and writes it: the memory traffic is twice).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from labkit.errors import ProbeError
from labkit.hierarchy.tiers import TierRecord, measured_record

KiB, MiB = 1 << 10, 1 << 20
MIN_BYTES_PER_RUN = 64 * MiB
SWEEP_SIZES_BYTES = tuple(16 * KiB * 4**i for i in range(7))  # 16 KiB, 64 KiB, ... 64 MiB


@dataclass(frozen=True)
class CopyRate:
    """One buffer size and how fast it was copied (``record.gb_per_s``, measured)."""

    size_bytes: int
    record: TierRecord


def copy_rate(size_bytes: int, *, repeats: int = 5) -> CopyRate:
    """Time ``np.copyto`` of a ``size_bytes`` buffer into another, single-threaded.

    Args:
        size_bytes: the buffer size, at least 4096.
        repeats: timed runs behind the median (one more warm-up run is reported apart).

    Returns:
        A ``CopyRate``: the size and a measured ``TierRecord`` (tier "CPU cache or RAM";
        ``moved_bytes`` per run = ``size_bytes`` x the copies per run).

    Raises:
        ProbeError: ``size_bytes`` below 4096 or ``repeats`` below 1.
    """
    if size_bytes < 4096:
        raise ProbeError(f"size_bytes={size_bytes} is below one page; pass at least 4096")
    if repeats < 1:
        raise ProbeError(f"repeats={repeats} must be at least 1")
    src = np.ones(size_bytes, dtype=np.uint8)  # ones() and zeros() + fill fault every page in
    dst = np.zeros(size_bytes, dtype=np.uint8)
    dst.fill(0)
    loops = max(1, MIN_BYTES_PER_RUN // size_bytes)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for _ in range(loops):
            np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    record = measured_record(
        "CPU cache or RAM",
        f"copy {_size_text(size_bytes)}",
        size_bytes * loops,
        times,
        f"np.copyto of a {_size_text(size_bytes)} buffer, {loops}x per run, 1 thread",
        "counts each byte once; a copy reads and writes it (2x the memory traffic)",
    )
    return CopyRate(size_bytes, record)


def copy_sweep(sizes_bytes: tuple[int, ...] = SWEEP_SIZES_BYTES, *, repeats: int = 5) -> list[CopyRate]:
    """``copy_rate`` at each size, smallest first."""
    return [copy_rate(size, repeats=repeats) for size in sorted(sizes_bytes)]


def _size_text(size_bytes: int) -> str:
    return f"{size_bytes / MiB:g} MiB" if size_bytes >= MiB else f"{size_bytes / KiB:g} KiB"
