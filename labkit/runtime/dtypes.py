"""Which compute dtype is fastest on *this* machine, measured once and remembered.

The same model decodes at very different speeds in float32, bfloat16 and float16 depending on
the CPU: torch sends float32 matrix-vector products to MKL and the 16-bit ones to oneDNN, which
uses native 16-bit instructions where the CPU has them (AVX512-BF16, AVX512-FP16, AMX) and
converts element by element where it does not. On one 2-core AMD EPYC VM float16 decoded 2.5x
faster than float32; on a 2-core Xeon without AVX512-FP16 float32 was the fastest. No rule of
thumb survives, so ``choose_dtype`` measures:

1. load the model in each candidate dtype in turn (one at a time: memory stays one model);
2. score a short prompt and keep the candidate only if its most likely next token equals
   float32's at *every* position (a dtype that changes the model's answers is not "faster");
3. time a few decode steps at batch 1 (median of the steps: one slow step on a shared
   machine does not decide);
4. pick the fastest survivor, and write the measurement to ``~/.cache/labkit/runtime-dtype.json``
   (atomically), keyed by CPU model, torch version, thread count, device, weights mode and file.

``labkit.runtime.load(path)`` calls this when no ``dtype`` is given; ``model.summary()`` and
``labkit generate --verbose`` show the choice with its measured reason. The environment variable
``LABKIT_DTYPE`` (``float32``, ``bfloat16`` or ``float16``) skips the measurement and pins the choice:
the test suite pins float32 so that its expected logits do not depend on the machine.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from labkit.errors import ModelError

CANDIDATES = ("float32", "bfloat16", "float16")
PROMPT_TOKENS = 24  # positions whose top-1 token must equal float32's
DECODE_STEPS = {"dequantized": 6, "quantized": 2}  # timed steps per candidate
CACHE_VERSION = 1


@dataclass(frozen=True)
class DtypeChoice:
    """The compute dtype ``load`` picked, and why (measured on this machine).

    Attributes:
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        tokens_per_s: decode speed of each candidate (measured; median of a few steps at batch 1).
        agrees: whether each candidate's top-1 token equalled float32's at every prompt position.
        key: the machine/model key the choice is cached under.
        cached: ``True`` when read back from the cache rather than measured now.
    """

    dtype: str
    tokens_per_s: dict[str, float]
    agrees: dict[str, bool]
    key: str
    cached: bool = False

    @property
    def reason(self) -> str:
        """One line: the measured speeds, which candidates kept float32's answers, and the source."""
        if not self.tokens_per_s:
            return f"pinned by LABKIT_DTYPE={self.dtype}, not measured"
        speeds = ", ".join(
            f"{name} {speed:.1f} tok/s{'' if self.agrees[name] else ' (top-1 differs: rejected)'}"
            for name, speed in sorted(self.tokens_per_s.items(), key=lambda item: -item[1])
        )
        source = "cached measurement" if self.cached else "measured now"
        return f"fastest exact dtype on this machine: {speeds}; {source}, {cache_path()}"


def cache_path() -> Path:
    """``$XDG_CACHE_HOME/labkit/runtime-dtype.json`` (``~/.cache/labkit/...`` when the variable is unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "labkit" / "runtime-dtype.json"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(path: str | Path, device: str | torch.device, weights: str) -> str:
    """What the fastest dtype depends on: processor, torch, threads, device, weights mode and file."""
    device = torch.device(device)
    processor = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    file = Path(path)
    return (
        f"{processor} | torch {torch.__version__} | {torch.get_num_threads()} threads | {device.type} | "
        f"{weights} | {file.name} ({file.stat().st_size} bytes)"
    )


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # no cache yet, or an unreadable one: measure again and rewrite it
    return data if isinstance(data, dict) and data.get("version") == CACHE_VERSION else {}


def _write_cache(path: Path, data: dict) -> None:
    """Write ``data`` as JSON atomically: a temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".runtime-dtype-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=2)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _measure(
    load: Callable[..., Any],
    path: str | Path,
    dtype: str,
    device: str | torch.device,
    weights: str,
    prompt: list[int],
) -> tuple[torch.Tensor, float]:
    """(top-1 token per prompt position, decode tokens/s) of one candidate dtype."""
    model = load(path, device=device, dtype=getattr(torch, dtype), weights=weights)
    cache = model.new_cache()
    top1 = model.forward(prompt, cache)[0].argmax(-1)  # (T,)
    token = int(top1[-1])
    steps_s = []
    for step in range(DECODE_STEPS[weights] + 1):  # step 0 warms up, untimed
        start = time.perf_counter()
        token = int(model.forward([token], cache)[0, -1].argmax())
        if step:
            steps_s.append(time.perf_counter() - start)
    return top1, 1.0 / statistics.median(steps_s)


def choose_dtype(
    path: str | Path,
    *,
    load: Callable[..., Any],
    device: str | torch.device = "cpu",
    weights: str = "dequantized",
    refresh: bool = False,
) -> DtypeChoice:
    """The fastest of ``CANDIDATES`` whose top-1 tokens equal float32's (cached per machine).

    Args:
        path: the GGUF file the choice is for.
        load: ``labkit.runtime.load`` (passed in: this module sits below the model in the imports).
        device: where the model will run.
        weights: ``"dequantized"`` or ``"quantized"`` (see ``labkit.runtime.load``).
        refresh: measure again even when the cache has an answer.
    Returns:
        A ``DtypeChoice``.
    """
    from importlib.resources import files

    from labkit.runtime.tokenizer import Tokenizer

    key, store = machine_key(path, device, weights), cache_path()
    pinned = os.environ.get("LABKIT_DTYPE")
    if pinned:
        if pinned not in CANDIDATES:
            raise ModelError(f"LABKIT_DTYPE={pinned!r}; set it to one of {list(CANDIDATES)} or unset it")
        return DtypeChoice(pinned, {}, {}, key)
    data = _read_cache(store)
    if not refresh and key in data.get("choices", {}):
        return DtypeChoice(**{**data["choices"][key], "key": key, "cached": True})
    from labkit import gguf

    with gguf.open(path) as gguf_file:
        text = files("labkit").joinpath("data/lab_text.txt").read_text(encoding="utf-8")
        prompt = Tokenizer.from_metadata(gguf_file.metadata).encode(text)[:PROMPT_TOKENS]
    if len(prompt) < 2:
        raise ModelError("the lab text gave fewer than 2 tokens; cannot compare dtypes")
    tokens_per_s, agrees, reference = {}, {}, None
    for dtype in CANDIDATES:  # float32 first: it is the reference for the top-1 tokens
        top1, tokens_per_s[dtype] = _measure(load, path, dtype, device, weights, prompt)
        reference = top1 if reference is None else reference
        agrees[dtype] = bool(torch.equal(top1, reference))
    best = max((d for d in CANDIDATES if agrees[d]), key=lambda d: tokens_per_s[d])
    choice = DtypeChoice(best, tokens_per_s, agrees, key)
    record = {k: v for k, v in asdict(choice).items() if k not in ("key", "cached")}
    _write_cache(store, {"version": CACHE_VERSION, "choices": {**data.get("choices", {}), key: record}})
    return choice
