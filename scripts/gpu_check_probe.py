"""GPU check for labkit.hierarchy.probe: run the whole probe with CUDA and print its records as JSON.

Run on a machine with a CUDA device (torch only; no plotly needed):

    python scripts/gpu_check_probe.py [--size-mib 1024] [--repeats 5]

Exits 1 if CUDA is missing or a PCIe/VRAM row was not measured. The JSON goes to stdout, a
short table and the checks to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout
from labkit import probe  # noqa: E402

CUDA_ROWS = {"host→device, pageable", "host→device, pinned", "device→host, pinned", "device→device copy"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("FAIL: torch.cuda.is_available() is False", file=sys.stderr)
        return 1
    report = probe.run(args.size_mib << 20, repeats=args.repeats, cuda=True)
    print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    for record in report:
        first = record.first_run_gb_per_s
        extra = "" if first is None else f" (first run {first:.2f})"
        print(
            f"{record.kind:9} {record.tier:11} {record.operation:34} {record.gb_per_s:10.2f} GB/s{extra}",
            file=sys.stderr,
        )
    measured = {record.operation for record in report.of_kind("measured")}
    missing = CUDA_ROWS - measured
    problems = [f"missing measured rows: {sorted(missing)}"] if missing else []
    if report.of_kind("modelled"):
        problems.append("a modelled RAM→VRAM row appeared although CUDA was measured")
    print(f"device: {report.cuda_device}; torch {torch.__version__}", file=sys.stderr)
    verdict = "FAIL: " + "; ".join(problems) if problems else "OK: all CUDA rows measured"
    print(verdict, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
