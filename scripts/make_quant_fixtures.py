"""Make the quantization fixtures: inputs plus the bytes llama.cpp writes for them.

For each input class (gaussian, heavy-tailed, zero blocks, ...) this script
quantizes a small float32 matrix with ggml's reference quantizers, called
through ctypes from the ``libggml-base`` that llama-cpp-python bundles
(``ggml_quantize_chunk`` with no importance matrix), and saves

    tests/fixtures/quant/<class>.npz     x (float32 rows) and one uint8 array per type
    tests/fixtures/quant/manifest.json   where the bytes came from, and checksums

``tests/test_quant_fixtures.py`` then checks that ``labkit.quant`` writes the
same bytes without needing llama.cpp. Run it again after upgrading
llama-cpp-python:

    python scripts/make_quant_fixtures.py [--out tests/fixtures/quant]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

QUANT_TYPES = (
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)
ROW_LENGTH = 512  # two K-quant super-blocks, sixteen legacy blocks


def _gaussian(rng: np.random.Generator, rows: int) -> np.ndarray:
    return rng.standard_normal((rows, ROW_LENGTH))


def _heavy_tailed(rng: np.random.Generator, rows: int) -> np.ndarray:
    return rng.standard_t(2.0, (rows, ROW_LENGTH)) * 0.02


def _zero_blocks(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Gaussian rows where whole 32- and 256-blocks are zero, some as -0.0."""
    x = rng.standard_normal((rows, ROW_LENGTH))
    x[:, 0:32] = 0.0
    x[:, 256:512] = 0.0
    x[1::2, 64:96] = -0.0
    x[2::3, 96:160:3] = -0.0
    x[3, :] = 0.0
    return x


def _constant_blocks(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Each 16-, 32- or 256-weight group holds one value (positive, negative, tiny)."""
    x = np.repeat(rng.standard_normal((rows, ROW_LENGTH // 16)), 16, axis=1)
    x[:, 256:] = np.repeat(rng.standard_normal((rows, 1)), 256, axis=1)
    x[0] = 1.0
    x[1] = -3.5
    return x


def _outlier(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Small weights plus one huge outlier per 32-block, at a random place and sign."""
    x = rng.standard_normal((rows, ROW_LENGTH)) * 0.01
    where = rng.integers(0, 32, (rows, ROW_LENGTH // 32)) + np.arange(0, ROW_LENGTH, 32)
    np.put_along_axis(x, where, rng.choice([-1.0, 1.0], where.shape) * 300.0, axis=1)
    return x


def _fp16_subnormal(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Magnitudes around fp16's subnormal range (6e-8 .. 6e-5), so scales underflow."""
    scale = 10.0 ** rng.uniform(-9, -4, (rows, ROW_LENGTH // 32, 1))
    return (rng.standard_normal((rows, ROW_LENGTH // 32, 32)) * scale).reshape(rows, ROW_LENGTH)


def _offset_subblocks(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Each 16-weight sub-block = a large offset plus small noise (stresses K-quant mins)."""
    offsets = np.repeat(rng.standard_normal((rows, ROW_LENGTH // 16)) * 50.0, 16, axis=1)
    return offsets + rng.standard_normal((rows, ROW_LENGTH)) * 10.0 ** rng.uniform(-4, 0, (rows, 1))


def _rounding_ties(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Small integers and halves: many values land exactly on rounding ties."""
    return rng.integers(-64, 65, (rows, ROW_LENGTH)) / 2.0


def real_weights(rows: int) -> np.ndarray:
    """Rows of the default model's weights (dequantized), regrouped into rows of ROW_LENGTH."""
    from labkit import gguf
    from labkit.modelfiles import default_model_path

    wanted = ["blk.0.attn_q.weight", "blk.5.ffn_down.weight", "token_embd.weight", "blk.3.attn_norm.weight"]
    per_tensor = rows * ROW_LENGTH // len(wanted)
    parts = []
    with gguf.open(default_model_path()) as f:
        for name in f.tensors:
            if name in wanted:
                values = f.tensor(name).reshape(-1).numpy()
                start = len(values) // 3  # a stretch from inside the tensor, blocks intact
                parts.append(np.resize(values[start : start + per_tensor], per_tensor))
    return np.concatenate(parts).reshape(rows, ROW_LENGTH)


INPUT_CLASSES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "gaussian": _gaussian,
    "heavy_tailed": _heavy_tailed,
    "zero_blocks": _zero_blocks,
    "constant_blocks": _constant_blocks,
    "outlier": _outlier,
    "fp16_subnormal": _fp16_subnormal,
    "offset_subblocks": _offset_subblocks,
    "rounding_ties": _rounding_ties,
}
"""Synthetic input classes: name -> f(rng, rows) -> (rows, ROW_LENGTH) floats."""


def make_input(name: str, rows: int, seed: int) -> np.ndarray:
    """One input matrix of a class, float32, deterministic for (name, rows, seed)."""
    if name == "real_weights":
        return real_weights(rows).astype(np.float32)
    rng = np.random.default_rng([seed, sorted(INPUT_CLASSES).index(name)])
    return INPUT_CLASSES[name](rng, rows).astype(np.float32)


def _library_name(path: Path) -> str:
    """The most specific file name of the library, e.g. libggml-base.so.0.25.3 (it carries ggml's version)."""
    versioned = sorted(path.parent.glob(path.name + ".*"), key=lambda p: len(p.name))
    return versioned[-1].name if versioned else path.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/fixtures/quant"
    )
    parser.add_argument("--rows", type=int, default=8, help="rows per synthetic class")
    parser.add_argument("--real-rows", type=int, default=32, help="rows of real weights")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)

    from labkit.quant import reference

    if not reference.available():
        print("llama-cpp-python is not installed: pip install llama-cpp-python", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in [*INPUT_CLASSES, "real_weights"]:
        x = make_input(name, args.real_rows if name == "real_weights" else args.rows, args.seed)
        arrays = {"x": x} | {t: reference.ggml_quantize(x, t).numpy() for t in QUANT_TYPES}
        path = args.out / f"{name}.npz"
        np.savez_compressed(path, **arrays)
        files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{path.name}: {x.shape[0]} rows x {x.shape[1]}, {path.stat().st_size} bytes")
    manifest = {
        "made_by": "scripts/make_quant_fixtures.py",
        "made_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reference": "ggml_quantize_chunk (quantize_row_*_ref, imatrix=NULL) from llama-cpp-python's libggml-base",
        "llama_cpp_python": importlib.metadata.version("llama_cpp_python"),
        "library": _library_name(reference.libggml_path()),
        "seed": args.seed,
        "row_length": ROW_LENGTH,
        "types": list(QUANT_TYPES),
        "sha256": files,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
