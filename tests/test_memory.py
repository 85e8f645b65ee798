"""labkit.hierarchy.memory on fake /proc and /sys trees: cgroup v2, v1, hybrid, nested limits, none."""

from __future__ import annotations

from pathlib import Path

import pytest

from labkit.errors import ProbeError
from labkit.hierarchy import memory, probe

GiB = 1 << 30
MiB = 1 << 20
V1_UNLIMITED = "9223372036854771712"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_host(root: Path, available: int = 20 * GiB, total: int = 24 * GiB) -> None:
    write(
        root / "proc/meminfo",
        f"MemTotal:       {total // 1024} kB\nMemFree:  1 kB\nMemAvailable:   {available // 1024} kB\n",
    )


def fake_v2(
    root: Path, cgroup: str = "/", limit: str = str(2 * GiB), usage: int = GiB, cache: int = 0
) -> Path:
    fake_host(root)
    write(root / "proc/self/cgroup", f"0::{cgroup}\n")
    write(root / "proc/self/mountinfo", "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n")
    folder = root / "sys/fs/cgroup" / cgroup.strip("/")
    write(folder / "memory.max", limit + "\n")
    write(folder / "memory.current", f"{usage}\n")
    write(folder / "memory.stat", f"anon 5\nfile {cache}\ninactive_file {cache}\nactive_file 0\n")
    return folder


def fake_v1(root: Path, cgroup: str, limit: str, usage: int, cache: int = 0) -> Path:
    fake_host(root)
    write(root / "proc/self/cgroup", f"4:memory:{cgroup}\n1:cpu:/\n0::/\n")
    write(
        root / "proc/self/mountinfo",
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
    )
    folder = root / "sys/fs/cgroup/memory" / cgroup.strip("/")
    write(folder / "memory.limit_in_bytes", limit + "\n")
    write(folder / "memory.usage_in_bytes", f"{usage}\n")
    write(folder / "memory.stat", f"cache {cache}\ninactive_file {cache}\ntotal_inactive_file {cache}\n")
    return folder


def test_v2_limit_is_smaller_than_host(tmp_path: Path) -> None:
    fake_v2(tmp_path, limit=str(2 * GiB), usage=GiB // 2)
    budget = memory.read_memory(tmp_path)
    assert budget.available_bytes == 2 * GiB - GiB // 2
    assert budget.limited_by == "cgroup v2"
    assert budget.host_available_bytes == 20 * GiB and budget.host_total_bytes == 24 * GiB
    assert budget.cgroup is not None and budget.cgroup.limit_bytes == 2 * GiB
    assert budget.cgroup_source.endswith("sys/fs/cgroup/memory.max")
    assert "cgroup v2" in budget.describe() and "2.00 GiB" in budget.describe()


def test_inactive_file_cache_counts_as_free(tmp_path: Path) -> None:
    fake_v2(tmp_path, limit=str(2 * GiB), usage=GiB + 300 * MiB, cache=300 * MiB)
    assert memory.read_memory(tmp_path).available_bytes == GiB


def test_v2_max_means_no_limit(tmp_path: Path) -> None:
    fake_v2(tmp_path, limit="max")
    budget = memory.read_memory(tmp_path)
    assert budget.limited_by == "host" and budget.cgroup is None
    assert budget.available_bytes == 20 * GiB


def test_host_smaller_than_cgroup_limit(tmp_path: Path) -> None:
    fake_v2(tmp_path, limit=str(64 * GiB), usage=GiB)
    budget = memory.read_memory(tmp_path)
    assert budget.limited_by == "host" and budget.available_bytes == 20 * GiB
    assert budget.cgroup is not None  # still reported, with its source
    assert budget.cgroup_source.endswith("memory.max")


def test_parent_limit_applies_to_child(tmp_path: Path) -> None:
    child = fake_v2(tmp_path, cgroup="/user.slice/jupyter", limit="max", usage=100 * MiB)
    write(child.parent / "memory.max", f"{GiB}\n")
    write(child.parent / "memory.current", f"{400 * MiB}\n")
    budget = memory.read_memory(tmp_path)
    assert budget.available_bytes == GiB - 400 * MiB
    assert budget.cgroup is not None and budget.cgroup.folder == str(child.parent)


def test_v1_limit_in_nested_cgroup(tmp_path: Path) -> None:
    fake_v1(tmp_path, "/docker/abc", str(1536 * MiB), usage=512 * MiB, cache=12 * MiB)
    budget = memory.read_memory(tmp_path)
    assert budget.limited_by == "cgroup v1"
    assert budget.available_bytes == 1536 * MiB - 500 * MiB
    assert budget.cgroup_source.endswith("docker/abc/memory.limit_in_bytes")


def test_v1_unlimited_is_no_limit(tmp_path: Path) -> None:
    fake_v1(tmp_path, "/process_api/74d1", V1_UNLIMITED, usage=GiB)
    budget = memory.read_memory(tmp_path)
    assert budget.cgroup is None and budget.limited_by == "host"


def test_v1_with_cgroup_namespace_root(tmp_path: Path) -> None:
    """Inside a container the mount's root is the container's own cgroup: /proc/self/cgroup says '/'."""
    fake_host(tmp_path)
    write(tmp_path / "proc/self/cgroup", "4:memory:/docker/abc\n")
    write(
        tmp_path / "proc/self/mountinfo",
        "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n",
    )
    folder = tmp_path / "sys/fs/cgroup/memory"
    write(folder / "memory.limit_in_bytes", f"{GiB}\n")
    write(folder / "memory.usage_in_bytes", f"{GiB // 4}\n")
    assert memory.read_memory(tmp_path).available_bytes == GiB - GiB // 4


def test_no_cgroup_files_falls_back_to_host(tmp_path: Path) -> None:
    fake_host(tmp_path, available=3 * GiB)
    budget = memory.read_memory(tmp_path)
    assert budget.available_bytes == 3 * GiB and budget.cgroup is None
    assert budget.host_source.endswith("proc/meminfo MemAvailable")


def test_garbage_files_are_ignored(tmp_path: Path) -> None:
    fake_v2(tmp_path, limit="lots")
    write(tmp_path / "proc/self/mountinfo", "garbage\n\n1 2 3\n")
    assert memory.read_memory(tmp_path).limited_by == "host"


def test_this_machine_is_read_without_error() -> None:
    budget = memory.read_memory()
    assert 0 < budget.available_bytes <= budget.host_available_bytes <= budget.host_total_bytes
    assert probe.available_ram_bytes() > 0


def test_safe_size_bytes(tmp_path: Path) -> None:
    fake_v2(tmp_path, limit=str(2 * GiB), usage=GiB)
    budget = memory.read_memory(tmp_path)
    assert memory.safe_size_bytes(0.25, 10 * GiB, budget=budget) == 256 * MiB
    assert memory.safe_size_bytes(0.25, 100 * MiB, budget=budget) == 100 * MiB
    assert memory.safe_size_bytes(0.1, GiB, budget=budget) == 102 * MiB  # rounded down to whole MiB
    assert memory.safe_size_bytes(1e-9, GiB, budget=budget) == MiB  # never below one unit


@pytest.mark.parametrize(("fraction", "cap"), [(0.0, MiB), (1.5, MiB), (0.5, 0)])
def test_safe_size_bytes_refuses_bad_values(fraction: float, cap: int) -> None:
    with pytest.raises(ProbeError, match="fraction=|cap_bytes="):
        memory.safe_size_bytes(fraction, cap)


def test_probe_uses_the_cgroup_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_v2(tmp_path, limit=str(GiB), usage=0)
    budget = memory.read_memory(tmp_path)
    monkeypatch.setattr(memory, "read_memory", lambda root="/": budget)
    assert probe.available_ram_bytes() == GiB
    assert probe.max_size_bytes() == int(GiB * 0.8 / probe.PEAK_BUFFERS) // MiB * MiB
    with pytest.raises(ProbeError, match="RAM"):
        probe.run(512 * MiB, tmp_dir=tmp_path)


def test_release_freed_memory_returns_pages_to_the_os() -> None:
    import psutil

    from labkit.hierarchy.memory import release_freed_memory

    process = psutil.Process()
    block = [bytearray(64 << 10) for _ in range(1024)]  # 64 MiB in small heap blocks
    held = process.memory_info().rss
    del block
    if not release_freed_memory():
        pytest.skip("no glibc malloc_trim here")
    assert process.memory_info().rss < held - (32 << 20)  # most of the 64 MiB went back


def test_return_large_frees_gives_a_freed_large_block_back_at_once() -> None:
    """After a freed 32 MiB block, glibc would keep the next ones on its heap; the fixed threshold does not."""
    import subprocess
    import sys

    script = """
import psutil, sys
from labkit.hierarchy.memory import return_large_frees
if sys.argv[1] == "fixed" and not return_large_frees():
    print("skip"); raise SystemExit
process = psutil.Process()
first = b"x" * (16 << 20); del first  # raises glibc's dynamic threshold to 16 MiB
before = process.memory_info().rss
blocks, pins = [], []
for _ in range(8):  # 64 MiB of 8 MiB blocks, each followed by a live 256 KiB block that pins the heap's top
    blocks.append(b"x" * (8 << 20)); pins.append(b"y" * (256 << 10))
del blocks
print(process.memory_info().rss - before)
"""
    held = {}
    for mode in ("default", "fixed"):
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        if out.stdout.strip() == "skip":
            pytest.skip("no glibc mallopt here")
        held[mode] = int(out.stdout)
    assert held["fixed"] < 8 << 20  # the 64 MiB went back as each block was freed
    assert held["default"] > held["fixed"] + (32 << 20)  # without it, most of it stayed in the process


def test_return_large_frees_rejects_nonpositive_values() -> None:
    from labkit.hierarchy.memory import return_large_frees

    with pytest.raises(ProbeError, match="threshold_bytes=0"):
        return_large_frees(0)
