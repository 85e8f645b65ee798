"""The budget explorer of notebook 06: a VRAM/RAM budget slider -> the plan, and optionally a real pass.

    explorer = budget_explorer(path, layers, reserve_bytes=...)
    explorer.update()                             # the handler, called once directly
    display(explorer.widget, explorer.static())   # the live panel, and its static copy

Moving the slider re-plans (instant: only arithmetic on the tensor table). Ticking "run a pass"
loads the model under that budget and times one real staged pass (measured on this machine); its
timeline is drawn under the plan.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from labkit.errors import PlanError
from labkit.figures.staging import plan_figure, timeline_figure
from labkit.staging import LayerSpec, Plan, load, plan_layers, trace_pass
from labkit.widgets.common import StaticView

MiB = 1 << 20


class BudgetExplorer:
    """A budget slider, a "run a pass" box, the plan's table and figure, and a pass's timeline.

    Attributes:
        figure: the plan, redrawn by ``update``.
        timeline: the last pass's timeline (empty until a pass runs).
        table: the plan as text (``Plan.explain``), or the planner's error.
        widget: everything in a ``VBox``, to display.
    """

    def __init__(
        self,
        path: Any,
        layers: Sequence[LayerSpec],
        *,
        reserve_bytes: int,
        budget_mib: int,
        max_mib: int,
        prompt_ids: Sequence[int] = (1, 2, 3, 4),
    ) -> None:
        self.path, self.layers, self.reserve_bytes, self.prompt_ids = (
            path,
            list(layers),
            reserve_bytes,
            prompt_ids,
        )
        self.budget = widgets.IntSlider(
            value=budget_mib, min=16, max=max_mib, step=8, description="budget MiB", continuous_update=False
        )
        self.run = widgets.Checkbox(value=False, description="run a pass (measured)")
        self.figure, self.timeline = go.FigureWidget(), go.FigureWidget()
        self.table = widgets.HTML()
        self.plan: Plan | None = None
        for control in (self.budget, self.run):
            control.observe(self.update, names="value")
        self.widget = widgets.VBox(
            [widgets.HBox([self.budget, self.run]), self.table, self.figure, self.timeline]
        )

    def update(self, change: Any = None) -> Plan | None:
        """Re-plan for the slider's budget (and run a pass when ticked); return the plan, or None."""
        budget = self.budget.value * MiB
        try:
            self.plan = plan_layers(
                self.layers, device="cpu", ram_bytes=budget, reserve_bytes=self.reserve_bytes
            )
        except PlanError as error:
            self.plan = None
            self.table.value = f"<pre>{html.escape(str(error))}</pre>"
            return None
        self.table.value = f"<pre>{html.escape(self.plan.explain())}</pre>"
        _replace(self.figure, plan_figure(self.plan))
        if self.run.value:
            model = load(self.path, plan=self.plan, io="pread")  # the whole pipeline, as drawn above
            model.forward(list(self.prompt_ids))  # warm-up: page cache and allocator
            _, trace = trace_pass(model, list(self.prompt_ids))
            model.weights.close()  # type: ignore[attr-defined]
            _replace(self.timeline, timeline_figure(trace))
        return self.plan

    def static(self) -> StaticView:
        """The panel's state as plain HTML, for readers without a kernel."""
        return StaticView(f"the plan for a budget of {self.budget.value} MiB", self.table.value)


def _replace(target: go.FigureWidget, source: go.Figure) -> None:
    with target.batch_update():
        target.data = []
        for trace in source.data:
            target.add_trace(trace)
        target.layout = source.layout


def budget_explorer(
    path: Any, layers: Sequence[LayerSpec], *, reserve_bytes: int, budget_mib: int = 256, max_mib: int = 640
) -> BudgetExplorer:
    """Build the explorer for a model file and its layers (``labkit.staging.layer_specs``)."""
    return BudgetExplorer(path, layers, reserve_bytes=reserve_bytes, budget_mib=budget_mib, max_mib=max_mib)
