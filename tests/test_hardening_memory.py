"""Memory bounded by design: perplexity in windows, long prompts in slices, whatever the text's length."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from labkit import runtime
from labkit.errors import ModelError
from labkit.modelfiles import synthetic_llama
from labkit.runtime import model as model_module
from labkit.runtime.kvcache import KVCache


@pytest.fixture(scope="module")
def model() -> runtime.Model:
    path = synthetic_llama(
        Path(__import__("tempfile").mkdtemp()) / "m.gguf", n_layers=2, dim=64, context_length=1024
    )
    return runtime.load(path)


def _text(model: runtime.Model, n_tokens: int) -> str:
    """A text of about ``n_tokens`` tokens (the synthetic tokenizer has every byte as a token)."""
    words = "the weights travel from the disk to the page cache and on to the cores ".split()
    text = ""
    while len(model.tokenizer.encode(text, add_special=True)) < n_tokens:
        text += " ".join(words) + " "
    return text


def _one_shot_nll(model: runtime.Model, ids: list[int]) -> float:
    """What perplexity computed before windows: all logits of the window at once."""
    logits = model.logits(ids)  # (T, vocab)
    return float(F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum"))


def test_a_text_in_one_window_scores_as_before(model: runtime.Model) -> None:
    text = _text(model, 600)  # more than SCORE_TOKENS: several slices, one window
    ids = model.tokenizer.encode(text, add_special=True)
    assert model_module.SCORE_TOKENS < len(ids) <= model.config.context_length
    result = model.perplexity(text, window=model.config.context_length)
    assert result.n_scored == len(ids) - 1
    assert result.mean_nll == pytest.approx(_one_shot_nll(model, ids) / (len(ids) - 1), rel=1e-5)


def test_longer_texts_are_scored_window_by_window(model: runtime.Model) -> None:
    text = _text(model, 700)
    ids = model.tokenizer.encode(text, add_special=True)
    result = model.perplexity(text, window=300)
    windows = [ids[s : s + 300] for s in range(0, len(ids), 300)]
    windows = [w for w in windows if len(w) >= 2]
    expected = sum(_one_shot_nll(model, w) for w in windows) / sum(len(w) - 1 for w in windows)
    assert result.n_scored == sum(len(w) - 1 for w in windows)
    assert result.mean_nll == pytest.approx(expected, rel=1e-5)


def test_memory_is_set_by_the_window_not_the_text(
    model: runtime.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every forward pass sees at most SCORE_TOKENS tokens and every cache at most one window."""
    seen_tokens: list[int] = []
    capacities: list[int] = []
    forward = model_module.Model.forward

    def spy(self: runtime.Model, ids: list[int], cache: KVCache | None = None, **kw: object) -> torch.Tensor:
        seen_tokens.append(len(ids))
        if cache is not None:
            capacities.append(cache.capacity)
        return forward(self, ids, cache, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(model_module.Model, "forward", spy)
    model.perplexity(_text(model, 2500), window=512)
    assert max(seen_tokens) <= model_module.SCORE_TOKENS
    assert max(capacities) <= 512
    assert sum(seen_tokens) >= 2400  # the whole text went through


def test_a_long_prompt_is_read_in_slices_with_the_same_continuation(
    model: runtime.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = model.tokenizer.encode(_text(model, 700), add_special=True)
    expected_first = int(model.logits(ids)[-1].argmax())
    seen: list[int] = []
    forward = model_module.Model.forward

    def spy(self: runtime.Model, ids: list[int], cache: KVCache | None = None, **kw: object) -> torch.Tensor:
        seen.append(len(ids))
        return forward(self, ids, cache, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(model_module.Model, "forward", spy)
    assert model.generate(ids, 1, stop_at_end=False) == [expected_first]
    assert max(seen) <= model_module.SCORE_TOKENS


@pytest.mark.parametrize("window", [1, 0, 2000, 2.5, "64"])
def test_bad_windows(model: runtime.Model, window: object) -> None:
    with pytest.raises(ModelError, match=rf"window={window!r}; give a whole number of tokens from 2 to"):
        model.perplexity("some text to score", window=window)  # type: ignore[arg-type]


def test_the_default_window(model: runtime.Model) -> None:
    text = _text(model, 1100)  # longer than the 1024 context: two windows by default
    ids = model.tokenizer.encode(text, add_special=True)
    default = min(model_module.PERPLEXITY_WINDOW, model.config.context_length)
    assert model.perplexity(text).n_scored == len(ids) - math.ceil(len(ids) / default)  # one per window
