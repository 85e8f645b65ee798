"""Shared test fixtures: the default model, and skips for optional hardware and libraries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# labkit.runtime.load without a dtype measures the fastest one on this machine; tests pin float32
# so that expected logits do not depend on the machine (tests/test_runtime_dtypes.py unpins it).
os.environ.setdefault("LABKIT_DTYPE", "float32")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The default model's GGUF file (installed by the set-up; see README)."""
    from labkit.modelfiles import default_model_path

    return default_model_path()
