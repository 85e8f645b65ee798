"""Time one decode step replayed as a CUDA graph against the ordinary forward pass (GPU only).

    python scripts/gpu_check_graphs.py [--model FILE] [--tokens 64] [--out graphs.json]

For float32 and bfloat16 dense weights: prefill a 32-token prompt, then decode ``--tokens`` greedy
steps three ways on the same model: ``Model.forward`` (one launch per kernel, ~400 per token),
``StaticDecoder(use_graph=False)`` (the static-shape step, eager) and ``StaticDecoder(use_graph=True)``
(one graph replay per token). Reports tokens/s (measured, CUDA-synchronised wall time), the speed-up
of the graph over ``forward`` (target >= 5x) and the largest logit difference between graph and
forward along the same greedy path (target: unchanged, < 1e-3). Prints JSON; needs torch with CUDA.

Written in a session without a GPU: it has NOT been run yet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from labkit.runtime.graphs import StaticDecoder
from labkit.runtime.model import lab_text, load


def timed(step, first: int, n: int) -> tuple[float, list[torch.Tensor]]:
    """Run ``n`` greedy steps from token ``first``; (tokens/s, the logits of each step)."""
    token, logits = first, []
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        out = step(token)
        logits.append(out.detach().clone())
        token = int(out.argmax())
    torch.cuda.synchronize()
    return n / (time.perf_counter() - start), logits


def check(path: Path, dtype: torch.dtype, n: int) -> dict:
    model = load(path, device="cuda", dtype=dtype)
    prompt = model.tokenizer.encode(lab_text())[:32]
    cache = model.new_cache()
    first = int(model.forward(prompt, cache)[0, -1].argmax())
    plain_tok_s, plain = timed(lambda t: model.forward([t], cache)[0, -1], first, n)
    result = {"dtype": str(dtype), "forward_tok_s": plain_tok_s}
    for use_graph in (False, True):
        decoder = StaticDecoder(model, len(prompt) + n + 4, use_graph=use_graph)
        decoder.prefill(prompt)
        if use_graph:
            decoder.step(first)  # records the graph (and decodes one token): not timed
            decoder = StaticDecoder(model, len(prompt) + n + 4, use_graph=True)
            decoder.prefill(prompt)
        tok_s, logits = timed(decoder.step, first, n)
        key = "graph" if use_graph else "static_eager"
        result[f"{key}_tok_s"] = tok_s
        result[f"{key}_max_logit_diff"] = max(
            float((a - b).abs().max()) for a, b in zip(logits, plain, strict=True)
        )
    result["graph_speedup"] = result["graph_tok_s"] / plain_tok_s
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a llama GGUF (default: the installed default model)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return 0
    if args.model:
        path = Path(args.model)
    else:
        from labkit.modelfiles import default_model_path

        path = default_model_path()
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "model": path.name,
        "runs": [check(path, dtype, args.tokens) for dtype in (torch.float32, torch.bfloat16)],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
