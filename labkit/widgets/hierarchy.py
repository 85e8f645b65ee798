"""Widgets for chapter 1 (the memory hierarchy), and the measured demo of notebook 00.

Each panel follows one pattern (plotly's FigureWidget app): controls with
``continuous_update=False``, one handler per panel connected with ``observe(..., names="value")``,
and figure updates inside ``batch_update()``. The handler is a public method, so a notebook
cell can call it once directly; a headless run (nbval) fires no events. ``static()`` returns a
copy of what the panel shows for readers without a kernel (``labkit.widgets.common``).

Sizes that allocate memory are offered only up to what this process may use
(``labkit.hierarchy.memory``: the container's cgroup limit, not the host's RAM).
"""

from __future__ import annotations

import html
import time
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from labkit.errors import ProbeError
from labkit.figures.hierarchy import copy_sweep_figure, report_table_html, tier_figure
from labkit.hierarchy import caches, memory, probe, tiers
from labkit.widgets.common import StaticView, text_bar

MiB = 1 << 20
KiB = 1 << 10
SIZE_OPTIONS = [(f"{n} MiB", n * MiB) for n in (16, 32, 64, 128, 256, 512, 1024)]
BLOCK_OPTIONS = [(f"{n} KiB", n * KiB) for n in (4, 16, 64, 256)] + [
    (f"{n} MiB", n * MiB) for n in (1, 4, 16)
]


def _replace_figure(target: go.FigureWidget, source: go.Figure) -> None:
    """Copy ``source``'s traces and layout into ``target`` (same number of traces)."""
    with target.batch_update():
        for old, new in zip(target.data, source.data, strict=True):
            old.update(new.to_plotly_json())
        target.layout.update(source.layout.to_plotly_json())


def _with(options: list[tuple[str, int]], size_bytes: int) -> list[tuple[str, int]]:
    """Return ``options`` plus ``size_bytes`` (labelled in KiB or MiB) if it is missing."""
    if any(value == size_bytes for _, value in options):
        return options
    label = f"{size_bytes / MiB:g} MiB" if size_bytes >= MiB else f"{size_bytes / KiB:g} KiB"
    return sorted([*options, (label, size_bytes)], key=lambda option: option[1])


class ProbePanel:
    """Sliders for test-file size and read-block size; moving one re-runs the probe.

    Example:
        >>> panel = ProbePanel(report)
        >>> panel.remeasure()  # run the handler once
        >>> panel.widget       # display it
    """

    def __init__(self, report: tiers.ProbeReport, *, repeats: int = 3, tmp_dir: str | None = None) -> None:
        self.report = report
        self.repeats, self.tmp_dir = repeats, tmp_dir
        self.max_size_bytes = probe.max_size_bytes()  # what fits this process's memory now
        sizes = [option for option in SIZE_OPTIONS if option[1] <= self.max_size_bytes]
        self.size = widgets.SelectionSlider(
            options=_with(sizes, report.size_bytes),
            value=report.size_bytes,
            description="file size",
            continuous_update=False,
        )
        self.block = widgets.SelectionSlider(
            options=_with(BLOCK_OPTIONS, report.block_bytes),
            value=report.block_bytes,
            description="read block",
            continuous_update=False,
        )
        self.status = widgets.HTML()
        self.limit = widgets.HTML(
            f"<small>file sizes offered up to {self.max_size_bytes / MiB:.0f} MiB: the probe holds "
            f"{probe.PEAK_BUFFERS} buffers of that size at its peak, and this process has "
            f"{html.escape(memory.read_memory().describe())}</small>"
        )
        self.figure = go.FigureWidget(tier_figure(report))
        self.size.observe(self.remeasure, names="value")
        self.block.observe(self.remeasure, names="value")
        controls = widgets.HBox([self.size, self.block])
        self.widget = widgets.VBox([controls, self.limit, self.status, self.figure])

    def remeasure(self, change: Any = None) -> tiers.ProbeReport:
        """Run the probe with the sliders' values and redraw (the handler of both sliders)."""
        self.status.value = "<i>measuring…</i>"
        start = time.perf_counter()
        try:
            report = probe.run(self.size.value, self.block.value, tmp_dir=self.tmp_dir, repeats=self.repeats)
        except ProbeError as error:
            self.status.value = f"<b>cannot measure:</b> {html.escape(str(error))}"
            return self.report
        self.report = report
        _replace_figure(self.figure, tier_figure(report))
        cold = report.cold_disk()
        self.status.value = (
            f"measured on this machine in {time.perf_counter() - start:.1f} s: "
            f"{cold.tier} {cold.operation} {cold.gb_per_s:.2f} GB/s "
            f"(<i>{html.escape(cold.note)}</i>)"
        )
        return report

    def static(self) -> StaticView:
        """The last report, as a static table and figure."""
        caption = (
            f"the probe at {self.report.size_bytes / MiB:g} MiB, {self.report.block_bytes / KiB:g} KiB reads"
        )
        return StaticView(caption, report_table_html(self.report, bar=text_bar))


class CopySweepDemo:
    """Notebook 00's widget: pick a buffer size, measure how fast this CPU copies it.

    The figure keeps every size measured so far, so the steps where the CPU's caches end appear
    as the student explores. Nothing here is quoted: every point is timed on this machine.

    Example:
        >>> demo = CopySweepDemo()
        >>> demo.measure()   # the slider's handler, run once (measures the slider's size)
        >>> demo.widget
    """

    def __init__(self, rates: list[caches.CopyRate] | None = None) -> None:
        largest = memory.safe_size_bytes(0.1, 256 * MiB)  # two buffers of it, well inside what we have
        if rates is None:
            rates = caches.copy_sweep(tuple(s for s in caches.SWEEP_SIZES_BYTES if s <= largest))
        self.rates = {rate.size_bytes: rate for rate in rates}
        options = [(_size_text(size), size) for size in _powers_of_two(16 * KiB, largest)]
        self.size = widgets.SelectionSlider(
            options=options, value=min(4 * MiB, options[-1][1]), description="buffer", continuous_update=False
        )
        self.status = widgets.HTML()
        self.figure = go.FigureWidget(copy_sweep_figure(self._sorted()))
        self.size.observe(self.measure, names="value")
        self.widget = widgets.VBox([self.size, self.status, self.figure])

    def _sorted(self) -> list[caches.CopyRate]:
        return [self.rates[size] for size in sorted(self.rates)]

    def measure(self, change: Any = None) -> caches.CopyRate:
        """Copy a buffer of the slider's size, add the point, redraw (the slider's handler)."""
        rate = caches.copy_rate(self.size.value)
        self.rates[rate.size_bytes] = rate
        _replace_all(self.figure, copy_sweep_figure(self._sorted(), highlight_bytes=rate.size_bytes))
        largest = self.rates[max(self.rates)].record.gb_per_s
        self.status.value = (
            f"copied {_size_text(rate.size_bytes)}: <b>{rate.record.gb_per_s:.2f} GB/s, measured</b> "
            f"(median of {rate.record.repetitions} runs), {rate.record.gb_per_s / largest:.1f}x the rate "
            f"of the largest buffer measured ({_size_text(max(self.rates))})"
        )
        return rate

    def static(self) -> StaticView:
        """The points measured so far, as a static table and figure."""
        largest = max((r.record.gb_per_s for r in self._sorted()), default=0.0)
        cells = "".join(
            f"<tr><td>{_size_text(r.size_bytes)}</td><td>{r.record.gb_per_s:.2f} GB/s</td>"
            f'<td style="text-align:left;font-family:monospace">{text_bar(r.record.gb_per_s, largest)}</td></tr>'
            for r in self._sorted()
        )
        table = f"<table><tr><th>buffer</th><th>copy rate (measured)</th><th></th></tr>{cells}</table>"
        return StaticView("copy speed by buffer size", table)


def _replace_all(target: go.FigureWidget, source: go.Figure) -> None:
    """Replace ``target``'s traces (their number may change) and layout with ``source``'s."""
    with target.batch_update():
        target.data = ()
        for trace in source.data:
            target.add_trace(trace)
        target.layout.update(source.layout.to_plotly_json())


def _powers_of_two(low: int, high: int) -> list[int]:
    sizes, size = [], low
    while size <= high:
        sizes.append(size)
        size *= 2
    return sizes


def _size_text(size_bytes: int) -> str:
    return f"{size_bytes / MiB:g} MiB" if size_bytes >= MiB else f"{size_bytes / KiB:g} KiB"
