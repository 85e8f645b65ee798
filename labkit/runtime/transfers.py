"""Every byte a forward pass moves, written down hop by hop.

While a model runs, five kinds of data move (the article's "runtime I/O"):

    input ids ──► [embedding] ──► activations ──► layer 0 ──► ... ──► layer N-1 ──► [head] ──► logits
                                                   ▲    │
                            weights read per layer ┘    └► KV cache written, whole cache read back

``Model.forward(ids, cache, log=TransferLog(...))`` fills a ``TransferLog`` with
one ``Transfer`` record per hop. Each record says separately how its size and its
time are known:

- ``size_basis`` is always ``"counted"``: the size is exact, the ``nbytes`` of
  the tensors that really moved (or the bytes of the weights a block reads);
- ``time_basis`` is ``"measured"`` only for the host<->device hops on a CUDA
  device (ids in, logits out), timed with CUDA events; everything else (weights
  streaming from RAM/VRAM into the cores, KV reads) has no clock read for it and
  is ``"modelled"``: its time can only be estimated, as bytes / bandwidth.
On a CPU nothing crosses a bus to a device, so every time is ``"modelled"``.

What all those hops add up to, in tokens per second, is measured by
``labkit.runtime.timing``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

# The hop names, in the order a token meets them.
HOPS = (
    "input ids in",
    "embedding rows read",
    "weights read",
    "weights dequantized",
    "kv written",
    "kv read",
    "activations to next layer",
    "logits out",
)


@dataclass(frozen=True)
class Transfer:
    """One movement of bytes during a forward pass.

    Attributes:
        step: which forward call (0 = the prompt, then one per generated token).
        hop: one of ``HOPS``.
        layer: the transformer block, or ``None`` for hops outside the blocks.
        source, destination: where the bytes came from and went, e.g. ``"host RAM"``, ``"VRAM"``, ``"cores"``.
        size_bytes: exact size of the tensor that moved.
        time_basis: ``"measured"`` (timed with CUDA events) or ``"modelled"`` (no clock read).
        elapsed_s: the measured time, only when ``time_basis == "measured"``.
        size_basis: ``"counted"``: sizes are always exact byte counts, never estimates.
    """

    step: int
    hop: str
    layer: int | None
    source: str
    destination: str
    size_bytes: int
    time_basis: str
    elapsed_s: float | None = None
    size_basis: str = "counted"


@dataclass
class TransferLog:
    """Collects ``Transfer`` records while the model runs (one log can span many steps).

    Args:
        device: where the model computes; decides the memory names and whether hops can be measured.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    records: list[Transfer] = field(default_factory=list)
    step: int = 0

    @property
    def memory(self) -> str:
        """Name of the memory the weights and activations live in."""
        return "VRAM" if self.device.type == "cuda" else "host RAM"

    def add(
        self,
        hop: str,
        tensor: torch.Tensor | int,
        *,
        layer: int | None = None,
        source: str | None = None,
        destination: str = "cores",
    ) -> None:
        """Record a hop of ``tensor`` (or of a byte count): size counted, time not measured."""
        size_bytes = tensor if isinstance(tensor, int) else tensor.numel() * tensor.element_size()
        self.records.append(
            Transfer(self.step, hop, layer, source or self.memory, destination, size_bytes, "modelled")
        )

    def to_device(self, tensor: torch.Tensor, hop: str) -> torch.Tensor:
        """Copy a host tensor to the compute device, timing the copy when it crosses to a GPU."""
        moved, elapsed_s = _copy(tensor, self.device)
        time_basis = "measured" if elapsed_s is not None else "modelled"
        self.records.append(
            Transfer(self.step, hop, None, "host RAM", self.memory, _nbytes(tensor), time_basis, elapsed_s)
        )
        return moved

    def to_host(self, tensor: torch.Tensor, hop: str) -> torch.Tensor:
        """Copy a result back to host RAM, timing the copy when it comes from a GPU."""
        moved, elapsed_s = _copy(tensor, torch.device("cpu"))
        time_basis = "measured" if elapsed_s is not None else "modelled"
        self.records.append(
            Transfer(self.step, hop, None, self.memory, "host RAM", _nbytes(tensor), time_basis, elapsed_s)
        )
        return moved

    def next_step(self) -> None:
        """Start the records of the next forward call (the next token)."""
        self.step += 1


class NullLog(TransferLog):
    """A log that records nothing: what ``forward`` uses when no log is passed."""

    def add(self, hop: str, tensor: torch.Tensor | int, **where: object) -> None:
        pass

    def to_device(self, tensor: torch.Tensor, hop: str) -> torch.Tensor:
        return tensor.to(self.device)

    def to_host(self, tensor: torch.Tensor, hop: str) -> torch.Tensor:
        return tensor.cpu()


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _copy(tensor: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, float | None]:
    """``tensor.to(device)``, timed with CUDA events when one side is a GPU."""
    if tensor.device.type != "cuda" and device.type != "cuda":
        return tensor.to(device), None
    cuda_device = device if device.type == "cuda" else tensor.device
    stream = torch.cuda.current_stream(cuda_device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(stream)
    moved = tensor.to(device)
    end.record(stream)
    end.synchronize()
    return moved, start.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds


def bytes_by_hop(records: Iterable[Transfer]) -> dict[str, int]:
    """Total bytes per hop name, in ``HOPS`` order (hops that never happened are left out)."""
    totals: dict[str, int] = defaultdict(int)
    for record in records:
        totals[record.hop] += record.size_bytes
    return {hop: totals[hop] for hop in HOPS if hop in totals}


def bytes_per_step(records: Iterable[Transfer]) -> dict[int, int]:
    """Total bytes moved by each forward call."""
    totals: dict[int, int] = defaultdict(int)
    for record in records:
        totals[record.step] += record.size_bytes
    return dict(sorted(totals.items()))
