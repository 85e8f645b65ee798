"""The HTML report of ``labkit tour``: one self-contained page, readable offline.

plotly.js is embedded once (no CDN: the page opens on a machine without a network), the figures
are ``labkit.figures.capstone``'s, and every number in every table carries its kind: each ``<td>``
holding a number has ``data-kind`` set to ``measured``, ``counted``, ``modelled``, ``quoted`` or
``given`` (what was asked for: a type's name, the setup of a stage), or ``labelled`` when the text
labels each of its numbers inline (a prediction's formula, the claims table).
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

from labkit.figures.capstone import claims_figure, dashboard
from labkit.journey.claims import ClaimRow, claim_rows
from labkit.journey.records import JourneyReport, StageRecord

KIND_LABELS = ("measured", "counted", "modelled", "quoted", "given", "labelled")
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
td[data-kind] { font-variant-numeric: tabular-nums; }
.kind { color: #666; font-size: 0.8em; }
.missing { background: #fff2cc; padding: 0.5em 1em; }
"""


def _cell(value: object, kind: str | None = None) -> str:
    """A table cell; a number's cell says its kind (attribute and visible label)."""
    text = html.escape(str(value))
    if kind is None:
        return f"<td>{text}</td>"
    assert kind in KIND_LABELS, kind
    label = "" if kind == "labelled" else f' <span class="kind">{kind}</span>'
    return f'<td data-kind="{kind}">{text}{label}</td>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(f"<tr>{''.join(row)}</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _seconds(value: float | None, kind: str, missing: str) -> str:
    return _cell(missing, None) if value is None else _cell(f"{value:.4g} s", kind)


def _stage_rows(records: Sequence[StageRecord]) -> list[list[str]]:
    return [
        [
            _cell(r.stage),
            _cell(r.qtype or "all", "given"),
            _cell(f"{r.size_bytes:,} bytes", "counted"),
            _seconds(r.measured_s, "measured", "not run here"),
            _seconds(r.predicted_s, "modelled", "no model"),
            _cell(r.prediction or "—", "labelled" if r.prediction else None),
            _cell(r.what, "counted"),  # the stage's setup: tokens, layers, budget
            _cell(r.note, "measured"),  # cache evidence, peaks, critical lane
        ]
        for r in records
    ]


def _variant_rows(report: JourneyReport) -> list[list[str]]:
    rows = []
    for v in report.variants:
        rss = "—" if v.eager_peak_rss_bytes is None else f"{v.eager_peak_rss_bytes / 1e6:.1f} MB"
        resident = "not run here" if v.resident_bytes is None else f"{v.resident_bytes / 1e6:.1f} MB"
        rows.append(
            [
                _cell(v.qtype, "given"),
                _cell(f"{v.file_bytes / 1e6:.2f} MB", "counted"),
                _cell(", ".join(f"{k}×{n}" for k, n in v.weight_types.items()), "counted"),
                _cell(f"{v.perplexity:.2f} ({v.n_scored} tokens)", "measured"),
                _cell(f"{v.tokens_per_s:.1f} tok/s", "measured"),
                _cell(f"{v.bound_tokens_per_s:.0f} tok/s", "modelled"),
                _cell(rss, "measured"),
                _cell(resident, "counted" if v.resident_bytes is not None else None),
                _cell(v.sample, "measured"),
            ]
        )
    return rows


def _probe_rows(report: JourneyReport) -> list[list[str]]:
    return [
        [
            _cell(r.tier),
            _cell(r.operation, "given"),
            _cell(f"{r.gb_per_s:.3g} GB/s", r.kind),
            _cell(r.source or r.method, r.kind),
        ]
        for r in report.probe.records
    ]


def _claim_rows(rows: Sequence[ClaimRow]) -> list[list[str]]:
    return [
        [_cell(r.number, "given"), _cell(r.claim, "quoted"), _cell(r.measured, "labelled"), _cell(r.verdict)]
        for r in rows
    ]


def render(report: JourneyReport) -> str:
    """The report as one HTML page (plotly.js embedded once)."""
    claims = claim_rows(report)
    figures = [dashboard(report, q) for q in report.qtypes] + [claims_figure(claims)]
    plots = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    missing = "".join(
        f'<p class="missing">{html.escape(stage)}: not there yet — {html.escape(why)}</p>'
        for stage, why in report.missing.items()
    )
    m = report.machine
    sections = [
        f"<h1>labkit tour: the journey of {html.escape(report.model)}, disk → RAM → VRAM</h1>",
        f"<p><b>Machine</b> (read here): {html.escape(m.describe())}. Files written under "
        f"{html.escape(m.disk_folder)}.</p>",
        f'<p>Whole tour: <span data-kind="measured">{report.elapsed_s:.1f} s</span> <span class="kind">'
        f"measured</span>; source {report.source_bytes:,} bytes, {report.n_params:,} weights "
        '<span class="kind">counted</span>. Kinds: <b>measured</b> here in this run; <b>counted</b> from file '
        "sizes and tensor tables; <b>modelled</b> = counted bytes ÷ a rate measured by the probe; <b>quoted</b> "
        "from the source named beside it.</p>" + missing,
        "<h2>The measured table</h2>",
        _table(
            [
                "type",
                "file",
                "weight matrices by type",
                "perplexity",
                "decode",
                "bandwidth bound",
                "eager load: peak RSS added",
                "all layers resident",
                "sample continuation",
            ],
            _variant_rows(report),
        ),
        "<h2>Every stage: measured beside predicted</h2>",
        *plots[:-1],
        _table(
            ["stage", "type", "bytes", "measured", "predicted", "prediction", "what", "note"],
            _stage_rows(report.stages),
        ),
        "<h2>The article's claims on this machine</h2>",
        plots[-1],
        _table(["#", "claim (quoted)", "this machine", "verdict"], _claim_rows(claims)),
        "<h2>The tiers the predictions use (chapter 1's probe)</h2>",
        _table(["tier", "operation", "rate", "how / source"], _probe_rows(report)),
    ]
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>labkit tour</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(report: JourneyReport, path: str | os.PathLike[str]) -> Path:
    """Write ``render(report)`` to ``path`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(render(report), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
