"""Figures and text views for notebook 03: the GGUF file, byte by byte.

- ``annotated_hex(data)``: the first bytes of a file as hex, one row per field
  (header, then metadata entries) with the decoded value beside it.
- ``layout_figure(regions)``: a map of the whole file, one bar per region
  (``GGUFFile.layout()``), one row per kind, x = byte offset.
- ``kind_totals_figure(regions)``: bytes per kind of region (log scale).
- ``region_details(f, region)``: HTML describing one region; for a tensor, its
  info and its first block decoded (used by ``labkit.widgets.gguf``).
"""

from __future__ import annotations

import html
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go

from labkit.formats import FORMATS
from labkit.gguf.constants import STRUCT_CODES, TENSOR_TYPES, ValueType

KIND_COLORS = {
    "header": "#d62728",
    "metadata": "#1f77b4",
    "tensor_info": "#9467bd",
    "padding": "#bbbbbb",
    "tensor": "#2ca02c",
    "unused": "#ff7f0e",
}
KIND_ORDER = ("header", "metadata", "tensor_info", "padding", "tensor", "unused")


@dataclass(frozen=True)
class ByteField:
    """One field of the file: where it starts, how long it is, what it is, what it says."""

    start: int
    n_bytes: int
    field: str
    value: str


def _header_fields(data: bytes) -> list[ByteField]:
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    return [
        ByteField(0, 4, "magic", repr(magic)),
        ByteField(4, 4, "version (u32)", str(version)),
        ByteField(8, 8, "tensor_count (u64)", str(n_tensors)),
        ByteField(16, 8, "metadata_kv_count (u64)", str(n_kv)),
    ]


def _string(data: bytes, pos: int) -> tuple[str, int]:
    """A GGUF string at ``pos``: u64 length + UTF-8 bytes. Returns (text, next position)."""
    (length,) = struct.unpack_from("<Q", data, pos)
    if pos + 8 + length > len(data):
        raise ValueError("string runs past the bytes given")
    return data[pos + 8 : pos + 8 + length].decode("utf-8", "replace"), pos + 8 + length


def _value(data: bytes, pos: int, vtype: ValueType) -> tuple[Any, int]:
    """One metadata value at ``pos`` (arrays: their elements as a list). Returns (value, next position)."""
    if vtype == ValueType.STRING:
        return _string(data, pos)
    if vtype == ValueType.ARRAY:
        etype, count = struct.unpack_from("<IQ", data, pos)
        pos, items = pos + 12, []
        for _ in range(count):
            item, pos = _value(data, pos, ValueType(etype))
            items.append(item)
        return items, pos
    code = struct.Struct(STRUCT_CODES[vtype])
    return code.unpack_from(data, pos)[0], pos + code.size


def _kv_fields(data: bytes, pos: int, index: int) -> tuple[list[ByteField], int, str, Any]:
    """The fields of metadata entry ``index``: key length, key, value type, value."""
    key, value_pos = _string(data, pos)
    vtype = ValueType(struct.unpack_from("<I", data, value_pos)[0])
    value, end = _value(data, value_pos + 4, vtype)
    fields = [
        ByteField(pos, 8, f"kv[{index}] key length (u64)", str(value_pos - pos - 8)),
        ByteField(pos + 8, value_pos - pos - 8, f"kv[{index}] key", repr(key)),
        ByteField(value_pos, 4, f"kv[{index}] value type (u32)", f"{int(vtype)} = {vtype.name}"),
    ]
    if vtype == ValueType.STRING:
        fields += [
            ByteField(value_pos + 4, 8, f"kv[{index}] value length (u64)", str(end - value_pos - 12)),
            ByteField(value_pos + 12, end - value_pos - 12, f"kv[{index}] value", repr(value)),
        ]
    else:
        shown = (
            value if not isinstance(value, list) or len(value) <= 4 else f"{value[:4]} … ({len(value)} items)"
        )
        label = f"kv[{index}] value" + (" (type,count,items)" if vtype == ValueType.ARRAY else "")
        fields.append(ByteField(value_pos + 4, end - value_pos - 4, label, str(shown)))
    return fields, end, key, value


def _tensor_info_fields(
    data: bytes, pos: int, index: int
) -> tuple[list[ByteField], int, tuple[str, int, int]]:
    """The fields of tensor info ``index``. Also returns (name, offset in the data section, n_bytes)."""
    name, dims_pos = _string(data, pos)
    (n_dims,) = struct.unpack_from("<I", data, dims_pos)
    ne = struct.unpack_from(f"<{n_dims}Q", data, dims_pos + 4)
    type_pos = dims_pos + 4 + 8 * n_dims
    type_id, offset = struct.unpack_from("<IQ", data, type_pos)
    fmt = TENSOR_TYPES[type_id]
    n_elements = 1
    for dim in ne:
        n_elements *= dim
    fields = [
        ByteField(pos, dims_pos - pos, f"tensor[{index}] name", repr(name)),
        ByteField(dims_pos, 4, f"tensor[{index}] n_dims (u32)", str(n_dims)),
        ByteField(dims_pos + 4, 8 * n_dims, f"tensor[{index}] ne (u64 each)", f"{list(ne)} (row first)"),
        ByteField(type_pos, 4, f"tensor[{index}] type (u32)", f"{type_id} = {fmt.name}"),
        ByteField(type_pos + 4, 8, f"tensor[{index}] offset (u64)", f"{offset} (from the data start)"),
    ]
    return fields, type_pos + 12, (name, offset, n_elements // fmt.block_size * fmt.type_size)


def byte_fields(data: bytes, n_bytes: int = 64) -> list[ByteField]:
    """Decode every field that starts within the first ``n_bytes`` of a GGUF file's bytes.

    Header, metadata entries, tensor infos, the padding and each tensor's data. Give a
    few hundred bytes more than ``n_bytes`` so the last field decodes; decoding stops
    quietly where the bytes end.
    """
    fields = _header_fields(data)
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos, alignment, tensors = 24, 32, []
    try:
        for i in range(n_kv):
            kv, pos, key, value = _kv_fields(data, pos, i)
            fields += kv
            alignment = int(value) if key == "general.alignment" else alignment
        for i in range(n_tensors):
            info, pos, tensor = _tensor_info_fields(data, pos, i)
            fields += info
            tensors.append(tensor)
        data_start = pos + (-pos % alignment)
        if data_start > pos:
            fields.append(
                ByteField(pos, data_start - pos, "padding", f"zeros up to a multiple of {alignment}")
            )
        for name, offset, size in tensors:
            fields.append(ByteField(data_start + offset, size, f"data of {name!r}", f"{size} bytes"))
    except (struct.error, ValueError, KeyError, OverflowError):
        pass  # ran off the bytes we were given: show what was decoded
    return [f for f in fields if f.start < n_bytes]


def annotated_hex(data: bytes, n_bytes: int = 64) -> str:
    """The first ``n_bytes`` as a table: offset, the field's bytes in hex, field name, decoded value."""
    rows = [f"{'offset':>6}  {'bytes (hex)':<48}  {'field':<30}  value"]
    for field in byte_fields(data, n_bytes):
        end = min(field.start + field.n_bytes, n_bytes)
        chunk = data[field.start : end]
        for i in range(0, max(len(chunk), 1), 16):
            label, value = (field.field, field.value) if i == 0 else ("", "")
            more = "…" if field.start + field.n_bytes > n_bytes and i + 16 >= len(chunk) else ""
            hex_part = chunk[i : i + 16].hex(" ") + more
            rows.append(f"{field.start + i:#06x}  {hex_part:<48}  {label:<30}  {value}".rstrip())
    return "\n".join(rows)


def layout_figure(regions: Sequence[Any], *, title: str = "Where every byte of the file goes") -> go.Figure:
    """A map of the file: one horizontal bar per region, one row per kind, x = byte offset.

    Each trace is one kind; ``customdata`` holds each bar's index into ``regions`` so a
    click handler can find the region again.
    """
    fig = go.Figure()
    for kind in KIND_ORDER:
        index = [i for i, r in enumerate(regions) if r.kind == kind]
        if not index:
            continue
        fig.add_bar(
            name=kind,
            orientation="h",
            y=[kind] * len(index),
            base=[regions[i].start for i in index],
            x=[max(regions[i].n_bytes, 1) for i in index],
            customdata=index,
            marker_color=KIND_COLORS[kind],
            marker_line_width=0,
            hovertext=[
                f"{regions[i].name or kind}<br>start {regions[i].start:,}<br>{regions[i].n_bytes:,} bytes"
                for i in index
            ],
            hoverinfo="text",
        )
    fig.update_layout(
        title=title,
        barmode="overlay",
        height=340,
        bargap=0.15,
        showlegend=False,
        xaxis_title="byte offset in the file (measured from this file)",
        yaxis={"categoryorder": "array", "categoryarray": list(reversed(KIND_ORDER))},
        margin={"l": 90, "r": 20, "t": 50, "b": 50},
    )
    return fig


def bytes_by_kind(regions: Sequence[Any]) -> dict[str, tuple[int, int]]:
    """kind -> (number of regions, total bytes), in file order of kinds; kinds absent are left out."""
    totals = {
        kind: (sum(1 for r in regions if r.kind == kind), sum(r.n_bytes for r in regions if r.kind == kind))
        for kind in KIND_ORDER
    }
    return {kind: total for kind, total in totals.items() if total[0]}


def kind_totals_figure(regions: Sequence[Any]) -> go.Figure:
    """Bytes per kind of region (log scale: the header is 24 bytes, the tensors millions)."""
    by_kind = bytes_by_kind(regions)
    kinds = list(by_kind)
    counts = {k: by_kind[k][0] for k in kinds}
    totals = {k: by_kind[k][1] for k in kinds}
    fig = go.Figure(
        go.Bar(
            x=[totals[k] for k in kinds],
            y=kinds,
            orientation="h",
            marker_color=[KIND_COLORS[k] for k in kinds],
            text=[f"{totals[k]:,} B in {counts[k]} region(s)" for k in kinds],
            textposition="auto",
        )
    )
    fig.update_layout(
        title="Bytes by kind of region (measured from this file)",
        xaxis_type="log",
        height=300,
        xaxis_title="bytes (log scale)",
        margin={"l": 90, "r": 20, "t": 50, "b": 50},
    )
    return fig


def container_figure(times_s: dict[str, dict[str, float]]) -> go.Figure:
    """Grouped bars: for each container format, the median seconds of each step (log scale).

    Args:
        times_s: format -> step -> seconds, all measured in the same run.
    """
    steps = list(next(iter(times_s.values())))
    fig = go.Figure(
        [
            go.Bar(
                name=step,
                x=list(times_s),
                y=[times_s[fmt][step] * 1e3 for fmt in times_s],
                text=[f"{times_s[fmt][step] * 1e3:.2f} ms" for fmt in times_s],
                textposition="outside",
            )
            for step in steps
        ]
    )
    fig.update_layout(
        title="Open and load, median of runs (measured here, warm page cache)",
        barmode="group",
        yaxis_type="log",
        yaxis_title="milliseconds (log scale)",
        height=380,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
    )
    return fig


def _table(rows: Sequence[tuple[str, str]]) -> str:
    cells = "".join(
        f"<tr><td><b>{html.escape(k)}</b></td><td><code>{html.escape(v)}</code></td></tr>" for k, v in rows
    )
    return f"<table>{cells}</table>"


def first_block(f: Any, name: str) -> tuple[bytes, list[float]]:
    """The first block of a tensor: its bytes, and the weights it decodes to."""
    from labkit.quant import dequantize

    info = f.tensors[name]
    fmt = FORMATS[info.qtype]
    raw = f.raw(name)[: fmt.type_size].clone()
    values = dequantize(raw, info.qtype, (fmt.block_size,))
    return bytes(raw.numpy()), [float(v) for v in values]


def preview_value(value: Any, n_items: int = 8) -> str:
    """A short text for a metadata value: strings clipped, arrays to their first items."""
    if isinstance(value, (str, bytes, int, float, bool)):
        text = repr(value)
        return text if len(text) <= 200 else text[:200] + "…"
    items = [value[i] for i in range(min(len(value), n_items))]
    items = [x.item() if hasattr(x, "item") else x for x in items]
    return f"{items}{' … ' if len(value) > n_items else ' '}({len(value):,} items)"


def region_details(f: Any, region: Any) -> str:
    """HTML describing one region of ``f.layout()``; a tensor also shows its first block decoded."""
    head = [
        ("kind", region.kind),
        ("name", region.name or "—"),
        ("bytes", f"{region.start:,} .. {region.end:,} ({region.n_bytes:,} bytes)"),
    ]
    if region.kind == "tensor":
        info = f.tensors[region.name]
        fmt = FORMATS.get(info.qtype)  # None: a type labkit reads but cannot decode (IQ*, ...)
        head += [("type", info.qtype), ("shape (torch order)", str(tuple(info.shape)))]
        if fmt is not None:
            block, values = first_block(f, region.name)
            head += [
                ("block", f"{fmt.block_size} weights in {fmt.type_size} bytes: {fmt.layout}"),
                ("first block (hex)", block.hex(" ")),
                ("first block decoded", ", ".join(f"{v:.4g}" for v in values)),
            ]
    elif region.kind == "metadata":
        value = f.metadata[region.name]
        head += [("value type", f.metadata_types[region.name]), ("value", preview_value(value))]
    elif region.kind == "padding":
        head += [("why", f"zeros so the next part starts at a multiple of {f.alignment} bytes")]
    return _table(head)
