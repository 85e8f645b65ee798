"""``labkit load FILE``: one measured load, in a fresh process (chapter 4)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from labkit.cli.common import MEASURED
from labkit.errors import LoadError

if TYPE_CHECKING:
    from labkit.loading import LoadRecord

_PROGRESS_AFTER_S = 0.5  # a bar appears only for loads that take longer than this


def _mib(n_bytes: int | None) -> str:
    return "n/a here" if n_bytes is None else f"{n_bytes / 2**20:,.1f} MiB"


def _share(fraction: float | None) -> str:
    return "n/a here" if fraction is None else f"{fraction:.0%}"


def _text(r: LoadRecord) -> str:
    layers = "all" if r.layers is None else ",".join(map(str, r.layers))
    rows = [
        ("file", f"{r.path} ({r.format}, {_mib(r.file_size_bytes)})", "given"),
        ("mode / layers", f"{r.mode} / {layers}", "given"),
        ("tensors loaded", f"{r.n_tensors} tensors, {_mib(r.tensor_bytes)}", "counted"),
        ("cache before", f"{r.cache_state}: {r.cache_evidence}", "measured"),
        ("open", f"{r.open_s * 1e3:,.2f} ms", "measured"),
        ("first tensor", f"{r.first_tensor_s * 1e3:,.2f} ms", "measured"),
        ("all touched", f"{r.all_touched_s * 1e3:,.1f} ms ({r.gb_per_s:,.2f} GB/s)", "measured"),
        (
            "RSS before / peak",
            f"{_mib(r.rss_before_bytes)} / {_mib(r.peak_rss_bytes)} (+{_mib(r.added_peak_rss_bytes)})",
            "measured",
        ),
        ("page faults", f"{r.major_faults} major, {r.minor_faults} minor", "counted"),
        ("read from device", _mib(r.device_read_bytes), "counted"),
        ("file cached", f"{_share(r.resident_before)} before, {_share(r.resident_after)} after", "measured"),
    ]
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}  [{kind}]" for name, value, kind in rows)


def _progress_bar(enabled: bool, total_bytes: int) -> tuple[Any, Callable[[float, int], None] | None]:
    """A bar of the child's resident memory against the file's size; only for long loads."""
    if not enabled:
        return None, None
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_bytes,
        unit="B",
        unit_scale=True,
        desc="resident memory of the load",
        delay=_PROGRESS_AFTER_S,
    )

    def on_sample(_: float, rss_bytes: int) -> None:
        bar.n = min(rss_bytes, total_bytes)
        bar.refresh()

    return bar, on_sample


def _run_load(args: argparse.Namespace) -> int:
    from pathlib import Path

    from labkit import loading

    layers = None if args.layers is None else loading.parse_layers(args.layers)
    if layers is not None and args.mode not in (None, "partial"):
        raise LoadError(
            f"--layers {args.layers} needs --mode partial (mode {args.mode!r} loads every tensor)"
        )
    mode = "partial" if args.mode is None and layers is not None else (args.mode or "lazy")
    cache = "cold" if args.cold else "warm" if args.warm else "as-is"
    size = Path(args.file).stat().st_size if Path(args.file).is_file() else 0
    bar, on_sample = _progress_bar(not (args.quiet or args.json) and sys.stderr.isatty(), size)
    try:
        record = loading.measure(args.file, mode=mode, layers=layers, cache=cache, on_sample=on_sample)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps({**record.to_dict(), "timing": MEASURED}, indent=2))
    else:
        print(_text(record))
    if args.cold and record.cache_state != loading.COLD:
        print(
            f"labkit load: note: --cold could not be verified here ({record.cache_evidence}); the numbers are "
            "labelled 'not verifiable here'",
            file=sys.stderr,
        )
    return 0


def add_load(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "load",
        help="load a GGUF, safetensors or PyTorch file and measure it (time, memory, device bytes)",
        description="Load weights in a fresh child process and measure: time to open, to the first tensor and "
        "until every tensor was touched; peak memory; page faults; bytes read from the device; and "
        "whether the page cache was cold (verified with mincore), warm, or not verifiable.",
    )
    parser.add_argument("file", help="a .gguf, .safetensors, or .pt/.bin (torch.save) file")
    parser.add_argument(
        "--mode",
        choices=["eager", "lazy", "partial"],
        default=None,
        help="eager: read all into memory; lazy: map the file, read on touch (default); "
        "partial: only --layers",
    )
    parser.add_argument(
        "--layers", default=None, metavar="L", help="layers for --mode partial, e.g. 0-3 or 0,2,5"
    )
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument(
        "--cold", action="store_true", help="evict the file from the page cache first (verified)"
    )
    cache.add_argument("--warm", action="store_true", help="read the file once first, so it is cached")
    parser.add_argument(
        "--json", action="store_true", help="the whole record as JSON (with each field's kind)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_load)
