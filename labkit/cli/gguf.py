"""``labkit inspect``: a GGUF file's header, metadata and tensor table (chapter 3)."""

from __future__ import annotations

import argparse
import json

from labkit.cli.common import non_negative_int
from labkit.errors import LabkitError


def _run_inspect(args: argparse.Namespace) -> int:
    from labkit import gguf
    from labkit.gguf.summary import render_text, summarize

    try:
        with gguf.open(args.file) as f:
            summary = summarize(f, max_array_items=args.items)
    except LabkitError:
        raise
    except OSError as error:
        raise LabkitError(f"cannot open {args.file}: {error.strerror or error}") from None
    print(json.dumps(summary, indent=2, default=str) if args.json else render_text(summary))
    return 0


def add_inspect(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show a GGUF file's summary, metadata and tensor table",
        description="Open a GGUF file with labkit's hardened reader and show its architecture, sizes, "
        "tensor-type histogram, metadata (long arrays elided) and tensor table.",
    )
    parser.add_argument("file", help="the GGUF file")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--items", type=non_negative_int, default=6, metavar="N", help="array items to show (default 6)"
    )
    parser.set_defaults(func=_run_inspect)
