"""Staged loading (chapter 6): labkit's streamed decode against accelerate's disk offload, in one run.

    flock /tmp/labkit-bench.lock .venv/bin/python bench/bench_staging.py [--quick] [--no-write]

Four measurements, all on this machine's CPU (no GPU here: the CUDA path is not run by this script;
``scripts/gpu_check_staging.py`` is the GPU one):

1. **Peer.** A synthetic llama written as F16 GGUF (12 layers, dim 1024, ~370 MB) and the same
   float16 weights in a ``transformers`` ``LlamaForCausalLM``. accelerate gets the RAM budget at which
   its ``infer_auto_device_map`` puts 8 of the 12 layers on disk (``offload_folder``); labkit gets the
   same budget (``staging.load(ram=...)``, float16). Both warm (files in the page cache after a
   warm-up), greedy decode at batch 1, rounds alternated; tokens/s measured. accelerate and
   transformers are bench-only dependencies.
2. **Curve.** Decode tokens/s against resident layers (``n_resident``, llama.cpp's ``-ngl``) for the
   default model (float32) and for the peer model (float16; its budget is 1/4 of its size).
3. **Overlap.** One decode step traced span by span, overlapped and serial, warm and cold page cache,
   ``io="pread"`` and ``io="mmap"``: makespan against the pipeline bound ``max(lane busy)`` and the
   fill/drain bound from the same pass (median of 3).
4. **Memory.** In a child process: peak RSS while loading and decoding, minus the RSS after imports
   and the tokenizer (measured by ``staging.load``), against the bytes the plan holds
   (``Plan.memory_bytes``).

Writes ``bench/results/staging.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, other_cpu_share

from labkit import gguf, staging
from labkit.modelfiles import default_model_path, synthetic_llama
from labkit.runtime.timing import time_decode

RESULTS = Path(__file__).parent / "results" / "staging.md"
MiB = 1 << 20
PROMPT = list(range(100, 108))
PEER_SHAPE = {
    "n_layers": 12,
    "dim": 1024,
    "n_heads": 16,
    "n_kv_heads": 16,
    "vocab_size": 32000,
    "context_length": 512,
    "qtype": "F16",
}


# --- the peer: transformers + accelerate on the same float16 weights -------------------------------------


def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's converter permutation of attn_q/attn_k (GGUF rotates adjacent pairs, HF halves)."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_model(path: Path):  # noqa: ANN201 - a transformers model
    """A ``LlamaForCausalLM`` holding exactly the GGUF file's float16 weights."""
    from accelerate import init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    with gguf.open(path) as f:
        m = f.metadata
        n_heads, n_kv = int(m["llama.attention.head_count"]), int(m["llama.attention.head_count_kv"])
        config = LlamaConfig(
            vocab_size=f.tensors["token_embd.weight"].shape[0],
            hidden_size=int(m["llama.embedding_length"]),
            intermediate_size=int(m["llama.feed_forward_length"]),
            num_hidden_layers=int(m["llama.block_count"]),
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            max_position_embeddings=int(m["llama.context_length"]),
            tie_word_embeddings=True,
        )
        names = {
            "attn_norm": "input_layernorm",
            "ffn_norm": "post_attention_layernorm",
            "attn_q": "self_attn.q_proj",
            "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj",
            "ffn_gate": "mlp.gate_proj",
            "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj",
        }
        state = {
            "model.embed_tokens.weight": f.tensor("token_embd.weight", torch.float16),
            "model.norm.weight": f.tensor("output_norm.weight", torch.float16),
        }
        for i in range(config.num_hidden_layers):
            for short, hf_name in names.items():
                w = f.tensor(f"blk.{i}.{short}.weight", torch.float16)
                if short in ("attn_q", "attn_k"):
                    w = unpermute(w, n_heads if short == "attn_q" else n_kv)
                state[f"model.layers.{i}.{hf_name}.weight"] = w
    with init_empty_weights():
        model = LlamaForCausalLM(config)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model.to(torch.float16).eval()


def disk_layers(device_map: dict, n_layers: int) -> int:
    """How many decoder layers a device_map puts on disk (a module inherits its longest-prefix entry)."""

    def place(name: str) -> object:
        keys = [k for k in device_map if k == "" or name == k or name.startswith(k + ".")]
        return device_map[max(keys, key=len)]

    return sum(1 for i in range(n_layers) if place(f"model.layers.{i}") == "disk")


def accelerate_peer(path: Path, offload: Path, n_disk: int = 8) -> tuple[object, int, dict]:
    """The peer model dispatched by accelerate, and the RAM budget at which ``n_disk`` layers go to disk."""
    from accelerate import dispatch_model, infer_auto_device_map

    model = hf_model(path)
    n_layers = model.config.num_hidden_layers
    for budget in range(MiB, 1024 * MiB, MiB):
        device_map = infer_auto_device_map(
            model,
            max_memory={"cpu": budget, "disk": 1 << 40},
            no_split_module_classes=["LlamaDecoderLayer"],
            dtype=torch.float16,
        )
        if disk_layers(device_map, n_layers) <= n_disk and device_map.get("model.embed_tokens") != "disk":
            break
    dispatched = dispatch_model(model, device_map=device_map, offload_dir=str(offload))
    return dispatched, budget, device_map


@torch.inference_mode()
def hf_decode_tokens_per_s(model, n_tokens: int) -> float:  # noqa: ANN001
    """Greedy decode at batch 1 with the KV cache: prompt and one step untimed, then ``n_tokens`` timed."""
    out = model(input_ids=torch.tensor([PROMPT]), use_cache=True)
    past, token = out.past_key_values, out.logits[0, -1].argmax()
    out = model(input_ids=token.view(1, 1), past_key_values=past, use_cache=True)
    past, token = out.past_key_values, out.logits[0, -1].argmax()
    start = time.perf_counter()
    for _ in range(n_tokens):
        out = model(input_ids=token.view(1, 1), past_key_values=past, use_cache=True)
        past, token = out.past_key_values, out.logits[0, -1].argmax()
    return n_tokens / (time.perf_counter() - start)


def peer_section(workdir: Path, n_tokens: int, rounds: int) -> dict:
    path = synthetic_llama(workdir / "peer-f16.gguf", **PEER_SHAPE)
    acc, budget, device_map = accelerate_peer(path, workdir / "offload")
    lab = staging.load(path, ram=budget, dtype=torch.float16, context_tokens=64)
    lab_mmap = staging.load(path, ram=budget, dtype=torch.float16, context_tokens=64, io="mmap")
    acc_disk = disk_layers(device_map, PEER_SHAPE["n_layers"])
    rows: dict[str, list[float]] = {"accelerate": [], "labkit": [], "labkit_mmap": []}
    shares = []
    hf_decode_tokens_per_s(acc, 2), time_decode(lab, PROMPT, 2)  # warm-up: page cache, allocators, threads
    time_decode(lab_mmap, PROMPT, 2)
    for _ in range(rounds):  # the three runners alternate, so a slow minute hurts all alike
        (a, share_a) = other_cpu_share(lambda: hf_decode_tokens_per_s(acc, n_tokens))
        (b, share_b) = other_cpu_share(lambda: time_decode(lab, PROMPT, n_tokens).tokens_per_s)
        (c, share_c) = other_cpu_share(lambda: time_decode(lab_mmap, PROMPT, n_tokens).tokens_per_s)
        rows["accelerate"].append(a)
        rows["labkit"].append(b)
        rows["labkit_mmap"].append(c)
        shares += [share_a, share_b, share_c]
    plan = lab.weights.plan
    lab.weights.close()
    lab_mmap.weights.close()
    return {
        "file_bytes": path.stat().st_size,
        "budget": budget,
        "accelerate_disk_layers": acc_disk,
        "labkit_streamed": len(plan.streamed),
        "labkit_resident": plan.n_resident,
        "accelerate_tokens_per_s": statistics.median(rows["accelerate"]),
        "labkit_tokens_per_s": statistics.median(rows["labkit"]),
        "labkit_mmap_tokens_per_s": statistics.median(rows["labkit_mmap"]),
        "rounds": rows,
        "other_cpu_share": max(shares),
        "path": str(path),
        "plan": plan.explain(),
    }


# --- the curve, the overlap, the memory ---------------------------------------------------------------------


def curve_section(path: Path, counts: list[int], dtype: torch.dtype, n_tokens: int, label: str) -> list[dict]:
    rows = []
    for n in counts:
        model = staging.load(path, n_resident=n, dtype=dtype, context_tokens=64)
        time_decode(model, PROMPT, 1)  # warm-up
        timing = time_decode(model, PROMPT, n_tokens)
        rows.append(
            {
                "label": label,
                "n_resident": n,
                "tokens_per_s": timing.tokens_per_s,
                "read_bytes_per_token": model.weights.bytes_per_pass()["read"],
                "dequantized_bytes_per_token": model.weights.bytes_per_pass()["dequantize"],
            }
        )
        model.weights.close()
    return rows


def decode_step_trace(model, cold: bool = False) -> staging.Trace:  # noqa: ANN001
    cache = model.new_cache()
    token = int(model.forward(PROMPT, cache)[0, -1].argmax())
    _, trace = staging.trace_pass(model, [token], cache, cold=cold)
    return trace


def overlap_section(
    path: Path,
    ram: int | None,
    dtype: torch.dtype,
    label: str,
    n_resident: int | None,
    io: str = "pread",
    cold: bool = False,
) -> dict:
    out: dict = {"label": f"{label}, io={io}, {'cold' if cold else 'warm'}"}
    for mode in ("serial", "overlap"):
        model = staging.load(
            path, ram=ram, dtype=dtype, mode=mode, n_resident=n_resident, context_tokens=64, io=io
        )
        decode_step_trace(model)  # warm-up
        summaries = [decode_step_trace(model, cold).summary() for _ in range(3)]
        model.weights.close()
        s = sorted(summaries, key=lambda x: x.makespan_s)[1]  # the median pass
        out[mode] = {
            "makespan_s": s.makespan_s,
            "serial_sum_s": s.serial_sum_s,
            "bound_s": s.pipeline_bound_s,
            "fill_drain_s": s.fill_drain_bound_s,
            "critical": s.critical_lane,
            "lanes": s.lane_busy_s,
        }
    return out


def child_rss(path: str, ram: int, dtype: str, n_tokens: int, io: str) -> None:
    """Run in a child: RSS after imports, then the peak while loading and decoding (printed as JSON).

    The baseline is taken after a tiny model has run through the same path, so that the code it
    runs (torch's kernels, the tokenizer library: the same for any model) is paged in already and
    the peak counts data. ``staging.load`` measures what its tokenizer took
    (``weights.tokenizer_bytes``): outside the plan.
    """
    from labkit.staging.slots import peak_rss_bytes, reset_peak_rss

    with tempfile.TemporaryDirectory() as tmp:  # page in the code (torch's kernels, the tokenizer's)
        tiny = synthetic_llama(Path(tmp) / "tiny.gguf", n_layers=2, dim=64, n_heads=2, n_kv_heads=2)
        warm = staging.load(tiny, n_resident=1, dtype=getattr(torch, dtype), context_tokens=64, io=io)
        time_decode(warm, PROMPT, n_tokens)
        warm.weights.close()
        del warm
    reset_peak_rss()
    baseline, file_before = peak_rss_bytes() or 0, _rss_file_bytes()
    model = staging.load(path, ram=ram, dtype=getattr(torch, dtype), context_tokens=64, io=io)
    time_decode(model, PROMPT, n_tokens)
    peak = peak_rss_bytes() or 0
    file_grown = _rss_file_bytes() - file_before  # library code paged in, and mapped file pages
    plan = model.weights.plan
    print(
        json.dumps(
            {
                "baseline": baseline,
                "peak": peak,
                "plan_bytes": plan.memory_bytes,
                "n_resident": plan.n_resident,
                "tokenizer": model.weights.tokenizer_bytes or 0,
                "file_backed": file_grown,
            }
        )
    )


def _rss_file_bytes() -> int:
    """File-backed resident pages of this process (``RssFile``: shared-library code, mapped files)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_section(cases: list[tuple[str, Path, int, str, str]], n_tokens: int) -> list[dict]:
    rows = []
    for label, path, ram, dtype, io in cases:
        out = subprocess.run(
            [sys.executable, __file__, "--child-rss", str(path), str(ram), dtype, str(n_tokens), io],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(
            {"label": f"{label}, io={io}", "ram": ram, **json.loads(out.stdout.strip().splitlines()[-1])}
        )
    return rows


# --- the report ----------------------------------------------------------------------------------------------


def report(peer: dict, curves: list[dict], overlaps: list[dict], memory: list[dict], quick: bool) -> str:
    ratio = peer["labkit_tokens_per_s"] / peer["accelerate_tokens_per_s"]
    lines = [
        f"# Staged loading bench ({datetime.date.today()}, {'QUICK: numbers mean little' if quick else 'full run'})",
        "",
        f"Machine: {machine()}; torch {torch.__version__}. Every time is **measured** on this CPU; sizes are "
        "counted. No GPU: the CUDA path (pinned buffers, side stream, events) was **not run** here.",
        "",
        "## Peer: labkit streamed vs accelerate disk offload (same float16 weights, same RAM budget, warm)",
        "",
        f"Model: synthetic llama {PEER_SHAPE}, {peer['file_bytes'] / MiB:.0f} MiB. "
        f"Budget {peer['budget'] / MiB:.0f} MiB: "
        f"accelerate put {peer['accelerate_disk_layers']} of 12 layers on disk; labkit's plan streams "
        f"{peer['labkit_streamed']} of 13 layers (its budget also holds the slots, staging buffers and activations).",
        "",
        "| runner | decode tokens/s (median) | rounds |",
        "|---|---:|---|",
        f"| accelerate (device_map + offload_folder) | {peer['accelerate_tokens_per_s']:.2f} | "
        + ", ".join(f"{x:.2f}" for x in peer["rounds"]["accelerate"])
        + " |",
        "| labkit staging.load(ram=budget) (io='pread': read into the slot, compute) | "
        f"{peer['labkit_tokens_per_s']:.2f} | "
        + ", ".join(f"{x:.2f}" for x in peer["rounds"]["labkit"])
        + " |",
        f"| labkit staging.load(ram=budget, io='mmap') (computed on the mapped file) | "
        f"{peer['labkit_mmap_tokens_per_s']:.2f} | "
        + ", ".join(f"{x:.2f}" for x in peer["rounds"]["labkit_mmap"])
        + " |",
        "",
        f"Ratio labkit / accelerate: **{ratio:.2f}x** with io='pread', "
        f"**{peer['labkit_mmap_tokens_per_s'] / peer['accelerate_tokens_per_s']:.2f}x** with io='mmap' "
        "(target >= 2x, moonshot 5x). Other processes' CPU share "
        f"while measured: up to {peer['other_cpu_share']:.0%}.",
        "",
        "```",
        peer["plan"],
        "```",
        "",
        "## Tokens/s against resident layers",
        "",
        "| model | resident | tokens/s | MiB read / token | MiB dequantized / token |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['label']} | {r['n_resident']} | {r['tokens_per_s']:.2f} | {r['read_bytes_per_token'] / MiB:.1f} | "
        f"{r['dequantized_bytes_per_token'] / MiB:.1f} |"
        for r in curves
    ]
    lines += [
        "",
        "## Overlap: one decode step, makespan against the pipeline bounds (median of 3)",
        "",
        "Bound: `max(lane busy)`. Fill/drain bound: that plus what no schedule can hide (the first layer "
        "must be read before anything computes; after the last read, that layer and the resident layers "
        "behind it still compute); `TraceSummary.fill_drain_bound_s`. Cold: the file evicted from the page "
        "cache before the pass (`trace_pass(cold=True)`).",
        "",
        "| case | mode | makespan ms | serial sum ms | bound ms | makespan / bound "
        "| fill/drain bound ms | makespan / fill-drain | lanes read / copy / compute ms | critical lane |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for o in overlaps:
        for mode in ("serial", "overlap"):
            m = o[mode]
            lanes = " / ".join(f"{m['lanes'][lane] * 1e3:.1f}" for lane in ("read", "copy", "compute"))
            lines.append(
                f"| {o['label']} | {mode} | {m['makespan_s'] * 1e3:.1f} | {m['serial_sum_s'] * 1e3:.1f} | "
                f"{m['bound_s'] * 1e3:.1f} | {m['makespan_s'] / m['bound_s']:.2f} | "
                f"{m['fill_drain_s'] * 1e3:.1f} | {m['makespan_s'] / m['fill_drain_s']:.2f} | {lanes} | "
                f"{m['critical']} |"
            )
    lines += [
        "",
        "## Memory: peak RSS over the RSS after imports and a tiny model's run, against the plan (child process)",
        "",
        "The tokenizer is not in the plan (weights, slots, buffers, activations); `staging.load` measures "
        "the RSS it took as it built it (`weights.tokenizer_bytes`). The baseline is taken after a tiny "
        "synthetic llama ran through the same path, so the code (torch's kernels, the tokenizer library; "
        "about 17 MiB, the same for any model) is paged in already. File-backed growth (`RssFile`, part of "
        "the peak): code paged in after that, and with io=mmap the layers in flight.",
        "",
        "| case | budget MiB | resident layers | plan MiB | peak - baseline MiB | ratio "
        "| tokenizer MiB (measured, outside the plan) | ratio without it | file-backed growth MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['label']} | {r['ram'] / MiB:.0f} | {r['n_resident']} | {r['plan_bytes'] / MiB:.1f} | "
        f"{(r['peak'] - r['baseline']) / MiB:.1f} | {(r['peak'] - r['baseline']) / r['plan_bytes']:.2f} | "
        f"{r['tokenizer'] / MiB:.1f} | {(r['peak'] - r['baseline'] - r['tokenizer']) / r['plan_bytes']:.2f} | "
        f"{r['file_backed'] / MiB:.1f} |"
        for r in memory
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: fewer tokens and points")
    parser.add_argument("--no-write", action="store_true", help="print the report only")
    parser.add_argument(
        "--tiny", action="store_true", help="a functional check on tiny shapes (times mean nothing)"
    )
    parser.add_argument(
        "--child-rss", nargs=5, metavar=("PATH", "RAM", "DTYPE", "TOKENS", "IO"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child_rss:
        path, ram, dtype, n_tokens, io = args.child_rss
        child_rss(path, int(ram), dtype, int(n_tokens), io)
        return
    n_tokens, rounds = (2, 1) if args.quick or args.tiny else (6, 3)
    if args.tiny:
        PEER_SHAPE.update(dim=128, n_heads=4, n_kv_heads=4, vocab_size=512)
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        workdir = Path(tmp)
        peer = peer_section(workdir, n_tokens, rounds)
        print(
            f"peer: labkit {peer['labkit_tokens_per_s']:.2f} vs accelerate {peer['accelerate_tokens_per_s']:.2f} tok/s",
            flush=True,
        )
        peer_path, default = Path(peer["path"]), default_model_path()
        counts = [0, 31] if args.tiny else [0, 8, 16, 31] if args.quick else [0, 10, 20, 31]
        curves = curve_section(default, counts, torch.float32, n_tokens, "SmolLM2-135M Q4_1, float32")
        curves += curve_section(
            peer_path,
            [0, 4, 8, 13] if args.quick else [0, 4, 8, 13],
            torch.float16,
            n_tokens,
            "synthetic F16 370 MB, float16",
        )
        print("curves done", flush=True)
        overlaps = [
            overlap_section(*case, io=io, cold=cold)
            for cold in (False, True)
            for io in ("pread", "mmap")
            for case in (
                (default, 256 * MiB, torch.float32, "SmolLM2 float32, 256 MiB", None),
                (peer_path, None, torch.float16, "synthetic F16, 4 resident", 4),
            )
        ]
        memory = memory_section(
            [
                (label, model_path, ram, dtype, io)
                for io in ("pread", "mmap")
                for label, model_path, ram, dtype in (
                    ("SmolLM2 float32", default, 256 * MiB, "float32"),
                    ("synthetic F16 float16", peer_path, peer["budget"], "float16"),
                )
            ],
            n_tokens,
        )
    text = report(peer, curves, overlaps, memory, args.quick)
    print(text)
    if not (args.no_write or args.quick or args.tiny):
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
