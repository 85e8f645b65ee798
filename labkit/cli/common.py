"""What every ``labkit`` subcommand shares: size and count parsing, ``--threads``, and the "measured" label."""

from __future__ import annotations

import argparse
import math
import re

MEASURED = "measured on this machine"  # the "timing" field beside every elapsed_s in --json output

_SIZE_UNITS = {
    "": 1,
    "K": 1 << 10,
    "KIB": 1 << 10,
    "M": 1 << 20,
    "MIB": 1 << 20,
    "G": 1 << 30,
    "GIB": 1 << 30,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
}


def parse_size(text: str) -> int:
    """Parse a size like ``256M``, ``1GiB``, ``500MB`` or ``4096`` into bytes.

    K/M/G and KiB/MiB/GiB are powers of 2 (as in ``dd``); KB/MB/GB are powers of 10.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else "?"
    if match is None or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 256M, 1G, 64MiB, 500MB or 4096")
    size_bytes = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size_bytes <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be positive")
    return size_bytes


def positive_int(text: str) -> int:
    """Parse a count such as ``--threads 4`` or ``-n 32``: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number; write e.g. 1, 4 or 32")
    return value


def non_negative_int(text: str) -> int:
    """Parse a count that may be 0, such as ``--items 0`` (show no array items)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0; write e.g. 0, 6 or 100")
    return value


def temperature(text: str) -> float:
    """Parse ``--temperature``: 0 (greedy) or a positive finite number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a temperature; write 0 for greedy decoding or a positive number such as 0.8"
        )
    return value


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` (every subcommand has it; the default comes from ``labkit.hierarchy.threads``)."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads, at least 1 (default: the usable CPUs other work leaves free; "
        "see labkit.hierarchy.threads)",
    )


def apply_threads(args: argparse.Namespace) -> None:
    """Set the thread count and OpenMP wait policy before the command imports torch."""
    from labkit.hierarchy import threads

    threads.apply(getattr(args, "threads", None))
