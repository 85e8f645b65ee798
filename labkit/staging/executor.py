"""The staged executor: layers stream file -> staging buffer -> device slot -> compute, overlapped.

The pipeline, as llama.cpp's async upload ring and ZeRO-Inference's layer prefetch run it::

    reader thread     pread chunk -> staging[k]                 (k = chunk number % n_staging)
    copy worker       staging[k] -> raw slot s; dequantize -> dense slot s   (s = seq % n_slots)
    main thread       compute layer with the tensors of slot s

A CPU plan's slots are in RAM already, so there the reader ``pread``s each chunk straight into the
raw slot (``direct``): no staging buffer, no copy, and the copy worker only dequantizes.

Streamed layers get sequence numbers ``seq = 0, 1, 2, ...`` in forward order, pass after pass,
so the workers run ahead into the next pass too. Three kinds of wait keep memory bounded:

- a staging buffer is reused only after its copy finished (on a GPU: ``staging_done[k]``,
  a CUDA event recorded after the copy on the side stream);
- a slot is overwritten only after the layer that used it ``n_slots`` layers earlier
  finished computing (the copy worker waits for it; the reader does, when it reads into the slot
  itself or maps the layer with ``io="mmap"``; on a GPU the copy stream waits on ``compute_done[s]``);
- the reader stays at most ``n_slots + 1`` layers ahead of the compute.

Every buffer (staging, raw slots, dense slots, resident layers) is allocated once, in
``__init__``. On CUDA the staging buffers are pinned and copies run on a side stream with
``non_blocking=True``. A GPU plan run on the CPU (its copies to be projected from a link model)
keeps the staging buffers and copies into the slot, so that every copy is there to time. (The copy
worker leaves torch's thread count alone: ``torch.set_num_threads`` also sets MKL's, for every
thread, and the compute's float sums would then split differently: no longer bit-equal.)

``mode="serial"`` runs the same stages one after another in the main thread: the baseline.

References: llama.cpp ``src/llama-model-loader.cpp`` (``load_all_data``: 4 pinned buffers, one
event each); diffusers ``hooks/group_offloading.py`` (prefetch on a side stream); PyTorch
tutorial "A guide on good usage of non_blocking and pin_memory()" (pinned + side stream).
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from labkit.errors import StagingError
from labkit.gguf.reader import drop_pages
from labkit.staging.layers import FilePart, LayerSpec
from labkit.staging.plan import Plan
from labkit.staging.reader import (
    Chunk,
    aligned_host_buffer,
    layer_chunks,
    map_file,
    open_file,
    range_chunk,
    read_chunk,
    read_exact,
    staging_buffer_bytes,
    touch_pages,
)
from labkit.staging.slots import dense_view, dequantize_layer, peak_rss_bytes, reset_peak_rss
from labkit.staging.trace import Span, Trace

MODES = ("overlap", "serial")


class Stager:
    """Streams a model's non-resident layers into device slots while the resident ones compute.

    Args:
        path: the GGUF file.
        layers: its layers (``layer_specs``).
        plan: where each layer lives (``plan_layers``).
        device: the compute device.
        mode: ``"overlap"`` (reader thread + copy worker) or ``"serial"``.
        io: ``"pread"``, ``"odirect"`` or ``"mmap"`` (CPU only: streamed layers are computed on, or
            dequantized from, the mapped file; see ``labkit.staging.reader``).
    """

    def __init__(
        self,
        path: str | Path,
        layers: Sequence[LayerSpec],
        plan: Plan,
        *,
        device: torch.device | str = "cpu",
        mode: str = "overlap",
        io: str = "pread",
    ) -> None:
        if mode not in MODES:
            raise StagingError(
                f"mode={mode!r}; choose 'overlap' (pipelined) or 'serial' (one stage at a time)"
            )
        self.layers, self.plan, self.mode, self.io = list(layers), plan, mode, io
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if io == "mmap" and (self.cuda or plan.device == "cuda"):  # a GPU plan's copies must be there
            raise StagingError("io='mmap' computes on the mapped file in RAM: use it with a CPU device")
        self.fd = open_file(path, io)
        self.mapping: mmap.mmap | None = None
        self.mapped: torch.Tensor | None = None  # the whole file as uint8, with io="mmap"
        if io == "mmap":
            self.mapping, self.mapped = map_file(self.fd)
        self.order = plan.streamed  # the streamed layers, in forward order
        # A CPU plan reads straight into the raw slot (in RAM already); O_DIRECT needs aligned buffers.
        self.direct = plan.device == "cpu" and io == "pread"
        self.chunks = {
            i: layer_chunks(self.layers[i], plan.chunk_bytes) for i in self.order if plan.tier(i) == "disk"
        }
        self.staging = [
            aligned_host_buffer(staging_buffer_bytes(plan.chunk_bytes), pin=self.cuda)
            for _ in range(plan.n_staging)
        ]
        streamed = [self.layers[i] for i in self.order]
        raw_bytes = max((lay.raw_slot_bytes for lay in streamed), default=0)
        dense_bytes = max((lay.dense_bytes for lay in streamed), default=0)
        self.raw_slots = [
            torch.empty(raw_bytes, dtype=torch.uint8, device=self.device) for _ in range(plan.n_slots)
        ]
        self.dense_slots = [
            torch.empty(dense_bytes, dtype=torch.uint8, device=self.device) for _ in range(plan.n_slots)
        ]
        self.in_place: dict[int, torch.Tensor] = {}  # streamed layers computed on the mapped file
        for i in self.chunks if io == "mmap" else ():
            raw = self._mapped_raw(self.layers[i])
            if raw is not None:
                self.in_place[i] = raw
        self.views = [
            {
                i: {t.name: dense_view(self.in_place.get(i, raw), dense, t) for t in self.layers[i].tensors}
                for i in self.order
            }
            for raw, dense in zip(self.raw_slots, self.dense_slots, strict=True)
        ]
        self.copy_stream: Any = torch.cuda.Stream(self.device) if self.cuda else None  # the side stream
        self.recording = False
        self.spans: list[Span] = []
        self._events: list[tuple[Span, Any, Any]] = []  # (template, start event, end event) on CUDA
        self.resident: dict[int, dict[str, torch.Tensor]] = {}  # dense tensors of the resident layers
        self.host_raw: dict[int, torch.Tensor] = {}  # file bytes of a GPU plan's RAM-tier layers
        self._error: BaseException | None = None
        self._next_seq, self._base = 0, 0
        self._ready: list[threading.Event] = []
        self._ready_event: list[Any] = []
        start = time.perf_counter()
        self._load_resident()
        self.setup_s = time.perf_counter() - start  # measured: reading and placing the resident layers
        self._threads: list[threading.Thread] = []
        self._current: tuple[int, int, float, object] | None = None
        self._restart(self.order[0] if self.order else 0)

    # --- setup: resident layers, and the RAM tier of a GPU plan ---------------------------------------

    def _mapped_raw(self, layer: LayerSpec) -> torch.Tensor | None:
        """With ``io="mmap"``: the layer's raw bytes as a view of the mapped file, when the raw slot's
        layout is the file's own (one run of tensors back to back); None when it must be copied."""
        assert self.mapped is not None
        bases = {p.file_offset - p.raw_offset for p in layer.parts}
        if len(bases) != 1:
            return None
        base = bases.pop()
        return self.mapped[base : base + layer.raw_slot_bytes]

    def _read_layer(self, layer: LayerSpec, out: torch.Tensor) -> None:
        """Read a whole layer's raw bytes into ``out`` (host) through staging buffer 0."""
        for chunk in layer_chunks(layer, self.plan.chunk_bytes):
            out[chunk.dest_offset : chunk.dest_offset + chunk.n_bytes].copy_(
                read_chunk(self.fd, chunk, self.staging[0])
            )

    def _read_part(self, part: FilePart, start: int, n_bytes: int) -> torch.Tensor:
        """``n_bytes`` of a file tensor from byte ``start``, through staging buffer 0, on the device."""
        offset, room = part.file_offset + start, self.plan.chunk_bytes
        if n_bytes <= room:
            return self._read_range(offset, n_bytes).to(self.device)
        out = torch.empty(n_bytes, dtype=torch.uint8)  # wider than a staging buffer (a tiny chunk_bytes)
        for at in range(0, n_bytes, room):
            n = min(room, n_bytes - at)
            out[at : at + n].copy_(self._read_range(offset + at, n))
        return out.to(self.device)

    def _read_range(self, offset: int, n_bytes: int) -> torch.Tensor:
        """One aligned read (``O_DIRECT`` takes it too) into staging buffer 0: the wanted bytes' view."""
        return read_chunk(self.fd, range_chunk(offset, n_bytes), self.staging[0])

    def _load_resident(self) -> None:
        """Read and place the resident layers once. A layer the file holds as computed is read into
        its own buffer; any other is dequantized slab by slab straight from the staging buffer, so
        loading never holds a second, raw copy of a layer (its peak stays inside the plan)."""
        for p in self.plan.placements:
            layer = self.layers[p.index]
            if p.tier == self.plan.resident_tier and layer.aliased:
                raw = torch.empty(layer.raw_slot_bytes, dtype=torch.uint8)
                self._read_layer(layer, raw)
                raw = raw.to(self.device)
                self.resident[p.index] = {t.name: dense_view(raw, raw, t) for t in layer.tensors}
            elif p.tier == self.plan.resident_tier:
                slot = torch.empty(layer.dense_bytes, dtype=torch.uint8, device=self.device)
                dense = {t.name: dense_view(slot, slot, t) for t in layer.tensors}
                dequantize_layer(layer, self._read_part, dense, max_read_bytes=self.plan.chunk_bytes)
                self.resident[p.index] = dense
            elif p.tier == "cpu":  # a GPU plan's RAM tier: the file bytes stay in (pinned) host memory
                self.host_raw[p.index] = aligned_host_buffer(layer.raw_slot_bytes, pin=self.cuda)
                self._read_layer(layer, self.host_raw[p.index])

    # --- timing ---------------------------------------------------------------------------------------

    def _now(self) -> float:
        return time.perf_counter() - self.t0

    def _record(self, span: Span) -> None:
        if self.recording:
            self.spans.append(span)

    def _timed_cuda(
        self, stream: torch.cuda.Stream, template: Span
    ) -> tuple[torch.cuda.Event, torch.cuda.Event]:
        """A pair of timing events; the span is filled in from them at ``end_pass``."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        if self.recording:
            self._events.append((template, start, end))
        return start, end

    # --- the three stages -----------------------------------------------------------------------------

    def _read(self, seq: int, chunk: Chunk, k: int | None, slot: int | None = None) -> torch.Tensor | None:
        """Read one chunk: into staging buffer ``k`` (returned), or straight into raw slot ``slot``
        (``direct``: returns None), or fault it in on the map (io="mmap": returns the mapped bytes)."""
        start = self._now()
        view: torch.Tensor | None
        if self.mapped is not None:  # io="mmap": fault the pages in; the bytes stay where they are
            touch_pages(self.mapped, chunk.offset, chunk.n_bytes)
            view, how = self.mapped[chunk.offset : chunk.offset + chunk.n_bytes], "page faults on the map"
        elif slot is not None:
            target = self.raw_slots[slot][chunk.dest_offset : chunk.dest_offset + chunk.n_bytes]
            read_exact(self.fd, chunk.offset, target)
            view, how = None, f"pread into raw slot {slot}"
        else:
            view, how = read_chunk(self.fd, chunk, self.staging[k or 0]), f"{self.io} into staging[{k}]"
        self._record(
            Span(
                chunk.layer,
                self.layers[chunk.layer].name,
                "read",
                start,
                self._now(),
                chunk.n_bytes if slot is not None else chunk.read_bytes,
                "measured",
                "host",
                seq,
                chunk.number,
                how,
            )
        )
        return view

    def _copy(self, seq: int, layer: int, chunk: Chunk | None, source: torch.Tensor, slot: int) -> None:
        """Staging buffer (or a RAM-tier layer's bytes) -> the raw slot."""
        at, n = (chunk.dest_offset, chunk.n_bytes) if chunk else (0, self.layers[layer].raw_slot_bytes)
        target = self.raw_slots[slot][at : at + n]
        number = chunk.number if chunk else 0
        name = self.layers[layer].name
        if self.cuda:
            template = Span(
                layer, name, "copy", 0, 0, n, "measured", "cuda_event", seq, number, "H2D from pinned memory"
            )
            _, end = self._timed_cuda(self.copy_stream, template)
            target.copy_(source, non_blocking=True)
            end.record(self.copy_stream)
            return
        start = self._now()
        target.copy_(source)
        self._record(
            Span(
                layer,
                name,
                "copy",
                start,
                self._now(),
                n,
                "measured",
                "host",
                seq,
                number,
                "RAM memcpy into the slot (the CPU's 'device')",
            )
        )

    def _dequantize(self, seq: int, layer: int, slot: int) -> None:
        spec, raw = self.layers[layer], self.in_place.get(layer, self.raw_slots[slot])
        template = Span(
            layer,
            spec.name,
            "dequantize",
            0,
            0,
            spec.dense_bytes,
            "measured",
            "cuda_event" if self.cuda else "host",
            seq,
            None,
            "raw slot -> dense slot",
        )
        if self.cuda:
            _, end = self._timed_cuda(self.copy_stream, template)
            dequantize_layer(spec, raw, self.views[slot][layer])
            end.record(self.copy_stream)
            return
        start = self._now()
        dequantize_layer(spec, raw, self.views[slot][layer])
        self._record(replace(template, start_s=start, end_s=self._now()))

    # --- the workers ----------------------------------------------------------------------------------

    def _layer_at(self, seq: int) -> int:
        return self.order[(seq + self._base) % len(self.order)]

    def _guarded(self, work) -> None:
        """Run a worker; an error wakes the main thread, which raises it (never a silent hang)."""
        try:
            work()
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            self._error = error
            for ready in self._ready:
                ready.set()

    def _reader(self) -> None:
        n_chunks, seq = 0, 0
        while True:
            self._ahead.acquire()
            if self._stop.is_set():
                return
            layer = self._layer_at(seq)
            if layer not in self.chunks:  # RAM tier: nothing to read, the copy worker copies from RAM
                self._filled.put((seq, layer, None, None, self.host_raw[layer]))
            for chunk in self.chunks.get(layer, ()):
                if self.direct or self.mapped is not None:  # the read itself fills the slot: wait until
                    slot = seq % self.plan.n_slots  # the layer n_slots back has computed
                    if chunk.number == 0:
                        self._slot_free[slot].acquire()
                        if self._stop.is_set():
                            return
                    view = self._read(seq, chunk, None, slot if self.direct else None)
                    self._filled.put((seq, layer, chunk, None, view))  # view: the mapped bytes, or None
                    continue
                k = n_chunks % self.plan.n_staging
                n_chunks += 1
                self._staging_free[k].acquire()
                if self._stop.is_set():
                    return
                if self.cuda:
                    self._staging_done[k].synchronize()  # the last copy out of staging[k] has finished
                self._filled.put((seq, layer, chunk, k, self._read(seq, chunk, k)))
            seq += 1

    def _copier(self) -> None:
        while True:
            item = self._filled.get()
            if item is None or self._stop.is_set():
                return
            seq, layer, chunk, k, source = item
            slot = seq % self.plan.n_slots
            reader_took_it = chunk is not None and (self.direct or self.mapped is not None)
            if (chunk is None or chunk.number == 0) and not reader_took_it:
                self._slot_free[slot].acquire()
                if self._stop.is_set():
                    return
                if self.cuda:
                    self.copy_stream.wait_event(self._compute_done[slot])  # GPU side: slot no longer read
            with torch.cuda.stream(self.copy_stream) if self.cuda else nullcontext():
                if layer not in self.in_place and source is not None:  # else: nothing to copy (read
                    self._copy(seq, layer, chunk, source, slot)  # into the slot, or computed in place)
                if k is not None:
                    if self.cuda:
                        self._staging_done[k].record(self.copy_stream)
                    self._staging_free[k].release()
                if chunk is None or chunk.number == len(self.chunks[layer]) - 1:
                    self._dequantize(seq, layer, slot)
                    if self.cuda:
                        self._ready_event[slot].record(self.copy_stream)
                    self._ready[slot].set()

    def _serial_load(self, seq: int, layer: int, slot: int) -> None:
        """The same stages, one after another, in the calling thread."""
        stream = self.copy_stream
        with torch.cuda.stream(stream) if self.cuda else nullcontext():
            for n, chunk in enumerate(self.chunks.get(layer, ())):
                view = self._read(seq, chunk, n % self.plan.n_staging, slot if self.direct else None)
                if layer not in self.in_place and view is not None:
                    self._copy(seq, layer, chunk, view, slot)
                if self.cuda:
                    stream.synchronize()
            if layer not in self.chunks:
                self._copy(seq, layer, None, self.host_raw[layer], slot)
            self._dequantize(seq, layer, slot)
            if self.cuda:
                stream.synchronize()

    # --- what the model calls -------------------------------------------------------------------------

    def enter(self, layer: int) -> dict[str, torch.Tensor]:
        """The tensors of ``layer``, ready to compute; the previous layer's compute is over."""
        self._close_compute()
        if layer in self.resident:
            self._open_compute(layer, -1)
            return self.resident[layer]
        if layer not in self.order:
            raise StagingError(f"layer {layer} is neither resident nor streamed in this plan")
        seq = self._next_seq
        if self._layer_at(seq) != layer:  # a pass was cut short (an error mid-forward): start over here
            self._restart(layer)
            seq = 0
        slot = seq % self.plan.n_slots
        if self.mode == "serial":
            self._serial_load(seq, layer, slot)
        else:
            self._ready[slot].wait()
            if self._error is not None:
                error, self._error = self._error, None
                self._restart(layer)
                raise StagingError(f"the staging worker failed: {error}") from error
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_event(self._ready_event[slot])
        self._next_seq = seq + 1
        self._open_compute(layer, seq)
        return self.views[slot][layer]

    def _open_compute(self, layer: int, seq: int) -> None:
        handle: object = None
        if self.cuda:
            template = Span(layer, self.layers[layer].name, "compute", 0, 0, 0, "measured", "cuda_event", seq)
            handle = self._timed_cuda(torch.cuda.current_stream(self.device), template)
        self._current = (layer, seq, self._now(), handle)

    def _close_compute(self) -> None:
        if self._current is None:
            return
        layer, seq, start, handle = self._current
        self._current = None
        if self.cuda:
            handle[1].record(torch.cuda.current_stream(self.device))  # type: ignore[index]
        else:
            self._record(
                Span(
                    layer,
                    self.layers[layer].name,
                    "compute",
                    start,
                    self._now(),
                    0,
                    "measured",
                    "host",
                    seq,
                    None,
                    "the layer's forward",
                )
            )
        if seq >= 0 and self.mapping is not None:  # io="mmap": the layer's pages leave this process
            for chunk in self.chunks.get(layer, ()):
                drop_pages(self.mapping, chunk.offset, chunk.n_bytes)
        if seq >= 0:  # free the slot for the layer n_slots further on
            slot = seq % self.plan.n_slots
            if self.cuda:
                self._compute_done[slot].record(torch.cuda.current_stream(self.device))
            self._ready[slot].clear()
            if self.mode == "overlap":
                self._slot_free[slot].release()
                self._ahead.release()

    def end_pass(self) -> None:
        """Close the last layer's compute span (the next ``enter`` would, too)."""
        self._close_compute()

    # --- start, stop, trace ---------------------------------------------------------------------------

    def _restart(self, first_layer: int) -> None:
        """Drain the workers and start streaming again at ``first_layer`` (empty pipeline)."""
        self._stop_workers()
        self._base = self.order.index(first_layer) if first_layer in self.order else 0
        self._next_seq, self._current = 0, None
        n_slots, n_staging = self.plan.n_slots, self.plan.n_staging
        self._stop = threading.Event()
        self._ahead = threading.Semaphore(n_slots + 1)
        self._slot_free = [threading.Semaphore(1) for _ in range(n_slots)]
        self._staging_free = [threading.Semaphore(1) for _ in range(n_staging)]
        self._ready = [threading.Event() for _ in range(n_slots)]
        self._filled: queue.Queue = queue.Queue()
        self._error = None
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self._staging_done = [torch.cuda.Event() for _ in range(n_staging)]
            self._compute_done = [torch.cuda.Event() for _ in range(n_slots)]
            self._ready_event = [torch.cuda.Event() for _ in range(n_slots)]
            for event in (*self._staging_done, *self._compute_done):
                event.record(torch.cuda.current_stream(self.device))  # "already done" to begin with
            self._anchor = torch.cuda.Event(enable_timing=True)
            self._anchor.record(torch.cuda.current_stream(self.device))
            torch.cuda.synchronize(self.device)
        self.t0 = time.perf_counter()
        if self.mode == "overlap" and self.order:
            self._threads = [
                threading.Thread(target=self._guarded, args=(work,), daemon=True, name=f"labkit-{name}")
                for name, work in (("reader", self._reader), ("copier", self._copier))
            ]
            for thread in self._threads:
                thread.start()

    def _stop_workers(self) -> None:
        if not self._threads:
            return
        self._stop.set()
        for semaphore in (self._ahead, *self._slot_free, *self._staging_free):
            semaphore.release()
        self._filled.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads = []
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def start_trace(self, before_start: Callable[[], object] | None = None) -> None:
        """Begin recording one pass from an empty pipeline: the next ``enter`` starts the clock's pass.

        ``before_start`` runs while the workers are stopped (e.g. evicting the file from the page cache).
        """
        self._stop_workers()
        if self.mapping is not None:
            # io="mmap": the workers mapped layers ahead, and each fault also maps the cached pages
            # around it. A mapped page cannot be evicted, so unmap the whole file first: a cold pass
            # must not find those layers still in RAM.
            drop_pages(self.mapping, 0, len(self.mapping))
        if before_start is not None:
            before_start()
        self.spans, self._events, self.recording = [], [], True
        reset_peak_rss()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self._restart(self.order[0] if self.order else 0)  # sets the clock, then starts the workers

    def stop_trace(self) -> Trace:
        """End the recorded pass and return its spans (this pass's streamed layers only)."""
        self.end_pass()
        self.recording = False
        peak_device = None
        if self.cuda:
            torch.cuda.synchronize(self.device)
            for template, start, end in self._events:
                t0 = self._anchor.elapsed_time(start) / 1e3
                self.spans.append(replace(template, start_s=t0, end_s=t0 + start.elapsed_time(end) / 1e3))
            peak_device = torch.cuda.max_memory_allocated(self.device)
        spans = tuple(sorted((s for s in self.spans if s.seq < len(self.order)), key=lambda s: s.start_s))
        pinned = "pinned" if self.cuda else "pageable (no GPU: nothing to pin for)"
        notes = (
            f"staging buffers: {self.plan.n_staging} x {self.plan.chunk_bytes:,} bytes, {pinned}",
            f"reads: {self.io}"
            + {
                "odirect": " (page cache bypassed)",
                "mmap": " (page faults on the mapped file; layers the file holds as computed are not copied)",
            }.get(self.io, " (through the page cache)")
            + (", straight into the slots (a CPU plan: the slots are in RAM)" if self.direct else ""),
        )
        device = torch.cuda.get_device_name(self.device) if self.cuda else "cpu"
        return Trace(
            spans,
            "measured",
            self.mode,
            self.plan.n_slots,
            self.plan.n_staging,
            device,
            None,
            peak_rss_bytes(),
            peak_device,
            notes,
        )

    def close(self) -> None:
        """Stop the workers and close the file."""
        self._stop_workers()
        if self.mapping is not None:  # drop every view of the map before closing it
            self.in_place, self.views, self.mapped = {}, [], None
            try:
                self.mapping.close()
            except BufferError:  # a tensor handed out earlier still views it: it closes when that goes
                pass
            self.mapping = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
