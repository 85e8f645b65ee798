"""Reading a layer's bytes from the file in chunks, with ``pread``, page-aligned, optionally ``O_DIRECT``.

A layer is a few byte ranges of the file (one per tensor). The reader cuts them into
chunks of at most ``chunk_bytes`` and reads each chunk into a staging buffer with one
``os.preadv`` call (a positioned read: no shared file position, so no lock, and it
releases the GIL, so a reader thread runs beside the compute).

Every read starts and ends on a page boundary, as ``O_DIRECT`` demands (llama.cpp's
``llama_file::read_aligned_chunk`` does the same): the chunk ``[offset, offset + n)`` is
read as ``[read_start, read_end)``, rounded out to ``align_bytes``, and the wanted bytes sit
at ``skip`` inside the buffer::

    file:    |....read_start|<skip>[offset ........ offset+n)<trim>|read_end....
    buffer:  [ 0 ......... skip ......... skip+n ........ read_end-read_start )

With ``io="odirect"`` the file is opened with ``O_DIRECT``: the bytes come from the
device, never from the page cache (the buffer itself must be page-aligned too).

With ``io="mmap"`` (a CPU device only) nothing is copied: the file is mapped, a layer's "read" is
touching its pages (``touch_pages``: the OS reads from the disk what the page cache lacks), the
compute reads the tensors in place when the file holds them as computed (an F16 file computed in
float16) or dequantizes straight from the mapping, and ``drop_pages`` unmaps the layer once it is
computed, so the process holds only the layers in flight. This is how accelerate's disk offload and
llama.cpp's mmap loading read weights on a CPU.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from labkit.errors import StagingError
from labkit.staging.layers import LayerSpec

PAGE_BYTES = mmap.PAGESIZE
IO_MODES = ("pread", "odirect", "mmap")


@dataclass(frozen=True)
class Chunk:
    """One read: ``n_bytes`` wanted at ``offset`` of the file, landing at ``dest_offset`` of a raw slot.

    Attributes:
        layer: the layer's index.
        number: the chunk's number within the layer (0, 1, ...).
        offset, n_bytes: the wanted bytes.
        read_start, read_bytes: the aligned read that covers them.
        skip: where the wanted bytes start in the buffer.
        dest_offset: where they go in the layer's raw slot.
    """

    layer: int
    number: int
    offset: int
    n_bytes: int
    read_start: int
    read_bytes: int
    skip: int
    dest_offset: int


def aligned_range(offset: int, n_bytes: int, align_bytes: int) -> tuple[int, int, int, int]:
    """Round a byte range out to ``align_bytes``: ``(read_start, read_end, skip, trim)``.

    ``skip`` bytes before and ``trim`` bytes after the wanted ones are read and thrown away.

    Example:
        >>> aligned_range(5000, 100, 4096)
        (4096, 8192, 904, 3092)
    """
    read_start = offset - offset % align_bytes
    end = offset + n_bytes
    read_end = -(-end // align_bytes) * align_bytes
    return read_start, read_end, offset - read_start, read_end - end


def range_chunk(
    offset: int,
    n_bytes: int,
    *,
    layer: int = -1,
    number: int = 0,
    dest_offset: int = 0,
    align_bytes: int = PAGE_BYTES,
) -> Chunk:
    """The chunk that reads ``n_bytes`` at ``offset`` with one aligned read (see ``aligned_range``)."""
    read_start, read_end, skip, _ = aligned_range(offset, n_bytes, align_bytes)
    return Chunk(layer, number, offset, n_bytes, read_start, read_end - read_start, skip, dest_offset)


def layer_chunks(layer: LayerSpec, chunk_bytes: int, align_bytes: int = PAGE_BYTES) -> list[Chunk]:
    """The chunks that read one layer: each run of file bytes cut into pieces of at most ``chunk_bytes``.

    Tensors that sit in the same order and spacing in the file and in the raw slot (a block's
    tensors, back to back) form one run, read with as few calls as possible. An aligned read can
    be up to two pages longer than its chunk: a staging buffer needs ``staging_buffer_bytes``.
    """
    runs: list[list[int]] = []  # [file offset, raw offset, n_bytes]
    for part in sorted(layer.parts, key=lambda p: p.file_offset):
        if runs and part.file_offset - runs[-1][0] == part.raw_offset - runs[-1][1] >= runs[-1][2]:
            runs[-1][2] = part.file_offset + part.n_bytes - runs[-1][0]
        elif part.n_bytes:
            runs.append([part.file_offset, part.raw_offset, part.n_bytes])
    chunks: list[Chunk] = []
    for file_offset, raw_offset, n_bytes in runs:
        for start in range(0, n_bytes, chunk_bytes):
            n = min(chunk_bytes, n_bytes - start)
            chunks.append(
                range_chunk(
                    file_offset + start,
                    n,
                    layer=layer.index,
                    number=len(chunks),
                    dest_offset=raw_offset + start,
                    align_bytes=align_bytes,
                )
            )
    return chunks


def staging_buffer_bytes(chunk_bytes: int, align_bytes: int = PAGE_BYTES) -> int:
    """Bytes a staging buffer needs to take any aligned chunk read."""
    return chunk_bytes + 2 * align_bytes


def open_file(path: str | Path, io: str = "pread") -> int:
    """Open ``path`` for reading (``io="odirect"``: bypassing the page cache); returns the fd.

    Raises:
        StagingError: an unknown ``io``, or ``O_DIRECT`` refused by this system or file system.
    """
    if io not in IO_MODES:
        raise StagingError(
            f"io={io!r}; choose 'pread' (through the page cache), 'odirect' (around it) or 'mmap' "
            "(compute on the mapped file, CPU only)"
        )
    if io in ("pread", "mmap"):
        return os.open(Path(path), os.O_RDONLY)
    flag = getattr(os, "O_DIRECT", None)
    try:
        if flag is None:
            raise OSError("this system has no O_DIRECT")
        return os.open(Path(path), os.O_RDONLY | flag)
    except OSError as error:
        raise StagingError(
            f"cannot open {path} with O_DIRECT ({error.strerror or error}); this file system "
            "may refuse it (tmpfs does): use io='pread'"
        ) from None


def aligned_host_buffer(n_bytes: int, *, pin: bool = False) -> torch.Tensor:
    """A page-aligned uint8 host buffer: pinned (page-locked, for async copies to a GPU) when ``pin``.

    ``O_DIRECT`` needs the buffer's address aligned too. Pinned memory is allocated a page
    larger and a view is taken from the first page boundary inside it.
    """
    if not pin:
        return torch.frombuffer(mmap.mmap(-1, n_bytes), dtype=torch.uint8)  # anonymous mmap: page-aligned
    block = torch.empty(n_bytes + PAGE_BYTES, dtype=torch.uint8, pin_memory=True)
    start = -block.data_ptr() % PAGE_BYTES
    return block[start : start + n_bytes]


def read_chunk(fd: int, chunk: Chunk, buffer: torch.Tensor) -> torch.Tensor:
    """Read one chunk into ``buffer``; return the view of the wanted bytes.

    Raises:
        StagingError: the file ended early (it changed since it was opened).
    """
    view = memoryview(buffer.numpy())[: chunk.read_bytes]  # type: ignore[arg-type]
    got = _pread_into(fd, view, chunk.read_start)  # an aligned read may run past the end of the file
    if got < chunk.skip + chunk.n_bytes:
        raise _ended_early(chunk.read_start + got, chunk.offset, chunk.n_bytes)
    return buffer[chunk.skip : chunk.skip + chunk.n_bytes]


def read_exact(fd: int, offset: int, out: torch.Tensor) -> None:
    """Read ``out.numel()`` bytes at ``offset`` straight into the uint8 tensor ``out`` (no alignment:
    not for ``O_DIRECT``).

    Raises:
        StagingError: the file ended early (it changed since it was opened).
    """
    view = memoryview(out.numpy())  # type: ignore[arg-type]
    got = _pread_into(fd, view, offset)
    if got < len(view):
        raise _ended_early(offset + got, offset, len(view))


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """``pread`` into ``view`` from ``offset`` until it is full or the file ends; the bytes read."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def _ended_early(at: int, offset: int, n_bytes: int) -> StagingError:
    return StagingError(
        f"the file ended at byte {at} while reading [{offset}, {offset + n_bytes}); was it changed or truncated?"
    )


def map_file(fd: int) -> tuple[mmap.mmap, torch.Tensor]:
    """Map the whole file read-only; return the mapping and a zero-copy uint8 tensor over it."""
    import warnings

    mapping = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "buffer is not writable": the tensor is read-only
        return mapping, torch.frombuffer(mapping, dtype=torch.uint8)


def touch_pages(mapped: torch.Tensor, start: int, n_bytes: int) -> None:
    """Fault a mapped range into this process: one byte read per page (the OS reads what is not cached)."""
    first = start - start % PAGE_BYTES
    int(mapped[first : start + n_bytes : PAGE_BYTES].sum())


def read_ranges(
    path: str | Path, ranges: Sequence[tuple[int, int]], *, chunk_bytes: int = 4 << 20, io: str = "pread"
) -> bytes:
    """Read byte ranges of a file through the chunked, aligned reader, back to back (for tests and demos)."""
    from labkit.staging.layers import FilePart

    parts, at = [], 0
    for offset, n in ranges:
        parts.append(FilePart("", "", "F32", (n,), offset, n, at, 0))
        at += n
    layer = LayerSpec("ranges", 0, tuple(parts), ())
    out = bytearray(at)
    fd = open_file(path, io)
    try:
        buffer = aligned_host_buffer(staging_buffer_bytes(chunk_bytes))
        for chunk in layer_chunks(layer, chunk_bytes) if parts else []:
            data = read_chunk(fd, chunk, buffer)
            out[chunk.dest_offset : chunk.dest_offset + chunk.n_bytes] = data.numpy().tobytes()
    finally:
        os.close(fd)
    return bytes(out)
