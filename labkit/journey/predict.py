"""Predict each stage's time from the tiers notebook 01 measured: bytes ÷ the rate of the tier they cross.

A prediction is *modelled*: counted bytes divided by a rate measured by ``labkit.hierarchy.probe``
on this machine (or, for the RAM → VRAM hop without a GPU, the probe's modelled row). Each
function returns the seconds and the formula with its numbers, so a report can show both::

    load lazy, cold   file bytes ÷ cold-read rate          (mmap faults pull every page from the device)
    load eager, cold  file bytes ÷ cold-read rate + tensor bytes ÷ RAM copy rate
    generate          tokens × weight bytes per token ÷ RAM read rate   (the memory-bandwidth bound)

Where the measured time is far above the prediction, the stage is bound by something the tiers
do not model (the quantizer's arithmetic, Python start-up, dequantization): that gap is the lesson.
"""

from __future__ import annotations

from dataclasses import dataclass

from labkit.errors import ProbeError
from labkit.hierarchy.tiers import ProbeReport, TierRecord


@dataclass(frozen=True)
class Rates:
    """The probe rows the predictions divide by, one per tier a weight crosses.

    Attributes:
        cold_read: the cold-read row (a disk row only when eviction was verified).
        warm_read: ``read()`` of a file in the page cache.
        write: ``write()`` + ``fsync`` of a new file.
        ram_copy: the fastest ``copy_`` row.
        ram_read: the fastest ``sum()`` row (what a matrix-vector product streams at).
        host_to_device: measured H2D pinned with a GPU; the probe's modelled row without one.
    """

    cold_read: TierRecord
    warm_read: TierRecord
    write: TierRecord
    ram_copy: TierRecord
    ram_read: TierRecord
    host_to_device: TierRecord

    @classmethod
    def from_probe(cls, report: ProbeReport) -> Rates:
        """Pick the rows out of a ``ProbeReport``; ``ProbeError`` if one is missing."""

        def row(tier: str, starts: str, kind: str = "measured") -> TierRecord:
            rows = [
                r
                for r in report.records
                if r.tier == tier and r.operation.startswith(starts) and r.kind == kind
            ]
            if not rows:
                raise ProbeError(
                    f"the probe report has no {kind} {tier!r} row starting {starts!r}; "
                    "run labkit.hierarchy.probe.run() for a full report"
                )
            return max(rows, key=lambda r: r.gb_per_s)

        hop = (
            row("PCIe", "host→device, pinned")
            if report.cuda_device
            else row("PCIe", "RAM → VRAM hop", "modelled")
        )
        return cls(
            cold_read=report.cold_disk(),
            warm_read=row("page cache", "warm read()"),
            write=row("disk", "write + fsync"),
            ram_copy=row("RAM", "copy_"),
            ram_read=row("RAM", "sum() read"),
            host_to_device=hop,
        )


def term(n_bytes: int, rate: TierRecord) -> tuple[float, str]:
    """``n_bytes`` at ``rate``: (seconds, the formula with its numbers and their kinds)."""
    return n_bytes / (rate.gb_per_s * 1e9), (
        f"{n_bytes / 1e6:,.1f} MB (counted) ÷ {rate.gb_per_s:.2f} GB/s ({rate.tier}, {rate.operation}, {rate.kind})"
    )


def total(*terms: tuple[float, str]) -> tuple[float, str]:
    """Stages one after another: the seconds add up, the formulas join with +."""
    return sum(t[0] for t in terms), " + ".join(t[1] for t in terms)


def write_s(rates: Rates, read_bytes: int, written_bytes: int) -> tuple[float, str]:
    """Requantizing a file, I/O only: read the source warm, write the output (arithmetic not modelled)."""
    return total(term(read_bytes, rates.warm_read), term(written_bytes, rates.write))


def read_s(rates: Rates, n_bytes: int, *, cold: bool) -> tuple[float, str]:
    """Bringing ``n_bytes`` of a file into memory: from the device when cold, the page cache when warm."""
    return term(n_bytes, rates.cold_read if cold else rates.warm_read)


def eager_s(rates: Rates, file_bytes: int, tensor_bytes: int, *, cold: bool) -> tuple[float, str]:
    """An eager load: read the file, then the tensors land in freshly allocated RAM (one copy)."""
    return total(read_s(rates, file_bytes, cold=cold), term(tensor_bytes, rates.ram_copy))


def decode_s(rates: Rates, weight_bytes_per_token: int, n_tokens: int) -> tuple[float, str]:
    """Decoding ``n_tokens`` at batch 1: every token streams every weight from RAM once (the bound)."""
    seconds, formula = term(weight_bytes_per_token * n_tokens, rates.ram_read)
    return seconds, f"{n_tokens} tokens × weights per token: {formula}"


def hop_s(rates: Rates, n_bytes: int) -> tuple[float, str]:
    """The RAM → VRAM hop of ``n_bytes`` (measured rate with a GPU, the probe's modelled rate without)."""
    return term(n_bytes, rates.host_to_device)
