"""The load explorer of notebook 04: pick a format, a mode, a cache state and a file size; measure.

    explorer = load_explorer(folder, known={64 << 20: files})   # files: write_model_set(...)
    explorer.update()     # the handler, called once directly: one real measured load
    display(explorer.widget, explorer.static())   # the controls, figure and table; and a static copy

Every change of a control runs a *real* measurement (``labkit.loading.measure``, a fresh child
process, one or two seconds): the controls do not update while being dragged. The last few loads
stay on the figure, so they can be compared. Files of a new size are written on first use.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from labkit.figures.loading import records_table, rss_figure
from labkit.loading import LoadRecord, measure, write_model_set
from labkit.widgets.common import StaticView, text_bar

FILES = {
    "GGUF F16": "F16 gguf",
    "GGUF Q4_0": "Q4_0 gguf",
    "safetensors F16": "F16 safetensors",
    "PyTorch .pt F16": "F16 pt",
}
MODES = {
    "lazy (map)": ("lazy", None),
    "eager (read all)": ("eager", None),
    "partial (layers 0-1)": ("partial", [0, 1]),
}
SIZES_MIB = (16, 32, 64)
KEEP = 4  # loads kept on the figure


class LoadExplorer:
    """Controls for one measured load, and the figure and table of the last few.

    Attributes:
        records: the loads measured so far (newest last).
        figure: RSS over time of the last ``KEEP`` loads (a ``FigureWidget``).
        table: their numbers as text.
        widget: everything in a ``VBox``, to display.
    """

    def __init__(self, folder: str | Path, known: dict[int, dict[str, Path]] | None = None) -> None:
        self.folder, self.files = Path(folder), dict(known or {})
        self.records: list[LoadRecord] = []
        known_bytes = next(iter(self.files), SIZES_MIB[0] << 20)
        default_mib = min(
            SIZES_MIB, key=lambda mib: abs((mib << 20) - known_bytes)
        )  # the size already on disk
        self.format = widgets.Dropdown(options=list(FILES), value="GGUF F16", description="file")
        self.mode = widgets.Dropdown(options=list(MODES), value="lazy (map)", description="mode")
        self.cache = widgets.ToggleButtons(options=["cold", "warm"], value="cold", description="cache")
        self.size = widgets.SelectionSlider(
            options=list(SIZES_MIB), value=default_mib, description="F16 MiB", continuous_update=False
        )
        self.figure = go.FigureWidget(rss_figure([]))
        self.table = widgets.HTML()
        for control in (self.format, self.mode, self.cache, self.size):
            control.observe(self.update, names="value")
        controls = widgets.VBox(
            [widgets.HBox([self.format, self.mode]), widgets.HBox([self.cache, self.size])]
        )
        self.widget = widgets.VBox([controls, self.figure, self.table])

    def _files_for(self, size_mib: int) -> dict[str, Path]:
        size_bytes = size_mib << 20
        if size_bytes not in self.files:
            self.files[size_bytes] = write_model_set(self.folder, size_bytes, quantized=("Q4_0",))
        return self.files[size_bytes]

    def update(self, change: Any = None) -> LoadRecord:
        """Measure one load with the current controls, redraw, and return its record."""
        path = self._files_for(self.size.value)[FILES[self.format.value]]
        mode, layers = MODES[self.mode.value]
        record = measure(path, mode=mode, layers=layers, cache=self.cache.value)
        self.records.append(record)
        shown = self.records[-KEEP:]
        source = rss_figure(shown)
        with self.figure.batch_update():
            self.figure.data = []
            for trace in source.data:
                self.figure.add_trace(trace)
            self.figure.layout = source.layout
        self.table.value = f"<pre>{html.escape(records_table(shown))}</pre>"
        return record

    def static(self) -> StaticView:
        """The loads shown now as a script-free table, with text bars of their peak memory."""
        shown = self.records[-KEEP:]
        largest = max((r.added_peak_rss_bytes for r in shown), default=0)
        rows = "".join(
            f"<tr><td>{html.escape(r.label)}</td><td>{r.all_touched_s * 1e3:,.1f}</td>"
            f"<td>{r.added_peak_rss_bytes / 2**20:,.1f}</td>"
            f"<td style='text-align:left'>{text_bar(r.added_peak_rss_bytes, largest)}</td></tr>"
            for r in shown
        )
        table = (
            "<table><tr><th>load</th><th>all touched (ms, measured)</th><th>+peak RSS (MiB, measured)</th>"
            f"<th></th></tr>{rows}</table>"
        )
        return StaticView("the last measured loads", table)


def load_explorer(folder: str | Path, known: dict[int, dict[str, Path]] | None = None) -> LoadExplorer:
    """Build the explorer; ``known`` maps an F16 size in bytes to a ``write_model_set`` result already on disk."""
    return LoadExplorer(folder, known)
