"""The stages of the journey, one method each: run a stage on one typed file and record it.

``Stages`` holds what every stage needs (the source model, the work folder, the probed rates, the
settings) and appends one ``StageRecord`` per stage it runs. ``labkit.journey.runner.run`` calls
the stages type after type; read it first.
"""

from __future__ import annotations

import gc
import os
import platform
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from labkit import gguf, loading, runtime
from labkit.hierarchy.memory import read_memory
from labkit.journey import predict
from labkit.journey.records import (
    EAGER,
    GENERATE,
    HOP,
    INSPECT,
    LAZY,
    OPEN,
    PERPLEXITY,
    QUANTIZE,
    STAGED,
    Machine,
    StageRecord,
)
from labkit.quant.requant import requantize

TYPES = ("Q8_0", "Q6_K", "Q4_K_M", "Q4_0", "Q2_K")
QUICK_TYPES = ("Q8_0", "Q4_0")
PROMPT = "The weights travel from the disk to"
CONTEXT_TOKENS = 256  # tokens of context the staged run reserves room for (activations + KV cache)
DEFAULT_BUDGET_BYTES = (
    192 << 20
)  # the default model needs ~350 MB to be all resident: about half its layers stream


@dataclass(frozen=True)
class Settings:
    """How much work each stage does (``run(quick=True)`` picks the small column).

    Attributes:
        probe_bytes, probe_repeats: the probe's file size and timed runs.
        text_chars: characters of the lab text scored for perplexity.
        decode_tokens: decode steps timed; ``sample_tokens``: tokens of the printed sample.
    """

    probe_bytes: int
    probe_repeats: int
    text_chars: int
    decode_tokens: int
    sample_tokens: int


FULL = Settings(probe_bytes=64 << 20, probe_repeats=3, text_chars=700, decode_tokens=8, sample_tokens=12)
QUICK = Settings(probe_bytes=16 << 20, probe_repeats=1, text_chars=300, decode_tokens=4, sample_tokens=8)


def describe_machine(folder: Path) -> Machine:
    """The machine, read here: CPU model, cores this process may use, memory, GPU, versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = read_memory()  # the container's limit, not the host's RAM
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return Machine(
        cpu=cpu,
        cores=cores,
        torch_threads=torch.get_num_threads(),
        memory_limit_bytes=memory.cgroup.limit_bytes if memory.cgroup else memory.host_total_bytes,
        memory_available_bytes=memory.available_bytes,
        disk_folder=str(folder),
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        python=platform.python_version(),
        torch=torch.__version__,
        platform=platform.platform(terse=True),
    )


def timed(work: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = work()
    return result, time.perf_counter() - start


def staging_module() -> Any:
    """``labkit.staging`` if chapter 6 is installed (it is being written), else None."""
    try:
        from labkit import staging
    except ImportError:
        return None
    return staging if hasattr(staging, "load") and hasattr(staging, "trace_pass") else None


class Stages:
    """One journey in progress: the rates to predict with, the records so far, the work folder."""

    def __init__(self, source: Path, folder: Path, rates: predict.Rates, settings: Settings) -> None:
        self.source, self.folder, self.rates, self.settings = source, folder, rates, settings
        self.records: list[StageRecord] = []
        self.missing: dict[str, str] = {}

    def add(self, record: StageRecord) -> StageRecord:
        self.records.append(record)
        return record

    def quantize(self, qtype: str) -> tuple[Path, dict[str, int]]:
        report = requantize(self.source, self.folder / f"{self.source.stem}-{qtype}.gguf", qtype)
        seconds, formula = predict.write_s(self.rates, report.src_size_bytes, report.dst_size_bytes)
        types = Counter(p.dst_qtype for p in report.plans if len(p.shape) == 2)
        self.add(
            StageRecord(
                QUANTIZE,
                qtype,
                report.dst_size_bytes,
                report.elapsed_s,
                seconds,
                f"I/O only: {formula}",
                "requantize the source (decode each block, encode it again) and write the file atomically; "
                "bytes: the file written",
                "the prediction leaves out the quantizer's arithmetic: the gap is compute, not I/O",
            )
        )
        return report.dst_path, dict(types.most_common())

    def inspect(self, qtype: str, path: Path) -> None:
        def parse() -> tuple[int, int]:
            with gguf.open(path) as f:
                return f.data_offset, len(f.tensors)

        (header_bytes, n_tensors), elapsed_s = timed(parse)
        seconds, formula = predict.read_s(self.rates, header_bytes, cold=False)
        self.add(
            StageRecord(
                INSPECT,
                qtype,
                header_bytes,
                elapsed_s,
                seconds,
                formula,
                f"open the file and parse header, metadata and {n_tensors} tensor infos; "
                "bytes: everything before the tensor data",
                "the file was just written, so its header is in the page cache",
            )
        )

    def load(self, qtype: str, path: Path) -> int:
        """Lazy, then eager, each in a fresh process from a cold cache; return the eager peak RSS added."""
        from labkit.loading import COLD

        lazy = loading.measure(path, mode="lazy", cache="cold")
        cold = lazy.cache_state == COLD
        state = f"cache before the load: {lazy.cache_state} ({lazy.cache_evidence})"
        seconds, formula = predict.read_s(self.rates, lazy.file_size_bytes - lazy.tensor_bytes, cold=cold)
        self.add(
            StageRecord(
                OPEN,
                qtype,
                lazy.file_size_bytes - lazy.tensor_bytes,
                lazy.open_s,
                seconds,
                formula,
                "map the file and parse its header: no tensor byte read yet; "
                "bytes: the file minus its tensor data",
                state,
            )
        )
        seconds, formula = predict.read_s(self.rates, lazy.tensor_bytes, cold=cold)
        self.add(
            StageRecord(
                LAZY,
                qtype,
                lazy.tensor_bytes,
                lazy.all_touched_s,
                seconds,
                formula,
                "mmap, then touch every page of every tensor (page faults read them); bytes: the tensors",
                state,
            )
        )
        eager = loading.measure(path, mode="eager", cache="cold")
        cold = eager.cache_state == COLD
        seconds, formula = predict.eager_s(self.rates, eager.file_size_bytes, eager.tensor_bytes, cold=cold)
        self.add(
            StageRecord(
                EAGER,
                qtype,
                eager.tensor_bytes,
                eager.all_touched_s,
                seconds,
                formula,
                "pread every tensor into newly allocated memory, then touch it; bytes: the tensors",
                f"cache before the load: {eager.cache_state} ({eager.cache_evidence}); "
                f"peak RSS added: {eager.added_peak_rss_bytes / 1e6:.0f} MB (measured)",
            )
        )
        return eager.added_peak_rss_bytes

    def staged(self, qtype: str, path: Path, budget_bytes: int | None, model_hop: bool) -> int | None:
        """One forward pass with the layers beyond ``budget_bytes`` streamed; return the all-resident bytes."""
        staging = staging_module()
        if staging is None or budget_bytes is None:
            why = (
                "chapter 6 (labkit.staging) is not installed here yet"
                if staging is None
                else "no budget was given"
            )
            self.missing[STAGED] = why
            self.add(
                StageRecord(
                    STAGED,
                    qtype,
                    0,
                    None,
                    None,
                    "",
                    "one forward pass under a RAM budget",
                    f"did not run: {why}",
                )
            )
            if model_hop:
                self.add(
                    StageRecord(
                        HOP,
                        qtype,
                        0,
                        None,
                        None,
                        "",
                        "the streamed layers' bytes, RAM → VRAM",
                        f"did not run: {why}",
                    )
                )
            return None
        model = staging.load(
            path, ram=budget_bytes, dtype=torch.bfloat16, context_tokens=CONTEXT_TOKENS, io="pread"
        )
        try:
            ids = model.prompt_ids(PROMPT)
            _, trace = staging.trace_pass(model, ids)
            moved = model.weights.bytes_per_pass()
            plan = model.weights.plan
        finally:
            model.weights.close()
        summary = trace.summary()
        seconds, formula = predict.total(
            predict.read_s(self.rates, moved["read"], cold=False),
            predict.term(moved["copy"], self.rates.ram_copy),
        )
        self.add(
            StageRecord(
                STAGED,
                qtype,
                moved["read"],
                summary.makespan_s,
                seconds,
                f"I/O only: {formula}",
                f"one forward pass of {len(ids)} tokens (counted), {plan.n_resident} of "
                f"{len(plan.placements)} layers resident (counted from the plan) under a "
                f"{budget_bytes / 1e6:.0f} MB RAM budget (given); bytes: read from the file this pass",
                f"critical lane: {summary.critical_lane}; the file is in the page cache (just loaded); "
                "dequantize and compute lanes are not modelled",
            )
        )
        if model_hop:
            seconds, formula = predict.hop_s(self.rates, moved["copy"])
            self.add(
                StageRecord(
                    HOP,
                    qtype,
                    moved["copy"],
                    None,
                    seconds,
                    formula,
                    "the streamed layers' bytes copied RAM → VRAM once per pass",
                    "modelled only: this run computes on the CPU, so no byte crossed a PCIe link",
                )
            )
        return moved["resident"] + moved["dequantize"]

    def run_model(self, qtype: str, path: Path, text: str) -> tuple[float, int, float, float, str]:
        """Decode and score with dense bfloat16 weights: (perplexity, scored, tok/s, bound tok/s, sample)."""
        model = runtime.load(path, dtype=torch.bfloat16)
        ids = model.prompt_ids(PROMPT)
        timing = runtime.time_decode(model, ids, self.settings.decode_tokens)
        seconds, formula = predict.decode_s(self.rates, timing.weight_bytes_per_token, timing.n_tokens)
        self.add(
            StageRecord(
                GENERATE,
                qtype,
                timing.weight_bytes_per_token * timing.n_tokens,
                timing.elapsed_s,
                seconds,
                formula,
                f"{timing.n_tokens} greedy decode steps at batch 1, weights dense "
                "bfloat16; bytes: weights read",
                "the prediction is the memory-bandwidth bound; labkit's runtime holds every type as dense "
                "bfloat16, so every type reads the same bytes per token here (llama.cpp keeps them packed)",
            )
        )
        sample = model.tokenizer.decode(model.generate(PROMPT, self.settings.sample_tokens))
        start_s = time.perf_counter()
        result = model.perplexity(text)
        elapsed_s = time.perf_counter() - start_s
        seconds, formula = predict.term(timing.weight_bytes_per_token, self.rates.ram_read)
        self.add(
            StageRecord(
                PERPLEXITY,
                qtype,
                timing.weight_bytes_per_token,
                elapsed_s,
                seconds,
                f"a lower bound: {formula}",
                f"score {result.n_scored} tokens of the lab text in one pass; bytes: weights read once "
                "for all the tokens together",
                "a prompt pass is compute-bound (matrix × matrix): reading the weights is the small part",
            )
        )
        bound = timing.bound_tokens_per_s(self.rates.ram_read.gb_per_s)
        del model
        gc.collect()
        return result.perplexity, result.n_scored, timing.tokens_per_s, bound, sample
