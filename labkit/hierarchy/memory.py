"""How much memory this process may really use: the container's limit, not the host's RAM.

On Binder or JupyterHub a notebook runs inside a *cgroup* (control group) that caps its memory at
1-2 GB, while ``/proc/meminfo`` still describes the whole host (say 24 GiB free). A kernel that sizes
its buffers from the host's number is killed by the cgroup's out-of-memory killer. ``read_memory()``
reads both and keeps the smaller:

    host:    /proc/meminfo  MemAvailable                  (what a new allocation can get on the host)
    cgroup:  /proc/self/cgroup  -> this process's cgroup folder (found via /proc/self/mountinfo)
             v2: memory.max, memory.current, memory.stat (inactive_file)
             v1: memory.limit_in_bytes, memory.usage_in_bytes, memory.stat (total_inactive_file)

A cgroup's usage counts the page cache of files its processes read or wrote; the kernel drops the
inactive part of it before killing anything, so the headroom is ``limit - (usage - inactive_file)``
(the "working set" that ``docker stats`` and the kubelet use). Every parent cgroup's limit applies
too, so the folders from the process's cgroup up to the mount point are all read and the tightest
one wins. The record names the file each number came from.

References: the Linux kernel's ``Documentation/admin-guide/cgroup-v2.rst`` (memory.max,
memory.current, memory.stat) and ``Documentation/admin-guide/cgroup-v1/memory.rst``; ``proc(5)``
for ``/proc/meminfo``, ``/proc/self/cgroup`` and ``/proc/self/mountinfo``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import ProbeError

MiB = 1 << 20
# cgroup v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages); treat anything this big as none.
_UNLIMITED_BYTES = 1 << 60
# file names per cgroup version: limit, usage, and the memory.stat key of reclaimable file cache
_FILES = {
    "v2": ("memory.max", "memory.current", "inactive_file"),
    "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
}


@dataclass(frozen=True)
class CgroupMemory:
    """One cgroup's memory limit and use, and the folder they were read from."""

    version: str  # "v1" or "v2"
    folder: str
    limit_bytes: int
    usage_bytes: int
    reclaimable_bytes: int  # inactive file cache the kernel drops before it kills

    @property
    def headroom_bytes(self) -> int:
        """Bytes still allocatable before the cgroup's limit: limit - (usage - reclaimable)."""
        return max(0, self.limit_bytes - (self.usage_bytes - self.reclaimable_bytes))


@dataclass(frozen=True)
class MemoryBudget:
    """The memory this process may use now, and where each number came from.

    ``available_bytes`` is the smaller of the host's ``MemAvailable`` and the tightest cgroup's
    headroom; ``limited_by`` says which one it was.
    """

    available_bytes: int
    limited_by: str  # "host" or "cgroup v1" / "cgroup v2"
    host_available_bytes: int
    host_total_bytes: int
    host_source: str
    cgroup: CgroupMemory | None  # None: no memory limit found for this process
    cgroup_source: str  # the limit file read, or why there is none

    def describe(self) -> str:
        """One line for a notebook: the number, and which source set it."""
        line = f"{self.available_bytes / 2**30:.2f} GiB available (limited by the {self.limited_by}; "
        line += f"host MemAvailable {self.host_available_bytes / 2**30:.1f} GiB"
        if self.cgroup is not None:
            line += (
                f", cgroup {self.cgroup.version} limit {self.cgroup.limit_bytes / 2**30:.2f} GiB, "
                f"in use {(self.cgroup.usage_bytes - self.cgroup.reclaimable_bytes) / 2**30:.2f} GiB"
            )
        else:
            line += f", {self.cgroup_source}"
        return line + ")"


# ---------------------------------------------------------------- host


def read_host_meminfo(root: Path) -> tuple[int, int, str]:
    """Return (MemAvailable, MemTotal, source) from ``/proc/meminfo``, in bytes."""
    path = root / "proc/meminfo"
    fields: dict[str, int] = {}
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemAvailable", "MemTotal"):
                fields[key] = int(rest.split()[0]) * 1024  # the file counts kB = 1024 bytes
    except (OSError, ValueError, IndexError):
        fields = {}
    if len(fields) == 2:
        return fields["MemAvailable"], fields["MemTotal"], f"{path} MemAvailable"
    page = os.sysconf("SC_PAGE_SIZE")
    available = os.sysconf("SC_AVPHYS_PAGES") * page
    return available, os.sysconf("SC_PHYS_PAGES") * page, "sysconf(SC_AVPHYS_PAGES)"


# ---------------------------------------------------------------- cgroup


def _cgroup_paths(root: Path) -> dict[str, str]:
    """Map "v2" and "v1" to this process's cgroup path, from ``/proc/self/cgroup``."""
    paths: dict[str, str] = {}
    try:
        text = (root / "proc/self/cgroup").read_text(encoding="utf-8")
    except OSError:
        return paths
    for line in text.splitlines():
        parts = line.split(":", 2)  # hierarchy-id:controllers:path
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            paths["v2"] = parts[2]
        elif "memory" in parts[1].split(","):
            paths["v1"] = parts[2]
    return paths


def _mounts(root: Path) -> dict[str, tuple[str, str]]:
    """Map "v2"/"v1" to (root inside the cgroup tree, mount point), from ``/proc/self/mountinfo``."""
    mounts: dict[str, tuple[str, str]] = {}
    try:
        text = (root / "proc/self/mountinfo").read_text(encoding="utf-8")
    except OSError:
        text = ""
    for line in text.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        tree_root, mount_point = fields[3], fields[4].replace("\\040", " ")
        if tail[0] == "cgroup2":
            mounts.setdefault("v2", (tree_root, mount_point))
        elif tail[0] == "cgroup" and "memory" in tail[2].split(","):
            mounts.setdefault("v1", (tree_root, mount_point))
    mounts.setdefault("v2", ("/", "/sys/fs/cgroup"))  # the usual places, when mountinfo is unreadable
    mounts.setdefault("v1", ("/", "/sys/fs/cgroup/memory"))
    return mounts


def _folders(root: Path, cgroup_path: str, tree_root: str, mount_point: str) -> list[Path]:
    """The cgroup's folder and every parent up to the mount point, innermost first."""
    relative = cgroup_path
    if tree_root != "/" and (cgroup_path + "/").startswith(tree_root.rstrip("/") + "/"):
        relative = cgroup_path[len(tree_root.rstrip("/")) :]
    parts = [part for part in relative.split("/") if part and part != ".."]
    top = root / mount_point.lstrip("/")
    return [top.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _read_number(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _UNLIMITED_BYTES else value


def _read_stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def read_cgroup(root: Path) -> CgroupMemory | None:
    """Return the tightest memory limit among this process's cgroup and its parents, or None."""
    paths, mounts = _cgroup_paths(root), _mounts(root)
    found: list[CgroupMemory] = []
    for version in ("v2", "v1"):
        if version not in paths:
            continue
        limit_name, usage_name, stat_key = _FILES[version]
        for folder in _folders(root, paths[version], *mounts[version]):
            limit, usage = _read_number(folder / limit_name), _read_number(folder / usage_name)
            if limit is None or usage is None:
                continue
            reclaimable = min(usage, _read_stat(folder / "memory.stat", stat_key))
            found.append(CgroupMemory(version, str(folder), limit, usage, reclaimable))
        if found:
            break  # a process's memory is controlled by one version, v2 first
    return min(found, key=lambda cgroup: cgroup.headroom_bytes, default=None)


# ---------------------------------------------------------------- the budget


def read_memory(root: str | os.PathLike[str] = "/") -> MemoryBudget:
    """Read the memory this process may use now: host ``MemAvailable`` and the cgroup's headroom.

    Args:
        root: folder that stands for ``/`` (tests pass a temporary folder with fake files).

    Returns:
        A ``MemoryBudget`` whose ``available_bytes`` is the smaller of the two.

    Example:
        >>> budget = read_memory()
        >>> budget.available_bytes <= budget.host_available_bytes
        True
    """
    base = Path(root)
    host_available, host_total, host_source = read_host_meminfo(base)
    cgroup = read_cgroup(base)
    if cgroup is None:
        return MemoryBudget(
            host_available, "host", host_available, host_total, host_source, None, "no cgroup memory limit"
        )
    limit_file = _FILES[cgroup.version][0]
    source = f"{cgroup.folder}/{limit_file}"
    if cgroup.headroom_bytes < host_available:
        return MemoryBudget(
            cgroup.headroom_bytes,
            f"cgroup {cgroup.version}",
            host_available,
            host_total,
            host_source,
            cgroup,
            source,
        )
    return MemoryBudget(host_available, "host", host_available, host_total, host_source, cgroup, source)


def available_bytes() -> int:
    """Bytes this process can allocate now: ``read_memory().available_bytes``."""
    return read_memory().available_bytes


def safe_size_bytes(
    fraction: float,
    cap_bytes: int,
    *,
    align_bytes: int = MiB,
    budget: MemoryBudget | None = None,
) -> int:
    """Size a default or a slider's maximum from the memory this process really has.

    Args:
        fraction: share of the available memory the work may take, in (0, 1]. When the work holds
            several buffers of the returned size at once, divide by their number (a copy: 2).
        cap_bytes: never return more than this (the size the lesson needs).
        align_bytes: round down to a multiple of this (default 1 MiB); the result is at least this.
        budget: a ``MemoryBudget`` already read (default: read it now).

    Returns:
        ``min(cap_bytes, fraction * available)``, rounded down to ``align_bytes``.

    Raises:
        ProbeError: ``fraction`` is outside (0, 1], or ``cap_bytes``/``align_bytes`` is not positive.

    Example:
        >>> safe_size_bytes(0.25, 256 * MiB) <= 256 * MiB
        True
    """
    if not 0 < fraction <= 1:
        raise ProbeError(f"fraction={fraction} must be in (0, 1]; e.g. 0.25 for a quarter of free memory")
    if cap_bytes <= 0 or align_bytes <= 0:
        raise ProbeError(
            f"cap_bytes={cap_bytes} and align_bytes={align_bytes} must be positive; e.g. 256 MiB and 1 MiB"
        )
    budget = read_memory() if budget is None else budget
    size = min(cap_bytes, int(budget.available_bytes * fraction))
    return max(align_bytes, size // align_bytes * align_bytes)


def release_freed_memory() -> bool:
    """Hand memory that Python has freed back to the operating system, so RSS shows it gone.

    ``del model`` frees a model's tensors, but glibc's allocator keeps the freed pages for later
    and the process's RSS (what a container's limit counts) stays high. ``gc.collect()`` drops
    unreachable objects; glibc's ``malloc_trim(0)`` then returns free heap pages to the kernel.

    Returns:
        True when ``malloc_trim`` ran (glibc), False elsewhere (musl, macOS): then only
        ``gc.collect()`` ran.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = libc.malloc_trim if libc is not None else None
    except (OSError, AttributeError):
        return False
    if trim is None:
        return False
    trim(0)
    return True


MMAP_THRESHOLD = -3  # mallopt parameter numbers from glibc's <malloc.h>
ARENA_MAX = -8


def return_large_frees(threshold_bytes: int = 4 << 20, arenas: int = 2) -> bool:
    """Make glibc give every large freed block straight back to the OS, so RSS follows what is live.

    glibc serves an allocation of at least its *mmap threshold* (128 KiB to start) with a mapping
    of its own, unmapped the moment it is freed. But each time such a block is freed, glibc raises
    the threshold to that block's size (up to 32 MiB), so later blocks of that size come from the
    heap instead, and freed heap pages stay in the process. A model that decodes a 56 MB matrix,
    uses it and frees it, layer after layer, leaves RSS 100+ MB above what it holds, by an amount
    that depends on the machine's thread count (each thread may get its own heap: an *arena*).
    Fixing the threshold (and the number of arenas) makes that amount small and the same everywhere.

    Costs: a fresh mapping is zero-filled page by page on first touch, so a program that allocates
    and frees large blocks in a tight loop pays page faults it otherwise would not.

    Args:
        threshold_bytes: allocations of at least this many bytes get their own mapping.
        arenas: the most heaps glibc may create for this process's threads.

    Returns:
        True when glibc took both settings; False elsewhere (musl, macOS), where nothing changed.

    Raises:
        ProbeError: ``threshold_bytes`` or ``arenas`` is not positive.
    """
    import ctypes
    import ctypes.util

    if threshold_bytes <= 0 or arenas <= 0:
        raise ProbeError(
            f"threshold_bytes={threshold_bytes} and arenas={arenas} must be positive; e.g. 4 MiB and 2"
        )
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    return bool(mallopt(MMAP_THRESHOLD, threshold_bytes)) and bool(mallopt(ARENA_MAX, arenas))
