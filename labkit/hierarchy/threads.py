"""How many CPU threads a labkit run should use, on a machine it may share with others.

Torch runs each matrix product on a team of OpenMP threads that meet at a barrier after every
operation. On a quiet machine more threads are faster. On a busy one (a classroom JupyterHub, a
laptop running a notebook beside other work) a team of N threads waits at every barrier for
its slowest member, and a member the OS has parked behind another process can hold the whole
team up for a time slice; the waiting threads also *spin* (burn CPU) by default, taking cores
from everyone else. Four runs that each take 6 s alone then take 45 s each, not 4 x 6 = 24 s.

The policy here, in two parts:

1. **Thread count** (``choose_threads``): start from the CPUs this process may use
   (``os.sched_getaffinity``, capped by the cgroup's CPU quota ``cpu.max`` / ``cpu.cfs_quota_us``
   that Docker, Kubernetes and JupyterHub set), take away the CPUs other work keeps busy
   (sampled from ``/proc/stat`` over ``SAMPLE_S``), and use what is left, at least one.
2. **Wait policy** (``apply``): a *short* spin. A thread that finishes its share of one
   operation spins (checks for new work in a loop) for a while before it sleeps: spinning wakes
   it within microseconds for the next operation, sleeping costs a wake-up through the kernel
   every time (torch runs hundreds of parallel operations per decoded token). Torch's Linux wheels
   use GNU libgomp, whose default is to spin 300,000 times (about a millisecond or more): a long
   time to burn a core that another run needs. ``OMP_WAIT_POLICY=PASSIVE`` (no spin at all)
   shares well but slows a run alone. labkit sets ``GOMP_SPINCOUNT=3000`` (libgomp: about a
   hundred microseconds, longer than the gap between two operations of one token) and
   ``KMP_BLOCKTIME=1`` (LLVM/Intel OpenMP, the macOS and Windows wheels: 1 ms). These must be set
   before OpenMP starts (before ``import torch``); a value you set yourself, or an
   ``OMP_WAIT_POLICY`` of yours, is kept.

Measured on the lab's 2-core machine: ``bench/bench_concurrency.py`` and ``bench/RESULTS.md``.

References: ``sched_getaffinity(2)``, ``proc(5)`` (``/proc/stat``), the kernel's
``Documentation/admin-guide/cgroup-v2.rst`` (``cpu.max``) and ``scheduler/sched-bwc.rst``
(``cpu.cfs_quota_us``), GNU libgomp's manual (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from labkit.errors import LabkitError

SAMPLE_S = 0.1  # how long /proc/stat is watched: 10 clock ticks per CPU at Linux's usual 100 Hz
# Spin settings labkit sets unless the user set them (or an OMP_WAIT_POLICY): see the module docstring.
SPIN_SETTINGS = {"GOMP_SPINCOUNT": "3000", "KMP_BLOCKTIME": "1"}


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count chosen for this run, and what it was chosen from.

    Attributes:
        threads: the count to use.
        usable_cpus: CPUs this process may use: its affinity set, capped by the cgroup quota.
        affinity_cpus: CPUs in ``os.sched_getaffinity(0)``.
        quota_cpus: the cgroup's CPU quota in CPUs (``None``: no quota found).
        busy_cpus: CPUs kept busy by other work during the sample (measured; ``None`` if not sampled).
        reason: one line saying why, for ``--json`` and notebooks.
    """

    threads: int
    usable_cpus: float
    affinity_cpus: int
    quota_cpus: float | None
    busy_cpus: float | None
    reason: str


def affinity_cpus() -> set[int]:
    """The CPUs the OS lets this process run on (all of ``os.cpu_count()`` where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def cgroup_cpu_quota(root: Path = Path("/")) -> float | None:
    """The tightest CPU quota of this process's cgroup and its parents, in CPUs (``None``: none).

    cgroup v2 writes ``"max 100000"`` or ``"150000 100000"`` (quota, period in µs) in ``cpu.max``;
    v1 has ``cpu.cfs_quota_us`` (-1 for none) and ``cpu.cfs_period_us``.
    """
    quotas = []
    for folder, v2 in _cgroup_cpu_folders(root):
        try:
            if v2:
                quota, period = (folder / "cpu.max").read_text().split()[:2]
            else:
                quota = (folder / "cpu.cfs_quota_us").read_text().strip()
                period = (folder / "cpu.cfs_period_us").read_text().strip()
        except (OSError, ValueError):
            continue
        if quota not in ("max", "-1") and int(period) > 0:
            quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def _cgroup_cpu_folders(root: Path) -> list[tuple[Path, bool]]:
    """(folder, is_v2) from this process's cgroup up to the mount's top, innermost first."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            top, v2 = root / "sys/fs/cgroup", True
        elif "cpu" in controllers.split(","):
            top, v2 = root / "sys/fs/cgroup" / controllers, False
            if not top.is_dir():
                top = root / "sys/fs/cgroup/cpu"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        found += [(top.joinpath(*parts[:n]), v2) for n in range(len(parts), -1, -1)]
    return found


def busy_cpus(cpus: set[int], sample_s: float = SAMPLE_S, root: Path = Path("/")) -> float | None:
    """How many of ``cpus`` were busy (not idle or waiting for I/O) over ``sample_s``, measured.

    Reads the per-CPU lines of ``/proc/stat`` (cumulative clock ticks: user nice system idle
    iowait irq softirq steal ...) twice. This process sleeps meanwhile, so the busy time is
    other work's. ``None`` where ``/proc/stat`` is unreadable (not Linux).
    """
    before = _cpu_ticks(root)
    if not before:
        return None
    time.sleep(sample_s)
    after = _cpu_ticks(root)
    busy = 0.0
    for cpu in cpus:
        if cpu in before and cpu in after:
            total = sum(after[cpu]) - sum(before[cpu])
            idle = (after[cpu][3] + after[cpu][4]) - (before[cpu][3] + before[cpu][4])
            busy += (total - idle) / total if total > 0 else 0.0
    return busy


def _cpu_ticks(root: Path) -> dict[int, list[int]]:
    try:
        lines = (root / "proc/stat").read_text().splitlines()
    except OSError:
        return {}
    ticks = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks[int(name[3:])] = [int(f) for f in fields[:8]] + [0] * (8 - len(fields[:8]))
    return ticks


def choose_threads(requested: int | None = None, *, sample_s: float = SAMPLE_S) -> ThreadChoice:
    """The thread count for this run: ``requested`` if given, else the usable CPUs that are free.

    Args:
        requested: a count the user asked for (``--threads``), used as is.
        sample_s: how long to watch ``/proc/stat`` for other work (0: assume none).

    Raises:
        LabkitError: ``requested`` is not a whole number >= 1.
    """
    cpus = affinity_cpus()
    quota = cgroup_cpu_quota()
    usable = min(float(len(cpus)), quota) if quota is not None else float(len(cpus))
    most = max(1, math.floor(usable + 0.01))  # a quota of 1.5 CPUs: 1 thread never waits for CPU time
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise LabkitError(f"threads={requested!r}; give a whole number of threads, at least 1")
        return ThreadChoice(requested, usable, len(cpus), quota, None, f"{requested} thread(s), as asked")
    busy = busy_cpus(cpus, sample_s) if sample_s > 0 else None
    free = usable - (busy or 0.0)
    threads = max(1, min(most, math.floor(free + 0.25)))  # 0.25: background noise is not a busy CPU
    reason = f"{threads} of {usable:g} usable CPU(s)" + (
        f"; other work kept {busy:.1f} busy (measured over {sample_s:g} s)" if busy is not None else ""
    )
    return ThreadChoice(threads, usable, len(cpus), quota, busy, reason)


def set_wait_policy() -> str:
    """Set a short OpenMP spin (``SPIN_SETTINGS``) unless the user chose a wait policy or spin.

    Returns:
        ``"set"``, ``"yours"`` (your own ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME``
        is kept) or ``"too late"`` (torch was imported before, so OpenMP has already read its settings).
    """
    if any(name in os.environ for name in ("OMP_WAIT_POLICY", *SPIN_SETTINGS)):
        return "yours"
    os.environ.update(SPIN_SETTINGS)
    return "set" if "torch" not in sys.modules else "too late"


def apply(requested: int | None = None, *, sample_s: float = SAMPLE_S) -> ThreadChoice:
    """Choose the thread count and give it to torch; set the wait policy if it is not too late.

    Call it first thing (before ``import torch``) for the wait policy to take effect: the
    command line does; in a notebook, run ``labkit.hierarchy.threads.apply()`` in the first cell.

    Returns:
        The ``ThreadChoice``; its ``reason`` also says what happened to the wait policy.
    """
    policy = set_wait_policy()
    choice = choose_threads(requested, sample_s=sample_s)
    import torch

    torch.set_num_threads(choice.threads)
    note = {
        "set": "; idle threads spin briefly, then sleep ("
        + ", ".join(f"{k}={v}" for k, v in SPIN_SETTINGS.items())
        + ")",
        "yours": "; "
        + ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", *SPIN_SETTINGS) if k in os.environ)
        + " (yours, kept)",
        "too late": "; torch was imported before, so idle OpenMP threads may spin (restart the kernel "
        "and call this first)",
    }[policy]
    return replace(choice, reason=choice.reason + note)
