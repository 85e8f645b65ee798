"""Record llama.cpp's outputs on the default model as a small JSON fixture for labkit's tests.

Run once (it needs llama-cpp-python; the tests only read the JSON):

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/make_llama_cpp_fixture.py

It writes ``tests/fixtures/llama_cpp/smollm2_135m_q4_1.json`` with, for the default model
(SmolLM2-135M-Instruct Q4_1):

- token ids for a set of texts (ASCII, accents, CJK, emoji, leading spaces, newlines, chat markers);
- the chat prompt llama.cpp builds from the file's template;
- for a fixed chat prompt: the top-1 token, its logit and its lead over the runner-up at every
  position, the 64 best logits at the last position with their ids, and that position's log-sum-exp;
- the greedy continuation of 32 tokens (argmax over llama.cpp's logits, no sampler), with the lead
  of the chosen token at each step.

llama.cpp runs on the CPU with 2 threads, its default float16 KV cache, no flash attention.
On this machine its AMX matmul path crashes, so the model is loaded with ``use_extra_bufts = False``.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before libggml loads

import numpy as np  # noqa: E402

from labkit.peers import open_llama  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "llama_cpp" / "smollm2_135m_q4_1.json"
# One user turn, rendered by the file's own chat template (labkit's test checks that it renders exactly this).
# A prompt with a well-determined answer: along llama.cpp's greedy path, the best token leads the
# runner-up by >= 0.5 logits at every step, more than the ~0.2 logits by which an independent float
# implementation can differ from llama.cpp's 8-bit-activation kernels (see tests/test_model_llama_cpp.py).
CHAT_USER = "Name the days of the week."
PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    f"<|im_start|>user\n{CHAT_USER}<|im_end|>\n<|im_start|>assistant\n"
)
N_GREEDY = 32
N_TOP = 64
TOKENIZER_TEXTS = [
    "Hello world! This is a test.",
    " leading space and  double  spaces",
    "   three leading spaces",
    "trailing spaces   ",
    "Café, naïve, résumé, Zürich, São Paulo, Ελληνικά, Русский",
    "日本語のテキストと中文字符，한국어",
    "emoji: 🦙🚀👍🏽 and 👨‍👩‍👧 family",
    "line one\nline two\n\n\tindented\r\nwindows\n",
    "numbers 1234567 and 3.14159, 1,000,000",
    "code: def f(x):\n    return x**2  # comment",
    "don't won't I'm they're we've you'll she'd",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "",
]
CHAT = [{"role": "user", "content": CHAT_USER}]


def tokenize(llm: object, text: str, parse_special: bool) -> list[int]:
    return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=parse_special))  # type: ignore[attr-defined]


def chat_prompt(llm: object, messages: list[dict[str, str]]) -> str:
    """llama.cpp's own rendering of the file's chat template (``llama_chat_apply_template``)."""
    import llama_cpp

    template = llama_cpp.llama_model_chat_template(llm.model, None)  # type: ignore[attr-defined]
    array = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(m["role"].encode(), m["content"].encode()) for m in messages]
    )
    buffer = ctypes.create_string_buffer(4096)
    n = llama_cpp.llama_chat_apply_template(template, array, len(messages), True, buffer, len(buffer))
    return buffer.raw[:n].decode("utf-8")


def prompt_record(llm: object, ids: list[int]) -> dict[str, object]:
    llm.reset()  # type: ignore[attr-defined]
    llm.eval(ids)  # type: ignore[attr-defined]
    scores = np.array(llm.scores[: len(ids)], dtype=np.float64)  # type: ignore[attr-defined]  # (T, vocab)
    last = scores[-1]
    top = np.argsort(-last)[:N_TOP]
    second = np.sort(scores, axis=1)[:, -2]
    return {
        "top1": scores.argmax(axis=1).tolist(),
        "top1_logit": scores.max(axis=1).tolist(),
        "top1_margin": (scores.max(axis=1) - second).tolist(),
        "last_top_ids": top.tolist(),
        "last_top_logits": last[top].tolist(),
        "last_logsumexp": float(np.log(np.exp(last - last.max()).sum()) + last.max()),
    }


def greedy(llm: object, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """The ``n`` greedy tokens after ``ids`` and, for each, its lead over the runner-up."""
    llm.reset()  # type: ignore[attr-defined]
    llm.eval(ids)  # type: ignore[attr-defined]
    out: list[int] = []
    margins: list[float] = []
    for _ in range(n):
        row = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)  # type: ignore[attr-defined]
        best_two = np.sort(row)[-2:]
        out.append(int(np.argmax(row)))
        margins.append(float(best_two[1] - best_two[0]))
        llm.eval([out[-1]])  # type: ignore[attr-defined]
    return out, margins


def main() -> int:
    import llama_cpp

    from labkit.modelfiles import default_model_path

    model_path = default_model_path()
    llm = open_llama(model_path)
    prompt_ids = tokenize(llm, PROMPT, parse_special=True)
    continuation, margins = greedy(llm, prompt_ids, N_GREEDY)
    fixture = {
        "made_by": "scripts/make_llama_cpp_fixture.py",
        "llama_cpp_python": llama_cpp.__version__,
        "model": {
            "file": model_path.name,
            "size_bytes": model_path.stat().st_size,
            "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        },
        "settings": {
            "device": "cpu",
            "n_threads": 2,
            "n_ctx": 512,
            "kv_cache": "f16",
            "flash_attn": False,
            "use_extra_bufts": False,
        },
        "tokenizer": [
            {"text": text, "parse_special": special, "ids": tokenize(llm, text, special)}
            for text in TOKENIZER_TEXTS
            for special in (True, False)
        ],
        "chat": {
            "messages": CHAT,
            "template_prompt": PROMPT,
            "llama_cpp_builtin_prompt": chat_prompt(llm, CHAT),
        },
        "prompt": {"text": PROMPT, "ids": prompt_ids, **prompt_record(llm, prompt_ids)},
        "greedy": {
            "n": N_GREEDY,
            "ids": continuation,
            "margins": margins,
            "text": llm.detokenize(continuation).decode("utf-8", errors="replace"),
        },
    }
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
