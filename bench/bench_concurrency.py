"""N labkit runs at once vs the same N one after another: does labkit degrade gracefully when shared?

    flock /tmp/labkit-bench.lock .venv/bin/python bench/bench_concurrency.py [--quick] [--no-write]

For each workload (``labkit generate`` on the default model; ``labkit quantize`` of the default model
to Q4_K_M) and each thread policy, it measures (all wall times, measured in this run):

- ``alone``: one run by itself, best of ``--repeats`` rounds in which the policies alternate (so a
  slow minute of the shared host hurts both alike);
- for N = 2 and 4: ``sequential``, N runs one after another (sum of their walls), and ``concurrent``,
  N runs started together (wall until the last one ends). Target: concurrent <= 1.2 x sequential.

Policies:

- ``labkit`` : what the command does by default now (``labkit.hierarchy.threads``): threads = the
  usable CPUs that other work leaves free, a short OpenMP spin (``GOMP_SPINCOUNT=3000``);
- ``torch``  : the old behaviour, torch's own thread count with OpenMP's default (spinning) wait.

Target for single runs: ``labkit``'s ``alone`` within +-10% of ``torch``'s (on a quiet machine).
Writes a section into ``bench/results/concurrency.md``; ``--quick`` runs generate only, N = 2 and 4;
``--single-only`` measures only the single-run comparison and appends it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, other_cpu_share

from labkit.modelfiles import default_model_path

RESULTS = Path(__file__).parent / "results" / "concurrency.md"
LABKIT = str(Path(sys.executable).with_name("labkit"))
TARGET_RATIO = 1.2
SINGLE_TOLERANCE = 0.10


def policy_env(policy: str) -> tuple[list[str], dict[str, str]]:
    """Extra command-line arguments and environment for a thread policy."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
    }
    if policy == "labkit":
        return [], env
    env["OMP_WAIT_POLICY"] = ""  # set but empty: labkit keeps it, OpenMP uses its default (spin, then sleep)
    return ["--threads", str(torch_default_threads())], env


def torch_default_threads() -> int:
    """The thread count torch picks by itself in a fresh process (what labkit used before)."""
    code = "import torch; print(torch.get_num_threads())"
    return int(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )


def workload(name: str, folder: Path, index: int, tokens: int) -> list[str]:
    model = str(default_model_path())
    if name == "generate":
        return [LABKIT, "generate", model, "The weights travel from the disk", "-n", str(tokens), "--quiet"]
    return [LABKIT, "quantize", model, str(folder / f"out{index}.gguf"), "--type", "Q4_K_M", "--quiet"]


def run_together(commands: list[list[str]], env: dict[str, str]) -> float:
    """Start every command at once; return the wall time until the last one ends."""
    start = time.perf_counter()
    children = [
        subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands
    ]
    for child, command in zip(children, commands, strict=True):
        _, err = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {err.decode()[-500:]}")
    return time.perf_counter() - start


def measure(name: str, policy: str, counts: list[int], tokens: int) -> dict[str, float]:
    """N = each of ``counts``: the N runs one after another, then all N started together."""
    extra, env = policy_env(policy)
    folder = Path(tempfile.mkdtemp(prefix="labkit-conc-"))
    try:
        commands = [workload(name, folder, i, tokens) + extra for i in range(max(counts))]
        row = {}
        for n in counts:
            row[f"seq{n}"] = sum(run_together([c], env) for c in commands[:n])
            row[f"conc{n}"] = run_together(commands[:n], env)
        return row
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def alone(name: str, policies: list[str], rounds: int, tokens: int) -> dict[str, float]:
    """Each policy's best single run over ``rounds`` rounds, the policies alternating within a round."""
    folder = Path(tempfile.mkdtemp(prefix="labkit-alone-"))
    try:
        walls: dict[str, list[float]] = {p: [] for p in policies}
        for _ in range(rounds):
            for policy in policies:
                extra, env = policy_env(policy)
                walls[policy].append(run_together([workload(name, folder, 0, tokens) + extra], env))
        return {p: min(w) for p, w in walls.items()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def table(rows: dict[tuple[str, str], dict[str, float]], counts: list[int]) -> list[str]:
    head = "| workload | policy | alone (s) | " + " | ".join(
        f"N={n}: sequential (s) | N={n}: concurrent (s) | N={n}: ratio" for n in counts
    )
    lines = [head + " |", "|" + "---|" * (3 + 3 * len(counts))]
    for (name, policy), row in rows.items():
        cells = [name, policy, f"{row['alone']:.2f}"]
        for n in counts:
            ratio = row[f"conc{n}"] / row[f"seq{n}"]
            mark = "" if policy != "labkit" else (" ✓" if ratio <= TARGET_RATIO else " ✗")
            cells += [f"{row[f'seq{n}']:.1f}", f"{row[f'conc{n}']:.1f}", f"{ratio:.2f}{mark}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def single_only(rounds: int, no_write: bool) -> None:
    """Only the single-run target: labkit's policy against torch's default, alternating rounds."""
    lines = []

    def work() -> None:
        for name in ("generate", "quantize"):
            best = alone(name, ["labkit", "torch"], rounds, 32)
            lines.append(
                f"- {name}: labkit alone {best['labkit']:.2f} s vs torch's default {best['torch']:.2f} s: "
                f"{best['labkit'] / best['torch']:.2f}x (target within {SINGLE_TOLERANCE:.0%})"
            )
            print(lines[-1], flush=True)

    _, others = other_cpu_share(work)
    text = "\n".join(
        [
            "",
            f"## Single runs only ({datetime.date.today()}, best of {rounds} alternating rounds, measured)",
            "",
            f"Machine: {machine()}; other processes used {others:.0%} of the CPUs meanwhile.",
            "",
            *lines,
            "",
        ]
    )
    print(text)
    if not no_write:
        with RESULTS.open("a") as out:
            out.write(text)
        print(f"appended to {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="generate only, fewer tokens")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--repeats", type=int, default=5, help="alternating rounds of single runs (best is kept)"
    )
    parser.add_argument(
        "--single-only", action="store_true", help="only the single-run comparison, appended to the results"
    )
    args = parser.parse_args()
    if args.single_only:
        single_only(args.repeats, args.no_write)
        return
    counts = [2, 4]
    workloads = ["generate"] if args.quick else ["generate", "quantize"]
    tokens = 16 if args.quick else 32
    rows: dict[tuple[str, str], dict[str, float]] = {}

    def work() -> None:
        for name in workloads:
            best_alone = alone(name, ["labkit", "torch"], args.repeats, tokens)
            for policy in ("labkit", "torch"):
                rows[(name, policy)] = {"alone": best_alone[policy], **measure(name, policy, counts, tokens)}
                print(name, policy, {k: round(v, 2) for k, v in rows[(name, policy)].items()}, flush=True)

    _, others = other_cpu_share(work)
    single = [
        f"- {name}: labkit alone {rows[(name, 'labkit')]['alone']:.2f} s vs torch's default "
        f"{rows[(name, 'torch')]['alone']:.2f} s: "
        f"{rows[(name, 'labkit')]['alone'] / rows[(name, 'torch')]['alone']:.2f}x "
        f"(target within {SINGLE_TOLERANCE:.0%})"
        for name in workloads
    ]
    shared = (
        f"machine shared with other work: other processes used {others:.0%} of the CPUs meanwhile"
        if others > 0.05
        else f"quiet machine: other processes used {others:.0%} of the CPUs"
    )
    text = "\n".join(
        [
            f"## Concurrency ({datetime.date.today()}, {'quick' if args.quick else 'full'} run, measured)",
            "",
            f"Machine: {machine()}; {shared}.",
            f"generate: {tokens} new tokens on the default model; quantize: default model to Q4_K_M. "
            "Walls include process start, torch import and model load. Ratio = concurrent / sequential "
            f"(target <= {TARGET_RATIO}).",
            "",
            *table(rows, counts),
            "",
            f"Single-run speed (alone, best of {args.repeats} rounds, the policies alternating):",
            *single,
            "",
        ]
    )
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text("# Concurrency: N labkit runs at once (`bench/bench_concurrency.py`)\n\n" + text)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
