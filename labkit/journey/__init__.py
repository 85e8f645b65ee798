"""The whole journey on one model (chapter 7, the capstone): every stage, measured beside its prediction.

Modules, in reading order:

- ``records``  ``StageRecord`` (one stage, one type), ``VariantSummary`` (one type), ``JourneyReport``
- ``predict``  each stage's time predicted from the tiers chapter 1 measured (modelled)
- ``stages``   one method per stage: run it on one typed file, append its record
- ``runner``   ``run(types, budget_bytes=...)``: probe, quantize, inspect, load lazy and eager,
               a staged pass, generate and score, type after type
- ``claims``   the article's claims beside what this machine measured, and whether each held here
- ``text``     the records as fixed-width text tables (terminal, notebooks)

This package sits above the chapters it runs (hierarchy, quant, gguf, loading, runtime, staging)
and below the figures, widgets and command line that show its records.

Example:
    >>> from labkit import journey
    >>> report = journey.run(["Q8_0", "Q4_0"], quick=True)
    >>> report.stage("load lazy", "Q4_0").measured_s, report.stage("load lazy", "Q4_0").predicted_s
    >>> for row in journey.claim_rows(report): print(row.claim, row.verdict)
"""

from __future__ import annotations

from labkit.journey.claims import ClaimRow, claim_rows
from labkit.journey.predict import Rates
from labkit.journey.records import STAGES, JourneyReport, Machine, StageRecord, VariantSummary
from labkit.journey.runner import check_request, plan_budget, run
from labkit.journey.stages import DEFAULT_BUDGET_BYTES, QUICK_TYPES, TYPES
from labkit.journey.text import claims_table, stage_table, variant_table

__all__ = [
    "DEFAULT_BUDGET_BYTES",
    "ClaimRow",
    "claim_rows",
    "QUICK_TYPES",
    "STAGES",
    "TYPES",
    "JourneyReport",
    "Machine",
    "Rates",
    "StageRecord",
    "VariantSummary",
    "check_request",
    "claims_table",
    "plan_budget",
    "run",
    "stage_table",
    "variant_table",
]
