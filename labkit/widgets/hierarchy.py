"""Widgets for chapter 1 (the memory hierarchy), and the small demo of notebook 00.

Each panel follows one pattern (plotly's FigureWidget app): controls with
``continuous_update=False``, one handler per panel connected with ``observe(..., names="value")``,
and figure updates inside ``batch_update()``. The handler is a public method, so a notebook
cell can call it once directly; a headless run (nbval) fires no events.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from labkit.errors import ProbeError
from labkit.figures.hierarchy import (
    KIND_STYLE,
    LoadTime,
    load_time_figure,
    load_times,
    rate_text,
    seconds_text,
    tier_figure,
)
from labkit.hierarchy import probe, tiers

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
        self.size = widgets.SelectionSlider(
            options=_with(SIZE_OPTIONS, report.size_bytes),
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
        self.figure = go.FigureWidget(tier_figure(report))
        self.size.observe(self.remeasure, names="value")
        self.block.observe(self.remeasure, names="value")
        controls = widgets.HBox([self.size, self.block])
        self.widget = widgets.VBox([controls, self.status, self.figure])

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


def load_time_table_html(rows: list[LoadTime]) -> str:
    """Return an HTML table of load times; measured rows bold, quoted/modelled rows grey italic."""
    cells = ["<tr><th>kind</th><th>tier</th><th>operation</th><th>rate</th><th>time</th></tr>"]
    for row in rows:
        record = row.record
        colour = KIND_STYLE[record.kind][0]
        style = "font-weight:bold" if record.kind == "measured" else "font-style:italic;color:#666"
        cells.append(
            f'<tr style="{style}"><td style="color:{colour}">{record.kind}</td>'
            f"<td>{html.escape(record.tier)}</td><td>{html.escape(record.operation)}</td>"
            f"<td>{html.escape(rate_text(record))}</td>"
            f"<td>{html.escape(seconds_text(row))}</td></tr>"
        )
    return "<table>" + "".join(cells) + "</table>"


class LoadTimeCalculator:
    """Pick a model; see how long each tier takes to move it (seconds = bytes / rate).

    Example:
        >>> calculator = LoadTimeCalculator(report, {"default model": 98_362_432})
        >>> calculator.update()
        >>> calculator.widget
    """

    def __init__(self, report: tiers.ProbeReport, models: Mapping[str, int]) -> None:
        self.report, self.models = report, dict(models)
        first = next(iter(self.models))
        self.model = widgets.Dropdown(options=list(self.models), value=first, description="model")
        self.figure = go.FigureWidget(load_time_figure(report, first, self.models[first]))
        self.table = widgets.HTML()
        self.model.observe(self.update, names="value")
        self.widget = widgets.VBox([self.model, self.figure, self.table])

    def update(self, change: Any = None) -> list[LoadTime]:
        """Redraw for the chosen model (the dropdown's handler); return the rows shown."""
        name = self.model.value
        rows = load_times(self.report, {name: self.models[name]})
        _replace_figure(self.figure, load_time_figure(self.report, name, self.models[name]))
        self.table.value = load_time_table_html(rows)
        return rows


class QuotedSpeedDemo:
    """Notebook 00's first widget: a size slider, and the article's quoted speeds → seconds.

    Nothing here is measured: every row is the article's (or PCI-SIG's) figure.
    """

    def __init__(self) -> None:
        self.size_gb = widgets.FloatLogSlider(
            value=10.0, base=10, min=-1, max=2, step=0.1, description="model GB", continuous_update=False
        )
        self.table = widgets.HTML()
        self.size_gb.observe(self.update, names="value")
        self.widget = widgets.VBox([self.size_gb, self.table])

    def update(self, change: Any = None) -> list[LoadTime]:
        """Recompute the table for the slider's size (the slider's handler)."""
        report = tiers.ProbeReport(tuple(tiers.quoted_records()), (), 0, 0)
        rows = load_times(report, {"model": int(self.size_gb.value * 1e9)})
        self.table.value = (
            f"<p>{self.size_gb.value:.3g} GB at the <i>quoted</i> speeds "
            "(nothing measured yet):</p>" + load_time_table_html(rows)
        )
        return rows
