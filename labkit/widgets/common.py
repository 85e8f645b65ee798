"""Shared by the widgets of every chapter: a static copy of what a widget shows, for readers of a saved
notebook (GitHub, nbviewer).

A saved notebook keeps a widget only as ``VBox(...)``: without a running kernel there is nothing to
draw it. So every widget cell also displays a ``StaticView`` of the widget's state when the cell ran:
plain HTML — a table, with text bars where a figure would be — that every viewer shows (GitHub
included) and that runs no JavaScript. In a live notebook the copy sits folded under the widget.

    panel.update()                             # the handler, run once
    display(panel.widget, panel.static())      # the live widget, and its static copy
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

BAR_WIDTH = 30  # characters of the longest text bar


@dataclass(frozen=True)
class StaticView:
    """A widget's state as plain HTML: a caption and a table (or any script-free HTML)."""

    caption: str
    table_html: str

    def _repr_html_(self) -> str:
        summary = f"static copy, for readers without a kernel: {html.escape(self.caption)}"
        return f"<details><summary><i>{summary}</i></summary>{self.table_html}</details>"


def text_bar(value: float, largest: float, *, log_floor: float | None = None) -> str:
    """A bar of block characters, ``BAR_WIDTH`` long for ``largest``: a figure that survives as text.

    Args:
        value, largest: the bar's value and the value of the longest bar (both positive).
        log_floor: draw on a log scale from this value up (for rates spanning decades), else linear.
    """
    if value <= 0 or largest <= 0:
        return ""
    if log_floor is None:
        share = value / largest
    else:
        span = math.log10(largest / log_floor)
        share = math.log10(max(value, log_floor) / log_floor) / span if span > 0 else 1.0
    return "█" * max(1, round(BAR_WIDTH * min(share, 1.0)))
