"""The labkit command line: each subcommand is a thin shell over the public API.

Usage: ``labkit probe``, ``labkit inspect FILE``, ``labkit quantize IN OUT --type T``,
``labkit generate FILE "prompt" -n 32``, ``labkit perplexity FILE [TEXT | --file PATH]``.
Add ``--json`` for machine-readable output and ``--quiet`` to silence progress bars.

One module per chapter adds its subcommands; this one assembles them and turns labkit's
errors into one-line messages.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from labkit.cli import classroom, common, gguf, hierarchy, loading, quant, runtime, staging, tour
from labkit.errors import LabkitError

# Each entry: name -> function(subparsers) that adds the subcommand and sets ``func``.
SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    # In the order of the lab's chapters.
    "probe": hierarchy.add_probe,
    "inspect": gguf.add_inspect,
    "quantize": quant.add_quantize,
    "load": loading.add_load,
    "generate": runtime.add_generate,
    "perplexity": runtime.add_perplexity,
    "stage": staging.add_stage,
    "tour": tour.add_tour,
    "student-copies": classroom.add_student_copies,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labkit", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_subcommand in SUBCOMMANDS.values():
        add_subcommand(subparsers)
    for subparser in subparsers.choices.values():  # every subcommand takes --threads
        if "--threads" not in subparser._option_string_actions:
            common.add_threads_option(subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        common.apply_threads(args)  # before torch is imported: its OpenMP reads the wait policy once
        return int(args.func(args) or 0)
    except LabkitError as error:
        print(f"labkit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"labkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # before OSError, its base class
        # The reader went away (``labkit inspect FILE | head``): stop quietly, like Unix tools do.
        sys.stderr.close()
        return 0
    except OSError as error:  # disk full, permission denied, ...: a message, not a traceback
        print(f"labkit {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
