"""Shared test fixtures: the default model, and skips for optional hardware and libraries."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


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
