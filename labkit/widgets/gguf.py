"""The GGUF layout explorer of notebook 03: click a region of the file map, or pick a tensor.

    explorer = layout_explorer(f)          # f: an open labkit.gguf.GGUFFile
    explorer.show("blk.0.attn_q.weight")   # the handler, called once directly
    explorer.widget                        # the map, a tensor picker and the details panel

Clicking a bar of the map (a ``plotly.graph_objects.FigureWidget``) or choosing a
name in the dropdown calls ``show``, which fills the panel with
``labkit.figures.gguf.region_details``: the region's bytes and, for a tensor, its
info and first block decoded. ``show`` also sets the dropdown to the tensor shown
(or to no tensor, for the header, metadata and padding regions).
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from labkit.figures.gguf import bytes_by_kind, layout_figure, region_details
from labkit.widgets.common import StaticView


class LayoutExplorer:
    """A file map, a tensor picker and a details panel, wired to one handler (``show``).

    Attributes:
        regions: ``f.layout()``.
        figure: the map as a ``FigureWidget``.
        picker: a dropdown of tensor names.
        details: the HTML panel ``show`` fills.
        widget: all three in a ``VBox``, to display.
    """

    def __init__(self, f: Any) -> None:
        self.file = f
        self.regions = f.layout()
        self._by_name = {r.name: i for i, r in enumerate(self.regions) if r.kind == "tensor"}
        self.figure = go.FigureWidget(layout_figure(self.regions))
        for trace in self.figure.data:
            trace.on_click(self._on_click)
        self.picker = widgets.Dropdown(
            options=list(self._by_name), description="tensor", layout=widgets.Layout(width="420px")
        )
        self._setting_picker = False  # True while show() sets the dropdown: no second redraw
        self.picker.observe(self._on_pick, names="value")
        self.details = widgets.HTML()
        self.widget = widgets.VBox([self.figure, self.picker, self.details])

    def show(self, region: int | str) -> str:
        """Fill the details panel with one region (an index into ``regions`` or a tensor name),
        and set the dropdown to it.

        Returns:
            The HTML shown, so that a notebook can check it without events.
        """
        index = self._by_name[region] if isinstance(region, str) else int(region)
        shown = self.regions[index]
        self.details.value = region_details(self.file, shown)
        self._set_picker(shown.name if shown.kind == "tensor" else None)
        return self.details.value

    def static(self) -> StaticView:
        """The bytes per kind of region and the region shown now, as static HTML (the file map
        itself, hundreds of regions, is left to the live widget)."""
        rows = "".join(
            f"<tr><td>{kind}</td><td>{count}</td><td>{size:,}</td></tr>"
            for kind, (count, size) in bytes_by_kind(self.regions).items()
        )
        table = f"<table><tr><th>region kind</th><th>regions</th><th>bytes</th></tr>{rows}</table>"
        return StaticView(f"the file's regions, and {self.picker.value}", table + self.details.value)

    def _set_picker(self, name: str | None) -> None:
        self._setting_picker = True
        try:
            self.picker.value = name
        finally:
            self._setting_picker = False

    def _on_click(self, trace: Any, points: Any, selector: Any) -> None:
        if points.point_inds:
            self.show(int(trace.customdata[points.point_inds[0]]))

    def _on_pick(self, change: dict) -> None:
        if change["new"] and not self._setting_picker:
            self.show(change["new"])


def layout_explorer(f: Any) -> LayoutExplorer:
    """Build the explorer for an open ``GGUFFile`` (see the module docstring for the three lines that use it)."""
    return LayoutExplorer(f)
