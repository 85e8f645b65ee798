"""What one measured load returns: a frozen ``LoadRecord``, and the verdict on the cache state.

Every field is one of three kinds, listed in ``FIELD_KINDS`` and carried into ``to_dict()``:

- **measured**  timed or sampled on this machine (seconds, RSS, page-cache residency);
- **counted**   a count the kernel keeps (page faults, ``/proc/self/io`` bytes) or that follows
                from the file's tensor table (bytes of the tensors asked for);
- **given**     what was asked for (file, format, mode, layers, loader).

``cache_verdict`` decides what the cache state before the load *was*, from evidence only: a
run is called cold only when ``mincore`` showed the file had left the page cache (or the
device delivered at least 90% of the bytes), never just because eviction was asked for.

References: man 2 getrusage (``ru_majflt``, ``ru_minflt``), man 5 proc (``/proc/pid/io``,
``VmHWM``, ``clear_refs``), man 2 mincore.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from labkit.hierarchy.pagecache import classify_eviction

COLD = "cold (eviction verified)"
WARM = "warm"
PARTLY = "partly cached"
UNVERIFIABLE = "not verifiable here"
CACHE_REQUESTS = ("cold", "warm", "as-is")
WARM_FRACTION = 0.99  # at least this share of the file cached before the load to call it warm


@dataclass(frozen=True)
class LoadRecord:
    """One load, run in a fresh child process, measured from the outside and the inside.

    Times are seconds from the moment the child started the load (``t = 0``).

    Attributes:
        path, format, mode, loader, layers: what was loaded, how, by whom (``"labkit"`` or a peer).
        file_size_bytes: the file's size.
        tensor_bytes: bytes of the tensors the load produced, as the tensors report them.
        n_tensors: how many tensors it produced.
        open_s: until the file was open (header parsed, file mapped; eager torch.load: everything).
        first_tensor_s: until the first tensor was touched (every page of it in this process).
        all_touched_s: until every tensor asked for had been touched.
        rss_before_bytes: the child's resident memory just before the load (Python, torch, labkit).
        open_peak_rss_bytes: the highest resident memory until the file was open, before any touch.
        peak_rss_bytes: the highest resident memory during the load (kernel ``VmHWM`` after a reset).
        rss_series: ``(t_s, rss_bytes)`` sampled from the parent every few ms, t increasing.
        major_faults, minor_faults: page faults during the load: major ones waited for the device.
        device_read_bytes: bytes the load made the block layer read (``/proc/self/io``), or None.
        resident_before, resident_after: share of the file in the page cache around the load, or None.
        cache_state: ``COLD``, ``WARM``, ``PARTLY`` or ``UNVERIFIABLE``; ``cache_evidence`` says why.
        checksum: a sum of the touched bytes, so no touch could be skipped.
    """

    path: str
    format: str
    mode: str
    loader: str
    layers: tuple[int, ...] | None
    file_size_bytes: int
    tensor_bytes: int
    n_tensors: int
    open_s: float
    first_tensor_s: float
    all_touched_s: float
    rss_before_bytes: int
    open_peak_rss_bytes: int
    peak_rss_bytes: int
    rss_series: tuple[tuple[float, int], ...]
    major_faults: int | None
    minor_faults: int | None
    device_read_bytes: int | None
    resident_before: float | None
    resident_after: float | None
    cache_state: str
    cache_evidence: str
    checksum: int

    FIELD_KINDS: ClassVar[dict[str, str]] = {
        **dict.fromkeys(("path", "format", "mode", "loader", "layers"), "given"),
        **dict.fromkeys(
            (
                "file_size_bytes",
                "tensor_bytes",
                "n_tensors",
                "major_faults",
                "minor_faults",
                "device_read_bytes",
                "checksum",
            ),
            "counted",
        ),
        **dict.fromkeys(
            (
                "open_s",
                "first_tensor_s",
                "all_touched_s",
                "rss_before_bytes",
                "open_peak_rss_bytes",
                "peak_rss_bytes",
                "rss_series",
                "resident_before",
                "resident_after",
                "cache_state",
                "cache_evidence",
            ),
            "measured",
        ),
    }

    @property
    def added_peak_rss_bytes(self) -> int:
        """Peak resident memory above what the child held before the load (measured)."""
        return self.peak_rss_bytes - self.rss_before_bytes

    @property
    def added_open_rss_bytes(self) -> int:
        """Resident memory the open itself added, before any tensor was touched (measured)."""
        return self.open_peak_rss_bytes - self.rss_before_bytes

    @property
    def gb_per_s(self) -> float:
        """Bytes of the tensors touched per second of the whole load (measured)."""
        return self.tensor_bytes / self.all_touched_s / 1e9 if self.all_touched_s > 0 else float("inf")

    @property
    def label(self) -> str:
        """A short name for plots: loader, format, mode and cache state."""
        return f"{self.loader} {self.format} {self.mode}, {self.cache_state.split(' (')[0]}"

    def to_dict(self) -> dict[str, Any]:
        """The record as plain values, with ``"kinds"``: each field's kind (measured/counted/given)."""
        return {**asdict(self), "kinds": dict(self.FIELD_KINDS)}


def cache_verdict(
    requested: str,
    *,
    evicted: bool | None,
    resident_before: float | None,
    device_bytes: int | None,
    expected_bytes: int,
) -> tuple[str, str]:
    """Name the cache state before a load from the evidence; pure, so tests can feed it numbers.

    Args:
        requested: ``"cold"`` (eviction was attempted), ``"warm"`` (the file was read once) or
            ``"as-is"`` (nothing was done).
        evicted: whether eviction could be asked for (False where ``posix_fadvise`` is missing).
        resident_before: ``mincore``'s share of the file cached just before the load (None: unknown).
        device_bytes: ``/proc/self/io`` bytes read during the load (None: unknown).
        expected_bytes: bytes the load had to bring in.

    Returns:
        ``(state, evidence)``: one of ``COLD``, ``WARM``, ``PARTLY``, ``UNVERIFIABLE``, and a sentence.
    """
    if requested == "cold":
        if evicted is False:
            return (
                UNVERIFIABLE,
                "eviction is not possible here (no posix_fadvise); the cache was left as it was",
            )
        verdict = classify_eviction(expected_bytes, resident_before, device_bytes)
        return (COLD if verdict.verified else UNVERIFIABLE), verdict.how
    if resident_before is None:
        return UNVERIFIABLE, "mincore is not available here, so the cache state cannot be checked"
    evidence = f"mincore: {resident_before:.1%} of the file cached before the load"
    if resident_before >= WARM_FRACTION:
        return WARM, evidence
    if requested == "as-is" and classify_eviction(expected_bytes, resident_before, None).verified:
        return COLD, evidence
    return PARTLY, evidence
