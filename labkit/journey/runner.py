"""Run the whole journey on one model: probe → quantize → inspect → load → staged run → generate.

``run(...)`` measures this machine's tiers first (chapter 1), then, for each weight type in turn,
writes the default model again in that type (chapters 2–3), inspects it, opens and loads it in a
fresh process, lazily and eagerly, from a cold page cache (chapter 4), runs one forward pass under
a RAM budget through the stager (chapter 6), and decodes and scores text with it (chapter 5).
Each stage becomes a ``StageRecord``: bytes (counted), seconds (measured) and the seconds the
probe's tiers predict (modelled, ``labkit.journey.predict``).

One model is in memory at a time, and each is freed before the next type starts, so the journey
fits a 1.5 GB machine. Files go to a temporary folder, deleted at the end (also on Ctrl-C).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from labkit import gguf, runtime
from labkit.errors import ModelError, OutputPathError, PlanError
from labkit.hierarchy import probe
from labkit.journey import predict
from labkit.journey.records import (
    EAGER,
    GENERATE,
    HOP,
    INSPECT,
    LAZY,
    OPEN,
    PERPLEXITY,
    PROBE,
    QUANTIZE,
    STAGED,
    STAGES,
    JourneyReport,
    StageRecord,
    VariantSummary,
)
from labkit.journey.stages import (
    CONTEXT_TOKENS,
    DEFAULT_BUDGET_BYTES,
    FULL,
    QUICK,
    QUICK_TYPES,
    TYPES,
    Stages,
    describe_machine,
    staging_module,
    timed,
)
from labkit.modelfiles import default_model_path
from labkit.quant.mixtures import resolve_type


def check_request(types: Sequence[str], budget_bytes: int | None) -> list[str]:
    """Check the types (llama.cpp names) and the budget before any work; return the types."""
    if not types:
        raise PlanError(f"types={list(types)!r} is empty; name at least one, e.g. {list(QUICK_TYPES)}")
    for qtype in types:
        resolve_type(qtype)  # QuantizationError naming the known types
    if len(set(types)) != len(types):
        raise PlanError(f"types={list(types)!r} names a type twice; list each once")
    if budget_bytes is not None and budget_bytes <= 0:
        raise PlanError(
            f"budget_bytes={budget_bytes} must be positive, e.g. {DEFAULT_BUDGET_BYTES} (192 MiB)"
        )
    return list(types)


def _plan_inputs(staging: Any, path: str | os.PathLike[str]) -> tuple[list[Any], int]:
    """A file's layers (dense bfloat16 on the CPU) and the activations + KV reserve of a staged run."""
    from labkit.runtime.model import LlamaConfig

    with gguf.open(path) as f:
        shapes = {name: tuple(info.shape) for name, info in f.tensors.items()}
        config = LlamaConfig.from_gguf(f.metadata, shapes)
        layers = staging.layer_specs(f, dtype=torch.bfloat16)
    return layers, staging.reserve_bytes(config, CONTEXT_TOKENS, torch.bfloat16)


def check_budget(source: Path, budget_bytes: int | None) -> None:
    """Plan the staged run on the source before any work: ``PlanError`` gives the smallest budget that works."""
    staging = staging_module()
    if staging is None or budget_bytes is None:
        return
    layers, reserve = _plan_inputs(staging, source)
    staging.plan_layers(layers, device="cpu", ram_bytes=budget_bytes, reserve_bytes=reserve)


def plan_budget(
    path: str | os.PathLike[str], budget_bytes: int, rates: predict.Rates
) -> tuple[Any, float, str]:
    """Plan a typed file's layers under a RAM budget, without running it.

    Returns:
        ``(plan, predicted_s, formula)``: the ``labkit.staging.Plan``, and the I/O of one pass
        predicted from the probed tiers (modelled): streamed file bytes ÷ the page-cache read rate.

    Raises:
        PlanError: the budget is below what streaming needs (the message gives the smallest that works).
        ModelError: chapter 6 (``labkit.staging``) is not installed here.
    """
    staging = staging_module()
    if staging is None:
        raise ModelError("planning a budget needs chapter 6 (labkit.staging), which is not installed here")
    layers, reserve = _plan_inputs(staging, path)
    plan = staging.plan_layers(layers, device="cpu", ram_bytes=budget_bytes, reserve_bytes=reserve)
    streamed = sum(layers[i].file_bytes for i in plan.streamed)
    seconds, formula = predict.read_s(rates, streamed, cold=False)
    return plan, seconds, formula


def _bars(enabled: bool, n_types: int) -> dict[str, Any]:
    """One tqdm bar per stage (on stderr), each counting the types done."""
    if not enabled:
        return {}
    from tqdm.auto import tqdm  # only the progress bars need tqdm

    stages = [s for s in STAGES if s not in (PROBE, HOP, OPEN)]
    return {
        s: tqdm(total=n_types, desc=f"{s:16}", unit="type", position=i, leave=True)
        for i, s in enumerate(stages)
    }


def run(
    types: Sequence[str] = TYPES,
    *,
    budget_bytes: int | None = DEFAULT_BUDGET_BYTES,
    quick: bool = False,
    source: str | os.PathLike[str] | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
    model_hop: bool = True,
    keep_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> JourneyReport:
    """Run the whole journey on one model, type after type, and return every stage's record.

    Args:
        types: llama.cpp file types to write the model in (``"Q8_0"``, ``"Q4_K_M"``, ...).
        budget_bytes: RAM budget of the staged run (``None``: skip it); layers beyond it stream.
        quick: smaller probe, shorter text, fewer tokens (``QUICK`` instead of ``FULL``).
        source: the model to start from (default: the default model).
        tmp_dir: where the typed files are written (a temporary folder inside it, removed at the end).
        model_hop: add the RAM → VRAM hop of each staged pass, modelled from the probe (labelled so).
        keep_dir: an existing folder to keep the typed files in (``VariantSummary.path``); by
            default each is deleted once its type is done.
        progress: one tqdm bar per stage, on stderr.

    Returns:
        A ``JourneyReport``.

    Raises:
        QuantizationError: an unknown type; PlanError: a bad budget (before any work).
        ProbeError: ``tmp_dir`` is not a writable folder or too small for the probe.
    """
    start_s = time.perf_counter()
    wanted = check_request(types, budget_bytes)
    settings = QUICK if quick else FULL
    source_path = Path(source) if source is not None else default_model_path()
    check_budget(source_path, budget_bytes)
    keep = _keep_folder(keep_dir)
    bars = _bars(progress, len(wanted))
    try:
        with tempfile.TemporaryDirectory(prefix="labkit-journey-", dir=tmp_dir) as folder:
            report, probe_s = timed(
                lambda: probe.run(settings.probe_bytes, tmp_dir=folder, repeats=settings.probe_repeats)
            )
            journey = Stages(source_path, Path(folder), predict.Rates.from_probe(report), settings)
            journey.add(
                StageRecord(
                    PROBE,
                    "",
                    settings.probe_bytes,
                    probe_s,
                    None,
                    "",
                    "write, read (cold and warm), copy and sum a test file (chapter 1)",
                    "the rates every prediction divides by",
                )
            )
            text = runtime.lab_text()[: settings.text_chars]
            variants = [
                _one_type(journey, qtype, text, budget_bytes, model_hop, bars, keep) for qtype in wanted
            ]
            machine = describe_machine(Path(folder).parent)
    finally:
        for bar in bars.values():
            bar.close()
    return JourneyReport(
        source_path.name,
        source_path.stat().st_size,
        _n_params(source_path),
        machine,
        report,
        tuple(journey.records),
        tuple(variants),
        budget_bytes,
        journey.missing,
        time.perf_counter() - start_s,
    )


def _n_params(path: Path) -> int:
    """Weights in the file (counted from its tensor table)."""
    with gguf.open(path) as f:
        return sum(math.prod(info.shape) for info in f.tensors.values())


def _keep_folder(keep_dir: str | os.PathLike[str] | None) -> Path | None:
    if keep_dir is None:
        return None
    folder = Path(keep_dir)
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise OutputPathError(f"keep_dir {str(folder)!r} is not a writable folder; create it or pass another")
    return folder


def _one_type(
    journey: Stages,
    qtype: str,
    text: str,
    budget_bytes: int | None,
    model_hop: bool,
    bars: dict[str, Any],
    keep: Path | None,
) -> VariantSummary:
    def tick(*stages: str) -> None:
        for stage in stages:
            if stage in bars:
                bars[stage].update()

    path, weight_types = journey.quantize(qtype)
    tick(QUANTIZE)
    journey.inspect(qtype, path)
    tick(INSPECT)
    peak_rss = journey.load(qtype, path)
    tick(LAZY, EAGER)
    resident = journey.staged(qtype, path, budget_bytes, model_hop)
    tick(STAGED)
    perplexity, n_scored, tokens_per_s, bound, sample = journey.run_model(qtype, path, text)
    tick(GENERATE, PERPLEXITY)
    file_bytes = path.stat().st_size
    kept = None
    if keep is None:
        path.unlink()  # one typed file on disk at a time
    else:
        kept = str(shutil.move(path, keep / path.name))
    return VariantSummary(
        qtype,
        file_bytes,
        weight_types,
        perplexity,
        n_scored,
        tokens_per_s,
        bound,
        peak_rss,
        resident,
        sample,
        kept,
    )
