"""The labkit command line: each subcommand is a thin shell over the public API.

Usage: ``labkit probe``, ``labkit inspect FILE``, ``labkit quantize IN OUT --type T``,
``labkit generate FILE "prompt" -n 32``, ``labkit perplexity FILE [TEXT | --file PATH]``.
Add ``--json`` for machine-readable output and ``--quiet`` to silence progress bars.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from labkit.errors import LabkitError, ModelError

MEASURED = "measured on this machine"  # the "timing" field beside every elapsed_s in --json output

# --- probe command (issue 2) ---
_SIZE_UNITS = {"": 1, "K": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MIB": 1 << 20,
               "G": 1 << 30, "GIB": 1 << 30, "KB": 10**3, "MB": 10**6, "GB": 10**9}


def parse_size(text: str) -> int:
    """Parse a size like ``256M``, ``1GiB``, ``500MB`` or ``4096`` into bytes.

    K/M/G and KiB/MiB/GiB are powers of 2 (as in ``dd``); KB/MB/GB are powers of 10.
    """
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else "?"
    if match is None or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size; write e.g. 256M, 1G, 64MiB, 500MB or 4096")
    size_bytes = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size_bytes <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be positive")
    return size_bytes


def positive_int(text: str) -> int:
    """Parse a count such as ``--threads 4`` or ``-n 32``: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number; write e.g. 1, 4 or 32")
    return value


def _probe_table(report: object) -> str:
    header = ("kind", "tier", "operation", "GB/s", "first run", "method / source")
    rows = [header]
    for record in report.records:  # type: ignore[attr-defined]
        rate = f"{record.gb_per_s:,.2f}"
        if record.gb_per_s_max is not None:
            rate += f"–{record.gb_per_s_max:,.0f}"
        first = "" if record.first_run_gb_per_s is None else f"{record.first_run_gb_per_s:,.2f}"
        how = {"measured": record.method, "quoted": f"{record.note}; source: {record.source}",
               "modelled": record.method}[record.kind]
        rows.append((record.kind, record.tier, record.operation, rate, first, how))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join([*(cell.rjust(w) if i in (3, 4) else cell.ljust(w)
                          for i, (cell, w) in enumerate(zip(row, widths))), row[-1]])
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    device = report.cuda_device or "none (PCIe/VRAM rows are quoted or modelled)"  # type: ignore[attr-defined]
    return "\n".join([*lines, "", f"CUDA device: {device}", *report.notes])  # type: ignore[attr-defined]


def _run_probe(args: argparse.Namespace) -> int:
    import json

    from labkit import probe

    progress = not (args.quiet or args.json) and sys.stderr.isatty()
    report = probe.run(size_bytes=args.size, block_bytes=args.block, tmp_dir=args.tmp_dir,
                       progress=progress, repeats=args.repeats)
    print(json.dumps(report.to_dict(), indent=2) if args.json else _probe_table(report))
    return 0


def _add_probe(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe", help="measure this machine's disk, page cache, RAM (and GPU) speeds",
        description="Measure disk -> page cache -> RAM (-> VRAM) speeds, beside the article's "
                    "quoted figures. Every row says whether it was measured here or quoted.")
    parser.add_argument("--size", type=parse_size, default="256M",
                        help="test file and buffer size, e.g. 64M, 1G (default 256M)")
    parser.add_argument("--block", type=parse_size, default="1M",
                        help="read size, a multiple of 4K (default 1M)")
    parser.add_argument("--tmp-dir", default=None, help="folder for the temporary file")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per median")
    parser.add_argument("--json", action="store_true", help="print the records as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_probe)


# --- inspect / quantize commands (issue 4) ---
def _run_inspect(args: argparse.Namespace) -> int:
    import json

    from labkit import gguf
    from labkit.gguf.summary import render_text, summarize

    try:
        with gguf.open(args.file) as f:
            summary = summarize(f, max_array_items=args.items)
    except LabkitError:
        raise
    except OSError as error:
        raise LabkitError(f"cannot open {args.file}: {error.strerror or error}") from None
    print(json.dumps(summary, indent=2, default=str) if args.json else render_text(summary))
    return 0


def _add_inspect(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect", help="show a GGUF file's summary, metadata and tensor table",
        description="Open a GGUF file with labkit's hardened reader and show its architecture, sizes, "
                    "tensor-type histogram, metadata (long arrays elided) and tensor table.")
    parser.add_argument("file", help="the GGUF file")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--items", type=int, default=6, metavar="N", help="array items to show (default 6)")
    parser.set_defaults(func=_run_inspect)


def _quantize_text(plans: list, report: object | None) -> str:
    from collections import Counter

    if report is None:  # --dry-run: one line per tensor
        width = max(len(p.name) for p in plans)
        lines = [f"{p.name:<{width}}  {p.src_qtype:>5} -> {p.dst_qtype:<5}  {p.reason}" for p in plans]
    else:
        counts = Counter(p.dst_qtype for p in plans)
        lines = [f"{report.src_path.name} ({report.src_size_bytes:,} bytes) -> {report.dst_path} "  # type: ignore[attr-defined]
                 f"({report.dst_size_bytes:,} bytes) as {report.file_type}, "  # type: ignore[attr-defined]
                 f"{report.elapsed_s:.1f} s (measured)",  # type: ignore[attr-defined]
                 "tensors by type: " + ", ".join(f"{t} {n}" for t, n in counts.most_common()),
                 f"copied unchanged: {sum(p.copied for p in plans)}, requantized: {sum(not p.copied for p in plans)}"]
        if report.requantized_from:  # type: ignore[attr-defined]
            lines.append(f"note: the input was already quantized ({', '.join(report.requantized_from)}); "  # type: ignore[attr-defined]
                         "requantizing adds error on top. Quantize from the F16/F32 original when you can.")
    return "\n".join(lines)


def _run_quantize(args: argparse.Namespace) -> int:
    import json

    from labkit import gguf, mixtures, requant

    report = None
    if args.output is None and not args.dry_run:
        raise LabkitError("give an OUTPUT file (or --dry-run to only see the plan)")
    if args.dry_run:
        with gguf.open(args.input) as f:
            plans = mixtures.plan_types(f.tensors, f.metadata, args.type, pure=args.pure)
    else:
        progress = not (args.quiet or args.json) and sys.stderr.isatty()
        report = requant.requantize(args.input, args.output, args.type, pure=args.pure, progress=progress)
        plans = list(report.plans)
    if args.json:
        rows = [{"name": p.name, "shape": list(p.shape), "from": p.src_qtype, "to": p.dst_qtype, "reason": p.reason}
                for p in plans]
        extra = {} if report is None else {"output": str(report.dst_path), "size_bytes": report.dst_size_bytes,
                                           "elapsed_s": report.elapsed_s, "timing": MEASURED,
                                           "file_type": report.file_type}
        print(json.dumps({**extra, "tensors": rows}, indent=2))
    else:
        print(_quantize_text(plans, report))
    return 0


def _add_quantize(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize", help="requantize a GGUF with llama.cpp's per-tensor rules",
        description="Requantize a llama-architecture GGUF (dequantize -> quantize per tensor) to a llama.cpp "
                    "file type such as Q4_K_M, Q5_K_M, Q6_K or Q8_0, choosing each tensor's type as "
                    "llama.cpp's llama-quantize does.")
    parser.add_argument("input", help="the GGUF file to read")
    parser.add_argument("output", nargs="?", default=None, help="the GGUF file to write (not needed with --dry-run)")
    parser.add_argument("--type", required=True, metavar="T",
                        help="Q4_K_M, Q5_K_M, Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S/M/L, Q4_K_S, "
                             "Q5_K_S, F16, BF16, F32; or Q3_K/Q4_K/Q5_K for one type everywhere")
    parser.add_argument("--pure", action="store_true", help="one type for every weight matrix (llama.cpp --pure)")
    parser.add_argument("--dry-run", action="store_true", help="only print each tensor's type and why")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_quantize)


# --- generate / perplexity commands (issue 5) ---
def check_device(device: str) -> str:
    """Check a ``--device`` value before any loading.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        ``device`` unchanged.

    Raises:
        ModelError: torch does not know the name, or it is not a CPU or CUDA device,
            or ``cuda:N`` names a GPU this machine does not have.
    """
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ModelError(f"--device {device!r} is not a device labkit runs on; choose cpu, cuda or cuda:N "
                         "(N = the GPU's number, from 0)")
    count = torch.cuda.device_count()
    if parsed.type == "cuda" and parsed.index is not None and count and parsed.index >= count:
        raise ModelError(f"--device {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return device


def _load_model(args: argparse.Namespace) -> object:
    import torch

    from labkit import model

    check_device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    return model.load(args.file, device=args.device, dtype=dtype, weights=args.weights)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a llama-architecture GGUF file")
    parser.add_argument("--weights", choices=["dequantized", "quantized"], default="dequantized",
                        help="keep weights as floats (fast) or as quantized bytes dequantized per block (small)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="compute dtype")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads, at least 1 (default: torch's choice)")


def _run_generate(args: argparse.Namespace) -> int:
    import time

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model = _load_model(args)
    ids: list[int] = []
    printed, start = "", time.perf_counter()
    for token in model.stream(args.prompt, args.n, args.temperature, args.seed, chat=args.chat):  # type: ignore[attr-defined]
        ids.append(token)
        text = model.tokenizer.decode(ids)  # type: ignore[attr-defined]
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            print(text[len(printed):], end="", flush=True)
            printed = text
    elapsed_s = time.perf_counter() - start
    print(model.tokenizer.decode(ids)[len(printed):], flush=True)  # type: ignore[attr-defined]  # the rest
    if not args.quiet:
        print(f"[{len(ids)} tokens in {elapsed_s:.2f} s, {len(ids) / elapsed_s:.1f} tokens/s including the prompt; "
              "measured]", file=sys.stderr)
    return 0


def _add_generate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate", help="continue a prompt with labkit's own llama runtime (streams tokens)",
        description="Load a GGUF model with labkit's reader and dequantizers and continue a prompt, "
                    "printing tokens as they are generated.")
    _add_model_options(parser)
    parser.add_argument("prompt", help="the text to continue")
    parser.add_argument("-n", type=positive_int, default=32, help="new tokens at most (default 32)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument("--quiet", action="store_true", help="no timing line on stderr")
    parser.set_defaults(func=_run_generate)


def _run_perplexity(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    import torch

    from labkit import model as model_module

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.text is not None and args.file_path is not None:
        raise LabkitError("give the text to score as TEXT or as --file PATH, not both")
    if args.file_path is not None:
        try:
            text, source = Path(args.file_path).read_text(encoding="utf-8"), args.file_path
        except (OSError, UnicodeDecodeError) as error:
            raise LabkitError(f"cannot read --file {args.file_path}: {getattr(error, 'strerror', None) or error}; "
                              "give a UTF-8 text file") from None
    elif args.text is not None:
        text, source = args.text, "the command line"
    else:
        text, source = model_module.lab_text(), "the lab text (labkit/data/lab_text.txt)"
    model = _load_model(args)
    start = time.perf_counter()
    result = model.perplexity(text)  # type: ignore[attr-defined]
    elapsed_s = time.perf_counter() - start
    if args.json:
        print(json.dumps({"file": args.file, "text_source": source, "n_tokens": result.n_tokens,
                          "n_scored": result.n_scored, "mean_nll": result.mean_nll,
                          "perplexity": result.perplexity, "elapsed_s": elapsed_s, "timing": MEASURED}, indent=2))
    else:
        print(f"perplexity {result.perplexity:.3f} (mean NLL {result.mean_nll:.4f} nats) over {result.n_scored} "
              f"predicted tokens of {source}; {elapsed_s:.2f} s (measured)")
    return 0


def _add_perplexity(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "perplexity", help="how well a model predicts a text (lower is better)",
        description="Score a text with labkit's llama runtime: perplexity = exp(mean negative log-likelihood "
                    "of each next token). TEXT is scored as written; --file PATH scores a UTF-8 text file; "
                    "with neither, the short lab text that ships with labkit is used.")
    _add_model_options(parser)
    parser.add_argument("text", nargs="?", default=None,
                        help="the text to score, taken literally (default: the lab text)")
    parser.add_argument("--file", dest="file_path", metavar="PATH", default=None,
                        help="score the contents of this UTF-8 text file instead")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_run_perplexity)


# Each entry: name -> function(subparsers) that adds the subcommand and sets ``func``.
SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    # In the order of the lab's chapters.
    "probe": _add_probe,
    "inspect": _add_inspect,
    "quantize": _add_quantize,
    "generate": _add_generate,
    "perplexity": _add_perplexity,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labkit", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_subcommand in SUBCOMMANDS.values():
        add_subcommand(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LabkitError as error:
        print(f"labkit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"labkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # before OSError, its base class
        # The reader went away (``labkit inspect FILE | head``): stop quietly, like Unix tools do.
        sys.stderr.close()
        return 0
    except OSError as error:  # disk full, permission denied, ...: a message, not a traceback
        print(f"labkit {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
