"""``labkit student-copies OUTDIR``: the notebooks with every exercise's solution replaced by a stub."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_SOURCE = Path("notebooks")


def _run_student_copies(args: argparse.Namespace) -> int:
    from labkit.classroom import write_student_copies

    copies = write_student_copies(args.source, args.outdir, overwrite=args.overwrite)
    if args.json:
        records = [
            {"source": str(c.source), "path": str(c.path), "solutions_removed": len(c.solutions)}
            for c in copies
        ]
        print(json.dumps(records, indent=2))
        return 0
    for copy in copies:
        print(f"{copy.path}  ({len(copy.solutions)} solution(s) replaced by a stub)")
    print(f"{len(copies)} student notebook(s) written to {Path(args.outdir).resolve()}, without outputs")
    return 0


def add_student_copies(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "student-copies",
        help="write the notebooks with each exercise's solution replaced by a stub",
        description="Copy every notebook of SOURCE into OUTDIR without outputs, replacing each block between "
        "'### BEGIN SOLUTION' and '### END SOLUTION' (nbgrader's markers) with '# YOUR CODE HERE' / "
        "'raise NotImplementedError()'. The checks stay: on a stub they answer 'not answered' with a hint.",
    )
    parser.add_argument("outdir", type=Path, help="folder for the student copies (outside SOURCE)")
    parser.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help="the instructor's notebooks (default: notebooks/ in the current folder)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace copies in OUTDIR that differ")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_run_student_copies)
