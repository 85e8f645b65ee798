"""The kernel-memory watch that runs beside nbval (``tests/kernel_memory.py``, registered by the root
``conftest.py``): its sampler sees real allocations, its limits are the lab's, and it fails a notebook
whose kernel goes past its limit.

The notebooks themselves are measured during the nbval run (``./run.sh test`` or
``pytest --nbval-lax notebooks/``), so each runs once; the summary lists every kernel's peak.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from kernel_memory import BIG_FILE_LIMIT_BYTES, DEFAULT_LIMIT_BYTES, MiB, RssSampler, limit_bytes

pytestmark = pytest.mark.slow

ALLOCATE = textwrap.dedent(
    """
    import subprocess, sys, time
    block = bytearray({mib} * 2**20)  # zero-filled: every page is touched
    if {child}:
        child = subprocess.Popen([sys.executable, "-c", "b = bytearray(150 * 2**20); import time; time.sleep(2)"])
    time.sleep(0.8)
    print("allocated", flush=True)
    time.sleep(0.6)
    del block
    time.sleep(0.6)
    if {child}:
        child.wait()
    """
)


def _sample_script(mib: int, child: bool) -> RssSampler:
    process = subprocess.Popen(
        [sys.executable, "-c", ALLOCATE.format(mib=mib, child=child)], stdout=subprocess.PIPE, text=True
    )
    sampler = RssSampler(process.pid).start()
    assert process.stdout is not None and process.stdout.readline().strip() == "allocated"
    process.wait(timeout=30)
    sampler.stop()
    return sampler


def test_sampler_sees_a_peak_that_is_freed_before_the_end() -> None:
    sampler = _sample_script(300, child=False)
    assert sampler.samples > 10
    assert 300 * MiB <= sampler.peak_bytes < 300 * MiB + 200 * MiB  # the allocation plus a bare interpreter


def test_children_are_reported_apart_not_added() -> None:
    sampler = _sample_script(200, child=True)
    assert sampler.peak_bytes < 200 * MiB + 150 * MiB  # the process alone
    assert sampler.peak_with_children_bytes >= 200 * MiB + 150 * MiB


def test_sampler_of_a_finished_process_keeps_its_peak() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    sampler = RssSampler(process.pid).start()
    process.wait()
    time.sleep(0.2)
    assert sampler.stop() > 0  # no error once the process is gone


@pytest.mark.parametrize(
    ("notebook", "limit"),
    [
        ("00_start_here.ipynb", DEFAULT_LIMIT_BYTES),
        ("notebooks/01_memory_hierarchy.ipynb", DEFAULT_LIMIT_BYTES),
        ("05_runtime_transfers.ipynb", DEFAULT_LIMIT_BYTES),
        ("04_lazy_loading.ipynb", BIG_FILE_LIMIT_BYTES),
        ("06_staged_loading.ipynb", BIG_FILE_LIMIT_BYTES),
        ("07_capstone.ipynb", BIG_FILE_LIMIT_BYTES),
    ],
)
def test_limits_are_the_labs(notebook: str, limit: int) -> None:
    assert limit_bytes(notebook) == limit
    assert DEFAULT_LIMIT_BYTES == 800 * MiB and BIG_FILE_LIMIT_BYTES == 1536 * MiB


def test_a_notebook_over_its_limit_fails_alone(pytester: pytest.Pytester) -> None:
    """Run nbval on a two-cell notebook that holds 300 MiB, with the limit lowered to 200 MiB, then a small one.

    The first fails on its last cell's teardown; the second still starts a clean kernel and passes.
    """
    pytest.importorskip("nbval")
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("block = bytearray(300 * 2**20)\nimport time; time.sleep(0.5)"),
        nbformat.v4.new_code_cell("del block"),
    ]
    nbformat.write(notebook, pytester.path / "01_big.ipynb")
    small = nbformat.v4.new_notebook()
    small.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("assert x == 1")]
    nbformat.write(small, pytester.path / "02_small.ipynb")
    tests_dir = Path(__file__).parent
    pytester.makeconftest(
        f"""
import sys
sys.path.insert(0, {str(tests_dir)!r})
import kernel_memory
kernel_memory.DEFAULT_LIMIT_BYTES = 200 * 2**20

def pytest_configure(config):
    config.pluginmanager.register(kernel_memory.KernelMemoryWatch(), "watch")
"""
    )
    result = pytester.runpytest_subprocess("--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["*01_big.ipynb: kernel peak * MiB during Cell * (limit 200 MiB, OVER)*"])
    result.stdout.fnmatch_lines(["*02_small.ipynb: kernel peak * MiB during Cell * (limit 200 MiB, ok)*"])
    assert "not torn down" not in result.stdout.str()
