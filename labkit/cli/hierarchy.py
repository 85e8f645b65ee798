"""``labkit probe``: measure this machine's I/O tiers (chapter 1)."""

from __future__ import annotations

import argparse
import json
import sys

from labkit.cli.common import parse_size


def _probe_table(report: object) -> str:
    header = ("kind", "tier", "operation", "GB/s", "first run", "method / source")
    rows = [header]
    for record in report.records:  # type: ignore[attr-defined]
        rate = f"{record.gb_per_s:,.2f}"
        if record.gb_per_s_max is not None:
            rate += f"–{record.gb_per_s_max:,.0f}"
        first = "" if record.first_run_gb_per_s is None else f"{record.first_run_gb_per_s:,.2f}"
        how = {
            "measured": record.method,
            "quoted": f"{record.note}; source: {record.source}",
            "modelled": record.method,
        }[record.kind]
        rows.append((record.kind, record.tier, record.operation, rate, first, how))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(
            [
                *(
                    cell.rjust(w) if i in (3, 4) else cell.ljust(w)
                    for i, (cell, w) in enumerate(zip(row[:-1], widths, strict=True))
                ),
                row[-1],
            ]
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    device = report.cuda_device or "none (PCIe/VRAM rows are quoted or modelled)"  # type: ignore[attr-defined]
    return "\n".join([*lines, "", f"CUDA device: {device}", *report.notes])  # type: ignore[attr-defined]


def _run_probe(args: argparse.Namespace) -> int:
    from labkit.hierarchy import probe

    progress = not (args.quiet or args.json) and sys.stderr.isatty()
    report = probe.run(
        size_bytes=args.size,
        block_bytes=args.block,
        tmp_dir=args.tmp_dir,
        progress=progress,
        repeats=args.repeats,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else _probe_table(report))
    return 0


def add_probe(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="measure this machine's disk, page cache, RAM (and GPU) speeds",
        description="Measure disk -> page cache -> RAM (-> VRAM) speeds, beside the article's "
        "quoted figures. Every row says whether it was measured here or quoted.",
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default="256M",
        help="test file and buffer size, e.g. 64M, 1G (default 256M)",
    )
    parser.add_argument(
        "--block", type=parse_size, default="1M", help="read size, a multiple of 4K (default 1M)"
    )
    parser.add_argument("--tmp-dir", default=None, help="folder for the temporary file")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per median")
    parser.add_argument("--json", action="store_true", help="print the records as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_probe)
