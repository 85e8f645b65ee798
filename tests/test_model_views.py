"""Notebook 05's figures, widget and exercise check (labkit.figures/widgets/checks.runtime)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("plotly")
pytest.importorskip("ipywidgets")

from labkit.checks.runtime import check_kv_cache_size, expected_kv_bytes  # noqa: E402
from labkit.figures import runtime as figures  # noqa: E402
from labkit.modelfiles import synthetic_llama  # noqa: E402
from labkit.runtime.model import load  # noqa: E402
from labkit.runtime.transfers import TransferLog  # noqa: E402
from labkit.widgets.runtime import kv_cache_explorer  # noqa: E402

SMOL = {
    "llama.block_count": 30,
    "llama.embedding_length": 576,
    "llama.attention.head_count": 9,
    "llama.attention.head_count_kv": 3,
}


def reference(metadata, context_length, batch, bytes_per_element):
    n_heads = metadata["llama.attention.head_count"]
    n_kv = metadata.get("llama.attention.head_count_kv", n_heads)
    return (
        2
        * metadata["llama.block_count"]
        * batch
        * context_length
        * n_kv
        * (metadata["llama.embedding_length"] // n_heads)
        * bytes_per_element
    )


def test_check_accepts_a_right_answer() -> None:
    result = check_kv_cache_size(reference, SMOL)
    assert result.passed and result.n_cases == 4
    assert expected_kv_bytes(SMOL, 8192, 1, 2) == 188_743_680  # 8192 tokens in float16: 189 MB


def test_check_names_the_usual_mistakes() -> None:
    def query_heads(m, n, b, e):
        return 2 * m["llama.block_count"] * b * n * m["llama.attention.head_count"] * 64 * e

    def no_values(m, n, b, e):
        return reference(m, n, b, e) // 2

    def crashes_without_kv_key(m, n, b, e):
        return reference({**m, "llama.attention.head_count_kv": m["llama.attention.head_count_kv"]}, n, b, e)

    result = check_kv_cache_size(query_heads, SMOL)
    assert result.verdict == "not yet" and "3x too big: use head_count_kv" in result.hint
    assert "K *and* V" in check_kv_cache_size(no_values, SMOL).hint
    result = check_kv_cache_size(crashes_without_kv_key, SMOL)
    assert "Llama-2-7B" in result.message and "KeyError" in result.message
    assert "equals head_count" in result.hint


def test_check_answers_a_stub_with_a_hint() -> None:
    def stub(m, n, b, e):
        raise NotImplementedError()

    result = check_kv_cache_size(stub, SMOL)
    assert not result and result.verdict == "not answered" and result.hint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    return load(
        synthetic_llama(tmp_path_factory.mktemp("views") / "t.gguf", n_layers=2, dim=64, qtype="Q8_0")
    )


def test_journey_table_and_figure_sum_the_records(tiny) -> None:
    log = TransferLog()
    tiny.forward([5, 6, 7], tiny.new_cache(), log=log)
    table = figures.journey_table(log.records)
    header = table.splitlines()[0]
    assert header.startswith("hop") and "bytes (counted)" in header and header.endswith("time")
    weights_line = next(line for line in table.splitlines() if line.startswith("weights read"))
    assert f"{tiny.weight_bytes_per_token:,}" in weights_line and weights_line.endswith("modelled")
    figure = figures.journey_figure(log.records)
    assert sum(figure.data[0].x) == sum(r.size_bytes for r in log.records)
    assert all(text.endswith("(time modelled)") for text in figure.data[0].text)


def test_journey_table_shows_measured_times(tiny) -> None:
    from dataclasses import replace

    log = TransferLog()
    tiny.forward([5], log=log)
    timed = [
        replace(r, time_basis="measured", elapsed_s=2e-5) if r.hop == "logits out" else r for r in log.records
    ]
    logits_line = next(
        line for line in figures.journey_table(timed).splitlines() if line.startswith("logits out")
    )
    assert logits_line.endswith("measured, 20 us") and f"{tiny.config.vocab_size * 4:,}" in logits_line


def test_kv_explorer_redraws_and_returns_the_size(tiny) -> None:
    explorer = kv_cache_explorer(tiny.config, weight_bytes=tiny.weights.total_bytes)
    c = tiny.config
    assert explorer.update() == 2 * c.n_layers * c.context_length * c.n_kv_heads * c.head_dim * 2
    explorer.batch.value = 4  # fires the handler through observe
    assert "batch 4" in explorer.summary.value and "modelled" in explorer.summary.value
    explorer.dtype.value = "float32"
    assert explorer.update() == 4 * 2 * c.n_layers * c.context_length * c.n_kv_heads * c.head_dim * 4
    assert len(explorer.figure.data) == 3


def test_speed_and_quality_figures(tmp_path: Path) -> None:
    speed = figures.speed_figure([{"runner": "a", "tokens_per_s": 10.0, "bound_tokens_per_s": 20.0}])
    assert [bar.name for bar in speed.data] == ["measured tokens/s", "bandwidth bound (modelled)"]
    quality = figures.quality_figure([{"qtype": "Q8_0", "file_bytes": 144_811_072, "perplexity": 30.0}])
    assert list(quality.data[0].text) == ["Q8_0"]
    assert list(quality.data[0].x) == [144.811072] and "on disk" in quality.layout.xaxis.title.text


def test_q8_0_cache_counts_its_scales() -> None:
    from labkit.runtime.kvcache import kv_cache_size_bytes

    shape = {"n_layers": 30, "n_kv_heads": 3, "head_dim": 64, "context_length": 8192}
    assert (
        kv_cache_size_bytes(**shape, bytes_per_element=34 / 32)
        == kv_cache_size_bytes(**shape, bytes_per_element=2) * 17 // 32
    )
