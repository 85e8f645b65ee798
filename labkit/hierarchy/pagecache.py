"""The page cache, made visible: which pages of a file sit in RAM, how to evict them, how to check.

A "disk" read on Linux usually never touches the disk: the kernel keeps recently used file
pages in RAM (the page cache) and serves reads from there. To time the *device*, the probe
must push the file out of the cache first and then *check* that it really left:

- ``evict(path)``            fsync the file, then ``posix_fadvise(POSIX_FADV_DONTNEED)`` over it;
- ``resident_fraction(path)`` ask the kernel with ``mincore(2)`` on an mmap of the file which
                              pages are in RAM (the same thing the ``fincore`` tool prints);
- ``device_read_bytes()``    ``read_bytes`` from ``/proc/self/io``: the bytes this process made
                              the block layer fetch from storage;
- ``classify_eviction(...)`` the pure decision: was the read that followed a true cold read?
- ``timed_cold_runs(...)``   evict, check, time one read, repeat: raw seconds plus verdicts.

``O_DIRECT`` is the other road to the device: it skips the page cache altogether, but needs
buffers, offsets and lengths aligned to the device's block size (``aligned_buffer``).

References: man 2 mincore, man 2 posix_fadvise, man 2 open (O_DIRECT),
Documentation/filesystems/proc.rst (``/proc/<pid>/io``) in the Linux source tree.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PAGE_BYTES = mmap.PAGESIZE
# At most this share of the file may still be cached for a read to count as cold.
MAX_RESIDENT_FRACTION = 0.01
# At least this share of the file must come from the block layer to count as cold.
MIN_DEVICE_FRACTION = 0.9
DIRECT_IO_ALIGN_BYTES = 4096


@dataclass(frozen=True)
class Eviction:
    """The verdict on one cold read: did its bytes really come from the device?

    Attributes:
        verified: True when mincore or /proc/self/io shows the file was not cached.
        how: one human sentence naming the evidence (shown beside the number).
    """

    verified: bool
    how: str


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc


_LIBC = _libc()
_MAP_FAILED = ctypes.c_void_p(-1).value


def resident_fraction(path: str | os.PathLike[str]) -> float | None:
    """Return the share of ``path``'s pages that sit in the page cache (0.0 to 1.0).

    Args:
        path: a regular file.

    Returns:
        The resident fraction, or None where mincore is unavailable (no libc, not Linux).
    """
    pages = resident_pages(path)
    if pages is None:
        return None
    return float(pages.mean()) if pages.size else 0.0


def resident_pages(path: str | os.PathLike[str]) -> np.ndarray | None:
    """Which of ``path``'s pages sit in the page cache: one bool per page (page ``i`` holds bytes
    ``i * PAGE_BYTES`` onwards).

    Maps the file (without touching it, so nothing is read in) and asks ``mincore``,
    which fills one byte per page whose lowest bit says "resident".

    Returns:
        A bool array, or None where mincore is unavailable (no libc, not Linux).
    """
    size_bytes = os.path.getsize(path)
    if _LIBC is None or not hasattr(_LIBC, "mincore"):
        return None
    if size_bytes == 0:
        return np.zeros(0, dtype=bool)
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _LIBC.mmap(None, size_bytes, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, _MAP_FAILED):
            return None
        try:
            n_pages = (size_bytes + PAGE_BYTES - 1) // PAGE_BYTES
            vec = (ctypes.c_ubyte * n_pages)()
            if _LIBC.mincore(address, size_bytes, vec) != 0:
                return None
            return (np.frombuffer(memoryview(vec), dtype=np.uint8) & 1).astype(bool)
        finally:
            _LIBC.munmap(address, size_bytes)
    finally:
        os.close(fd)


def evict(path: str | os.PathLike[str]) -> bool:
    """Ask the kernel to drop ``path`` from the page cache (fsync first: dirty pages stay).

    Returns:
        False where ``posix_fadvise`` does not exist (macOS, Windows); True once asked.
        The kernel may ignore the advice; check with ``resident_fraction``.
    """
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def device_read_bytes() -> int | None:
    """Return ``read_bytes`` of ``/proc/self/io``: bytes this process fetched from storage.

    Returns:
        The counter, or None where ``/proc/self/io`` is missing (not Linux, restricted /proc).
    """
    try:
        with open("/proc/self/io", encoding="ascii") as stats:
            for line in stats:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def classify_eviction(size_bytes: int, resident_before: float | None, device_bytes: int | None) -> Eviction:
    """Decide whether a read of ``size_bytes`` was a true cold read.

    Pure: it takes the two pieces of evidence and nothing else, so it can be tested with
    made-up numbers.

    Args:
        size_bytes: bytes the read moved.
        resident_before: ``resident_fraction`` just before the read (None: unknown).
        device_bytes: growth of ``device_read_bytes`` across the read (None: unknown).

    Returns:
        An ``Eviction``: verified when at most 1% was cached before the read, or when at
        least 90% of the bytes came from the block layer.
    """
    if resident_before is not None and resident_before <= MAX_RESIDENT_FRACTION:
        return Eviction(True, f"mincore: {resident_before:.1%} of the file cached before the read")
    if device_bytes is not None and size_bytes > 0:
        share = device_bytes / size_bytes
        if share >= MIN_DEVICE_FRACTION:
            return Eviction(True, f"/proc/self/io: {share:.0%} of the bytes came from the device")
    evidence = []
    if resident_before is not None:
        evidence.append(f"mincore: {resident_before:.0%} still cached")
    if device_bytes is not None and size_bytes > 0:
        evidence.append(f"/proc/self/io: {device_bytes / size_bytes:.0%} from the device")
    return Eviction(False, "; ".join(evidence) or "no way to check on this system")


def aligned_buffer(size_bytes: int) -> mmap.mmap:
    """Return a page-aligned, writable buffer of ``size_bytes`` for O_DIRECT reads.

    An anonymous mmap always starts on a page boundary, which satisfies O_DIRECT's
    alignment rule on every Linux file system that supports it.
    """
    return mmap.mmap(-1, size_bytes)


def open_direct(path: str | os.PathLike[str]) -> int | None:
    """Open ``path`` for O_DIRECT reads; return the fd, or None where O_DIRECT is refused."""
    flag = getattr(os, "O_DIRECT", None)
    if flag is None:
        return None
    try:
        return os.open(Path(path), os.O_RDONLY | flag)
    except OSError:
        return None


def read_file(path: str | os.PathLike[str], buffer: Any, *, fd: int | None = None) -> int:
    """Read a whole file into one reused ``buffer`` with plain ``read()`` calls, the way
    ``dd`` does, and return the bytes read.

    Args:
        path: the file.
        buffer: any writable buffer; its length is the read size.
        fd: an fd opened elsewhere (e.g. with O_DIRECT) to read instead of opening ``path``.
    """
    view = memoryview(buffer)
    own = fd is None
    handle = os.open(path, os.O_RDONLY) if fd is None else fd
    total = 0
    try:
        while n := os.preadv(handle, [view], total):
            total += n
    finally:
        if own:
            os.close(handle)
    return total


def touch_pages(path: str | os.PathLike[str], copy_into: np.ndarray | None = None) -> int:
    """Map ``path`` and read one byte of every page; with ``copy_into``, copy it all there.

    mmap itself reads nothing: the page faults that the touches cause do the loading.

    Returns:
        A checksum of the touched bytes, so the work cannot be skipped.
    """
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        data = np.frombuffer(mapped, dtype=np.uint8)
        if copy_into is not None:
            np.copyto(copy_into[: data.size], data)
        checksum = int(data[::PAGE_BYTES].sum())
        del data  # release the buffer before the map closes
    return checksum


def timed_cold_runs(
    path: str | os.PathLike[str], runs: int, reader: Callable[[], object]
) -> tuple[list[float], list[Eviction]]:
    """Evict ``path``, check, and time ``reader()``; ``runs`` times.

    Returns:
        The seconds of each run, and the eviction verdict of each run.
    """
    size_bytes = os.path.getsize(path)
    times, verdicts = [], []
    for _ in range(runs):
        evict(path)
        resident = resident_fraction(path)
        before = device_read_bytes()
        start = time.perf_counter()
        reader()
        times.append(time.perf_counter() - start)
        after = device_read_bytes()
        device = None if before is None or after is None else after - before
        verdicts.append(classify_eviction(size_bytes, resident, device))
    return times, verdicts


def timed_direct_runs(
    path: str | os.PathLike[str], block_bytes: int, runs: int
) -> tuple[list[float], Eviction] | None:
    """Time ``runs`` O_DIRECT reads of ``path`` in aligned ``block_bytes`` blocks.

    Returns:
        The seconds of each run and the /proc/self/io verdict, or None where the file
        system refuses O_DIRECT.
    """
    fd = open_direct(path)
    if fd is None:
        return None
    buffer = aligned_buffer(block_bytes)
    times = []
    try:
        before = device_read_bytes()
        for _ in range(runs):
            start = time.perf_counter()
            read_file(path, buffer, fd=fd)
            times.append(time.perf_counter() - start)
        after = device_read_bytes()
    except OSError:
        return None
    finally:
        os.close(fd)
        buffer.close()
    device = None if before is None or after is None else (after - before) // runs
    return times, classify_eviction(os.path.getsize(path), None, device)


def write_test_file(path: str | os.PathLike[str], size_bytes: int, block_bytes: int) -> float:
    """Write ``size_bytes`` of incompressible bytes, unique per page, then fsync.

    Random bytes defeat compression and a page number stamped into every page defeats
    deduplication, so the device has to store (and later return) every byte.

    Returns:
        Seconds taken by the writes and the fsync.
    """
    block = np.random.default_rng(0).integers(0, 256, block_bytes, dtype=np.uint8)
    pages = block.reshape(-1, DIRECT_IO_ALIGN_BYTES)  # (4 KiB pages per block, 4096)
    stamps = pages[:, :8].view(np.uint64)  # (pages per block, 1): the page number
    start = time.perf_counter()
    with open(path, "wb", buffering=0) as file:
        for index, offset in enumerate(range(0, size_bytes, block_bytes)):
            stamps[:, 0] = np.arange(len(pages), dtype=np.uint64) + index * len(pages)
            file.write(block[: min(block_bytes, size_bytes - offset)].data)
        os.fsync(file.fileno())
    return time.perf_counter() - start
