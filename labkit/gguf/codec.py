"""Tensor values <-> the bytes a GGUF file stores, one tensor at a time.

Float types (F32, F16, BF16) are plain little-endian arrays and are handled here;
block-quantized types go through ``labkit.quant.quantize`` / ``dequantize``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from labkit.errors import QuantizationError
from labkit.formats import FORMATS

FLOAT_DTYPES: dict[str, torch.dtype] = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
QTYPE_OF_DTYPE: dict[torch.dtype, str] = {dtype: name for name, dtype in FLOAT_DTYPES.items()}


def encode(values: torch.Tensor, qtype: str, name: str) -> np.ndarray:
    """Encode float ``values`` (last dim = row) as ``qtype``; returns the file bytes as uint8.

    Args:
        values: a float tensor of the tensor's full shape, on any device.
        qtype: a labkit-writable type name (``labkit.formats.FORMATS``).
        name: the tensor name, for error messages.

    Returns:
        A C-contiguous ``uint8`` numpy array (a view when no conversion was needed).
    """
    values = values.detach().cpu()
    if qtype in FLOAT_DTYPES:
        stored = values.to(FLOAT_DTYPES[qtype]).contiguous()
        return stored.view(torch.uint8).numpy().reshape(-1)
    from labkit import quant  # imported when first needed: opening a file never loads the kernels

    rows = values.to(torch.float32).reshape(-1, values.shape[-1])  # (n_rows, row)
    return quant.quantize(rows, qtype, name=name).contiguous().numpy().reshape(-1)


def decode(
    raw: torch.Tensor, qtype: str, shape: tuple[int, ...], dtype: torch.dtype, name: str
) -> torch.Tensor:
    """Decode one tensor's bytes into a new float tensor of ``shape`` and ``dtype``.

    Args:
        raw: the tensor's bytes as a 1-D uint8 tensor (may be a read-only file view).
        qtype: the stored type name.
        shape: torch-order shape.
        dtype: the float dtype to return.
        name: the tensor name, for error messages.

    Raises:
        QuantizationError: labkit cannot decode ``qtype`` (e.g. IQ2_XXS; use ``raw()``).
    """
    if qtype in FLOAT_DTYPES:
        stored = FLOAT_DTYPES[qtype]
        if raw.data_ptr() % stored.itemsize:
            raw = raw.clone()  # unaligned in the file (alignment < 4): copy to aligned memory first
        values = raw.view(stored).reshape(shape)
        return values.to(dtype, copy=True)
    if qtype not in FORMATS:
        raise QuantizationError(
            f"tensor {name!r} is {qtype}, which labkit.quant cannot decode; "
            f"decodable types: {', '.join(FORMATS)}. Its bytes are still available with raw({name!r})."
        )
    from labkit import quant

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only mmap-backed input
        return quant.dequantize(raw, qtype, shape, name=name).to(dtype)
