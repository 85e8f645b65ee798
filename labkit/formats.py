"""The table of ggml tensor types: the one place block layouts are written down.

A GGUF tensor is stored as a run of fixed-size *blocks*. Each block holds
``block_size`` weights in ``type_size`` bytes. The quantizers, the GGUF reader
and writer, and the figures all read their numbers from ``FORMATS``.

Type ids and sizes follow ggml (``ggml/include/ggml.h``, ``src/ggml-common.h``)
and gguf-py (``GGML_QUANT_SIZES``). ``QK_K = 256`` is the K-quant super-block.
"""

from __future__ import annotations

from dataclasses import dataclass

QK_K = 256  # weights per K-quant super-block
K_SCALE_SIZE = 12  # bytes of packed 6-bit scales and mins in Q4_K / Q5_K


@dataclass(frozen=True)
class Format:
    """How one ggml type lays out its weights.

    Attributes:
        name: the GGUF/ggml spelling, e.g. ``"Q4_K"``.
        type_id: the ``ggml_type`` number stored in a GGUF tensor info.
        block_size: weights per block.
        type_size: bytes per block.
        layout: the block's fields in byte order, for teaching.
    """

    name: str
    type_id: int
    block_size: int
    type_size: int
    layout: str

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.type_size / self.block_size

    @property
    def quantized(self) -> bool:
        return self.block_size > 1

    def row_bytes(self, n_per_row: int) -> int:
        """Bytes one row of ``n_per_row`` weights takes (must be whole blocks)."""
        return n_per_row // self.block_size * self.type_size


# Sizes written as visible sums: "2 + 16" reads as "an f16 scale, then 16 bytes of nibbles".
FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("F32", 0, 1, 4, "f32"),
        Format("F16", 1, 1, 2, "f16"),
        Format("BF16", 30, 1, 2, "bf16"),
        Format("Q4_0", 2, 32, 2 + 16, "d:f16, qs[16]: 32 x 4-bit"),
        Format("Q4_1", 3, 32, 2 + 2 + 16, "d:f16, m:f16, qs[16]: 32 x 4-bit"),
        Format("Q5_0", 6, 32, 2 + 4 + 16, "d:f16, qh[4]: 32 high bits, qs[16]: 32 x 4-bit"),
        Format("Q5_1", 7, 32, 2 + 2 + 4 + 16, "d:f16, m:f16, qh[4], qs[16]"),
        Format("Q8_0", 8, 32, 2 + 32, "d:f16, qs[32]: int8"),
        Format(
            "Q2_K",
            10,
            QK_K,
            16 + 64 + 2 + 2,
            "scales[16]: 4-bit scale|4-bit min, qs[64]: 2-bit, d:f16, dmin:f16",
        ),
        Format("Q3_K", 11, QK_K, 32 + 64 + 12 + 2, "hmask[32], qs[64]: low 2 bits, scales[12]: 6-bit, d:f16"),
        Format(
            "Q4_K", 12, QK_K, 2 + 2 + K_SCALE_SIZE + 128, "d:f16, dmin:f16, scales[12]: 6-bit, qs[128]: 4-bit"
        ),
        Format(
            "Q5_K", 13, QK_K, 2 + 2 + K_SCALE_SIZE + 32 + 128, "d:f16, dmin:f16, scales[12], qh[32], qs[128]"
        ),
        Format(
            "Q6_K",
            14,
            QK_K,
            128 + 64 + 16 + 2,
            "ql[128]: low 4 bits, qh[64]: high 2 bits, scales[16]: int8, d:f16",
        ),
    ]
}

FORMAT_BY_ID: dict[int, Format] = {f.type_id: f for f in FORMATS.values()}
