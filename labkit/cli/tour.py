"""``labkit tour``: the whole journey, headless, on the default model (chapter 7, the capstone).

Runs ``labkit.journey.run`` (probe, quantize, inspect, lazy and eager loads, a staged pass,
generate), one progress bar per stage on stderr, then prints a short summary and writes one
self-contained HTML report (``labkit.figures.tour``; needs plotly, imported only here, lazily).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from labkit.cli.common import MEASURED, parse_size
from labkit.errors import OutputPathError

if TYPE_CHECKING:
    from labkit.journey import JourneyReport

REPORT_NAME = "labkit-tour.html"


def add_tour(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tour",
        help="run the whole journey on the default model and write an HTML report",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--quick", action="store_true", help="two types, a small probe, a short text (< 60 s)"
    )
    parser.add_argument("--out", default=".", help=f"folder for {REPORT_NAME} and tour.json (default: .)")
    parser.add_argument(
        "--types", default=None, help="comma-separated file types (default: all five; quick: two)"
    )
    parser.add_argument(
        "--budget",
        type=parse_size,
        default=None,
        help="RAM budget of the staged run, e.g. 192M (default 192 MiB)",
    )
    parser.add_argument("--model", default=None, help="start from this GGUF instead of the default model")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run_tour)


def _out_folder(text: str) -> Path:
    folder = Path(text)
    if not folder.is_dir():
        raise OutputPathError(f"--out {text!r} is not an existing folder; create it first (mkdir -p {text})")
    return folder


def _run_tour(args: argparse.Namespace) -> int:
    from labkit import journey

    folder = _out_folder(args.out)
    types = args.types.split(",") if args.types else (journey.QUICK_TYPES if args.quick else journey.TYPES)
    budget = args.budget if args.budget is not None else journey.DEFAULT_BUDGET_BYTES
    report = journey.run(
        [t.strip() for t in types],
        budget_bytes=budget,
        quick=args.quick,
        source=args.model,
        progress=not args.quiet,
    )
    print(summary(report))
    for line in write_outputs(report, folder):
        print(line)
    return 0


def write_outputs(report: JourneyReport, folder: Path) -> list[str]:
    """Write ``tour.json`` and, with plotly installed, the HTML report; return the lines to print."""
    numbers = folder / "tour.json"
    numbers.write_text(json.dumps({**report.to_dict(), "timing": MEASURED}, default=str))
    try:
        from labkit.figures.tour import write_report
    except ImportError as error:  # plotly missing: the summary stands alone
        return [
            f"\nno HTML report: {error.name or 'plotly'} is not installed. Install it with: "
            f"python -m pip install plotly  (then run labkit tour again); numbers: {numbers}"
        ]
    path = write_report(report, folder / REPORT_NAME)
    return [f"\nreport: {path} (self-contained, opens offline); numbers: {numbers}"]


def summary(report: JourneyReport) -> str:
    """The short terminal summary: the machine, the measured table, one type's stages, the claims."""
    from labkit.journey import claim_rows, claims_table, stage_table, variant_table

    smallest = min(report.variants, key=lambda v: v.file_bytes).qtype
    lines = [
        f"labkit tour: {report.model} on {report.machine.describe()}",
        f"whole tour {report.elapsed_s:.1f} s (measured)",
        "",
        variant_table(report),
        "",
        f"stages of {smallest}:",
        stage_table(report, smallest),
    ]
    lines += [f"not there yet: {stage}: {why}" for stage, why in report.missing.items()]
    lines += ["", "the article's claims on this machine:", claims_table(claim_rows(report))]
    return "\n".join(lines)
