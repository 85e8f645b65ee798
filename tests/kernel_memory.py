"""Peak memory of each notebook's kernel, measured while nbval runs it (no second run).

The root ``conftest.py`` registers ``KernelMemoryWatch`` when nbval is active. When a notebook's
first cell is set up (nbval has just started its kernel), a thread starts sampling the kernel
process's resident set size (RSS) with psutil every ``INTERVAL_S``; when its last cell is torn
down (before nbval stops the kernel), the thread stops and the peak is compared with the
notebook's limit. Over the limit, that teardown fails with the numbers (after nbval has stopped
the kernel, so the next notebook is not affected); the terminal summary
lists every notebook's peak.

The limit is on the kernel's own RSS, as the lab promises: 800 MiB at the widgets' defaults,
1.5 GiB for the chapters whose lesson needs a bigger file (04, 06, 07). Child processes the kernel
starts (a load measured in a fresh process) are reported beside it, not added to it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

MiB = 1 << 20
INTERVAL_S = 0.05
DEFAULT_LIMIT_BYTES = 800 * MiB
BIG_FILE_LIMIT_BYTES = 1536 * MiB
BIG_FILE_CHAPTERS = ("04", "06", "07")


def limit_bytes(notebook: str) -> int:
    """The peak RSS a notebook's kernel may reach: 1.5 GiB for chapters 04, 06, 07, else 800 MiB."""
    return BIG_FILE_LIMIT_BYTES if Path(notebook).name.startswith(BIG_FILE_CHAPTERS) else DEFAULT_LIMIT_BYTES


class RssSampler:
    """Samples a process's RSS (and its children's, apart) every ``interval_s`` on a thread."""

    def __init__(self, pid: int, interval_s: float = INTERVAL_S) -> None:
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak_bytes = 0  # the process itself
        self.peak_with_children_bytes = 0  # the process plus all its descendants, summed
        self.samples = 0
        self.label = ""  # what is running now (the watch sets the cell's name)
        self.peak_label = ""  # what was running when the process's peak was sampled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-sampler-{pid}", daemon=True)

    def sample(self) -> None:
        """Take one sample now."""
        try:
            own = self.process.memory_info().rss
            children = self.process.children(recursive=True)
        except psutil.Error:  # the process is gone
            return
        total = own
        for child in children:
            try:
                total += child.memory_info().rss
            except psutil.Error:  # a child that just exited
                pass
        if own > self.peak_bytes:
            self.peak_bytes, self.peak_label = own, self.label
        self.peak_with_children_bytes = max(self.peak_with_children_bytes, total)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sampling (after one last sample) and return the peak RSS of the process."""
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.peak_bytes


@dataclass(frozen=True)
class NotebookPeak:
    notebook: str
    peak_bytes: int
    peak_with_children_bytes: int
    limit_bytes: int
    samples: int
    peak_cell: str = ""

    def line(self) -> str:
        verdict = "ok" if self.peak_bytes <= self.limit_bytes else "OVER"
        return (
            f"{self.notebook}: kernel peak {self.peak_bytes / MiB:.0f} MiB during {self.peak_cell or '?'} "
            f"(limit {self.limit_bytes / MiB:.0f} MiB, {verdict}); with child processes "
            f"{self.peak_with_children_bytes / MiB:.0f} MiB; {self.samples} samples"
        )


def _kernel_pid(notebook_item: Any) -> int | None:
    manager = getattr(getattr(notebook_item, "kernel", None), "km", None)
    provisioner = getattr(manager, "provisioner", None)
    return getattr(provisioner, "pid", None)


class KernelMemoryWatch:
    """pytest plugin: one ``RssSampler`` per notebook that nbval runs."""

    def __init__(self) -> None:
        self.samplers: dict[str, RssSampler] = {}
        self.peaks: list[NotebookPeak] = []

    @staticmethod
    def _is_cell(item: pytest.Item) -> bool:
        return type(item).__name__ == "IPyNbCell"

    @pytest.hookimpl(trylast=True)  # after nbval's setup has started the kernel
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if not self._is_cell(item) or item.parent is None:
            return
        if item.parent.nodeid not in self.samplers:
            pid = _kernel_pid(item.parent)
            if pid is None:
                return
            self.samplers[item.parent.nodeid] = RssSampler(pid).start()
        self.samplers[item.parent.nodeid].label = item.name  # "Cell 7": nbval's name, as pytest prints it

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
        """Stop the notebook's sampler before nbval stops its kernel; judge the peak after.

        The verdict is raised only once every other teardown (nbval's, which shuts the kernel
        down) has run, so a notebook over its limit fails alone and the next one starts clean.
        """
        peak = self._stop_notebook(item, nextitem)
        yield
        if peak is not None and peak.peak_bytes > peak.limit_bytes:
            pytest.fail(
                f"{peak.line()}: the kernel's memory went past the lab's limit; lower the notebook's "
                "default sizes (labkit.hierarchy.memory.safe_size_bytes) or free what it no longer needs",
                pytrace=False,
            )

    def _stop_notebook(self, item: pytest.Item, nextitem: pytest.Item | None) -> NotebookPeak | None:
        """The notebook's peak when ``item`` is its last cell, else None (sampling goes on)."""
        if not self._is_cell(item) or item.parent is None:
            return None
        if nextitem is not None and nextitem.parent is item.parent:
            return None
        sampler = self.samplers.pop(item.parent.nodeid, None)
        if sampler is None:
            return None
        sampler.stop()
        name = Path(str(item.parent.path)).name
        peak = NotebookPeak(
            name,
            sampler.peak_bytes,
            sampler.peak_with_children_bytes,
            limit_bytes(name),
            sampler.samples,
            sampler.peak_label,
        )
        self.peaks.append(peak)
        return peak

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.peaks:
            terminalreporter.section(
                f"notebook kernels' peak memory (RSS sampled every {INTERVAL_S * 1e3:.0f} ms)"
            )
            for peak in self.peaks:
                terminalreporter.write_line(peak.line())
