"""Run labkit's llama runtime on a CUDA GPU and time its host<->device hops with CUDA events.

    python scripts/gpu_check_runtime.py [--model FILE] [--tokens 32] [--out result.json]

For each weight mode (dequantized, quantized) and dtype (float32, bfloat16) it loads the model on
the GPU, checks the logits against the CPU run (max abs difference, top-1 agreement), generates
``--tokens`` tokens greedily with a ``TransferLog``, and reports per hop: bytes per token, and for the
hops that cross the PCIe bus (input ids in, logits out) the time measured with CUDA events.
Every hop's bytes are counted exactly (``size_basis`` "counted"); hops inside the GPU (weights read
from VRAM, KV cache) are not timed (``time_basis`` "modelled").

Without ``--model`` it uses the default model when it is installed; otherwise it writes a synthetic
llama of SmolLM2-135M's shape (30 blocks, width 576, random Q4_1 weights: the text is noise, the
bytes and times are real). Needs torch with CUDA and labkit's core (no plotly). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from labkit.runtime.model import lab_text, load
from labkit.runtime.transfers import TransferLog, bytes_by_hop


def model_path(requested: str | None, folder: Path) -> tuple[Path, str]:
    if requested:
        return Path(requested), "given"
    try:
        from labkit.modelfiles import default_model_path

        return default_model_path(), "default model"
    except Exception:  # not installed on the GPU machine: build a look-alike
        from labkit.modelfiles import synthetic_llama

        path = synthetic_llama(
            folder / "smollm2_shaped.gguf",
            n_layers=30,
            dim=576,
            n_heads=9,
            n_kv_heads=3,
            ffn_dim=1536,
            vocab_size=49152,
            context_length=2048,
            qtype="Q4_1",
        )
        return path, "synthetic llama of SmolLM2-135M's shape (random weights)"


def run_one(
    path: Path, weights: str, dtype: torch.dtype, ids: list[int], reference: torch.Tensor, n_tokens: int
) -> dict:
    start = time.perf_counter()
    model = load(path, device="cuda", dtype=dtype, weights=weights)
    torch.cuda.synchronize()
    load_s = time.perf_counter() - start
    logits = model.logits(ids)  # (T, vocab) on the host
    log, cache = TransferLog(device=torch.device("cuda")), model.new_cache()
    token = int(model.forward(ids, cache, log=log)[0, -1].argmax())
    for _ in range(3):  # warm-up steps (kernels, allocator)
        log.next_step()
        token = int(model.forward([token], cache, log=log)[0, -1].argmax())
    first_timed = log.step + 1
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n_tokens):
        log.next_step()
        token = int(model.forward([token], cache, log=log)[0, -1].argmax())
    elapsed_s = time.perf_counter() - start
    decode = [r for r in log.records if r.step >= first_timed]
    measured = {}
    for hop in ("input ids in", "logits out"):
        rows = [r for r in decode if r.hop == hop and r.time_basis == "measured"]
        median_s = statistics.median(r.elapsed_s for r in rows)
        measured[hop] = {
            "size_bytes": rows[0].size_bytes,
            "median_s": median_s,
            "gb_per_s": rows[0].size_bytes / median_s / 1e9,
            "n": len(rows),
            "source": rows[0].source,
            "destination": rows[0].destination,
        }
    per_token = {hop: size // n_tokens for hop, size in bytes_by_hop(decode).items()}
    return {
        "weights": weights,
        "dtype": str(dtype).removeprefix("torch."),
        "load_s": load_s,
        "resident_weight_bytes": model.weights.total_bytes,
        "max_abs_diff_vs_cpu": float((logits - reference).abs().max()),
        "top1_agreement_vs_cpu": float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
        "decode_tokens_per_s": n_tokens / elapsed_s,
        "measured_hops": measured,
        "bytes_per_token_by_hop": per_token,
        "modelled_hops": sorted({r.hop for r in decode if r.time_basis == "modelled"}),
        "kv_cache_bytes_at_end": cache.size_bytes,
        "max_memory_allocated_bytes": torch.cuda.max_memory_allocated(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        return 1
    with tempfile.TemporaryDirectory() as folder:
        path, origin = model_path(args.model, Path(folder))
        cpu = load(path)
        ids = cpu.tokenizer.encode(lab_text())[:64]
        reference = cpu.logits(ids)
        del cpu
        result = {
            "device": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "model": path.name,
            "model_origin": origin,
            "prompt_tokens": len(ids),
            "decode_tokens": args.tokens,
            "runs": [],
        }
        for weights in ("dequantized", "quantized"):
            for dtype in (torch.float32, torch.bfloat16):
                torch.cuda.reset_peak_memory_stats()
                result["runs"].append(run_one(path, weights, dtype, ids, reference, args.tokens))
                torch.cuda.empty_cache()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
