"""The rows of the lab's speed table: one record per tier, and where each number comes from.

Every number the lab shows about a tier of the disk → RAM → VRAM journey is a ``TierRecord``
whose ``kind`` says where it comes from:

- ``"measured"``: timed on this machine (``labkit.hierarchy.probe`` builds these with ``measured_record``);
- ``"quoted"``: from a source named in ``source`` (the article's speed table, the PCIe specs);
- ``"modelled"``: computed from measured and quoted numbers, the formula in ``method``.

Units: GB/s = 10^9 bytes/s.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from labkit.errors import ProbeError

KINDS = ("measured", "quoted", "modelled")
TIERS = ("disk", "page cache (not evicted)", "page cache", "RAM", "PCIe", "VRAM")
ARTICLE = 'article "From disk to VRAM: the role of I/O in model inference", speed table'
PCI_SIG = "PCI-SIG base specs: 16 GT/s (4.0) / 32 GT/s (5.0) per lane, 128b/130b, x16"
PCIE4_X16_GB_PER_S = 16 * 16 * 128 / 130 / 8  # = 31.5 GB/s per direction
PCIE5_X16_GB_PER_S = 32 * 16 * 128 / 130 / 8  # = 63.0 GB/s per direction


@dataclass(frozen=True)
class TierRecord:
    """One row of the probe's table: how fast bytes moved through one tier.

    Attributes:
        tier: one of ``TIERS`` ("disk", "page cache", "RAM", "PCIe", "VRAM", ...).
        operation: what moved the bytes, e.g. "cold read()" or "copy_, 2 threads".
        moved_bytes: bytes moved per run (quoted rows: 10^9, i.e. per GB).
        elapsed_s: seconds per run (median of the runs after the first).
        gb_per_s: ``moved_bytes / elapsed_s / 1e9``; for a quoted range, its low end.
        method: how it was measured or where it came from.
        kind: "measured" on this machine, "quoted" from ``source``, or "modelled".
        source: the reference of a quoted or modelled number ("" when measured).
        first_run_gb_per_s: the first (warm-up) run, reported apart; None if only one run.
        repetitions: runs behind the median.
        note: caveats (how eviction was verified, what was cached, ...).
        gb_per_s_max: the high end of a quoted range, else None.
    """

    tier: str
    operation: str
    moved_bytes: int
    elapsed_s: float
    gb_per_s: float
    method: str
    kind: str
    source: str = ""
    first_run_gb_per_s: float | None = None
    repetitions: int = 1
    note: str = ""
    gb_per_s_max: float | None = None


@dataclass(frozen=True)
class ProbeReport:
    """Everything ``run()`` found: the rows, plus notes that apply to all of them."""

    records: tuple[TierRecord, ...]
    notes: tuple[str, ...]
    size_bytes: int
    block_bytes: int
    cuda_device: str | None = None

    def __iter__(self) -> Iterator[TierRecord]:
        return iter(self.records)

    def of_kind(self, kind: str) -> list[TierRecord]:
        """Return the records whose ``kind`` is ``kind`` ("measured", "quoted", "modelled")."""
        return [record for record in self.records if record.kind == kind]

    def cold_disk(self) -> TierRecord:
        """Return the measured cold-read row: a disk row if eviction was verified, else the
        row labelled "page cache (not evicted)"."""
        for record in self.records:
            if record.kind == "measured" and record.operation.startswith(("cold read", "O_DIRECT")):
                return record
        raise ProbeError("this report has no cold-read row; run labkit.hierarchy.probe.run() again")

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain data (``json.dumps``-ready)."""
        return {**asdict(self), "records": [asdict(record) for record in self.records]}


# ---------------------------------------------------------------- records from numbers


def measured_record(
    tier: str, operation: str, moved_bytes: int, times_s: list[float], method: str, note: str = ""
) -> TierRecord:
    """Build a measured row from raw run times: the first run apart, the median of the rest.

    Args:
        times_s: seconds of each run, in order; with one run, that run is the headline.

    Returns:
        A ``TierRecord`` with ``kind="measured"``.
    """
    if not times_s:
        raise ValueError("measured_record needs at least one run time")
    later = times_s[1:] or times_s
    elapsed_s = max(statistics.median(later), 1e-9)
    first = None if len(times_s) == 1 else moved_bytes / max(times_s[0], 1e-9) / 1e9
    return TierRecord(
        tier,
        operation,
        moved_bytes,
        elapsed_s,
        moved_bytes / elapsed_s / 1e9,
        method,
        "measured",
        first_run_gb_per_s=first,
        repetitions=len(later),
        note=note,
    )


def _quoted(
    tier: str, operation: str, gb_per_s: float, source: str, gb_per_s_max: float | None = None, note: str = ""
) -> TierRecord:
    return TierRecord(
        tier,
        operation,
        10**9,
        1 / gb_per_s,
        gb_per_s,
        "quoted: seconds to move 1 GB at this rate",
        "quoted",
        source=source,
        note=note,
        gb_per_s_max=gb_per_s_max,
    )


def quoted_records() -> list[TierRecord]:
    """Return the article's speed table and the PCIe link limits, each with its source."""
    return [
        _quoted("disk", "HDD (article)", 0.1, ARTICLE, note="≈ 100 MB/s"),
        _quoted("disk", "SSD (article)", 0.5, ARTICLE, 5.0, note="≈ 500 MB/s to 5 GB/s"),
        _quoted("RAM", "RAM (article)", 20.0, ARTICLE, 50.0, note="≈ 20–50 GB/s"),
        _quoted("VRAM", "VRAM bandwidth (article)", 500.0, ARTICLE, note="> 500 GB/s"),
        _quoted("PCIe", "PCIe 4.0 x16, theoretical", PCIE4_X16_GB_PER_S, PCI_SIG, note="per direction"),
        _quoted("PCIe", "PCIe 5.0 x16, theoretical", PCIE5_X16_GB_PER_S, PCI_SIG, note="per direction"),
    ]


def modelled_host_to_device(ram_copy: TierRecord) -> TierRecord:
    """Model the RAM → VRAM hop without a GPU, as an *upper bound*: no faster than the RAM copy
    measured here, nor than a PCIe 4.0 x16 link.

    A real copy is slower: from pageable memory the driver first copies into pinned buffers, and
    a link rarely reaches its theoretical rate (``labkit.hierarchy.probe.measure_cuda`` measures both
    on a GPU machine).
    """
    gb_per_s = min(ram_copy.gb_per_s, PCIE4_X16_GB_PER_S)
    return TierRecord(
        "PCIe",
        "RAM → VRAM hop (modelled upper bound)",
        10**9,
        1 / gb_per_s,
        gb_per_s,
        f"modelled upper bound: min(measured RAM {ram_copy.operation} = {ram_copy.gb_per_s:.1f} GB/s, "
        f"PCIe 4.0 x16 = {PCIE4_X16_GB_PER_S:.1f} GB/s)",
        "modelled",
        source=f"RAM copy measured here; PCIe: {PCI_SIG}",
        note="an upper bound (real copies are slower); no CUDA device here: nothing on this row was measured",
    )
