"""What ``labkit inspect`` shows: a JSON-ready summary of a GGUF file, and its text rendering.

``summarize(f)`` returns plain dicts and lists (sizes measured from the file itself);
``render_text(summary)`` lays them out as three sections: summary, metadata, tensors.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from labkit.gguf.reader import GGUFFile
from labkit.gguf.strings import StringArray

MAX_STRING_CHARS = 72  # longer strings (chat templates) are cut in the summary


def summarize(f: GGUFFile, *, max_array_items: int = 6) -> dict[str, Any]:
    """A summary of an open GGUF file: sizes, type histogram, metadata (long arrays elided), tensors.

    Args:
        f: an open ``GGUFFile``.
        max_array_items: how many leading items of each metadata array to keep.

    Returns:
        ``{"summary": {...}, "metadata": [...], "tensors": [...]}``, JSON-serialisable.
    """
    tensor_bytes = sum(t.n_bytes for t in f.tensors.values())
    histogram: dict[str, dict[str, int]] = defaultdict(lambda: {"count": 0, "n_bytes": 0})
    for info in f.tensors.values():
        histogram[info.qtype]["count"] += 1
        histogram[info.qtype]["n_bytes"] += info.n_bytes
    summary = {
        "path": str(f.path),
        "architecture": f.metadata.get("general.architecture"),
        "name": f.metadata.get("general.name"),
        "gguf_version": f.version,
        "alignment": f.alignment,
        "file_size_bytes": f.file_size_bytes,
        "header_and_metadata_bytes": f.data_offset,
        "tensor_data_bytes": tensor_bytes,
        "n_metadata": len(f.metadata),
        "n_tensors": len(f.tensors),
        "n_parameters": sum(t.n_elements for t in f.tensors.values()),
        "types": dict(sorted(histogram.items(), key=lambda item: -item[1]["n_bytes"])),
    }
    metadata = [
        {"key": key, "type": f.metadata_types[key], "value": _short_value(value, max_array_items)}
        for key, value in f.metadata.items()
    ]
    tensors = [
        {"name": t.name, "type": t.qtype, "shape": list(t.shape), "n_bytes": t.n_bytes, "offset": t.offset}
        for t in f.tensors.values()
    ]
    return {"summary": summary, "metadata": metadata, "tensors": tensors}


def _short_value(value: Any, max_items: int) -> Any:
    """Scalars as they are (long strings cut); arrays as ``{"length": n, "head": [...]}``."""
    if isinstance(value, str):
        return value if len(value) <= MAX_STRING_CHARS else value[:MAX_STRING_CHARS] + "..."
    if isinstance(value, (StringArray, np.ndarray, list)):
        head = value[:max_items]
        head = head.tolist() if isinstance(head, np.ndarray) else [_short_value(v, max_items) for v in head]
        return {"length": len(value), "head": head}
    return value


def render_text(summary: dict[str, Any]) -> str:
    """The summary as aligned plain text (what ``labkit inspect`` prints without ``--json``)."""
    s = summary["summary"]
    lines = [
        f"{s['path']}",
        f"  architecture   {s['architecture']}   name: {s['name']}",
        f"  GGUF version   {s['gguf_version']}   alignment {s['alignment']}",
        f"  file size      {s['file_size_bytes']:,} bytes (measured)",
        f"  header+meta    {s['header_and_metadata_bytes']:,} bytes;  tensor data {s['tensor_data_bytes']:,} bytes",
        f"  counts         {s['n_metadata']} metadata keys, {s['n_tensors']} tensors, "
        f"{s['n_parameters']:,} parameters",
        "  types",
    ]
    for qtype, row in s["types"].items():
        share = row["n_bytes"] / max(s["tensor_data_bytes"], 1)
        lines.append(f"    {qtype:<8} {row['count']:>5} tensors {row['n_bytes']:>15,} bytes {share:>7.1%}")
    lines += ["", "metadata"]
    for entry in summary["metadata"]:
        lines.append(f"  {entry['key']:<42} {entry['type']:<15} {_format_value(entry['value'])}")
    lines += ["", "tensors", f"  {'name':<34} {'type':<6} {'shape':<18} {'bytes':>13} {'offset':>13}"]
    for t in summary["tensors"]:
        shape = "x".join(str(d) for d in t["shape"])
        lines.append(f"  {t['name']:<34} {t['type']:<6} {shape:<18} {t['n_bytes']:>13,} {t['offset']:>13,}")
    return "\n".join(lines)


def _format_value(value: Any) -> str:
    if isinstance(value, dict):
        more = ", ..." if value["length"] > len(value["head"]) else ""
        head = ", ".join(repr(v) for v in value["head"])
        return f"[{value['length']} items: {head}{more}]"
    return repr(value)
