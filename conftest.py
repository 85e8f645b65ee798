"""Repository-wide pytest hooks: while nbval runs the notebooks, measure each kernel's peak memory
(``tests/kernel_memory.py``)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]  # tests/test_notebook_memory.py runs nbval on a notebook of its own


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("nbval") and (
        config.getoption("nbval", default=False) or config.getoption("nbval_lax", default=False)
    ):
        from tests.kernel_memory import KernelMemoryWatch

        config.pluginmanager.register(KernelMemoryWatch(), "labkit-kernel-memory")
