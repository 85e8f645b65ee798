"""What every benchmark records beside its numbers: the machine, and how busy others kept it.

- ``machine()``          one line: CPU model, logical CPUs, RAM, OS, Python
- ``other_cpu_share(work)``  run ``work``; also return the share of all CPUs that *other*
                         processes used meanwhile (psutil), because a shared machine slows
                         every number down

The benchmarks import this file as ``_common`` (Python puts the script's folder,
``bench/``, on ``sys.path``).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line describing this machine, for the top of a results file."""
    return (
        f"{cpu_model()}, {psutil.cpu_count()} logical CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def _busy_s(times: psutil._common.scputimes) -> float:  # type: ignore[name-defined]
    """CPU seconds the whole machine spent on anything but waiting."""
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _own_s(process: psutil.Process) -> float:
    """CPU seconds of this process and of the children it waited for (e.g. ``dd``)."""
    t = process.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def other_cpu_share(work: Callable[[], T]) -> tuple[T, float]:
    """Run ``work`` and measure how much CPU *other* processes used while it ran.

    Returns:
        ``(work's result, share)``: the CPU seconds of all processes but this one (and its
        children), divided by wall seconds x logical CPUs; 0.0 is a quiet machine, 1.0 all
        CPUs busy with someone else.
    """
    me = psutil.Process()
    busy_before, own_before = _busy_s(psutil.cpu_times()), _own_s(me)
    start = time.perf_counter()
    result = work()
    wall_s = time.perf_counter() - start
    others_s = (_busy_s(psutil.cpu_times()) - busy_before) - (_own_s(me) - own_before)
    return result, min(1.0, max(0.0, others_s / (wall_s * psutil.cpu_count())))
