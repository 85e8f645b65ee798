"""What one run of the whole journey returns: one record per stage per type, and the machine.

Every number in these records says where it comes from, as everywhere in the lab:

- **measured**  timed or sampled on this machine during this run (``measured_s``, perplexity, RSS);
- **counted**   exact, from a file's size or its tensor table (``size_bytes``);
- **modelled**  computed from measured rates and counted bytes (``predicted_s``; the formula, with
                its numbers, in ``prediction``);
- **quoted**    from a source named beside it (the article's speed table, the PCIe spec).

A stage that could not run here (no GPU, a chapter not installed) is never faked: its record has
``measured_s=None`` and says why in ``note``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from labkit.hierarchy.tiers import ProbeReport

# The stages of the journey, in the order a weight meets them.
PROBE = "probe"
QUANTIZE = "quantize + write"
INSPECT = "inspect"
OPEN = "open (lazy)"
LAZY = "load lazy"
EAGER = "load eager"
STAGED = "staged run"
HOP = "RAM → VRAM hop"
GENERATE = "generate"
PERPLEXITY = "perplexity"
STAGES = (PROBE, QUANTIZE, INSPECT, OPEN, LAZY, EAGER, STAGED, HOP, GENERATE, PERPLEXITY)

KINDS = ("measured", "counted", "modelled", "quoted")


@dataclass(frozen=True)
class StageRecord:
    """One stage of the journey for one weight type.

    Attributes:
        stage: one of ``STAGES``.
        qtype: the file type (``"Q8_0"``, ``"Q4_K_M"``...), ``""`` for a machine-wide stage (the probe).
        size_bytes: the bytes the stage moved or handled (counted); what they are is in ``what``.
        measured_s: wall time on this machine (measured), or None when it did not run here.
        predicted_s: the time the measured tiers predict (modelled), or None when no model fits.
        prediction: the formula behind ``predicted_s``, with its numbers and their kinds.
        what: what was timed and what ``size_bytes`` counts.
        note: caveats: the cache state, why a stage did not run, what the prediction leaves out.
    """

    stage: str
    qtype: str
    size_bytes: int
    measured_s: float | None
    predicted_s: float | None
    prediction: str = ""
    what: str = ""
    note: str = ""

    @property
    def ran(self) -> bool:
        """True when the stage ran and was timed here."""
        return self.measured_s is not None

    @property
    def kinds(self) -> dict[str, str]:
        """Each number's kind, for tables and reports."""
        return {
            "size_bytes": "counted",
            "measured_s": "measured" if self.ran else "not run here",
            "predicted_s": "modelled" if self.predicted_s is not None else "no model",
        }


@dataclass(frozen=True)
class VariantSummary:
    """One weight type's headline numbers, the rows of the capstone's table.

    Attributes:
        qtype: the llama.cpp file type written.
        file_bytes: the file's size (counted).
        weight_types: how many weight matrices ended up in each tensor type (counted).
        perplexity: on the lab text (measured); ``n_scored`` tokens scored.
        tokens_per_s: greedy decode speed, dense bfloat16 weights, batch 1 (measured).
        bound_tokens_per_s: RAM read bandwidth ÷ weight bytes per token (modelled).
        eager_peak_rss_bytes: peak resident memory an eager load added (measured in a fresh process).
        resident_bytes: memory to keep every layer resident in the staged run (counted from its plan),
            or None without the staging chapter.
        sample: the text the model generated (measured: it ran).
        path: where the typed file was kept (``run(keep_dir=...)``), or None when it was deleted.
    """

    qtype: str
    file_bytes: int
    weight_types: dict[str, int]
    perplexity: float
    n_scored: int
    tokens_per_s: float
    bound_tokens_per_s: float
    eager_peak_rss_bytes: int | None
    resident_bytes: int | None
    sample: str
    path: str | None = None

    KINDS: ClassVar[dict[str, str]] = {
        "file_bytes": "counted",
        "weight_types": "counted",
        "perplexity": "measured",
        "n_scored": "counted",
        "tokens_per_s": "measured",
        "bound_tokens_per_s": "modelled",
        "eager_peak_rss_bytes": "measured",
        "resident_bytes": "counted",
        "sample": "measured",
        "path": "given",
    }

    def as_row(self) -> dict[str, Any]:
        """The plain row the exercise and its check work on."""
        return {
            "qtype": self.qtype,
            "file_bytes": self.file_bytes,
            "perplexity": self.perplexity,
            "tokens_per_s": self.tokens_per_s,
            "eager_peak_rss_bytes": self.eager_peak_rss_bytes,
            "resident_bytes": self.resident_bytes,
        }


@dataclass(frozen=True)
class Machine:
    """The machine the journey ran on, as the report describes it (all read here, none quoted)."""

    cpu: str
    cores: int
    torch_threads: int
    memory_limit_bytes: int
    memory_available_bytes: int
    disk_folder: str
    gpu: str | None
    python: str
    torch: str
    platform: str

    def describe(self) -> str:
        """One line: CPU, cores, memory, GPU."""
        gpu = self.gpu or "no GPU (RAM → VRAM rows are modelled, never measured)"
        return (
            f"{self.cpu}, {self.cores} cores ({self.torch_threads} torch threads), "
            f"{self.memory_limit_bytes / 2**30:.1f} GiB memory limit "
            f"({self.memory_available_bytes / 2**30:.1f} GiB available), {gpu}; "
            f"Python {self.python}, torch {self.torch}, {self.platform}"
        )


@dataclass(frozen=True)
class JourneyReport:
    """Everything one run of the journey found.

    Attributes:
        model: the source file's name; ``source_bytes`` its size and ``n_params`` its weights (counted).
        machine: where it ran.
        probe: the tiers measured first (chapter 1); the predictions use them.
        stages: every stage record, in the order they ran.
        variants: one summary per type, in the order asked.
        staged_budget_bytes: the RAM budget of the staged runs (given).
        missing: chapters whose stages could not run here, with why.
        elapsed_s: wall time of the whole journey (measured).
    """

    model: str
    source_bytes: int
    n_params: int
    machine: Machine
    probe: ProbeReport
    stages: tuple[StageRecord, ...]
    variants: tuple[VariantSummary, ...]
    staged_budget_bytes: int | None
    missing: dict[str, str]
    elapsed_s: float

    def stage(self, stage: str, qtype: str = "") -> StageRecord:
        """The record of one stage for one type; ``KeyError`` names what exists."""
        for record in self.stages:
            if record.stage == stage and record.qtype == qtype:
                return record
        have = sorted({(r.stage, r.qtype) for r in self.stages})
        raise KeyError(f"no record for stage {stage!r}, type {qtype!r}; the report has {have}")

    def variant(self, qtype: str) -> VariantSummary:
        """The summary of one type; ``KeyError`` names the types there are."""
        for summary in self.variants:
            if summary.qtype == qtype:
                return summary
        raise KeyError(f"no type {qtype!r} in this journey; it ran {[v.qtype for v in self.variants]}")

    @property
    def qtypes(self) -> list[str]:
        return [v.qtype for v in self.variants]

    def table(self) -> list[dict[str, Any]]:
        """The measured table: one plain row per type (see ``VariantSummary.as_row``)."""
        return [v.as_row() for v in self.variants]

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ``json.dumps``-ready, every stage with its numbers' kinds."""
        out = asdict(self)
        out["probe"] = self.probe.to_dict()
        out["stages"] = [{**asdict(r), "kinds": r.kinds} for r in self.stages]
        for row, summary in zip(out["variants"], self.variants, strict=True):
            row["kinds"] = dict(summary.KINDS)
        return out
