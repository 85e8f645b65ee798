"""The KV-cache explorer of notebook 05: context length, batch and dtype -> bytes of cache.

    explorer = kv_cache_explorer(model.config, weight_bytes=model.weights.total_bytes)
    explorer.update()      # the handler, called once directly
    explorer.widget        # sliders, a dropdown, the figure and a summary line

Every number it shows is *modelled* from the metadata (the formula in ``labkit.runtime.kvcache``);
notebook 05 checks the formula against a real cache's ``size_bytes`` first.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from labkit.figures.runtime import kv_growth_figure
from labkit.runtime.kvcache import kv_cache_size_bytes

# Q8_0 (llama.cpp's --cache-type-k q8_0): blocks of 32 int8 values plus one fp16 scale, 34 bytes per 32.
BYTES_PER_ELEMENT = {"float32": 4.0, "float16 / bfloat16": 2.0, "Q8_0 (34 bytes per 32 values)": 34 / 32}


class KVCacheExplorer:
    """Sliders for context and batch, a dtype picker, and the growth figure they redraw.

    Attributes:
        figure: a ``FigureWidget`` redrawn by ``update``.
        summary: an HTML line with the cache size at the chosen point.
        widget: everything in a ``VBox``, to display.
    """

    def __init__(self, config: Any, *, weight_bytes: int) -> None:
        self.config, self.weight_bytes = config, weight_bytes
        self.context = widgets.IntSlider(
            value=min(2048, config.context_length),
            min=1,
            max=config.context_length,
            step=1,
            description="context",
            continuous_update=False,
        )
        self.batch = widgets.IntSlider(value=1, min=1, max=64, description="batch", continuous_update=False)
        self.dtype = widgets.Dropdown(
            options=list(BYTES_PER_ELEMENT), value="float16 / bfloat16", description="cache dtype"
        )
        self.figure = go.FigureWidget()
        self.summary = widgets.HTML()
        for control in (self.context, self.batch, self.dtype):
            control.observe(self.update, names="value")
        self.widget = widgets.VBox(
            [widgets.HBox([self.context, self.batch, self.dtype]), self.summary, self.figure]
        )

    def update(self, change: Any = None) -> int:
        """Redraw for the current controls; return the KV cache bytes at the chosen context (modelled)."""
        c, element_bytes = self.config, BYTES_PER_ELEMENT[self.dtype.value]
        size_bytes = kv_cache_size_bytes(
            n_layers=c.n_layers,
            n_kv_heads=c.n_kv_heads,
            head_dim=c.head_dim,
            context_length=self.context.value,
            batch=self.batch.value,
            bytes_per_element=element_bytes,
        )
        source = kv_growth_figure(
            n_layers=c.n_layers,
            n_kv_heads=c.n_kv_heads,
            head_dim=c.head_dim,
            max_context=c.context_length,
            weight_bytes=self.weight_bytes,
            batch=self.batch.value,
            bytes_per_element=element_bytes,
            marker_context=self.context.value,
        )
        with self.figure.batch_update():
            self.figure.data = []
            for trace in source.data:
                self.figure.add_trace(trace)
            self.figure.layout = source.layout
        ratio = size_bytes / self.weight_bytes
        self.summary.value = (
            f"<b>{size_bytes / 1e6:,.1f} MB</b> of KV cache for {self.context.value:,} tokens × "
            f"batch {self.batch.value} ({ratio:.2f}× the loaded weights) — modelled from metadata"
        )
        return size_bytes


def kv_cache_explorer(config: Any, *, weight_bytes: int) -> KVCacheExplorer:
    """Build the explorer for a model's config (``labkit.runtime.model.LlamaConfig``)."""
    return KVCacheExplorer(config, weight_bytes=weight_bytes)
