"""``labkit generate`` and ``labkit perplexity``: run a model on labkit's own runtime (chapter 5)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from labkit.cli.common import MEASURED, add_threads_option, positive_int, temperature
from labkit.errors import LabkitError, ModelError


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
        raise ModelError(
            f"--device {device!r} is not a device labkit runs on; choose cpu, cuda or cuda:N "
            "(N = the GPU's number, from 0)"
        )
    count = torch.cuda.device_count()
    if parsed.type == "cuda" and parsed.index is not None and count and parsed.index >= count:
        raise ModelError(
            f"--device {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
        )
    return device


def _load_model(args: argparse.Namespace) -> object:
    import torch

    from labkit import runtime

    check_device(args.device)
    dtype = runtime.model.DTYPES.get(args.dtype)  # None for "auto": measured once per machine
    if args.vram is not None or args.ram is not None:  # a budget: stream the layers that do not fit
        from labkit.cli.staging import load_streamed

        return load_streamed(args, dtype or torch.float32)
    return runtime.load(
        args.file, device=args.device, dtype=dtype, weights=args.weights, activations=args.activations
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a llama-architecture GGUF file")
    parser.add_argument(
        "--weights",
        choices=["dequantized", "quantized"],
        default="dequantized",
        help="keep weights as floats (fast) or as quantized bytes dequantized per block (small)",
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="compute dtype (default auto: the fastest that keeps float32's top-1 tokens, measured once "
        "per machine and cached; --verbose shows the measurement)",
    )
    parser.add_argument(
        "--activations",
        choices=["float", "q8"],
        default="float",
        help="q8: compute as llama.cpp's CPU backend does (8-bit activation blocks, ggml's order of every "
        "sum): its logits to the bit, slowly (Q4_1/Q8_0 files, CPU)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    add_threads_option(parser)
    from labkit.cli.staging import add_budget_options

    add_budget_options(parser)  # --vram / --ram: staged loading (chapter 6)


def _run_generate(args: argparse.Namespace) -> int:

    model = _load_model(args)
    if args.verbose and hasattr(model, "summary"):
        print(model.summary(), file=sys.stderr)
    ids: list[int] = []
    printed, start = "", time.perf_counter()
    for token in model.stream(args.prompt, args.n, args.temperature, args.seed, chat=args.chat):  # type: ignore[attr-defined]
        ids.append(token)
        text = model.tokenizer.decode(ids)  # type: ignore[attr-defined]
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            print(text[len(printed) :], end="", flush=True)
            printed = text
    elapsed_s = time.perf_counter() - start
    print(model.tokenizer.decode(ids)[len(printed) :], flush=True)  # type: ignore[attr-defined]  # the rest
    if not args.quiet:
        print(
            f"[{len(ids)} tokens in {elapsed_s:.2f} s, {len(ids) / elapsed_s:.1f} tokens/s including the prompt; "
            "measured]",
            file=sys.stderr,
        )
    return 0


def add_generate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="continue a prompt with labkit's own llama runtime (streams tokens)",
        description="Load a GGUF model with labkit's reader and dequantizers and continue a prompt, "
        "printing tokens as they are generated.",
    )
    _add_model_options(parser)
    parser.add_argument("prompt", help="the text to continue")
    parser.add_argument("-n", type=positive_int, default=32, help="new tokens at most (default 32)")
    parser.add_argument(
        "--temperature", type=temperature, default=0.0, help="0 = greedy (default); > 0 samples"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument("--quiet", action="store_true", help="no timing line on stderr")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="first print the model's summary (dtype choice and why) on stderr",
    )
    parser.set_defaults(func=_run_generate)


def _run_perplexity(args: argparse.Namespace) -> int:

    from labkit import runtime

    if args.text is not None and args.file_path is not None:
        raise LabkitError("give the text to score as TEXT or as --file PATH, not both")
    if args.file_path is not None:
        try:
            text, source = Path(args.file_path).read_text(encoding="utf-8"), args.file_path
        except (OSError, UnicodeDecodeError) as error:
            raise LabkitError(
                f"cannot read --file {args.file_path}: {getattr(error, 'strerror', None) or error}; "
                "give a UTF-8 text file"
            ) from None
    elif args.text is not None:
        text, source = args.text, "the command line"
    else:
        text, source = runtime.lab_text(), "the lab text (labkit/data/lab_text.txt)"
    model = _load_model(args)
    start = time.perf_counter()
    result = model.perplexity(text, window=args.window)  # type: ignore[attr-defined]
    elapsed_s = time.perf_counter() - start
    if args.json:
        print(
            json.dumps(
                {
                    "file": args.file,
                    "text_source": source,
                    "n_tokens": result.n_tokens,
                    "n_scored": result.n_scored,
                    "mean_nll": result.mean_nll,
                    "perplexity": result.perplexity,
                    "elapsed_s": elapsed_s,
                    "timing": MEASURED,
                },
                indent=2,
            )
        )
    else:
        print(
            f"perplexity {result.perplexity:.3f} (mean NLL {result.mean_nll:.4f} nats) over {result.n_scored} "
            f"predicted tokens of {source}; {elapsed_s:.2f} s (measured)"
        )
    return 0


def add_perplexity(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "perplexity",
        help="how well a model predicts a text (lower is better)",
        description="Score a text with labkit's llama runtime: perplexity = exp(mean negative log-likelihood "
        "of each next token). TEXT is scored as written; --file PATH scores a UTF-8 text file; "
        "with neither, the short lab text that ships with labkit is used.",
    )
    _add_model_options(parser)
    parser.add_argument(
        "text", nargs="?", default=None, help="the text to score, taken literally (default: the lab text)"
    )
    parser.add_argument(
        "--file",
        dest="file_path",
        metavar="PATH",
        default=None,
        help="score the contents of this UTF-8 text file instead",
    )
    parser.add_argument(
        "--window",
        type=positive_int,
        default=None,
        metavar="N",
        help="tokens scored per window, each from an empty cache, as in llama.cpp's perplexity "
        "(default 2048 or the context length if shorter); memory grows with N, not with the text",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_run_perplexity)
