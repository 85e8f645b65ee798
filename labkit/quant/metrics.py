"""How much a quantization round trip changes the weights: MSE, max error, SNR, bits per weight.

All sums run in float64 so that the metrics of a large tensor do not depend
on summation order. SNR is ``10 * log10(sum(x**2) / sum((x - x_hat)**2))``:
every 6 dB is about one more bit of precision.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from labkit.errors import QuantizationError
from labkit.formats import FORMATS, Format


@dataclass(frozen=True)
class QuantErrorStats:
    """Error of a quantize -> dequantize round trip.

    Attributes:
        mse: mean squared error.
        max_abs_error: largest ``|x - x_hat|``.
        snr_db: signal-to-noise ratio in dB (``inf`` for an exact round trip).
        bits_per_weight: storage cost of the type (``None`` if no type was given).
        n_weights: how many weights were compared.
    """

    mse: float
    max_abs_error: float
    snr_db: float
    bits_per_weight: float | None
    n_weights: int


@dataclass
class _Totals:
    squared_error: float = 0.0
    signal: float = 0.0
    max_abs_error: float = 0.0
    n_weights: int = 0

    def add(self, original: torch.Tensor, restored: torch.Tensor) -> None:
        if original.shape != restored.shape:
            raise QuantizationError(
                f"cannot compare tensors of shapes {tuple(original.shape)} and {tuple(restored.shape)}"
            )
        x = original.detach().to(torch.float64).reshape(-1)
        err = restored.detach().to(torch.float64).reshape(-1) - x
        self.squared_error += float(err.square().sum())
        self.signal += float(x.square().sum())
        if err.numel():
            self.max_abs_error = max(self.max_abs_error, float(err.abs().max()))
        self.n_weights += x.numel()

    def stats(self, qtype: str | Format | None) -> QuantErrorStats:
        if self.n_weights == 0:
            raise QuantizationError("no weights to compare: the tensors are empty")
        if self.squared_error == 0:
            snr_db = math.inf
        elif self.signal == 0:
            snr_db = -math.inf
        else:
            snr_db = 10 * math.log10(self.signal / self.squared_error)
        return QuantErrorStats(
            mse=self.squared_error / self.n_weights,
            max_abs_error=self.max_abs_error,
            snr_db=snr_db,
            bits_per_weight=_bits_per_weight(qtype),
            n_weights=self.n_weights,
        )


def _bits_per_weight(qtype: str | Format | None) -> float | None:
    if qtype is None:
        return None
    fmt = qtype if isinstance(qtype, Format) else FORMATS.get(str(qtype).upper())
    if fmt is None:
        raise QuantizationError(f"unknown type {qtype!r}; expected one of {', '.join(FORMATS)}")
    return fmt.bits_per_weight


def error_metrics(
    original: torch.Tensor, restored: torch.Tensor, qtype: str | Format | None = None
) -> QuantErrorStats:
    """Compare a tensor with its quantize -> dequantize round trip.

    Args:
        original: the weights before quantization.
        restored: ``dequantize(quantize(original, qtype), qtype, original.shape)``.
        qtype: the type used, to fill in ``bits_per_weight``.

    Returns:
        a ``QuantErrorStats``.
    """
    totals = _Totals()
    totals.add(original, restored)
    return totals.stats(qtype)


def model_error_metrics(
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], qtype: str | Format | None = None
) -> QuantErrorStats:
    """The same metrics over many tensors at once (a whole model), weighted by size.

    Args:
        pairs: ``(original, restored)`` tensors, e.g. one per weight matrix;
            a generator keeps only one pair in memory at a time.
        qtype: the type used, to fill in ``bits_per_weight``.
    """
    totals = _Totals()
    for original, restored in pairs:
        totals.add(original, restored)
    return totals.stats(qtype)
