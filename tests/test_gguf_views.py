"""Notebook 03's explorer: its handler runs without events, and its static copy names what it shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from labkit import gguf

pytest.importorskip("ipywidgets")
from labkit.widgets.gguf import layout_explorer  # noqa: E402


def test_layout_explorer_shows_a_tensor_and_its_static_copy(default_model: Path) -> None:
    with gguf.open(default_model) as f:
        explorer = layout_explorer(f)
        details = explorer.show("blk.0.attn_q.weight")
        assert "blk.0.attn_q.weight" in details and explorer.picker.value == "blk.0.attn_q.weight"
        explorer.show(0)  # the header: not a tensor, so the picker is cleared
        assert explorer.picker.value is None
        explorer.show("token_embd.weight")
        view = explorer.static()._repr_html_()
        assert view.startswith("<details>") and "token_embd.weight" in view
        assert "<td>tensor</td><td>272</td>" in view  # one region per tensor in the table
