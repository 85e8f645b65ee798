"""The fastest-exact-dtype choice: measured once per machine, cached atomically, explained.

The measurement itself (three loads, a few decode steps each) is replaced here by a stub with
known speeds and top-1 tokens, so the tests check the decision and the cache, not this machine's
timings (tests never assert timings). ``test_real_measurement_picks_an_agreeing_dtype`` runs the
real one once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from labkit.errors import ModelError
from labkit.runtime import dtypes
from labkit.runtime.model import load


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("LABKIT_DTYPE", raising=False)  # tests/conftest.py pins float32 for the other tests
    return tmp_path


def stub(speeds: dict[str, float], disagree: tuple[str, ...] = ()):
    calls: list[str] = []

    def measure(load, path, dtype, device, weights, prompt):
        calls.append(dtype)
        top1 = torch.arange(len(prompt))
        return (top1 + 1 if dtype in disagree else top1), speeds[dtype]

    return measure, calls


def test_fastest_agreeing_dtype_is_chosen_and_cached(cache_home, default_model, monkeypatch) -> None:
    measure, calls = stub({"float32": 30.0, "bfloat16": 28.0, "float16": 60.0})
    monkeypatch.setattr(dtypes, "_measure", measure)
    choice = dtypes.choose_dtype(default_model, load=load)
    assert choice.dtype == "float16" and not choice.cached
    assert calls == ["float32", "bfloat16", "float16"]
    store = cache_home / "labkit" / "runtime-dtype.json"
    assert [p.name for p in store.parent.iterdir()] == ["runtime-dtype.json"]  # no temp file left
    saved = json.loads(store.read_text())["choices"][choice.key]
    assert saved["dtype"] == "float16" and saved["tokens_per_s"]["float32"] == 30.0
    again = dtypes.choose_dtype(default_model, load=load)
    assert again.cached and again.dtype == "float16" and calls == ["float32", "bfloat16", "float16"]
    assert "float16 60.0 tok/s" in again.reason and "cached measurement" in again.reason


def test_a_faster_dtype_that_changes_answers_is_rejected(cache_home, default_model, monkeypatch) -> None:
    measure, _ = stub({"float32": 30.0, "bfloat16": 50.0, "float16": 60.0}, disagree=("float16",))
    monkeypatch.setattr(dtypes, "_measure", measure)
    choice = dtypes.choose_dtype(default_model, load=load)
    assert choice.dtype == "bfloat16"
    assert choice.agrees == {"float32": True, "bfloat16": True, "float16": False}
    assert "float16 60.0 tok/s (top-1 differs: rejected)" in choice.reason


def test_key_names_the_machine_and_a_broken_cache_is_remeasured(
    cache_home, default_model, monkeypatch
) -> None:
    key = dtypes.machine_key(default_model, "cpu", "dequantized")
    assert dtypes.cpu_model() in key and torch.__version__ in key
    assert f"{torch.get_num_threads()} threads" in key and default_model.name in key
    store = cache_home / "labkit" / "runtime-dtype.json"
    store.parent.mkdir(parents=True)
    store.write_text("{not json")
    measure, calls = stub({"float32": 30.0, "bfloat16": 20.0, "float16": 10.0})
    monkeypatch.setattr(dtypes, "_measure", measure)
    assert dtypes.choose_dtype(default_model, load=load).dtype == "float32" and len(calls) == 3
    assert json.loads(store.read_text())["version"] == dtypes.CACHE_VERSION


def test_load_without_dtype_uses_the_choice_and_says_why(cache_home, default_model, monkeypatch) -> None:
    measure, _ = stub({"float32": 30.0, "bfloat16": 45.0, "float16": 20.0})
    monkeypatch.setattr(dtypes, "_measure", measure)
    model = load(default_model)
    assert model.dtype == torch.bfloat16
    assert model.dtype_choice is not None and model.dtype_choice.dtype == "bfloat16"
    assert (
        "compute dtype: bfloat16 (fastest exact dtype on this machine: bfloat16 45.0 tok/s" in model.summary()
    )
    assert "chosen by the caller" in load(default_model, dtype=torch.float32).summary()


def test_labkit_dtype_pins_the_choice(cache_home, default_model, monkeypatch) -> None:
    monkeypatch.setenv("LABKIT_DTYPE", "bfloat16")
    assert load(default_model).dtype == torch.bfloat16
    assert "pinned by LABKIT_DTYPE=bfloat16" in load(default_model).summary()
    monkeypatch.setenv("LABKIT_DTYPE", "float64")
    with pytest.raises(ModelError, match="LABKIT_DTYPE='float64'"):
        dtypes.choose_dtype(default_model, load=load)


@pytest.mark.slow
def test_real_measurement_picks_an_agreeing_dtype(cache_home, default_model) -> None:
    choice = dtypes.choose_dtype(default_model, load=load)
    assert choice.agrees["float32"] and choice.agrees[choice.dtype]
    assert set(choice.tokens_per_s) == set(dtypes.CANDIDATES)
    assert all(speed > 0 for speed in choice.tokens_per_s.values())
