"""``labkit stage FILE --ram 300M``: plan a model under a budget, and optionally run one traced pass.

Also the ``--vram`` / ``--ram`` options of ``labkit generate`` and ``labkit perplexity``: with a
budget, the layers beyond it stream from the file every pass (``labkit.staging.load``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from labkit.cli.common import MEASURED, parse_size, positive_int
from labkit.errors import LabkitError


def add_budget_options(parser: argparse.ArgumentParser) -> None:
    """``--vram SIZE`` and ``--ram SIZE`` (e.g. ``64M``, ``1G``), and ``--io``, on a model command."""
    parser.add_argument(
        "--vram",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="VRAM budget: layers beyond it stream from the file each pass (on a CPU: the RAM budget)",
    )
    parser.add_argument(
        "--ram",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="RAM budget: layers beyond it stream from the file each pass",
    )
    parser.add_argument(
        "--io",
        choices=["pread", "odirect", "mmap"],
        default="pread",
        help="how streamed layers are read: pread (default), odirect (around the page cache), or mmap "
        "(CPU only: computed on the mapped file; faster, but a file changed meanwhile crashes the process)",
    )


def load_streamed(args: argparse.Namespace, dtype: Any) -> object:
    """A model with only the planned layers resident (``labkit.staging.load``)."""
    from labkit import staging

    if getattr(args, "weights", "dequantized") != "dequantized":
        raise LabkitError(
            "--weights quantized does not combine with --vram/--ram: streamed layers are read as "
            "file bytes and dequantized into a slot each pass; drop --weights"
        )
    return staging.load(
        args.file,
        vram=args.vram,
        ram=args.ram,
        device=args.device,
        dtype=dtype,
        io=args.io,
        link=_link(getattr(args, "link", None)),
    )


def _link(text: str | None) -> Any:
    from labkit.staging import LINK_PRESETS, LinkModel

    if text is None:
        return None
    if text in LINK_PRESETS:
        return LINK_PRESETS[text]
    if Path(text).is_file():
        return LinkModel.from_json(text)
    raise LabkitError(
        f"--link {text!r} is neither a preset ({', '.join(LINK_PRESETS)}) nor a link profile file"
    )


def _summary_lines(summary: Any, label: str) -> list[str]:
    lines = [
        f"{label}: makespan {summary.makespan_s * 1e3:,.1f} ms, serial sum {summary.serial_sum_s * 1e3:,.1f} ms, "
        f"pipeline bound {summary.pipeline_bound_s * 1e3:,.1f} ms ({summary.critical_lane}), "
        f"with fill and drain {summary.fill_drain_bound_s * 1e3:,.1f} ms, "
        f"overlap {summary.overlap:.0%}, efficiency {summary.efficiency:.2f}"
    ]
    for s in summary.stages:
        rate = f"{s.gb_per_s:6.2f} GB/s" if s.gb_per_s else " " * 11
        lines.append(
            f"  {s.stage:10} {s.n_spans:4} spans  busy {s.busy_s * 1e3:9.1f} ms  {rate}  ({s.source})"
        )
    if summary.peak_rss_bytes is not None:
        lines.append(f"  peak RSS {summary.peak_rss_bytes / 2**20:,.0f} MiB (measured, whole process)")
    return lines


def _run_stage(args: argparse.Namespace) -> int:
    import torch

    from labkit import staging

    if args.threads:
        torch.set_num_threads(args.threads)
    model = staging.load(
        args.file,
        vram=args.vram,
        ram=args.ram,
        device=args.device,
        order=args.order,
        n_slots=args.slots,
        chunk_bytes=args.chunk,
        mode="serial" if args.serial else "overlap",
        io=args.io,
        link=_link(args.link),
        context_tokens=args.context,
    )
    weights: Any = model.weights  # a StreamedWeights
    out: dict[str, Any] = {
        "file": args.file,
        "plan": [p.__dict__ for p in weights.plan.placements],
        "device_map": weights.plan.device_map(),
        "bytes_per_pass": weights.bytes_per_pass(),
    }
    lines = [weights.plan.explain()]
    if args.run:
        ids = model.prompt_ids(args.prompt)
        model.forward(ids)  # warm-up pass: page cache, allocator, threads
        _, trace = staging.trace_pass(model, ids)
        summary = trace.summary()
        out["measured"] = {**summary.to_dict(), "timing": MEASURED}
        lines += [
            "",
            *_summary_lines(summary, f"one pass over {len(ids)} tokens, measured on {trace.device}"),
        ]
        if weights.link is not None:
            projected = staging.project(trace, weights.link).summary()
            out["projected"] = {**projected.to_dict(), "link": weights.link.__dict__}
            lines += [
                "",
                *_summary_lines(projected, f"projected with copies modelled ({weights.link.name})"),
                f"  link source: {weights.link.source} ({weights.link.kind})",
            ]
    weights.close()
    print(json.dumps(out, indent=2, default=str) if args.json else "\n".join(lines))
    return 0


def add_stage(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stage",
        help="plan which layers fit a VRAM/RAM budget, and trace one streamed pass",
        description="Place each layer of a llama GGUF on gpu (resident in VRAM), cpu (in RAM) or disk (read "
        "every pass) under the budgets, print the plan, and with --run time one pass through the "
        "read -> copy -> compute pipeline. Without a GPU, --device cuda needs --link: the host->device "
        "copies are then modelled (and labelled so), everything else measured.",
    )
    parser.add_argument("file", help="a llama-architecture GGUF file")
    add_budget_options(parser)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--order",
        choices=["back", "front"],
        default="back",
        help="back: the output layer and last blocks stay resident (llama.cpp); front: the first",
    )
    parser.add_argument(
        "--slots", type=positive_int, default=2, help="device slots for streamed layers (default 2)"
    )
    parser.add_argument(
        "--chunk",
        type=parse_size,
        default=None,
        help="read size (default: 4M, or the largest layer if smaller)",
    )
    parser.add_argument(
        "--context", type=positive_int, default=256, help="tokens of context to reserve room for"
    )
    parser.add_argument(
        "--link", default=None, help="a link preset (e.g. pcie4-x16-pinned) or a link profile JSON"
    )
    parser.add_argument("--run", action="store_true", help="run one traced pass and print its stage times")
    parser.add_argument("--serial", action="store_true", help="with --run: no overlap (the baseline)")
    parser.add_argument(
        "--prompt", default="The weights travel from the disk to the GPU", help="text of the pass"
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_run_stage)
