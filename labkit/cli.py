"""The ``labkit`` command line: each subcommand is a thin shell over the public API.

Usage: ``labkit probe``, ``labkit inspect FILE``, ``labkit quantize IN OUT --type T``,
``labkit generate FILE "prompt" -n 32``, ``labkit perplexity FILE [TEXT]``.
Add ``--json`` for machine-readable output and ``--quiet`` to silence progress bars.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from labkit.errors import LabkitError

# --- probe command (issue 2) ---

# --- inspect / quantize commands (issue 4) ---

# --- generate / perplexity commands (issue 5) ---

# Each entry: name -> function(subparsers) that adds the subcommand and sets ``func``.
SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    # --- subcommand registry ---
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labkit", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_subcommand in SUBCOMMANDS.values():
        add_subcommand(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LabkitError as error:
        print(f"labkit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"labkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
