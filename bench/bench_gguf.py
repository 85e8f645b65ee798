"""Benchmark: labkit.gguf against gguf-py (opening) and against a plain read (tensor bytes).

1. Open the default model (SmolLM2-135M Q4_1, 49k tokens + 49k merges) and a 256k-token
   GGUF that labkit writes into a temp folder (``synthetic_llama(vocab_size=256_000)``:
   256k tokens + 256k merges) with ``labkit.gguf.open`` and with ``gguf.GGUFReader``. Each
   open runs in a fresh Python process (imports done before the clock starts); we record
   the open time and the RSS growth it caused. Target: labkit >= 100x faster.
2. Read every tensor's bytes of a ~1 GiB GGUF from the page cache: ``labkit.gguf.open`` +
   ``raw(name)`` (the mapped file, zero-copy) copied in 16 MiB slices into one buffer, against
   a plain sequential ``readinto`` of the same file with a 16 MiB buffer, alternating rounds
   in the same run (both end with every byte copied once into a 16 MiB buffer).
   Target: labkit >= 80% of the plain read.

    .venv/bin/python bench/bench_gguf.py [--runs 5] [--big-mib 1024] [--read-rounds 9]

Prints a markdown table and writes bench/results/gguf.md. Each number carries the share of
CPU that *other* processes used while it was measured (psutil).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from _common import machine, other_cpu_share

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MiB = 1 << 20
CHUNK_BYTES = 16 * MiB
RESULTS = Path(__file__).resolve().parent / "results" / "gguf.md"
NOTES = """Notes:
- Open times are wall-clock in a fresh process after `import` (imports not counted); RSS added is
  psutil's RSS after minus before the open. gguf-py builds numpy views for every part of every
  token string; labkit walks the length prefixes once into one int64 array and decodes a string
  when it is read, so its cost is that walk (about 12 ms of CPU time for SmolLM2's 98k strings).
- The 256k-token file is `synthetic_llama(vocab_size=256_000, n_layers=1, qtype="F16")`: 256,000
  tokens and 255,741 merges, i.e. 511,741 strings.
- The read benchmark copies every tensor's bytes once into a 16 MiB buffer on both sides
  (`readinto` vs `np.copyto` from the zero-copy mmap view), so both do the same work; the mmap
  side also pays for opening the file and for its page faults.
- On a busy machine these numbers swing a lot (see the ranges); the ratios come from
  alternating runs in one process and are the numbers to compare."""


# --- 1. opening, one fresh process per measurement ---------------------------------------------------


def child(reader: str, path: str) -> None:
    """In a fresh process: import, then time one open and measure the RSS it added."""
    if reader == "labkit":
        import labkit.gguf

        def do_open() -> object:
            return labkit.gguf.open(path)
    else:
        import gguf

        def do_open() -> object:
            return gguf.GGUFReader(path)

    process = psutil.Process()
    rss_before = process.memory_info().rss
    start = time.perf_counter()
    opened = do_open()
    open_s = time.perf_counter() - start
    rss_after = process.memory_info().rss
    print(json.dumps({"open_s": open_s, "rss_delta_bytes": rss_after - rss_before, "ok": opened is not None}))


def open_in_fresh_process(reader: str, path: Path) -> dict[str, float]:
    def run() -> dict[str, float]:
        done = subprocess.run(
            [sys.executable, __file__, "--child", reader, str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])

    result, other = other_cpu_share(run)
    return {**result, "other_cpu": other}  # type: ignore[dict-item]


def bench_open(label: str, path: Path, runs: int) -> list[dict[str, object]]:
    samples: dict[str, list[dict[str, float]]] = {"labkit.gguf.open": [], "gguf.GGUFReader": []}
    for _ in range(runs):  # alternate, so both see the same background load
        samples["labkit.gguf.open"].append(open_in_fresh_process("labkit", path))
        samples["gguf.GGUFReader"].append(open_in_fresh_process("gguf", path))
    rows = []
    for name, runs_ in samples.items():
        rows.append(
            {
                "file": label,
                "reader": name,
                "open_ms": statistics.median(r["open_s"] for r in runs_) * 1e3,
                "open_ms_range": (
                    min(r["open_s"] for r in runs_) * 1e3,
                    max(r["open_s"] for r in runs_) * 1e3,
                ),
                "rss_mib": statistics.median(r["rss_delta_bytes"] for r in runs_) / MiB,
                "other_cpu": statistics.median(r["other_cpu"] for r in runs_),
            }
        )
    return rows


# --- 2. reading every tensor byte from the page cache --------------------------------------------------


def plain_read_gb_per_s(path: Path, buffer: bytearray) -> float:
    view = memoryview(buffer)
    start = time.perf_counter()
    n_bytes = 0
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(view):
            n_bytes += count
    return n_bytes / (time.perf_counter() - start) / 1e9


def labkit_read_gb_per_s(path: Path, buffer: np.ndarray) -> float:
    import labkit.gguf

    start = time.perf_counter()
    n_bytes = 0
    with labkit.gguf.open(path) as f:
        for name, info in f.tensors.items():
            raw = f.raw(name).numpy()  # zero-copy: the mapped file itself
            for offset in range(0, info.n_bytes, CHUNK_BYTES):
                size = min(CHUNK_BYTES, info.n_bytes - offset)
                np.copyto(buffer[:size], raw[offset : offset + size])
                n_bytes += size
            del raw
    return n_bytes / (time.perf_counter() - start) / 1e9


def bench_read(path: Path, rounds: int) -> list[dict[str, object]]:
    plain_buffer, labkit_buffer = bytearray(CHUNK_BYTES), np.empty(CHUNK_BYTES, dtype=np.uint8)
    plain_read_gb_per_s(path, plain_buffer)  # into the page cache
    samples: dict[str, list[tuple[float, float]]] = {
        "plain readinto(16 MiB)": [],
        "labkit open + raw() copy": [],
    }
    for _ in range(rounds):  # alternate, so both see the same background load
        samples["plain readinto(16 MiB)"].append(
            other_cpu_share(lambda: plain_read_gb_per_s(path, plain_buffer))
        )
        samples["labkit open + raw() copy"].append(
            other_cpu_share(lambda: labkit_read_gb_per_s(path, labkit_buffer))
        )
    ratios = [b[0] / a[0] for a, b in zip(*samples.values(), strict=False)]  # type: ignore[operator]
    rows = [
        {
            "method": name,
            "gb_per_s": statistics.median(v for v, _ in runs),
            "range": (min(v for v, _ in runs), max(v for v, _ in runs)),
            "other_cpu": statistics.median(o for _, o in runs),
        }
        for name, runs in samples.items()
    ]
    rows[1]["ratio"] = statistics.median(ratios)
    return rows


# --- report ------------------------------------------------------------------------------------------


def render(
    open_rows: list[dict[str, object]], read_rows: list[dict[str, object]], big_size: int, runs: int
) -> str:
    lines = [
        "| file | reader | open (ms, median) | range (ms) | RSS added (MiB) | speed-up vs gguf-py | other CPU |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label in dict.fromkeys(r["file"] for r in open_rows):
        rows = [r for r in open_rows if r["file"] == label]
        reference = next(r for r in rows if r["reader"] == "gguf.GGUFReader")["open_ms"]
        for r in rows:
            low, high = r["open_ms_range"]  # type: ignore[misc]
            lines.append(
                f"| {label} | {r['reader']} | {r['open_ms']:.1f} | {low:.1f}–{high:.1f} | "
                f"{r['rss_mib']:.1f} | {reference / r['open_ms']:.0f}x | {r['other_cpu']:.0%} |"
            )
    ratio = read_rows[1]["ratio"]
    lines += [
        "",
        f"Reading all tensor bytes of a {big_size / 1e9:.2f} GB GGUF from the page cache "
        f"({runs} alternating rounds; medians; the ratio is the median of the per-round ratios):",
        "",
        "| method | GB/s | range | ratio to plain read | other CPU |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in read_rows:
        low, high = r["range"]  # type: ignore[misc]
        lines.append(
            f"| {r['method']} | {r['gb_per_s']:.2f} | {low:.2f}–{high:.2f} | "
            f"{r.get('ratio', 1.0):.0%} | {r['other_cpu']:.0%} |"
        )
    speedups = {r["file"]: None for r in open_rows}
    for label in speedups:
        rows = [r for r in open_rows if r["file"] == label]
        speedups[label] = rows[1]["open_ms"] / rows[0]["open_ms"]  # type: ignore[operator]
    verdicts = [
        f"open {label}: {s:.0f}x ({'met' if s >= 100 else 'missed'}, target >= 100x)"
        for label, s in speedups.items()
    ]
    verdicts.append(
        f"tensor bytes: {ratio:.0%} of a plain read ({'met' if ratio >= 0.8 else 'missed'}, target >= 80%)"
    )
    return "\n".join([*lines, "", "Targets: " + "; ".join(verdicts) + "."])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per reader and file (default 5)")
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the read benchmark's file")
    parser.add_argument("--read-rounds", type=int, default=9, help="alternating read rounds (default 9)")
    parser.add_argument("--child", nargs=2, metavar=("READER", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from labkit.modelfiles import default_model_path, synthetic_llama

    with tempfile.TemporaryDirectory(prefix="labkit-bench-gguf-") as folder:
        vocab = synthetic_llama(Path(folder) / "vocab256k.gguf", vocab_size=256_000, n_layers=1, qtype="F16")
        open_rows = bench_open("SmolLM2-135M Q4_1 (default)", default_model_path(), args.runs)
        open_rows += bench_open("256k-token vocab (labkit-written)", vocab, args.runs)
        vocab.unlink()
        big = synthetic_llama(Path(folder) / "big.gguf", target_size_bytes=args.big_mib * MiB)
        read_rows = bench_read(big, args.read_rounds)
        table = render(open_rows, read_rows, big.stat().st_size, args.read_rounds)
    print(table)
    RESULTS.write_text(
        f"# GGUF reader benchmark\n\nRun {datetime.date.today()} on {machine()}; `bench/bench_gguf.py "
        f"--runs {args.runs} --big-mib {args.big_mib} --read-rounds {args.read_rounds}`. "
        'All numbers measured here; "other CPU" is the share of all '
        f"CPUs that other processes used during the measurement (a busy machine makes every number worse).\n\n"
        f"{table}\n\n{NOTES}\n"
    )


if __name__ == "__main__":
    main()
