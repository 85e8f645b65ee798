"""The files chapter 4 loads: the same synthetic weights as GGUF (F16, Q4_0, Q4_K_M),
safetensors and a PyTorch checkpoint.

``write_model_set(folder, target_size_bytes)`` writes a llama-shaped F16 GGUF of about that
size with ``labkit.modelfiles.synthetic_llama``, then, from that one file:

- ``Q4_0`` and ``Q4_K_M`` GGUFs with ``labkit.quant.requant.requantize`` (llama.cpp's per-tensor
  rules), so a 16-bit file and its 4-bit versions hold the *same* weights: the article's 10 GB
  vs 2.5 GB pair at a size this machine can hold;
- the same F16 tensors, under the same names, as ``.safetensors`` (``safetensors_file.write``)
  and as a ``torch.save`` checkpoint (``.pt``).

Every file is written atomically (a temporary file renamed into place), and the F16 tensors
are passed on as views of the mapped GGUF, so memory stays small whatever the size.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from labkit.loading import safetensors_file
from labkit.loading.loaders import load

QUANTIZED_TYPES = ("Q4_0", "Q4_K_M")
CONTAINERS = ("safetensors", "pt")


def write_model_set(
    folder: str | os.PathLike[str],
    target_size_bytes: int = 64 << 20,
    *,
    seed: int = 0,
    quantized: tuple[str, ...] = QUANTIZED_TYPES,
    containers: tuple[str, ...] = CONTAINERS,
    progress: bool = False,
) -> dict[str, Path]:
    """Write one set of synthetic weights in every format chapter 4 compares.

    Args:
        folder: an existing folder to write into.
        target_size_bytes: the F16 GGUF's approximate size.
        seed: the weights' random seed (the same seed gives the same bytes).
        quantized: llama.cpp file types to requantize the F16 file to.
        containers: ``"safetensors"`` and/or ``"pt"``: the F16 tensors in those formats.
        progress: show progress bars while writing.

    Returns:
        label -> path, e.g. ``{"F16 gguf": ..., "Q4_0 gguf": ..., "Q4_K_M gguf": ...,
        "F16 safetensors": ..., "F16 pt": ...}``; files already there with the same name are
        replaced.
    """
    from labkit.modelfiles import synthetic_llama
    from labkit.quant.requant import requantize

    folder = Path(folder)
    stem = f"synthetic-{target_size_bytes >> 20}MiB-seed{seed}"
    f16 = synthetic_llama(
        folder / f"{stem}-F16.gguf", qtype="F16", target_size_bytes=target_size_bytes, seed=seed
    )
    files = {"F16 gguf": f16}
    for type_name in quantized:
        files[f"{type_name} gguf"] = requantize(
            f16, folder / f"{stem}-{type_name}.gguf", type_name, progress=progress
        ).dst_path
    for container in containers:
        files[f"F16 {container}"] = write_as(f16, folder / f"{stem}-F16.{container}", container)
    return files


def write_as(gguf_path: str | os.PathLike[str], path: str | os.PathLike[str], container: str) -> Path:
    """Copy a float GGUF's tensors, names unchanged, into a safetensors file or a torch checkpoint.

    Args:
        gguf_path: a GGUF whose tensors are all float types (F32/F16/BF16).
        path: the file to write (atomically).
        container: ``"safetensors"`` or ``"pt"``.

    Returns:
        ``path``.
    """
    from labkit.errors import LoadError

    if container not in CONTAINERS:
        raise LoadError(f"container {container!r} is not one of {', '.join(CONTAINERS)}")
    weights = load(gguf_path, mode="lazy")  # views of the mapped file: nothing is copied into memory
    quantized = [s.name for s in weights.spans if s.dtype not in safetensors_file.DTYPES]
    if quantized:
        raise LoadError(
            f"{gguf_path} holds quantized tensors ({quantized[0]}, ...), which {container} cannot "
            "store; write the set from an F16/F32 GGUF"
        )
    if container == "safetensors":
        return safetensors_file.write(path, weights.tensors.items())
    return _torch_save(path, weights.tensors)


def _torch_save(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor]) -> Path:
    from labkit.gguf.atomic import atomic_output, check_output_path

    path = Path(path)
    check_output_path(path)
    with atomic_output(path) as out:
        torch.save(tensors, out)
    return path
