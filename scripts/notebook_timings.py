"""Run every notebook under a memory limit; measure its time and peak memory; update the guide's table.

    .venv/bin/python scripts/notebook_timings.py                   # every notebook, 1 GB and 2 GB
    .venv/bin/python scripts/notebook_timings.py --limits 1G --notebooks 05_runtime_transfers.ipynb
    .venv/bin/python scripts/notebook_timings.py --no-write         # print the table, change nothing

For each notebook and limit, a worker process is started inside a fresh memory cgroup (Linux
cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``; needs root, or a delegated cgroup),
so the worker and the Jupyter kernel it starts share the limit, as a JupyterHub pod's server and
kernel do, and the notebook's own code reads that limit (``labkit.hierarchy.memory``). The worker
runs every cell with nbclient from the notebooks' folder and records:

- the wall time of all cells (kernel start-up excluded; measured on this machine);
- the kernel's peak resident memory (``getrusage(RUSAGE_SELF).ru_maxrss``: the kernel's high-water
  mark, VmHWM) and its child processes' peak (``RUSAGE_CHILDREN``: labkit.loading measures each
  load in a fresh child);
- the cgroup's peak usage (``memory.peak`` / ``memory.max_usage_in_bytes``), which also counts
  the worker and the page cache of files the notebook wrote or read;
- the outcome: every cell ran, a cell raised (named), the kernel was killed (the cgroup's OOM
  killer), or a cell timed out.

Without a cgroup it falls back to ``RLIMIT_AS`` (``ulimit -v``) on the worker, a poor stand-in
(torch reserves far more address space than it touches) that the table then names. The results
go to ``docs/notebook_timings.json`` and replace the table between the markers
``<!-- notebook-timings:begin -->`` and ``<!-- notebook-timings:end -->`` in docs/instructors.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
GUIDE = REPO / "docs" / "instructors.md"
RESULTS = REPO / "docs" / "notebook_timings.json"
BEGIN, END = "<!-- notebook-timings:begin -->", "<!-- notebook-timings:end -->"
CELL_TIMEOUT_S = 600
MiB = 1 << 20
# Run in the kernel after the last cell: its own and its children's peak RSS (Linux: KiB), and the
# CPU seconds (user + system) the kernel and its children used, which a busy machine inflates far less
# than wall time.
PEAK_CODE = (
    "import resource as _r, json as _j\n"
    "_s, _c = _r.getrusage(_r.RUSAGE_SELF), _r.getrusage(_r.RUSAGE_CHILDREN)\n"
    "print('LABKIT-PEAK', _j.dumps([_s.ru_maxrss * 1024, _c.ru_maxrss * 1024,"
    " _s.ru_utime + _s.ru_stime + _c.ru_utime + _c.ru_stime]))"
)


@dataclass(frozen=True)
class Run:
    """One notebook under one memory limit."""

    notebook: str
    limit_bytes: int
    how: str  # "cgroup v1", "cgroup v2" or "RLIMIT_AS"
    outcome: str  # "ok", "error: ...", "killed (out of memory)", "timeout", ...
    run_all_s: float | None
    kernel_peak_rss_bytes: int | None
    children_peak_rss_bytes: int | None
    cgroup_peak_bytes: int | None
    kernel_cpu_s: float | None = None  # user + system CPU seconds of the kernel and its children


# --- the worker: runs one notebook, inside the limit ----------------------------------------------


def run_notebook(path: Path) -> dict:
    """Execute every cell of ``path``; return the time, the kernel's peaks and the outcome."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(PEAK_CODE))
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    outcome, elapsed_s, peaks = "ok", None, [None, None, None]
    with client.setup_kernel():
        start = time.perf_counter()
        try:
            for index, cell in enumerate(notebook.cells[:-1]):
                client.execute_cell(cell, index)
            elapsed_s = time.perf_counter() - start
        except CellExecutionError as error:
            last_line = re.sub(r"\x1b\[[0-9;]*m", "", str(error).strip().splitlines()[-1])  # no colours
            outcome = "error: " + last_line[:120]
        except DeadKernelError:
            return {"outcome": "killed (out of memory)", "run_all_s": None, "peaks": peaks}
        except CellTimeoutError:
            outcome = f"timeout (a cell ran over {CELL_TIMEOUT_S} s)"
        except Exception as error:  # noqa: BLE001 - e.g. the kernel stopped answering while thrashing at the limit
            outcome = (
                f"did not finish: no reply from the kernel within {CELL_TIMEOUT_S} s ({type(error).__name__})"
            )
            return {"outcome": outcome, "run_all_s": None, "peaks": peaks}
        last = notebook.cells[-1]
        client.execute_cell(last, len(notebook.cells) - 1)
        text = "".join(o.get("text", "") for o in last.outputs if o.output_type == "stream")
        peaks = json.loads(text.split("LABKIT-PEAK", 1)[1])
    return {"outcome": outcome, "run_all_s": elapsed_s, "peaks": peaks}


# --- the limit: a fresh memory cgroup, or RLIMIT_AS -----------------------------------------------


def _own_cgroup() -> tuple[str, Path] | None:
    """This process's memory cgroup folder, if it is writable: ("v2" | "v1", folder)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, relative = line.split(":", 2)
        if hierarchy == "0" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            folder = Path("/sys/fs/cgroup") / relative.lstrip("/")
            if "memory" in (folder / "cgroup.subtree_control").read_text().split():
                return ("v2", folder) if os.access(folder, os.W_OK) else None
        if "memory" in controllers.split(","):
            folder = Path("/sys/fs/cgroup/memory") / relative.lstrip("/")
            return ("v1", folder) if os.access(folder, os.W_OK) else None
    return None


class Limit:
    """A memory cgroup of ``limit_bytes`` for one worker, removed afterwards."""

    def __init__(self, limit_bytes: int, name: str) -> None:
        own = _own_cgroup()
        self.version: str = own[0] if own else ""
        self.folder: Path | None = own[1] / name if own else None
        if self.folder is not None:
            self.folder.mkdir()
            if self.version == "v2":
                (self.folder / "memory.max").write_text(str(limit_bytes))
                (self.folder / "memory.swap.max").write_text("0")
            else:
                (self.folder / "memory.limit_in_bytes").write_text(str(limit_bytes))
                swap = self.folder / "memory.memsw.limit_in_bytes"
                if swap.exists():
                    swap.write_text(str(limit_bytes))  # memory + swap = memory: no swapping out of the limit
        self.limit_bytes = limit_bytes

    @property
    def how(self) -> str:
        return f"cgroup {self.version}" if self.folder else "RLIMIT_AS"

    def enter(self) -> None:
        """Called in the worker between fork and exec: join the cgroup (or cap the address space)."""
        if self.folder is not None:
            (self.folder / "cgroup.procs").write_text(str(os.getpid()))
        else:
            resource.setrlimit(resource.RLIMIT_AS, (self.limit_bytes, self.limit_bytes))

    def peak_bytes(self) -> int | None:
        if self.folder is None:
            return None
        name = "memory.peak" if self.version == "v2" else "memory.max_usage_in_bytes"
        return int((self.folder / name).read_text())

    def remove(self) -> None:
        if self.folder is not None:
            for _ in range(50):  # the kernel removes a cgroup only once its last process is gone
                try:
                    self.folder.rmdir()
                    return
                except OSError:
                    time.sleep(0.1)


def measure(notebook: Path, limit_bytes: int) -> Run:
    """Run ``notebook`` in a worker under ``limit_bytes``; return what it measured."""
    limit = Limit(limit_bytes, f"labkit-timings-{os.getpid()}-{limit_bytes // MiB}M")
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", str(notebook)],
            preexec_fn=limit.enter,
            # As the lab's image and hub config set it: idle OpenMP threads sleep instead of spinning,
            # so a busy machine does not turn waiting into CPU time.
            env={**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")},
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        peak = limit.peak_bytes()
    finally:
        limit.remove()
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:120]
        outcome = "killed (out of memory)" if done.returncode in (-9, 137) else f"worker failed: {tail}"
        return Run(notebook.name, limit_bytes, limit.how, outcome, None, None, None, peak)
    result = json.loads(lines[-1])
    kernel, children, cpu_s = result["peaks"]
    return Run(
        notebook.name,
        limit_bytes,
        limit.how,
        result["outcome"],
        result["run_all_s"],
        kernel,
        children,
        peak,
        cpu_s,
    )


# --- the table ------------------------------------------------------------------------------------


def _mib(value: int | None) -> str:
    return "–" if value is None else f"{value / MiB:,.0f} MiB"


def table(runs: list[Run], machine: str) -> str:
    """The guide's table: one row per notebook and limit."""
    rows = [
        "| notebook | memory limit | result | run-all time (wall) | kernel CPU time "
        "| peak kernel RSS | peak cgroup use |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        elapsed = "–" if run.run_all_s is None else f"{run.run_all_s:.0f} s"
        cpu = "–" if run.kernel_cpu_s is None else f"{run.kernel_cpu_s:.0f} s"
        fits = "fits" if run.outcome == "ok" else run.outcome
        rows.append(
            f"| {run.notebook} | {run.limit_bytes / 2**30:g} GiB ({run.how}) | {fits} | {elapsed} | {cpu} "
            f"| {_mib(run.kernel_peak_rss_bytes)} | {_mib(run.cgroup_peak_bytes)} |"
        )
    fit_lines = []
    for limit_bytes in sorted({r.limit_bytes for r in runs}):
        fit = [
            r.notebook.removesuffix(".ipynb")
            for r in runs
            if r.limit_bytes == limit_bytes and r.outcome == "ok"
        ]
        fail = [
            r.notebook.removesuffix(".ipynb")
            for r in runs
            if r.limit_bytes == limit_bytes and r.outcome != "ok"
        ]
        fit_lines.append(
            f"- **{limit_bytes / 2**30:g} GiB**: run to the end: {', '.join(fit) or 'none'}"
            + (f"; did not: {', '.join(fail)}" if fail else "")
        )
    note = f"\nMeasured by `scripts/notebook_timings.py` on {machine}.\n"
    return "\n".join(rows) + "\n\n" + "\n".join(fit_lines) + "\n" + note


def describe_machine(shared: bool) -> str:
    cpus = os.cpu_count()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    when = time.strftime("%Y-%m-%d")
    gpu = "an NVIDIA GPU present (unused by the limits)" if Path("/dev/nvidiactl").exists() else "no GPU"
    python = platform.python_version()
    text = f"{platform.machine()}, {cpus} CPU cores, {ram:.0f} GiB RAM, {gpu}, Python {python}, {when}"
    return text + (" (the machine was shared with other work: times are upper bounds)" if shared else "")


def rewrite_guide(guide: Path, text: str) -> None:
    """Replace the text between the timing markers of ``guide`` (atomically)."""
    content = guide.read_text(encoding="utf-8")
    if BEGIN not in content or END not in content:
        raise SystemExit(f"{guide} has no {BEGIN} ... {END} markers; add them where the table goes")
    head, rest = content.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    temp = guide.with_name(f".{guide.name}.tmp")
    temp.write_text(f"{head}{BEGIN}\n{text}{END}{tail}", encoding="utf-8")
    os.replace(temp, guide)


def _size(text: str) -> int:
    units = {"M": MiB, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--notebooks", nargs="*", help="names in notebooks/ (default: all)")
    parser.add_argument("--limits", default="1G,2G", help="memory limits, comma-separated (default 1G,2G)")
    parser.add_argument("--shared", action="store_true", help="say in the table that the machine was busy")
    parser.add_argument("--no-write", action="store_true", help="print the table; write nothing")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_notebook(args.worker)))
        return 0
    names = args.notebooks or [p.name for p in sorted(NOTEBOOKS.glob("*.ipynb"))]
    runs = []
    for name in names:
        for limit in args.limits.split(","):
            run = measure(NOTEBOOKS / name, _size(limit))
            print(json.dumps(asdict(run)), flush=True)
            runs.append(run)
    if not args.no_write:  # keep earlier rows of notebooks and limits not rerun now
        earlier = [Run(**r) for r in json.loads(RESULTS.read_text())] if RESULTS.exists() else []
        fresh = {(r.notebook, r.limit_bytes) for r in runs}
        runs = sorted(
            [*runs, *(r for r in earlier if (r.notebook, r.limit_bytes) not in fresh)],
            key=lambda r: (r.notebook, r.limit_bytes),
        )
    text = table(runs, describe_machine(args.shared))
    print(text)
    if not args.no_write:
        RESULTS.write_text(json.dumps([asdict(r) for r in runs], indent=1) + "\n")
        rewrite_guide(GUIDE, text)
        print(f"wrote {RESULTS.relative_to(REPO)} and the table in {GUIDE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
