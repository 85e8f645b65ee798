"""One call loads weights from GGUF, safetensors or a PyTorch checkpoint, in one of three modes.

- **eager**   read every tensor's bytes into process memory (``pread`` into a new tensor each);
- **lazy**    map the file: each tensor is a view of the mapping, and its bytes are read from
              the page cache or the device only when something first touches them;
- **partial** read only the tensors of the layers asked for (plus, by default, the embeddings,
              the final norm and the output head), with the kernel's read-ahead turned off so
              that it fetches those bytes and no more.

``open_weights`` does the cheap part (parse the header, map the file) and returns an
``OpenedWeights`` whose iteration produces the tensors one by one; ``load`` runs both steps
and returns ``Weights``. The measured loads of ``labkit.loading.measure`` time the two steps
separately: *opening is not loading*.

What comes back: floating-point and integer tensors as torch tensors of their dtype and shape;
quantized GGUF tensors (``Q4_0``, ``Q4_K``, ...) as their stored blocks, a 1-D ``uint8`` tensor
(``labkit.quant.dequantize`` turns them into floats). PyTorch checkpoints are opened only with
``weights_only=True`` (see ``labkit.loading.checkpoint``).

References: man 2 mmap, man 2 pread, man 2 posix_fadvise (``POSIX_FADV_RANDOM``);
huggingface/safetensors ``docs/source/speed.mdx`` (a zero-copy "load" that reads nothing yet).
"""

from __future__ import annotations

import mmap
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from labkit.errors import LoadError
from labkit.loading.checkpoint import flat_tensors, torch_load
from labkit.loading.safetensors_file import DTYPES, NAME_OF_DTYPE
from labkit.loading.table import TensorSpan, detect_format, select, tensor_table

MODES = ("eager", "lazy", "partial")


@dataclass(frozen=True)
class Weights:
    """The result of ``load``.

    Attributes:
        path: the file.
        format: ``"gguf"``, ``"safetensors"`` or ``"pt"``.
        mode: ``"eager"``, ``"lazy"`` or ``"partial"``.
        tensors: name -> tensor, in file order (see the module docstring for quantized types).
        spans: the table rows of the tensors loaded.
    """

    path: Path
    format: str
    mode: str
    tensors: dict[str, torch.Tensor]
    spans: tuple[TensorSpan, ...]

    @property
    def n_bytes(self) -> int:
        """Bytes of the tensors loaded, as stored in the file (counted)."""
        return sum(s.n_bytes for s in self.spans)


class OpenedWeights:
    """A weights file opened for one load: its table is known, no tensor bytes are read yet.

    Iterating yields ``(name, tensor)`` for every requested tensor, in file order; that is
    where an eager or partial load reads its bytes. Iterate once.

    Attributes:
        path, format, mode: as given to ``open_weights``.
        spans: the tensors this load produces.
        file_size_bytes: the file's size.
    """

    def __init__(
        self,
        path: Path,
        fmt: str,
        mode: str,
        spans: list[TensorSpan],
        produce: Callable[[], Iterator[tuple[str, torch.Tensor]]],
    ) -> None:
        self.path, self.format, self.mode, self.spans = path, fmt, mode, tuple(spans)
        self.file_size_bytes = path.stat().st_size
        self._produce = produce

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self._produce()


def check_request(mode: str, layers: Iterable[int] | None) -> list[int] | None:
    """Check a mode and layer list before any work.

    Raises:
        LoadError: an unknown mode, ``partial`` without layers, or layers with another mode.
    """
    if mode not in MODES:
        raise LoadError(
            f"mode {mode!r} is not one of {', '.join(MODES)}; eager reads everything, lazy maps "
            "the file, partial reads only the layers you name"
        )
    if mode == "partial" and layers is None:
        raise LoadError("mode 'partial' needs the layers to load, e.g. layers=[0, 1, 2, 3] (--layers 0-3)")
    if mode != "partial" and layers is not None:
        raise LoadError(
            f"layers={list(layers)} only make sense with mode='partial' (mode {mode!r} loads every "
            "tensor); drop the layers or use mode='partial'"
        )
    return None if layers is None else sorted(set(int(layer) for layer in layers))


def open_weights(
    path: str | os.PathLike[str],
    mode: str = "lazy",
    layers: Iterable[int] | None = None,
    *,
    shared: bool = True,
) -> OpenedWeights:
    """Open a weights file for a load: detect its format and read its tensor table.

    Args:
        path: a ``.gguf``, ``.safetensors`` or PyTorch ``.pt``/``.bin`` file.
        mode: ``"eager"``, ``"lazy"`` or ``"partial"``.
        layers: with ``"partial"``: the layer numbers to load.
        shared: with ``"partial"``: also load the tensors outside every layer (embeddings, norm, head).

    Returns:
        An ``OpenedWeights``; iterate it to get the tensors.

    Raises:
        LoadError: unknown mode or format, layers out of range, a refused or broken checkpoint.
        MissingInputError: no file at ``path``.
    """
    path = Path(path)
    wanted = check_request(mode, layers)
    fmt = detect_format(path)
    if fmt == "pt":
        return _open_checkpoint(path, mode, wanted, shared)
    spans = select(tensor_table(path, fmt, exact=mode == "partial"), wanted, shared=shared, path=path)
    if mode == "lazy":
        return OpenedWeights(path, fmt, mode, spans, _mapped(path, spans))
    return OpenedWeights(path, fmt, mode, spans, lambda: _read(path, spans, random_access=mode == "partial"))


def load(
    path: str | os.PathLike[str],
    mode: str = "lazy",
    layers: Iterable[int] | None = None,
    *,
    shared: bool = True,
) -> Weights:
    """Load a model's weights from GGUF, safetensors or a PyTorch checkpoint.

    Args:
        path: the file.
        mode: ``"eager"`` (read all into memory), ``"lazy"`` (map; read on first touch) or
            ``"partial"`` (read only ``layers``).
        layers: with ``"partial"``: layer numbers, e.g. ``range(4)``.
        shared: with ``"partial"``: also load embeddings, final norm and output head (default).

    Returns:
        ``Weights``: the tensors by name, and the table rows they came from.

    Example:
        >>> w = load("model.gguf", mode="partial", layers=range(4))
        >>> w.tensors["blk.0.attn_norm.weight"].shape
    """
    opened = open_weights(path, mode, layers, shared=shared)
    return Weights(opened.path, opened.format, mode, dict(opened), opened.spans)


def as_typed(raw: torch.Tensor, span: TensorSpan) -> torch.Tensor:
    """View a tensor's raw bytes as its dtype and shape; quantized blocks stay ``uint8`` bytes.

    A view needs the bytes aligned to the element size; otherwise they are copied first.
    """
    known = DTYPES.get(span.dtype)
    if known is None:
        return raw  # a ggml block type: dequantize with labkit.quant
    dtype, element_bytes = known
    if raw.storage_offset() % element_bytes:
        raw = raw.clone()
    return raw.view(dtype).reshape(span.shape)


def _mapped(path: Path, spans: list[TensorSpan]) -> Callable[[], Iterator[tuple[str, torch.Tensor]]]:
    """Map the file now (part of opening); the iterator hands out views of the map."""
    with path.open("rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else None

    def views() -> Iterator[tuple[str, torch.Tensor]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "the buffer is not writable": views are read-only
            for span in spans:
                if span.n_bytes == 0:  # torch.frombuffer refuses count=0
                    raw = torch.empty(0, dtype=torch.uint8)
                else:
                    raw = torch.frombuffer(
                        mapping, dtype=torch.uint8, count=span.n_bytes, offset=_start(span)
                    )
                yield span.name, as_typed(raw, span)  # the view keeps the map alive

    return views


def _read(path: Path, spans: list[TensorSpan], *, random_access: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """``pread`` each tensor's bytes into a new tensor, in file order.

    With ``random_access`` the file is flagged ``POSIX_FADV_RANDOM``: the kernel's read-ahead
    (up to ``read_ahead_kb`` past each read) is off, so only the asked-for bytes leave the device.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        if random_access and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for span in spans:
            buffer = torch.empty(span.n_bytes, dtype=torch.uint8)
            _pread_into(fd, buffer.numpy().data, span, path)
            yield span.name, as_typed(buffer, span)
    finally:
        os.close(fd)


def _start(span: TensorSpan) -> int:
    assert span.offset is not None, span  # GGUF and safetensors tables always know where a tensor starts
    return span.offset


def _pread_into(fd: int, view: memoryview, span: TensorSpan, path: Path) -> None:
    done, start = 0, _start(span)
    while done < len(view):
        n = os.preadv(fd, [view[done:]], start + done)
        if n == 0:
            raise LoadError(
                f"{path}: the file ends inside tensor {span.name!r} (byte {start + done:,}); it is truncated"
            )
        done += n


def _open_checkpoint(path: Path, mode: str, wanted: list[int] | None, shared: bool) -> OpenedWeights:
    """A PyTorch checkpoint: ``torch.load`` does the opening (eager: all the reading too)."""
    tensors = flat_tensors(torch_load(path, mmap=mode != "eager"), path)
    table = [
        TensorSpan(
            n, NAME_OF_DTYPE.get(t.dtype, str(t.dtype)), tuple(t.shape), None, t.numel() * t.element_size()
        )
        for n, t in tensors.items()
    ]
    spans = select(table, wanted, shared=shared, path=path)
    names = [s.name for s in spans]
    if mode == "partial":  # copy the chosen tensors out of the map, as the other formats read them
        return OpenedWeights(path, "pt", mode, spans, lambda: ((n, tensors[n].clone()) for n in names))
    return OpenedWeights(path, "pt", mode, spans, lambda: ((n, tensors[n]) for n in names))
