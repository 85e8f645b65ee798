"""The chunked reader: aligned-range arithmetic, and byte-exact reads at random offsets, sizes and chunk sizes."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.errors import StagingError
from labkit.staging import aligned_range, layer_chunks, read_ranges
from labkit.staging.layers import FilePart, LayerSpec
from labkit.staging.reader import PAGE_BYTES, aligned_host_buffer, open_file, read_chunk, staging_buffer_bytes

FILE_BYTES = 3 * (1 << 20) + 12345  # not a whole number of pages


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("reader") / "data.bin"
    path.write_bytes(os.urandom(FILE_BYTES))
    return path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((5000, 100, 4096), (4096, 8192, 904, 3092)),  # inside one page
        ((4096, 4096, 4096), (4096, 8192, 0, 0)),  # exactly one page
        ((0, 1, 4096), (0, 4096, 0, 4095)),
        ((4095, 2, 4096), (0, 8192, 4095, 4095)),  # straddles a boundary
        ((12288, 0, 4096), (12288, 12288, 0, 0)),  # empty, aligned
        ((100, 28, 32), (96, 128, 4, 0)),  # GGUF's 32-byte alignment
    ],
)
def test_aligned_range_hand_worked(args, expected):
    assert aligned_range(*args) == expected


@settings(max_examples=200, deadline=None)
@given(
    offset=st.integers(0, 1 << 40), n=st.integers(0, 1 << 30), align=st.sampled_from([32, 512, 4096, 65536])
)
def test_aligned_range_covers_and_aligns(offset, n, align):
    start, end, skip, trim = aligned_range(offset, n, align)
    assert start % align == 0 and end % align == 0
    assert start <= offset and offset + n <= end
    assert skip < align and trim < align
    assert end - start == skip + n + trim


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_chunked_reads_are_byte_exact(data_file, data):
    content = data_file.read_bytes()
    ranges = data.draw(
        st.lists(
            st.integers(0, FILE_BYTES).flatmap(
                lambda o: st.tuples(st.just(o), st.integers(0, min(FILE_BYTES - o, 600_000)))
            ),
            min_size=1,
            max_size=5,
        )
    )
    chunk_bytes = data.draw(st.sampled_from([4096, 8192, 65536, 1 << 20]))
    got = read_ranges(data_file, ranges, chunk_bytes=chunk_bytes)
    want = b"".join(content[o : o + n] for o, n in ranges)
    assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest()


def test_chunks_cut_a_tensor_at_chunk_size_and_land_back_to_back():
    parts = (
        FilePart("a", "a", "F32", (2500,), 100, 10_000, 0, 0),
        FilePart("b", "b", "F32", (4096,), 20_000, 16_384, 10_048, 0),
    )
    layer = LayerSpec("blk.0", 0, parts, ())
    chunks = layer_chunks(layer, 4096)
    assert [c.n_bytes for c in chunks] == [4096, 4096, 1808, 4096, 4096, 4096, 4096]
    assert [c.dest_offset for c in chunks[:3]] == [0, 4096, 8192]
    assert chunks[3].dest_offset == 10_048
    assert all(c.read_start % PAGE_BYTES == 0 and c.read_bytes % PAGE_BYTES == 0 for c in chunks)
    assert all(c.read_bytes <= staging_buffer_bytes(4096) for c in chunks)


def test_staging_buffers_are_page_aligned():
    buffer = aligned_host_buffer(staging_buffer_bytes(1 << 20))
    assert buffer.data_ptr() % PAGE_BYTES == 0


def test_odirect_reads_the_same_bytes(data_file):
    try:
        os.close(open_file(data_file, "odirect"))
    except StagingError:
        pytest.skip("this file system refuses O_DIRECT (tmpfs does)")
    ranges = [(0, 100), (4097, 70_000), (FILE_BYTES - 10, 10)]
    content = data_file.read_bytes()
    assert read_ranges(data_file, ranges, chunk_bytes=8192, io="odirect") == b"".join(
        content[o : o + n] for o, n in ranges
    )


def test_a_truncated_file_is_a_clear_error(data_file, tmp_path):
    short = tmp_path / "short.bin"
    short.write_bytes(data_file.read_bytes()[:5000])
    layer = LayerSpec("blk.0", 0, (FilePart("a", "a", "F32", (2500,), 0, 10_000, 0, 0),), ())
    fd = open_file(short)
    try:
        with pytest.raises(StagingError, match="truncated"):
            read_chunk(fd, layer_chunks(layer, 16384)[0], aligned_host_buffer(staging_buffer_bytes(16384)))
    finally:
        os.close(fd)


def test_bad_io_mode():
    with pytest.raises(StagingError, match="io='mapped'; choose 'pread'.*'odirect'.*'mmap'"):
        open_file("/dev/null", "mapped")
