"""Benchmark: is labkit.hierarchy.probe the bottleneck? Its warm read vs ``dd of=/dev/null bs=16M``.

Writes a test file, caches it, then alternates ``dd if=FILE of=/dev/null bs=16M`` with the
probe's own warm-read measurement (``labkit.hierarchy.probe.measure_warm_read``, the code ``run()``
uses) on the same file, several rounds. Target: probe GB/s >= 90% of dd's, same run.
dd's time is the one dd prints itself (no process start-up counted against it).

    .venv/bin/python bench/bench_probe.py [--size-mib 1024] [--rounds 5]

Prints a markdown table and writes bench/results/probe.md. Each number carries the share
of CPU that *other* processes used while it was measured (psutil).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import machine, other_cpu_share

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from labkit import pagecache, probe  # noqa: E402

MiB = 1 << 20
RESULTS = Path(__file__).resolve().parent / "results" / "probe.md"


def dd_gb_per_s(path: Path) -> float:
    """Run dd on ``path`` and return the GB/s computed from dd's own byte count and time."""
    done = subprocess.run(
        ["dd", f"if={path}", "of=/dev/null", "bs=16M"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    match = re.search(r"^(\d+) bytes .* copied, ([\d.e+-]+) s", done.stderr, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"cannot parse dd's output: {done.stderr!r}")
    return int(match.group(1)) / float(match.group(2)) / 1e9


def probe_gb_per_s(path: Path, block_bytes: int) -> float:
    return probe.measure_warm_read(path, block_bytes, repeats=1).gb_per_s


def bench(size_bytes: int, rounds: int, block_sizes: list[int]) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as folder:
        path = Path(folder) / "probe.bin"
        pagecache.write_test_file(path, size_bytes, MiB)
        pagecache.read_file(path, bytearray(16 * MiB))  # cache it
        samples: dict[str, list[tuple[float, float]]] = {"dd bs=16M": []}
        samples |= {f"probe warm read(), {b // 1024} KiB blocks": [] for b in block_sizes}
        for _ in range(rounds):
            samples["dd bs=16M"].append(other_cpu_share(lambda: dd_gb_per_s(path)))
            for block in block_sizes:
                samples[f"probe warm read(), {block // 1024} KiB blocks"].append(
                    other_cpu_share(lambda block=block: probe_gb_per_s(path, block))
                )
        resident = pagecache.resident_fraction(path)
    dd = statistics.median(gb for gb, _ in samples["dd bs=16M"])
    rows = []
    for name, values in samples.items():
        gb = statistics.median(v for v, _ in values)
        rows.append(
            {
                "path": name,
                "gb_per_s": gb,
                "ratio": gb / dd,
                "others": max(share for _, share in values),
                "spread": (min(v for v, _ in values), max(v for v, _ in values)),
            }
        )
    rows.append({"resident": resident})
    return rows


def markdown(rows: list[dict[str, object]], size_bytes: int, rounds: int) -> str:
    resident = rows.pop()["resident"]
    lines = [
        "| path | median GB/s | [min–max] | ratio to dd | other-process CPU (max) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        low, high = row["spread"]  # type: ignore[misc]
        lines.append(
            f"| {row['path']} | {row['gb_per_s']:.2f} | [{low:.2f}–{high:.2f}] | "
            f"{row['ratio']:.2f} | {row['others']:.0%} |"
        )
    worst = min(float(row["ratio"]) for row in rows if str(row["path"]).startswith("probe"))
    verdict = "met" if worst >= 0.9 else "NOT met"
    head = [
        "# Probe benchmark: warm read vs dd",
        "",
        f"- Date: {datetime.date.today().isoformat()}; machine: {machine()}.",
        f"- File: {size_bytes / MiB:.0f} MiB in the system temp folder, in the page cache "
        f"(mincore: {resident if resident is None else f'{resident:.0%}'} resident at the end).",
        f"- {rounds} alternating rounds; each probe sample is `measure_warm_read(repeats=1)` "
        "(one warm-up read, then one timed read); dd's time is the one dd reports.",
        "- GB/s = 10^9 bytes/s. Other-process CPU = share of all CPUs used by other processes "
        "while the sample ran (psutil); the highest over the rounds is shown.",
        "",
        *lines,
        "",
        f"**Target (probe warm read ≥ 90% of dd bs=16M, same file, same run): {verdict}** "
        f"(lowest ratio {worst:.2f}).",
        "",
    ]
    return "\n".join(head)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    size_bytes = args.size_mib * MiB
    rows = bench(size_bytes, args.rounds, [probe.DEFAULT_BLOCK_BYTES, 16 * MiB])
    text = markdown(rows, size_bytes, args.rounds)
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
