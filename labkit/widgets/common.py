"""Shared by the widgets of every chapter: a static copy of what a widget shows, for readers of a saved
notebook (GitHub, nbviewer).

A saved notebook keeps a widget only as ``VBox(...)``: without a running kernel there is nothing to
draw it. So every widget cell also displays a ``StaticView`` of the widget's state when the cell ran:
an HTML table (shown everywhere, GitHub included) and the figure (drawn by plotly's JavaScript where
the viewer runs it, as nbviewer does). In a live notebook the copy sits folded under the widget.

    panel.update()                             # the handler, run once
    display(panel.widget, panel.static())      # the live widget, and its static copy
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import plotly.graph_objects as go


@dataclass(frozen=True)
class StaticView:
    """A widget's state as plain HTML: a caption, a table (or any HTML) and optional figures."""

    caption: str
    table_html: str
    figures: tuple[go.Figure, ...] = ()

    def _repr_html_(self) -> str:
        parts = [self.table_html]
        for figure in self.figures:
            parts.append(go.Figure(figure).to_html(full_html=False, include_plotlyjs="cdn"))
        summary = f"static copy, for readers without a kernel: {html.escape(self.caption)}"
        return f"<details><summary><i>{summary}</i></summary>{''.join(parts)}</details>"
