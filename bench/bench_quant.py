"""Benchmark labkit.quant against gguf-py (numpy) and llama.cpp's C reference.

On one 4096 x 4096 float32 tensor (64 MiB), for every type: quantize and
dequantize throughput in MB/s of float32, measured in one run, as ratios to

* gguf-py's ``gguf.quants.quantize`` / ``dequantize`` (the types it has), and
* ggml's reference quantizer ``ggml_quantize_chunk`` (one call over all rows,
  one thread) and its ``to_float`` dequantizer, through ctypes (needs
  llama-cpp-python).

labkit gets the same search as a peer would: its quantize and dequantize are timed with every
torch thread count from 1 to the machine's cores, and the best is kept (the table says which won;
K-quant scale searches run many small ops and are sometimes faster on 1 thread). The C reference is
single-threaded and does not use OpenMP, so it has no thread or wait-policy setting to search.
Each number is the best of a few repeats, and each
row also records how busy the *other* processes kept the CPUs while it ran
(psutil), because a shared machine slows everything down.

On a machine shared with other busy processes, run it with
``OMP_WAIT_POLICY=PASSIVE``: torch's two OpenMP threads otherwise spin-wait for
each other while the OS runs someone else, and every number collapses. On a
quiet machine leave it unset (waking sleeping threads costs the K-quants,
which run many small ops, up to a third of their speed).

    python bench/bench_quant.py [--rows 4096] [--quick] [--out bench/results/quant.md]

``--quick``: 1024 x 1024, one repeat, a few types (a smoke run in well under a minute).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import gguf
import numpy as np
import torch
from _common import machine, other_cpu_share

import labkit.quant as lq
from labkit.quant import reference

GGUF_PY_QUANTIZES = {"F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}
K_QUANTS = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}
THREADS = 2


@dataclass(frozen=True)
class Timing:
    elapsed_s: float
    other_cpu_share: float  # of all CPUs, busy with other processes while timing
    threads: int | None = None  # labkit's rows: the torch thread count that won


@dataclass(frozen=True)
class Row:
    qtype: str
    ours_q: Timing
    ours_dq: Timing
    gguf_q: Timing | None
    gguf_dq: Timing
    c_q: Timing | None
    c_dq: Timing | None
    bytes_identical: bool | None


def _elapsed_s(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(fn: Callable[[], object], repeats: int) -> Timing:
    """Best wall time of ``repeats`` calls, with the other processes' CPU share during the best one."""
    elapsed_s, other = min(other_cpu_share(lambda: _elapsed_s(fn)) for _ in range(repeats))
    return Timing(elapsed_s, other)


def measure_threads(fn: Callable[[], object], repeats: int) -> Timing:
    """``measure`` at every torch thread count from 1 to the cores; the best, with its count."""
    best: Timing | None = None
    for threads in range(1, (os.cpu_count() or 1) + 1):
        torch.set_num_threads(threads)
        t = measure(fn, repeats)
        if best is None or t.elapsed_s < best.elapsed_s:
            best = Timing(t.elapsed_s, t.other_cpu_share, threads)
    torch.set_num_threads(THREADS)
    assert best is not None
    return best


def bench_type(qtype: str, x: torch.Tensor, repeats: int) -> Row:
    x_np = x.numpy()
    ggml_type = gguf.GGMLQuantizationType[qtype]
    ours_bytes = lq.quantize(x, qtype)
    ours_q = measure_threads(lambda: lq.quantize(x, qtype), repeats)
    ours_dq = measure_threads(lambda: lq.dequantize(ours_bytes, qtype, x.shape), repeats)
    gguf_q = (
        measure(lambda: gguf.quants.quantize(x_np, ggml_type), repeats)
        if qtype in GGUF_PY_QUANTIZES
        else None
    )
    blob = ours_bytes.numpy()
    gguf_dq = measure(lambda: gguf.quants.dequantize(blob, ggml_type), repeats)
    c_q = c_dq = identical = None
    if reference.available():
        c_q = measure(lambda: reference.ggml_quantize(x_np, qtype), repeats)
        c_dq = measure(lambda: reference.ggml_dequantize(blob, qtype, x.numel()), repeats)
        identical = torch.equal(reference.ggml_quantize(x_np, qtype), ours_bytes)
    return Row(qtype, ours_q, ours_dq, gguf_q, gguf_dq, c_q, c_dq, identical)


def _mb_s(size_bytes: int, t: Timing | None) -> str:
    return "–" if t is None else f"{size_bytes / t.elapsed_s / 1e6:,.0f}"


def _ratio(ours: Timing, peer: Timing | None) -> str:
    return "–" if peer is None else f"{peer.elapsed_s / ours.elapsed_s:.2f}×"


def _targets(row: Row) -> list[str]:
    """Which of the issue's targets this row misses."""
    missed = []
    if row.gguf_q and row.gguf_q.elapsed_s / row.ours_q.elapsed_s < 1.5:
        missed.append("quantize ≥1.5× gguf-py")
    if row.qtype != "F32" and row.gguf_dq.elapsed_s / row.ours_dq.elapsed_s < 1.5:
        missed.append("dequantize ≥1.5× gguf-py")
    if row.qtype in K_QUANTS and row.c_q and row.c_q.elapsed_s / row.ours_q.elapsed_s < 0.5:
        missed.append("quantize ≥0.5× C")
    return missed


def table(rows: list[Row], size_bytes: int) -> str:
    head = (
        "| type | labkit quantize MB/s | vs gguf-py | vs C ref | labkit dequantize MB/s | vs gguf-py | vs C | "
        "gguf-py q / dq MB/s | C q / dq MB/s | bytes = C | other CPU % | targets |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        others = [t.other_cpu_share for t in (r.ours_q, r.ours_dq, r.gguf_q, r.gguf_dq, r.c_q, r.c_dq) if t]
        missed = _targets(r)
        lines.append(
            f"| {r.qtype} | {_mb_s(size_bytes, r.ours_q)} | {_ratio(r.ours_q, r.gguf_q)} | {_ratio(r.ours_q, r.c_q)} "
            f"| {_mb_s(size_bytes, r.ours_dq)} | {_ratio(r.ours_dq, r.gguf_dq)} | {_ratio(r.ours_dq, r.c_dq)} "
            f"| {_mb_s(size_bytes, r.gguf_q)} / {_mb_s(size_bytes, r.gguf_dq)} "
            f"| {_mb_s(size_bytes, r.c_q)} / {_mb_s(size_bytes, r.c_dq)} "
            f"| {'–' if r.bytes_identical is None else 'yes' if r.bytes_identical else 'NO'} "
            f"| {100 * max(others):.0f} | {'met' if not missed else 'missed: ' + ', '.join(missed)} |"
        )
    return "\n".join(lines)


def versions() -> str:
    """The versions of the libraries compared, for the results file."""
    found = {}
    for name in ("torch", "numpy", "gguf", "llama_cpp_python"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = (
                "unknown" if name != "llama_cpp_python" or reference.available() else "not installed"
            )
    return ", ".join(f"{k} {v}" for k, v in found.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--types", default=",".join(lq.QUANT_TYPES))
    parser.add_argument(
        "--out", type=Path, default=None, help="default bench/results/quant.md (--quick: none)"
    )
    parser.add_argument("--quick", action="store_true", help="1024 x 1024, 1 repeat, Q8_0/Q4_1/Q4_K/Q6_K")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.cols, args.repeats, args.types = 1024, 1024, 1, "Q8_0,Q4_1,Q4_K,Q6_K"

    torch.set_num_threads(THREADS)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((args.rows, args.cols), dtype=np.float32))
    size_bytes = x.numel() * 4
    rows = []
    for qtype in args.types.split(","):
        rows.append(bench_type(qtype, x, args.repeats))
        print(f"{qtype} done", flush=True)
    text = (
        f"## labkit.quant benchmark\n\n"
        f"*Measured* on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {machine()}; {versions()}.\n\n"
        f"Input: {args.rows} x {args.cols} float32 gaussian ({size_bytes / 2**20:.0f} MiB). MB/s = "
        f"MB of float32 weights per second (quantize reads them, dequantize writes them). labkit runs "
        f"eager torch with its best thread count of 1..{os.cpu_count()} "
        f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}); "
        f"gguf-py is numpy (one thread); the C reference is "
        f"`ggml_quantize_chunk` (imatrix NULL), one call, one thread, and ggml's `to_float`. Ratios > 1× mean "
        f'labkit is faster. Best of {args.repeats} runs. "other CPU %" is the '
        f"largest share of all CPUs used by other processes during any timing of the row.\n\n"
        f"Targets (issue 3): quantize ≥ 1.5× gguf-py where gguf-py quantizes, dequantize ≥ 1.5× gguf-py, "
        f'K-quant quantize ≥ 0.5× the C reference. (gguf-py\'s F32 "dequantize" returns a view of the '
        f"bytes, so that ratio is not a target.)\n\n"
        + table(rows, size_bytes)
        + "\n\n"
        + "labkit's winning torch thread count per type (quantize / dequantize): "
        + ", ".join(f"{r.qtype} {r.ours_q.threads}/{r.ours_dq.threads}" for r in rows)
        + ".\n"
    )
    print(text)
    out = args.out or (None if args.quick else Path(__file__).parent / "results" / "quant.md")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
