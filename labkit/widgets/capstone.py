"""The capstone's explorer (notebook 07): pick a weight type and a RAM budget, see the whole journey.

    explorer = journey_explorer(report)
    explorer.update()                               # the handler, called once directly
    display(explorer.widget, explorer.static())     # the live panel, and its static copy

The type picker redraws the dashboard (every stage of that type: measured beside predicted). The
budget slider plans that type's file under the budget (``labkit.journey.plan_budget``: no pass
is run) and shows which layers stay resident and which would stream, with the streamed I/O per
pass predicted from the probed tiers (modelled). The one budget the journey *ran* is marked
measured in the summary; every other budget is a plan.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from labkit.errors import LabkitError
from labkit.figures.capstone import budget_figure, dashboard
from labkit.journey import JourneyReport, Rates, plan_budget
from labkit.journey.records import STAGED
from labkit.widgets.common import StaticView, text_bar

MB = 1_000_000


class JourneyExplorer:
    """A type dropdown, a budget slider (MB), the dashboard and the budget plan they redraw.

    Attributes:
        figure, plan_figure: ``FigureWidget``s redrawn by ``update``.
        summary: an HTML line: the chosen type's measured numbers and the plan's prediction.
        widget: everything in a ``VBox``, to display.
    """

    def __init__(self, report: JourneyReport) -> None:
        self.report, self.rates = report, Rates.from_probe(report.probe)
        resident = max((v.resident_bytes or 0) for v in report.variants) or 400 * MB
        ran = report.staged_budget_bytes or resident // 2
        self.type = widgets.Dropdown(options=report.qtypes, value=report.qtypes[0], description="type")
        self.budget = widgets.IntSlider(
            value=ran // MB,
            min=1,
            max=max(resident // MB + 50, ran // MB),
            step=1,
            description="RAM budget MB",
            continuous_update=False,
            style={"description_width": "initial"},
        )
        self.figure, self.plan_figure = go.FigureWidget(), go.FigureWidget()
        self.summary = widgets.HTML()
        for control in (self.type, self.budget):
            control.observe(self.update, names="value")
        self.widget = widgets.VBox(
            [widgets.HBox([self.type, self.budget]), self.summary, self.figure, self.plan_figure]
        )

    def _plan(self, qtype: str) -> tuple[go.Figure, str]:
        path = self.report.variant(qtype).path
        if path is None:
            return (
                go.Figure(),
                "the typed files were not kept (run the journey with keep_dir=...) to plan budgets",
            )
        try:
            plan, seconds, formula = plan_budget(path, self.budget.value * MB, self.rates)
        except LabkitError as error:  # a budget below what streaming needs: the message says the smallest
            return go.Figure(), html.escape(str(error))
        text = (
            f"plan (no pass run): {plan.n_resident} of {len(plan.placements)} layers resident; "
            f"streamed I/O per pass ≈ {seconds * 1e3:.0f} ms ({html.escape(formula)})"
        )
        return budget_figure(plan, qtype, predicted_s=seconds), text

    def update(self, change: Any = None) -> dict[str, Any]:
        """Redraw for the chosen type and budget; return what the summary shows, as numbers."""
        qtype = self.type.value
        v = self.report.variant(qtype)
        plan_fig, plan_text = self._plan(qtype)
        for target, source in ((self.figure, dashboard(self.report, qtype)), (self.plan_figure, plan_fig)):
            with target.batch_update():
                target.data = []
                for trace in source.data:
                    target.add_trace(trace)
                target.layout = source.layout
        staged = self.report.stage(STAGED, qtype)
        ran = (
            ""
            if not staged.ran
            else f"; the journey ran {self.report.staged_budget_bytes / MB:.0f} MB: "
            f"{staged.measured_s:.2f} s per pass (measured)"
        )
        self.summary.value = (
            f"<b>{qtype}</b>: file {v.file_bytes / MB:.1f} MB (counted), perplexity "
            f"{v.perplexity:.2f} (measured), {v.tokens_per_s:.1f} tok/s (measured)<br>"
            f"{plan_text}{ran}"
        )
        return {"qtype": qtype, "budget_bytes": self.budget.value * MB, "summary": self.summary.value}

    def static(self) -> StaticView:
        """The measured table as plain HTML with text bars (for readers without a kernel)."""
        largest = max(v.file_bytes for v in self.report.variants)
        rows = "".join(
            f"<tr><td>{v.qtype}</td><td><code>{text_bar(v.file_bytes, largest)}</code> {v.file_bytes / MB:.1f} MB "
            f"(counted)</td><td>{v.perplexity:.2f} (measured)</td><td>{v.tokens_per_s:.1f} (measured)</td></tr>"
            for v in self.report.variants
        )
        table = (
            "<table><tr><th>type</th><th>file</th><th>perplexity</th><th>tok/s</th></tr>" + rows + "</table>"
        )
        return StaticView(f"the measured table of the journey ({len(self.report.variants)} types)", table)


def journey_explorer(report: JourneyReport) -> JourneyExplorer:
    """Build the explorer for a ``labkit.journey.run`` report (run it with ``keep_dir=`` to plan budgets)."""
    return JourneyExplorer(report)
