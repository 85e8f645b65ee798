"""The inside of a measured load: ``python -m labkit.loading.child REQUEST_JSON``.

``labkit.loading.measure`` starts this in a fresh process, so the memory, page faults and
device reads it reports belong to this one load and nothing else. In order:

1. import the loader (labkit's ``open_weights``, or a peer named ``"module:function"``);
2. set the page cache up as asked: ``cold`` evicts the file (``posix_fadvise(DONTNEED)``),
   ``warm`` reads it once; then ``mincore`` measures what share of it is cached;
3. reset the kernel's peak-RSS mark (``/proc/self/clear_refs``), read the fault and I/O counters;
4. the load: ``opened = loader(path, mode, layers)`` (open), then iterate and *touch* each
   tensor: read one byte of every page, so every byte is in RAM and mapped into this process;
5. read the counters again and print one JSON line with the times and counts.

A loader is any callable ``(path, mode, layers) -> iterable of (name, tensor)`` whose call
does the opening and whose iteration produces the tensors. Times are ``time.monotonic()``,
which the parent shares, so it can line its RSS samples up with them.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from labkit.hierarchy.pagecache import PAGE_BYTES, device_read_bytes, evict, resident_fraction

_WARM_READ_BYTES = 1 << 20


def touch(tensor: torch.Tensor) -> int:
    """Read one byte of every page a tensor's bytes span (and its last byte); return their sum.

    For a view of a mapped file this is what brings the tensor in: each first touch of a page
    faults, and the kernel reads the page from the page cache or the device.
    """
    if tensor.numel() == 0:
        return 0
    data = tensor.reshape(-1).view(torch.uint8)  # (n_bytes,)
    return int(data[::PAGE_BYTES].sum()) + int(data[-1])


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            match = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _reset_peak_rss() -> bool:
    """Make ``VmHWM`` start again from the current RSS (Linux 4.0+); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def _faults() -> tuple[int, int] | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_majflt, usage.ru_minflt


def prepare_cache(path: str, requested: str) -> bool | None:
    """Evict (``"cold"``), read once (``"warm"``) or leave (``"as-is"``) the file's cached pages.

    Returns:
        For ``"cold"``: whether eviction could be asked for; otherwise None.
    """
    if requested == "cold":
        return evict(path)
    if requested == "warm":
        buffer = bytearray(_WARM_READ_BYTES)
        view = memoryview(buffer)
        fd = os.open(path, os.O_RDONLY)
        try:
            offset = 0
            while n := os.preadv(fd, [view], offset):
                offset += n
        finally:
            os.close(fd)
    return None


def resolve_loader(spec: str | None, sys_path: list[str], shared: bool = True) -> Callable[..., Any]:
    """labkit's ``open_weights``, or ``"module:function"`` imported with ``sys_path`` added."""
    if spec is None:
        from labkit.loading.loaders import open_weights

        return functools.partial(open_weights, shared=shared)
    sys.path[:0] = sys_path
    module_name, _, function = spec.partition(":")
    return getattr(importlib.import_module(module_name), function)


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Do one load as ``request`` says and return its times and counters (see the module docstring)."""
    path, mode, layers = request["path"], request["mode"], request["layers"]
    loader = resolve_loader(request.get("loader"), request.get("sys_path", []), request.get("shared", True))
    evicted = prepare_cache(path, request["cache"])
    resident_before = resident_fraction(path)
    rss_before = _status_kib("VmRSS")
    peak_reset = _reset_peak_rss()
    faults0, io0 = _faults(), device_read_bytes()
    t0 = time.monotonic()
    opened = loader(path, mode, layers)
    t_open = time.monotonic()
    open_peak = _status_kib("VmHWM") if peak_reset else _status_kib("VmRSS")
    t_first, checksum, kept = None, 0, []
    for _, tensor in opened:
        checksum += touch(tensor)
        kept.append(tensor)  # a loaded model keeps its weights
        if t_first is None:
            t_first = time.monotonic()
    t_all = time.monotonic()
    rss_after = _status_kib("VmRSS")
    faults1, io1 = _faults(), device_read_bytes()
    peak = _status_kib("VmHWM") if peak_reset else None
    result = {
        "t0": t0,
        "open_s": t_open - t0,
        "first_tensor_s": (t_first or t_all) - t0,
        "all_touched_s": t_all - t0,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "open_peak_rss_bytes": open_peak,
        "peak_rss_bytes": peak,
        "n_tensors": len(kept),
        "tensor_bytes": sum(t.numel() * t.element_size() for t in kept),
        "major_faults": None if faults0 is None or faults1 is None else faults1[0] - faults0[0],
        "minor_faults": None if faults0 is None or faults1 is None else faults1[1] - faults0[1],
        "device_read_bytes": None if io0 is None or io1 is None else io1 - io0,
        "evicted": evicted,
        "resident_before": resident_before,
        "resident_after": resident_fraction(path),
        "checksum": checksum,
    }
    return result


def main(argv: list[str]) -> int:
    """Run the request in ``argv[1]``; print the result (or the error) as one JSON line."""
    from labkit.errors import LabkitError

    try:
        result = run(json.loads(argv[1]))
    except LabkitError as error:
        print(json.dumps({"error": type(error).__name__, "message": str(error)}))
        return 3
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
