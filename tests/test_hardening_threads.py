"""The thread policy: usable CPUs (affinity, cgroup quota) minus the ones other work keeps busy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.errors import LabkitError
from labkit.hierarchy import threads


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cgroup_v2_quota_is_the_tightest_of_the_folder_and_its_parents(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/user.slice/job\n",
            "sys/fs/cgroup/user.slice/job/cpu.max": "max 100000\n",
            "sys/fs/cgroup/user.slice/cpu.max": "150000 100000\n",
            "sys/fs/cgroup/cpu.max": "400000 100000\n",
        },
    )
    assert threads.cgroup_cpu_quota(root) == 1.5


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert threads.cgroup_cpu_quota(root) == 0.5


def test_no_quota(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "3:cpu:/\n0::/\n",
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/cpu.max": "max 100000\n",
        },
    )
    assert threads.cgroup_cpu_quota(root) is None
    assert threads.cgroup_cpu_quota(tmp_path / "nowhere") is None


def test_busy_cpus_from_two_proc_stat_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # user nice system idle iowait irq softirq steal: cpu0 75% busy, cpu1 idle, cpu2 not ours
    samples = iter(
        [
            {0: [0, 0, 0, 0, 0, 0, 0, 0], 1: [0] * 8, 2: [0] * 8},
            {0: [50, 0, 25, 20, 5, 0, 0, 0], 1: [0, 0, 0, 100, 0, 0, 0, 0], 2: [100, 0, 0, 0, 0, 0, 0, 0]},
        ]
    )
    monkeypatch.setattr(threads, "_cpu_ticks", lambda root: next(samples))
    assert threads.busy_cpus({0, 1}, sample_s=0.0) == pytest.approx(0.75)


def test_the_real_proc_stat_gives_a_number() -> None:
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat")
    busy = threads.busy_cpus(threads.affinity_cpus(), sample_s=0.05)
    assert busy is not None and 0.0 <= busy <= len(threads.affinity_cpus())


@pytest.mark.parametrize(
    ("cpus", "quota", "busy", "expected"),
    [
        (4, None, 0.0, 4),  # quiet: every usable CPU
        (4, None, 3.0, 1),  # three busy elsewhere: one thread
        (4, None, 3.9, 1),  # never fewer than one
        (4, 2.5, 0.0, 2),  # a quota of 2.5 CPUs: two threads
        (2, None, 0.9, 1),  # one of two busy
        (2, None, 0.1, 2),  # background noise is not a busy CPU
    ],
)
def test_choose_threads(
    monkeypatch: pytest.MonkeyPatch, cpus: int, quota: float | None, busy: float, expected: int
) -> None:
    monkeypatch.setattr(threads, "affinity_cpus", lambda: set(range(cpus)))
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: quota)
    monkeypatch.setattr(threads, "busy_cpus", lambda cpus, sample_s: busy)
    choice = threads.choose_threads()
    assert choice.threads == expected
    assert f"{expected} of {min(cpus, quota or cpus):g} usable CPU(s)" in choice.reason
    assert "measured" in choice.reason


def test_a_requested_count_is_used_as_is() -> None:
    assert threads.choose_threads(3).threads == 3
    with pytest.raises(LabkitError, match=r"threads=0; give a whole number of threads, at least 1"):
        threads.choose_threads(0)
    with pytest.raises(LabkitError, match=r"threads=1\.5"):
        threads.choose_threads(1.5)  # type: ignore[arg-type]


def _fresh_python(code: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


SPIN_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def test_apply_sets_a_short_spin_before_torch_and_keeps_yours() -> None:
    code = (
        "import os; from labkit.hierarchy import threads; c = threads.apply(sample_s=0); import torch; "
        "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('KMP_BLOCKTIME'), "
        "torch.get_num_threads() == c.threads, c.reason)"
    )
    env = {k: v for k, v in os.environ.items() if k not in SPIN_VARIABLES}
    out = _fresh_python(code, env)
    assert (
        out.startswith("3000 1 True")
        and "spin briefly, then sleep (GOMP_SPINCOUNT=3000, KMP_BLOCKTIME=1)" in out
    )
    out = _fresh_python(code, {**env, "OMP_WAIT_POLICY": "ACTIVE"})
    assert out.startswith("None None True") and "OMP_WAIT_POLICY=ACTIVE (yours, kept)" in out
    out = _fresh_python(code, {**env, "GOMP_SPINCOUNT": "0"})
    assert out.startswith("0 None True") and "GOMP_SPINCOUNT=0 (yours, kept)" in out
    late = "import torch; from labkit.hierarchy import threads; print(threads.apply(sample_s=0).reason)"
    assert "torch was imported before" in _fresh_python(late, env)


def test_the_command_line_applies_it(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "from labkit.cli import main\n"
        "main(['inspect', sys.argv[1], '--threads', '1'])\n"
        "import torch\n"
        "print(os.environ.get('GOMP_SPINCOUNT'), torch.get_num_threads())"
    )
    from labkit.modelfiles import synthetic_llama

    path = synthetic_llama(tmp_path / "t.gguf", n_layers=1)
    env = {k: v for k, v in os.environ.items() if k not in SPIN_VARIABLES}
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env)
    assert done.stdout.strip().splitlines()[-1] == "3000 1"
