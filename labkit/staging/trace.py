"""What a staged pass did, span by span: measured on this machine, or modelled from a link.

Every stage instance is a ``Span``: which layer, which stage, when it started and ended,
how many bytes, and whether its time was *measured* (``clock="host"``: ``perf_counter``;
``clock="cuda_event"``: CUDA events placed on the host axis) or *modelled*
(``clock="link model"``: ``latency + bytes / bandwidth``).

The four stages run on three workers (lanes), as on a GPU::

    read        reader thread   file -> staging buffer (pread)
    copy        copy worker     staging buffer -> device slot (H2D on a GPU)
    dequantize  copy worker     raw slot -> dense slot (same stream as the copy)
    compute     main thread     the layer's forward

``Trace.summary()`` gives the makespan, each stage's busy time and GB/s, the serial sum
(no overlap at all), the pipeline bound ``max(lane busy)`` (perfect overlap), the overlap
achieved and the critical lane.

A *measured* trace holds only measured spans. ``project(trace, link)`` builds a separate
*projected* trace: the same pass rescheduled with the copy stage's durations taken from a
``LinkModel`` (a quoted figure with its source, or a profile saved by labkit's GPU check), and
the other stages' durations as measured. Its summary reports ``projected_makespan_s``, never
a ``measured_*`` field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from labkit.errors import StagingError

STAGES = ("read", "copy", "dequantize", "compute")
LANE_OF_STAGE = {"read": "read", "copy": "copy", "dequantize": "copy", "compute": "compute"}
LANES = ("read", "copy", "compute")


@dataclass(frozen=True)
class Span:
    """One stage instance.

    Attributes:
        layer: the layer's forward index; ``name``: ``"blk.N"`` or ``"output"``.
        stage: one of ``STAGES``.
        start_s, end_s: seconds since the pass began.
        size_bytes: bytes moved (read, copy) or produced (dequantize); 0 for compute.
        source: ``"measured"`` or ``"modelled"``.
        clock: ``"host"``, ``"cuda_event"`` or ``"link model"``.
        seq: the streamed layer's sequence number (which slot: ``seq % n_slots``); -1 when resident.
        chunk: the chunk's number within the layer (read and copy spans).
        note: what exactly ran (``"pread"``, ``"H2D pinned"``, ``"RAM memcpy"``...).
    """

    layer: int
    name: str
    stage: str
    start_s: float
    end_s: float
    size_bytes: int
    source: str
    clock: str
    seq: int = -1
    chunk: int | None = None
    note: str = ""

    @property
    def elapsed_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class LinkModel:
    """A host -> device link, modelled: a copy of ``n`` bytes takes ``latency_s + n / (gb_per_s * 1e9)``.

    Attributes:
        name: what link this is.
        gb_per_s: bandwidth in GB/s (10^9 bytes per second).
        latency_s: fixed cost per copy (0 when the source gives none).
        source: where the figure comes from (a document, or a GPU run's profile).
        kind: ``"quoted"`` (from a source) or ``"measured on <device>"`` (a labkit GPU profile).
    """

    name: str
    gb_per_s: float
    latency_s: float
    source: str
    kind: str = "quoted"

    def copy_s(self, n_bytes: int) -> float:
        """Modelled seconds to copy ``n_bytes``."""
        return self.latency_s + n_bytes / (self.gb_per_s * 1e9)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def from_json(cls, path: str | Path) -> LinkModel:
        """Load a link profile (as written by ``scripts/gpu_check_staging.py``)."""
        try:
            data = json.loads(Path(path).read_text())
            return cls(
                str(data["name"]),
                float(data["gb_per_s"]),
                float(data["latency_s"]),
                str(data["source"]),
                str(data.get("kind", "quoted")),
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise StagingError(
                f"{path} is not a link profile ({error}); it needs name, gb_per_s, latency_s "
                "and source, as scripts/gpu_check_staging.py writes"
            ) from None


# Quoted and previously measured host -> device links (see ../shared/research/staged-loading.md section 5).
LINK_PRESETS = {
    "pcie3-x16-theoretical": LinkModel(
        "PCIe 3.0 x16, theoretical",
        15.75,
        0.0,
        "PCIe spec: 8 GT/s x 128/130 x 16 lanes (https://en.wikipedia.org/wiki/PCI_Express)",
    ),
    "pcie4-x16-pinned": LinkModel(
        "PCIe 4.0 x16, pinned",
        25.7,
        0.0,
        "CUDA bandwidthTest, 32 MB, DGX A100 (github.com/gengwg/gpu nvda_gpu_benchmark.md)",
    ),
    "pcie4-x16-pageable": LinkModel(
        "PCIe 4.0 x16, pageable",
        10.0,
        0.0,
        "CUDA bandwidthTest, 32 MB, DGX A100 (github.com/gengwg/gpu nvda_gpu_benchmark.md)",
    ),
    "pcie5-x16-pinned-h200": LinkModel(
        "PCIe 5.0 x16 (H200), pinned",
        55.4,
        0.0,
        "labkit probe on a lent H200, 1 GiB, median of 5 (bench/gpu/probe.json)",
        "measured on an NVIDIA H200",
    ),
    "pcie5-x16-pageable-h200": LinkModel(
        "PCIe 5.0 x16 (H200), pageable",
        8.35,
        0.0,
        "labkit probe on a lent H200, 1 GiB, median of 5 (bench/gpu/probe.json)",
        "measured on an NVIDIA H200",
    ),
}


@dataclass(frozen=True)
class StageBusy:
    """One stage's total: spans, busy seconds, bytes, and whether its time was measured or modelled."""

    stage: str
    n_spans: int
    busy_s: float
    size_bytes: int
    source: str

    @property
    def gb_per_s(self) -> float | None:
        return self.size_bytes / self.busy_s / 1e9 if self.busy_s > 0 and self.size_bytes else None


@dataclass(frozen=True)
class TraceSummary:
    """The numbers of one pass. ``kind``: ``"measured"`` (ran here) or ``"projected"`` (link modelled).

    Attributes:
        makespan_s: first start to last end.
        stages: busy time per stage.
        lane_busy_s: busy time per lane (copy and dequantize share the copy worker).
        serial_sum_s: every span end to end: the pass without any overlap.
        pipeline_bound_s: ``max(lane busy)``: the pass with perfect overlap.
        critical_lane: the lane that sets the bound.
        peak_rss_bytes, peak_device_bytes: measured peaks during the pass (``None``: not measured).
        fill_drain_bound_s: the pipeline bound plus what no overlap can hide: a lane cannot start
            before its first item has passed the lanes before it (the fill), and after its last
            item that item still passes the lanes after it, and every later layer computes (the
            drain: resident layers at the back compute only once the last streamed one is in).
            The largest over the lanes: a flow shop's lower bound, never above the makespan.
    """

    kind: str
    makespan_s: float
    stages: tuple[StageBusy, ...]
    lane_busy_s: dict[str, float]
    serial_sum_s: float
    pipeline_bound_s: float
    critical_lane: str
    peak_rss_bytes: int | None = None
    peak_device_bytes: int | None = None
    fill_drain_bound_s: float = 0.0

    @property
    def overlap(self) -> float:
        """``1 - makespan / serial_sum``: the share of the serial time hidden by overlap."""
        return 1 - self.makespan_s / self.serial_sum_s if self.serial_sum_s else 0.0

    @property
    def efficiency(self) -> float:
        """``pipeline_bound / makespan``: 1.0 is a perfect pipeline."""
        return self.pipeline_bound_s / self.makespan_s if self.makespan_s else 1.0

    def to_dict(self) -> dict:
        """Flat JSON-ready numbers; every time key says ``measured_`` or ``projected_``/``modelled_``."""
        prefix = "measured" if self.kind == "measured" else "projected"
        out: dict = {
            "kind": self.kind,
            f"{prefix}_makespan_s": self.makespan_s,
            f"{prefix}_serial_sum_s": self.serial_sum_s,
            f"{prefix}_pipeline_bound_s": self.pipeline_bound_s,
            f"{prefix}_fill_drain_bound_s": self.fill_drain_bound_s,
            "critical_lane": self.critical_lane,
            "overlap": self.overlap,
            "efficiency": self.efficiency,
        }
        for s in self.stages:
            out[f"{s.stage}_{s.source}_busy_s"] = s.busy_s
            out[f"{s.stage}_bytes"] = s.size_bytes
        if self.peak_rss_bytes is not None:
            out["measured_peak_rss_bytes"] = self.peak_rss_bytes
        if self.peak_device_bytes is not None:
            out["measured_peak_device_bytes"] = self.peak_device_bytes
        return out


@dataclass(frozen=True)
class Trace:
    """The spans of one staged pass, and how they were obtained.

    Attributes:
        spans: every stage instance, times in seconds since the pass began.
        kind: ``"measured"`` (every span measured) or ``"projected"`` (copy spans modelled).
        mode: ``"overlap"`` or ``"serial"``.
        n_slots, n_staging: the pipeline's depth.
        device: what ran it (``"cpu"``, ``"NVIDIA H200"``...).
        link: the link model of a projected trace.
        peak_rss_bytes, peak_device_bytes: measured peaks during the pass.
        notes: how to read it (cache state, pinned or pageable buffers, fallbacks).
    """

    spans: tuple[Span, ...]
    kind: str = "measured"
    mode: str = "overlap"
    n_slots: int = 2
    n_staging: int = 2
    device: str = "cpu"
    link: LinkModel | None = None
    peak_rss_bytes: int | None = None
    peak_device_bytes: int | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "measured" and any(s.source != "measured" for s in self.spans):
            raise StagingError(
                "a measured trace cannot hold modelled spans; build a projected trace with project()"
            )

    def lane(self, stage: str) -> list[Span]:
        return [s for s in self.spans if s.stage == stage]

    def summary(self) -> TraceSummary:
        if not self.spans:
            raise StagingError("this trace has no spans: run a pass first")
        stages = []
        for stage in STAGES:
            spans = self.lane(stage)
            if spans:
                sources = {s.source for s in spans}
                stages.append(
                    StageBusy(
                        stage,
                        len(spans),
                        sum(s.elapsed_s for s in spans),
                        sum(s.size_bytes for s in spans),
                        sources.pop() if len(sources) == 1 else "mixed",
                    )
                )
        lane_busy = {lane: sum(s.busy_s for s in stages if LANE_OF_STAGE[s.stage] == lane) for lane in LANES}
        critical = max(lane_busy, key=lane_busy.get)  # type: ignore[arg-type]
        makespan = max(s.end_s for s in self.spans) - min(s.start_s for s in self.spans)
        return TraceSummary(
            self.kind,
            makespan,
            tuple(stages),
            lane_busy,
            sum(lane_busy.values()),
            lane_busy[critical],
            critical,
            self.peak_rss_bytes,
            self.peak_device_bytes,
            self._fill_drain_bound(lane_busy),
        )

    def _fill_drain_bound(self, lane_busy: dict[str, float]) -> float:
        """``max`` over the lanes of fill + lane busy + drain (see ``TraceSummary``).

        Reads and copies go chunk by chunk, so a lane's fill and drain count one chunk of the lane
        before or after it; a layer computes only once all its chunks are in.
        """

        def times(layer: int, stage: str) -> list[float]:
            mine = [s for s in self.spans if s.layer == layer and s.stage == stage]
            return [s.elapsed_s for s in sorted(mine, key=lambda s: s.chunk or 0)]

        compute = {s.layer: s.elapsed_s for s in self.lane("compute")}
        streamed = sorted({s.layer for s in self.spans if s.stage != "compute"})
        bounds = [lane_busy["compute"]]
        if streamed:
            first, last = streamed[0], streamed[-1]
            after_last = compute.get(last, 0.0) + sum(t for i, t in compute.items() if i > last)
            last_copy = (times(last, "copy") or [0.0])[-1] + sum(times(last, "dequantize"))
            bounds.append(lane_busy["read"] + last_copy + after_last)
            bounds.append((times(first, "read") or [0.0])[0] + lane_busy["copy"] + after_last)
            if compute and min(compute) in streamed:  # the first layer computed must arrive whole first
                c0 = min(compute)
                fill = (
                    sum(times(c0, "read")) + (times(c0, "copy") or [0.0])[-1] + sum(times(c0, "dequantize"))
                )
                bounds.append(fill + lane_busy["compute"])
        return max(bounds)


def project(trace: Trace, link: LinkModel) -> Trace:
    """Reschedule a measured pass with every copy taking ``link.copy_s(bytes)``: the projected pass.

    Read, dequantize and compute keep their measured durations; the schedule obeys the same
    dependencies as the executor: a chunk's read waits for a free staging buffer (freed when
    its copy ends), a layer's first copy waits for its slot (freed when the layer that used it
    ``n_slots`` streamed layers earlier finished computing), dequantize follows the copies on
    the copy worker, and compute runs layers in order.
    """
    if trace.kind != "measured":
        raise StagingError("project() takes a measured trace")
    spans = sorted(trace.spans, key=lambda s: (s.layer, STAGES.index(s.stage), s.chunk or 0))
    reader_free = copier_free = compute_free = 0.0
    staging_free = [0.0] * trace.n_staging
    slot_free = [0.0] * trace.n_slots
    out: list[Span] = []
    n_chunks = 0
    for layer in sorted({s.layer for s in spans}):
        mine = [s for s in spans if s.layer == layer]
        reads = {s.chunk: s for s in mine if s.stage == "read"}
        seq = next((s.seq for s in mine if s.seq >= 0), -1)
        for n, copy in enumerate(s for s in mine if s.stage == "copy"):
            start = copier_free if n else max(copier_free, slot_free[seq % trace.n_slots])
            if copy.chunk in reads:
                read = reads[copy.chunk]
                k = n_chunks % trace.n_staging
                r0 = max(reader_free, staging_free[k])
                out.append(replace(read, start_s=r0, end_s=r0 + read.elapsed_s))
                reader_free, start, n_chunks = (
                    r0 + read.elapsed_s,
                    max(start, r0 + read.elapsed_s),
                    n_chunks + 1,
                )
                staging_free[k] = start + link.copy_s(copy.size_bytes)
            end = start + link.copy_s(copy.size_bytes)
            out.append(
                replace(
                    copy,
                    start_s=start,
                    end_s=end,
                    source="modelled",
                    clock="link model",
                    note=f"H2D modelled: {link.name}, {link.gb_per_s:g} GB/s ({link.kind})",
                )
            )
            copier_free = end
        for s in (s for s in mine if s.stage == "dequantize"):
            out.append(replace(s, start_s=copier_free, end_s=copier_free + s.elapsed_s))
            copier_free += s.elapsed_s
        for s in (s for s in mine if s.stage == "compute"):
            start = max(compute_free, copier_free if seq >= 0 else 0.0)
            out.append(replace(s, start_s=start, end_s=start + s.elapsed_s))
            compute_free = start + s.elapsed_s
            if seq >= 0:
                slot_free[seq % trace.n_slots] = compute_free
    notes = (
        *trace.notes,
        f"projected: copies modelled at {link.gb_per_s:g} GB/s ({link.name}; {link.source}); "
        "read, dequantize and compute as measured on " + trace.device,
    )
    return replace(
        trace,
        spans=tuple(out),
        kind="projected",
        link=link,
        peak_rss_bytes=None,
        peak_device_bytes=None,
        notes=notes,
    )
