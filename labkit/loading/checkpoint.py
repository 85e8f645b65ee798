"""PyTorch checkpoints (``.pt``, ``.bin``): opened only with ``weights_only=True``.

A ``torch.save`` file is a zip archive holding a *pickle program* plus raw storages. Unpickling
runs the program, and a plain pickle program may call any Python function: a checkpoint from a
stranger can run code on your machine the moment you load it. ``torch.load(weights_only=True)``
(the default since PyTorch 2.6) runs it under a restricted unpickler that accepts only tensors,
containers and plain values, and refuses everything else. labkit never loads a checkpoint
without it: a refusal is a safety feature, not a bug, and ``LoadError`` says so.

``torch_load(path, mmap=...)`` opens a checkpoint that way (``mmap=True``: the storages stay in
the mapped file until touched); ``flat_tensors(obj)`` turns the loaded object into one
``{dotted.name: tensor}`` dict, whatever nesting the checkpoint used.

References: PyTorch ``torch.load`` documentation ("weights_only", "mmap"); PyTorch
``torch/_weights_only_unpickler.py``; Python ``pickle`` documentation ("Warning: the pickle
module is not secure").
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from labkit.errors import LoadError, MissingInputError


def torch_load(path: str | os.PathLike[str], *, mmap: bool) -> Any:
    """``torch.load(path, weights_only=True, mmap=mmap)`` with labkit's errors.

    Raises:
        MissingInputError: no file at ``path``.
        LoadError: the pickle asks for something ``weights_only`` refuses (the message quotes
            torch's reason), the archive is broken, or ``mmap`` is asked of a legacy non-zip file.
    """
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"cannot open {path}: no such file; check the path and the name")
    if mmap and not zipfile.is_zipfile(path):
        raise LoadError(
            f"{path} is a legacy (pre-zip) torch.save file, which cannot be mapped; load it with "
            "mode='eager', or save it again with torch.save to get the zip format"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        reason = _refusal_reason(str(error))
        raise LoadError(
            f"{path}: torch.load(weights_only=True) refused this checkpoint: {reason}. Its pickle program asks "
            "to run more than tensors and containers, and unpickling would execute that code. This refusal "
            "is a safety feature: load such a file only if you trust where it came from, and convert it "
            "once to safetensors or GGUF, which hold no code"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError) as error:
        raise LoadError(
            f"{path}: not a readable PyTorch checkpoint ({str(error).splitlines()[0]}); "
            "check that the file is complete and was written by torch.save"
        ) from None


def _refusal_reason(message: str) -> str:
    """The one line of torch's long refusal message that names what was refused."""
    for line in message.splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip().split(". Please")[0].rstrip(".")
    return message.strip().splitlines()[0][:200]


def flat_tensors(obj: Any, path: str | os.PathLike[str] = "the checkpoint") -> dict[str, torch.Tensor]:
    """Every tensor in a loaded checkpoint as ``{name: tensor}``; nested dicts give dotted names.

    Raises:
        LoadError: the checkpoint holds no tensors at all.
    """
    found: dict[str, torch.Tensor] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, torch.Tensor):
            found[prefix or "tensor"] = value
        elif isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(item, f"{prefix}.{index}" if prefix else str(index))

    walk(obj, "")
    if not found:
        raise LoadError(
            f"{path} holds no tensors (it loaded as {type(obj).__name__}); give a state dict file"
        )
    return found
