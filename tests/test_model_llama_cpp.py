"""labkit's runtime against llama.cpp on the default model (SmolLM2-135M-Instruct Q4_1).

Two kinds of test:
- against ``tests/fixtures/llama_cpp/smollm2_135m_q4_1.json`` (made by scripts/make_llama_cpp_fixture.py):
  always run;
- live against llama-cpp-python (marker ``llama_cpp``): skipped when it is not installed.

How close can two correct implementations be? llama.cpp's CPU kernels never multiply float
activations by Q4_1 weights: they first round each block of 32 activations to 8-bit integers
(Q8_1), and its KV cache is float16. labkit multiplies in float32. On an F32 copy of the model the
two agree to ~0.01 logits; on the Q4_1 file the 8-bit rounding alone moves the logits by ~0.15 on
average (up to ~1). On the fixture's prompt that noise changes no decision: the top-1 token must be
the same at every position. On other text (the live test), where llama.cpp's best token leads the
runner-up by less than ``NEAR_TIE`` logits, either choice is within numerical noise; everywhere else
the top-1 token must be the same there too.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labkit.runtime.model import lab_text, load

FIXTURE = Path(__file__).parent / "fixtures" / "llama_cpp" / "smollm2_135m_q4_1.json"
NEAR_TIE = 0.25  # logits; measured disagreements on other text all had a llama.cpp margin below 0.18


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def smol(default_model: Path):
    return load(default_model)


def test_fixture_was_made_from_the_installed_model(default_model: Path, reference: dict) -> None:
    assert reference["model"]["file"] == default_model.name
    assert reference["model"]["sha256"] == hashlib.sha256(default_model.read_bytes()).hexdigest()


def test_token_ids_equal_llama_cpp(smol, reference: dict) -> None:
    for case in reference["tokenizer"]:
        ids = smol.tokenizer.encode(case["text"], parse_special=case["parse_special"])
        assert ids == case["ids"], case["text"]
        if not case["parse_special"]:
            assert smol.tokenizer.decode(ids) == case["text"]


def test_chat_template_renders_the_fixture_prompt(smol, reference: dict) -> None:
    chat = reference["chat"]
    rendered = smol.tokenizer.apply_chat_template(chat["messages"])
    assert rendered == chat["template_prompt"] == reference["prompt"]["text"]
    # llama.cpp's built-in "chatml" formatter drops the template's default system turn; the rest is the same.
    assert rendered.endswith(chat["llama_cpp_builtin_prompt"])


def test_top1_token_equals_llama_cpp_at_every_position(smol, reference: dict) -> None:
    prompt = reference["prompt"]
    logits = smol.logits(prompt["ids"])  # (T, vocab)
    assert len(prompt["top1"]) == len(prompt["ids"])
    assert logits.argmax(-1).tolist() == prompt["top1"]  # all 37 positions, near-ties included
    top1_logit = logits.max(-1).values.double()
    assert (top1_logit - torch.tensor(prompt["top1_logit"])).abs().max() < 1.0  # measured: 0.67


def test_last_position_logits_are_close(smol, reference: dict) -> None:
    prompt = reference["prompt"]
    last = smol.logits(prompt["ids"])[-1].double()  # (vocab,)
    ids = torch.tensor(prompt["last_top_ids"])
    theirs = torch.tensor(prompt["last_top_logits"], dtype=torch.float64)
    assert (last[ids] - theirs).abs().max() < 0.4  # measured: 0.258
    assert F.cosine_similarity(last[ids], theirs, dim=0) > 0.9999
    their_log_probs = theirs - prompt["last_logsumexp"]
    our_log_probs = last[ids] - torch.logsumexp(last, 0)
    assert (our_log_probs - their_log_probs)[:8].abs().max() < 0.5


def test_greedy_continuation_of_32_tokens_is_identical(smol, reference: dict) -> None:
    greedy = reference["greedy"]
    assert min(greedy["margins"]) > NEAR_TIE  # the fixture prompt was chosen to have no near-ties
    ours = smol.generate(reference["prompt"]["ids"], greedy["n"], stop_at_end=False)
    assert ours == greedy["ids"]
    assert smol.tokenizer.decode(ours) == greedy["text"]


def test_quantized_weights_mode_gives_the_same_continuation(default_model: Path, reference: dict) -> None:
    packed = load(default_model, weights="quantized")
    assert packed.generate(reference["prompt"]["ids"], 8, stop_at_end=False) == reference["greedy"]["ids"][:8]


# ---- live cross-checks against llama-cpp-python ------------------------------------------------


@pytest.fixture(scope="module")
def llama(default_model: Path):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    pytest.importorskip("llama_cpp")
    from labkit.peers import open_llama

    return open_llama(default_model, n_ctx=1024)


def _random_texts(n: int, seed: int = 0) -> list[str]:
    pieces = [
        "hello",
        " world",
        "  ",
        "\n",
        "\n\n",
        "\t",
        "Ünïcödé",
        " café",
        "日本語",
        "中文",
        "한국어",
        "🦙",
        "👍🏽",
        "👨‍👩‍👧",
        "123",
        "4.56",
        "'s",
        "I'm",
        " don't",
        "<|im_start|>",
        "<|im_end|>",
        "http://x.y/z?q=1",
        "Ω≈ç√",
        "ß",
        "ﬁ",
        "\u00a0",
        "   ",
        "!!",
        "--",
        "Zürich",
        "emoji🚀text",
    ]
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) for _ in range(n)]


@pytest.mark.llama_cpp
def test_live_token_ids_equal_llama_cpp(llama, smol) -> None:
    for text in _random_texts(200):
        for special in (True, False):
            theirs = llama.tokenize(text.encode("utf-8"), add_bos=False, special=special)
            assert smol.tokenizer.encode(text, parse_special=special) == theirs, (text, special)


@pytest.mark.llama_cpp
def test_live_logits_on_the_lab_text(llama, smol) -> None:
    ids = smol.tokenizer.encode(lab_text()[:1200])
    llama.reset()
    llama.eval(ids)
    theirs = torch.tensor(np.array(llama.scores[: len(ids)]), dtype=torch.float64)  # (T, vocab)
    ours = smol.logits(ids).double()
    best_two = theirs.topk(2, dim=-1).values
    margin = best_two[:, 0] - best_two[:, 1]
    agree = ours.argmax(-1) == theirs.argmax(-1)
    assert bool(agree[margin > NEAR_TIE].all())
    assert agree.double().mean() > 0.9
    cosine = F.cosine_similarity(ours, theirs, dim=-1)  # (T,)
    assert cosine.median() > 0.9995 and cosine.min() > 0.99
    assert (ours - theirs).abs().mean() < 0.3
