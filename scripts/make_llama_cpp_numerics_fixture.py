"""Record llama.cpp's last-position logits and 64-token greedy continuations on 10 varied prompts.

Run once (it needs llama-cpp-python; the tests only read the JSON):

    .venv/bin/python scripts/make_llama_cpp_numerics_fixture.py

It writes ``tests/fixtures/llama_cpp/smollm2_135m_q4_1_numerics.json``: for each prompt (prose,
code, a list, numbers, a chat turn, another language, ...) its token ids (labkit's tokenizer is
checked equal to llama.cpp's elsewhere), llama.cpp's 64 largest logits at the last position with
their ids, and its greedy continuation of 64 tokens (argmax over its logits, no sampler) with the
lead of the chosen token over the runner-up at each step. ``tests/test_runtime_ggml.py`` checks
labkit's ``activations="q8"`` against it (equal bit for bit); ``bench/bench_runtime.py`` reports
both modes against it in ``bench/results/runtime.md``.

llama.cpp runs on the CPU with 2 threads, its default float16 KV cache, no flash attention,
``use_extra_bufts = False`` (``labkit.peers.open_llama``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault(
    "OMP_WAIT_POLICY", "PASSIVE"
)  # numerics do not depend on it; a shared machine's speed does

import numpy as np  # noqa: E402

from labkit.peers import open_llama  # noqa: E402

FIXTURE = (
    Path(__file__).resolve().parents[1]
    / "tests"
    / "fixtures"
    / "llama_cpp"
    / "smollm2_135m_q4_1_numerics.json"
)
N_GREEDY = 64
N_TOP = 64
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    ",
    "Ingredients for pancakes:\n1.",
    "The three primary colors are",
    "In 1969, the first humans",
    "<|im_start|>user\nWhat is a GPU?<|im_end|>\n<|im_start|>assistant\n",
    "La tour Eiffel se trouve à",
    "To read a file in Python, you",
    "The weights of a neural network are stored",
]


def record(llm: object, ids: list[int]) -> dict[str, object]:
    """llama.cpp's top logits at the last prompt position and its greedy continuation."""
    llm.reset()  # type: ignore[attr-defined]
    llm.eval(ids)  # type: ignore[attr-defined]
    last = np.asarray(llm.scores[len(ids) - 1], dtype=np.float64)  # type: ignore[attr-defined]
    top = np.argsort(-last)[:N_TOP]
    out: list[int] = []
    margins: list[float] = []
    for _ in range(N_GREEDY):
        row = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)  # type: ignore[attr-defined]
        best_two = np.sort(row)[-2:]
        out.append(int(np.argmax(row)))
        margins.append(float(best_two[1] - best_two[0]))
        llm.eval([out[-1]])  # type: ignore[attr-defined]
    return {
        "ids": ids,
        "last_top_ids": top.tolist(),
        "last_top_logits": last[top].tolist(),
        "greedy_ids": out,
        "greedy_margins": margins,
    }


def main() -> int:
    import llama_cpp

    from labkit.modelfiles import default_model_path

    model_path = default_model_path()
    llm = open_llama(model_path, n_ctx=256)
    cases = []
    for text in PROMPTS:
        ids = list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        cases.append({"text": text, **record(llm, ids)})
    fixture = {
        "made_by": "scripts/make_llama_cpp_numerics_fixture.py",
        "llama_cpp_python": llama_cpp.__version__,
        "model": {
            "file": model_path.name,
            "size_bytes": model_path.stat().st_size,
            "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        },
        "settings": {
            "device": "cpu",
            "n_threads": 2,
            "n_ctx": 256,
            "kv_cache": "f16",
            "flash_attn": False,
            "use_extra_bufts": False,
            "use_mmap": True,
        },
        "n_greedy": N_GREEDY,
        "cases": cases,
    }
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
