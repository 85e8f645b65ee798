"""The error explorer of notebook 02: pick a type and a tensor, see how far the weights move.

    explorer = error_explorer(f)            # f: an open labkit.gguf.GGUFFile
    explorer.show("Q4_K", "blk.0.attn_q.weight")   # the handler, called once directly
    explorer.widget                         # two dropdowns, the histogram, the numbers

Choosing a type or a tensor calls ``show``: it quantizes (a row sample of) the
tensor to the type, decodes it again, and redraws the histogram of the error
and the numbers of ``labkit.quant.error_metrics`` -- all measured on the spot.
``show`` also sets the two dropdowns, so they always name what is drawn.

The error is measured against a *float* original, not against the file's already-quantized
weights (those would give the file's own type zero error and flatter the types whose grids line
up with it): ``labkit.quant.tradeoff.float_stand_in`` moves each decoded weight by a random amount
within its own quantization step, where the true original lay.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from labkit.figures.quant import error_histogram, stats_table
from labkit.formats import FORMATS
from labkit.quant import QUANT_TYPES, dequantize, error_metrics, quantize
from labkit.quant.tradeoff import FLOAT_TYPES, STEP_FIRST_TYPES, as_rows, float_stand_in
from labkit.widgets.common import StaticView

MAX_ROWS = 256  # rows of a tensor quantized per redraw, so a K-quant redraw stays well under a second


class ErrorExplorer:
    """Type and tensor pickers wired to one handler (``show``).

    Attributes:
        figure: the histogram, a ``FigureWidget`` whose trace ``show`` replaces.
        type_picker, tensor_picker: the dropdowns.
        numbers: the HTML panel with MSE, max error, SNR and bits per weight.
        widget: everything in a ``VBox``, to display.
    """

    def __init__(self, f: Any, tensor_names: list[str]) -> None:
        self.file = f
        first_type, first_name = "Q4_K", tensor_names[0]  # what the pickers and the figure start on
        self.figure = go.FigureWidget(error_histogram(*_pair(f, first_name, first_type), title=""))
        self.type_picker = widgets.Dropdown(
            options=list(QUANT_TYPES[1:]), value=first_type, description="type"
        )
        self.tensor_picker = widgets.Dropdown(
            options=tensor_names, value=first_name, description="tensor", layout=widgets.Layout(width="420px")
        )
        self._setting_pickers = False  # True while show() sets the dropdowns: no second redraw
        for picker in (self.type_picker, self.tensor_picker):
            picker.observe(self._on_change, names="value")
        self.numbers = widgets.HTML()
        self.widget = widgets.VBox(
            [widgets.HBox([self.type_picker, self.tensor_picker]), self.figure, self.numbers]
        )

    def show(self, qtype: str, name: str) -> str:
        """Quantize ``name`` to ``qtype`` and back; redraw the histogram and the numbers,
        and set the dropdowns to ``qtype`` and ``name``.

        Returns:
            The HTML of the numbers panel.
        """
        original, restored = _pair(self.file, name, qtype)
        stats = error_metrics(original, restored, qtype)
        fresh = error_histogram(
            original, restored, title=f"{name} as {qtype}: error of each weight (measured)"
        )
        with self.figure.batch_update():
            self.figure.data[0].x = fresh.data[0].x
            self.figure.layout.title = fresh.layout.title
        rows = original.numel() // max(original.shape[-1], 1)
        self.numbers.value = stats_table(
            stats,
            note=f"measured on {rows} rows of {FORMATS[qtype].block_size}-weight blocks; the original is "
            f"{float_stand_in(self.file, name, max_rows=1)[1]}",
        )
        self._set_pickers(qtype, name)
        return self.numbers.value

    def static(self) -> StaticView:
        """What the explorer shows now, as static HTML (see ``labkit.widgets.common``)."""
        caption = f"{self.tensor_picker.value} as {self.type_picker.value}"
        return StaticView(caption, self.numbers.value)

    def _set_pickers(self, qtype: str, name: str) -> None:
        self._setting_pickers = True
        try:
            self.type_picker.value, self.tensor_picker.value = qtype, name
        finally:
            self._setting_pickers = False

    def _on_change(self, change: dict[str, Any]) -> None:
        if not self._setting_pickers:
            self.show(self.type_picker.value, self.tensor_picker.value)


def _pair(f: Any, name: str, qtype: str):
    """(original, restored): up to MAX_ROWS rows of the tensor, regrouped into whole blocks of qtype."""
    fmt = FORMATS[qtype]
    weights, _ = float_stand_in(f, name, max_rows=MAX_ROWS)
    rows = as_rows(weights, fmt.block_size if fmt.block_size > 1 else weights.shape[-1])
    return rows, dequantize(quantize(rows, qtype), qtype, rows.shape)


def error_explorer(f: Any, tensor_names: list[str] | None = None) -> ErrorExplorer:
    """Build the explorer over ``f``'s 2-D weights (or the names given) whose float original
    ``float_stand_in`` can stand in for."""
    usable = STEP_FIRST_TYPES + FLOAT_TYPES
    names = tensor_names or [
        n for n, info in f.tensors.items() if len(info.shape) == 2 and info.qtype in usable
    ]
    return ErrorExplorer(f, names)
