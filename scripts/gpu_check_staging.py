"""Staged loading on a CUDA GPU: the host->device link, the cost of pinning, and the staged pipeline.

    python scripts/gpu_check_staging.py --out-dir bench/gpu [--model FILE] [--quick]

Written for a lent GPU machine (torch with CUDA, labkit's core, no plotly); about 3 minutes on one
H100/H200. It writes ``staging.json`` (everything below) and ``link_profile.json`` (the pinned link,
for ``labkit.staging.LinkModel.from_json`` in the CPU notebooks) into ``--out-dir``:

1. environment: device, torch/CUDA versions, PCIe generation and width (nvidia-smi);
2. host->device copies from 1 MiB to 1 GiB: pageable, pinned (``pin_memory``) and registered
   (``cudaHostRegister`` on a numpy buffer), median of 5 timed with CUDA events, and how long the
   host waited for ``.to(device, non_blocking=True)`` to return (pageable blocks, pinned does not);
3. the cost of pinning: ``torch.empty(..., pin_memory=True)`` and ``cudaHostRegister`` times;
4. the staged executor on the GPU: all layers resident, half, none; serial and overlapped; logits
   against the CPU (max abs difference, top-1), the measured makespan against the projection from
   the same pass's stage times with this run's link, peak VRAM against the plan's GPU bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from labkit import staging

MiB = 1 << 20


def environment() -> dict:
    query = "name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current"
    try:
        smi = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        smi = f"nvidia-smi failed: {error}"
    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nvidia_smi": smi,
        "python": sys.version.split()[0],
    }


def timed_copy(source: torch.Tensor, target: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(median device seconds by CUDA events, median host seconds until ``copy_`` returned)."""
    stream = torch.cuda.current_stream()
    device_s, host_s = [], []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record(stream)
        t0 = time.perf_counter()
        target.copy_(source, non_blocking=True)
        host_s.append(time.perf_counter() - t0)
        end.record(stream)
        end.synchronize()
        device_s.append(start.elapsed_time(end) / 1e3)
    return statistics.median(device_s), statistics.median(host_s)


def h2d_sweep(sizes: list[int], repeats: int) -> list[dict]:
    cudart = torch.cuda.cudart()
    rows = []
    for size in sizes:
        target = torch.empty(size, dtype=torch.uint8, device="cuda")
        pageable = torch.ones(size, dtype=torch.uint8)
        pinned = torch.ones(size, dtype=torch.uint8, pin_memory=True)
        array = np.ones(size, dtype=np.uint8)
        registered = torch.from_numpy(array)
        t0 = time.perf_counter()
        status = cudart.cudaHostRegister(registered.data_ptr(), size, 0)
        register_s = time.perf_counter() - t0
        for kind, source in (("pageable", pageable), ("pinned", pinned), ("registered", registered)):
            if kind == "registered" and int(status) != 0:
                continue
            device_s, host_s = timed_copy(source, target, repeats)
            rows.append(
                {
                    "kind": kind,
                    "size_bytes": size,
                    "device_s": device_s,
                    "gb_per_s": size / device_s / 1e9,
                    "host_return_s": host_s,
                    "timing": "measured (CUDA events, median)",
                }
            )
        if int(status) == 0:
            cudart.cudaHostUnregister(registered.data_ptr())
        rows.append(
            {
                "kind": "cudaHostRegister cost",
                "size_bytes": size,
                "register_s": register_s,
                "timing": "measured (host clock, one call)",
            }
        )
        del target, pinned
        torch.cuda.empty_cache()
    return rows


def pinning_cost(sizes: list[int]) -> list[dict]:
    rows = []
    for size in sizes:
        t0 = time.perf_counter()
        block = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        rows.append(
            {"size_bytes": size, "pin_memory_alloc_s": time.perf_counter() - t0, "timing": "measured"}
        )
        del block
    stats = torch.cuda.memory.host_memory_stats() if hasattr(torch.cuda.memory, "host_memory_stats") else {}
    return rows + [{"host_memory_stats": {k: v for k, v in stats.items() if "bytes" in k}}]


def link_from_sweep(rows: list[dict], device: str) -> staging.LinkModel:
    """Least-squares fit ``time = latency + bytes / bandwidth`` over the pinned rows."""
    pinned = [r for r in rows if r.get("kind") == "pinned"]
    x = np.array([r["size_bytes"] for r in pinned], dtype=float)
    y = np.array([r["device_s"] for r in pinned])
    slope, intercept = np.polyfit(x, y, 1)
    return staging.LinkModel(
        f"{device}, pinned host->device",
        1 / slope / 1e9,
        max(0.0, float(intercept)),
        f"scripts/gpu_check_staging.py, {time.strftime('%Y-%m-%d')}: fit over {len(pinned)} pinned sizes",
        f"measured on {device}",
    )


def model_path(requested: str | None, folder: Path) -> Path:
    if requested:
        return Path(requested)
    try:
        from labkit.modelfiles import default_model_path

        return default_model_path()
    except Exception:  # noqa: BLE001 - not installed there: a look-alike of its shape
        from labkit.modelfiles import synthetic_llama

        return synthetic_llama(
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


def staged_runs(path: Path, link: staging.LinkModel) -> list[dict]:
    ids = list(range(100, 132))
    reference = staging.load(path, n_resident=0).logits(ids)  # the CPU, float32
    n_layers = len(staging.load(path, n_resident=0).weights.layers)
    rows = []
    for n_resident in (n_layers, n_layers // 2, 0):
        for mode in ("serial", "overlap"):
            model = staging.load(path, device="cuda", n_resident=n_resident, mode=mode)
            model.forward(ids)  # warm-up
            logits, trace = staging.trace_pass(model, ids)
            measured = trace.summary()
            projected = staging.project(trace, link).summary()
            diff = (logits[0] - reference).abs()
            rows.append(
                {
                    "n_resident": n_resident,
                    "mode": mode,
                    "measured": measured.to_dict(),
                    "projected": projected.to_dict(),
                    "measured_over_projected": measured.makespan_s / projected.makespan_s,
                    "max_abs_diff_vs_cpu": float(diff.max()),
                    "top1_agree": float((logits[0].argmax(-1) == reference.argmax(-1)).float().mean()),
                    "plan_gpu_bytes": model.weights.plan.bytes_on("gpu 0"),
                    "peak_vram_bytes": measured.peak_device_bytes,
                }
            )
            print(
                json.dumps({k: v for k, v in rows[-1].items() if k not in ("measured", "projected")}),
                flush=True,
            )
            model.weights.close()
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="bench/gpu")
    parser.add_argument("--model", default=None)
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: this script measures the GPU path; the CPU notebooks model it instead")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [MiB << k for k in (range(0, 11, 2) if args.quick else range(0, 11))]  # 1 MiB .. 1 GiB
    result: dict = {"environment": environment()}
    result["h2d"] = h2d_sweep(sizes, 3 if args.quick else 5)
    result["pinning"] = pinning_cost([64 * MiB, 256 * MiB, 1024 * MiB])
    link = link_from_sweep(result["h2d"], result["environment"]["device"])
    link.to_json(out / "link_profile.json")
    result["link"] = link.__dict__
    with tempfile.TemporaryDirectory() as tmp:
        result["staged"] = staged_runs(model_path(args.model, Path(tmp)), link)
    (out / "staging.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out / 'staging.json'} and {out / 'link_profile.json'}")


if __name__ == "__main__":
    main()
