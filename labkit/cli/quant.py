"""``labkit quantize``: requantize a GGUF file with llama.cpp's per-tensor rules (chapters 2 and 3)."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from labkit.cli.common import MEASURED
from labkit.errors import LabkitError


def _quantize_text(plans: list, report: object | None) -> str:
    if report is None:  # --dry-run: one line per tensor
        width = max(len(p.name) for p in plans)
        lines = [f"{p.name:<{width}}  {p.src_qtype:>5} -> {p.dst_qtype:<5}  {p.reason}" for p in plans]
    else:
        counts = Counter(p.dst_qtype for p in plans)
        lines = [
            f"{report.src_path.name} ({report.src_size_bytes:,} bytes) -> {report.dst_path} "  # type: ignore[attr-defined]
            f"({report.dst_size_bytes:,} bytes) as {report.file_type}, "  # type: ignore[attr-defined]
            f"{report.elapsed_s:.1f} s (measured)",  # type: ignore[attr-defined]
            "tensors by type: " + ", ".join(f"{t} {n}" for t, n in counts.most_common()),
            f"copied unchanged: {sum(p.copied for p in plans)}, requantized: {sum(not p.copied for p in plans)}",
        ]
        if report.requantized_from:  # type: ignore[attr-defined]
            lines.append(
                f"note: the input was already quantized ({', '.join(report.requantized_from)}); "  # type: ignore[attr-defined]
                "requantizing adds error on top. Quantize from the F16/F32 original when you can."
            )
    return "\n".join(lines)


def _run_quantize(args: argparse.Namespace) -> int:
    from labkit import gguf
    from labkit.quant import mixtures, requant

    report = None
    if args.output is None and not args.dry_run:
        raise LabkitError("give an OUTPUT file (or --dry-run to only see the plan)")
    if args.dry_run:
        with gguf.open(args.input) as f:
            plans = mixtures.plan_types(f.tensors, f.metadata, args.type, pure=args.pure)
    else:
        progress = not (args.quiet or args.json) and sys.stderr.isatty()
        report = requant.requantize(args.input, args.output, args.type, pure=args.pure, progress=progress)
        plans = list(report.plans)
    if args.json:
        rows = [
            {
                "name": p.name,
                "shape": list(p.shape),
                "from": p.src_qtype,
                "to": p.dst_qtype,
                "reason": p.reason,
            }
            for p in plans
        ]
        extra = (
            {}
            if report is None
            else {
                "output": str(report.dst_path),
                "size_bytes": report.dst_size_bytes,
                "elapsed_s": report.elapsed_s,
                "timing": MEASURED,
                "file_type": report.file_type,
            }
        )
        print(json.dumps({**extra, "tensors": rows}, indent=2))
    else:
        print(_quantize_text(plans, report))
    return 0


def add_quantize(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize",
        help="requantize a GGUF with llama.cpp's per-tensor rules",
        description="Requantize a llama-architecture GGUF (dequantize -> quantize per tensor) to a llama.cpp "
        "file type such as Q4_K_M, Q5_K_M, Q6_K or Q8_0, choosing each tensor's type as "
        "llama.cpp's llama-quantize does.",
    )
    parser.add_argument("input", help="the GGUF file to read")
    parser.add_argument(
        "output", nargs="?", default=None, help="the GGUF file to write (not needed with --dry-run)"
    )
    parser.add_argument(
        "--type",
        required=True,
        metavar="T",
        help="Q4_K_M, Q5_K_M, Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S/M/L, Q4_K_S, "
        "Q5_K_S, F16, BF16, F32; or Q3_K/Q4_K/Q5_K for one type everywhere",
    )
    parser.add_argument(
        "--pure", action="store_true", help="one type for every weight matrix (llama.cpp --pure)"
    )
    parser.add_argument("--dry-run", action="store_true", help="only print each tensor's type and why")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_quantize)
