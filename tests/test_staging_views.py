"""Notebook 06's figures, widget, exercise check and command line."""

from __future__ import annotations

import json

import pytest
import torch

from labkit import staging
from labkit.checks import NOT_ANSWERED, NOT_YET
from labkit.checks.staging import check_layer_tiers
from labkit.cli import main
from labkit.figures.staging import plan_figure, speed_curve_figure, timeline_figure
from labkit.gguf import open as open_gguf
from labkit.modelfiles import synthetic_llama

CHUNK = 64 << 10


@pytest.fixture(scope="module")
def q8_model(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("views") / "q8.gguf"
    return synthetic_llama(path, n_layers=6, dim=128, n_heads=4, n_kv_heads=2, qtype="Q8_0", vocab_size=300)


@pytest.fixture(scope="module")
def traces(q8_model):
    model = staging.load(
        q8_model,
        device="cuda",
        vram=int(6.4 * 2**20),
        ram=2 * CHUNK + (300 << 10),
        chunk_bytes=CHUNK,
        link=staging.LINK_PRESETS["pcie4-x16-pinned"],
    )
    _, measured = staging.trace_pass(model, [1, 2, 3])
    model.weights.close()
    return measured, staging.project(measured, model.weights.link)


def test_timeline_hatches_and_labels_only_modelled_spans(traces):
    measured, projected = traces
    figure = timeline_figure([("measured", measured), ("projected", projected)])
    modelled = [t for t in figure.data if "modelled" in t.name]
    assert modelled and all(t.marker.pattern.shape == "/" for t in modelled)
    assert all(t.marker.pattern.shape in (None, "") for t in figure.data if "measured" in t.name)
    assert all("modelled" in text for t in modelled for text in t.hovertext)
    assert "projected" in figure.layout.title.text and "measured" in figure.layout.title.text
    lanes = {y for t in figure.data for y in t.y}
    assert lanes == {
        f"{label} · {lane}" for label in ("measured", "projected") for lane in ("read", "copy", "compute")
    }


def test_plan_and_curve_figures(traces, q8_model):
    with open_gguf(q8_model) as f:
        layers = staging.layer_specs(f)
    plan = staging.plan_layers(
        layers, device="cuda", vram_bytes=6 << 20, ram_bytes=1 << 20, chunk_bytes=CHUNK
    )
    figure = plan_figure(plan)
    assert sum(len(t.x) for t in figure.data) == len(layers)
    curve = speed_curve_figure(
        [{"n_resident": n, "tokens_per_s": 1.0 + n, "read_bytes_per_token": 100 - n} for n in range(3)]
    )
    assert "measured" in curve.data[0].name and "counted" in curve.data[1].name


def test_budget_explorer_replans_and_runs(q8_model):
    from labkit.widgets.staging import budget_explorer

    with open_gguf(q8_model) as f:
        layers = staging.layer_specs(f)
    explorer = budget_explorer(q8_model, layers, reserve_bytes=1 << 20, budget_mib=16, max_mib=64)
    assert explorer.update() is not None and "plan for a CPU" in explorer.table.value
    explorer.budget.value = 16  # no change: still planned
    explorer.run.value = True  # the observer runs a measured pass
    assert explorer.timeline.data
    assert "16 MiB" in explorer.static().caption


def _reference(table, budget_bytes, reserve_bytes):
    out, used = ["disk"] * len(table), reserve_bytes
    for i in reversed(range(len(table))):
        if used + table[i]["dense_bytes"] > budget_bytes:
            break
        used += table[i]["dense_bytes"]
        out[i] = "cpu"
    return out


@pytest.fixture(scope="module")
def default_layers(default_model):
    with open_gguf(default_model) as f:
        return staging.layer_specs(f)


def test_check_passes_the_reference_answer(default_layers):
    result = check_layer_tiers(_reference, default_layers)
    assert result.passed and result.n_cases >= 4, result


def test_check_explains_a_wrong_walk_and_the_stub(default_layers):
    def front_walk(table, budget_bytes, reserve_bytes):
        return _reference(table[::-1], budget_bytes, reserve_bytes)[::-1]

    def forgets_reserve(table, budget_bytes, reserve_bytes):
        return _reference(table, budget_bytes, 0)

    def stub(table, budget_bytes, reserve_bytes):
        raise NotImplementedError()

    wrong = check_layer_tiers(front_walk, default_layers)
    assert wrong.verdict == NOT_YET and "output" in wrong.hint
    assert check_layer_tiers(forgets_reserve, default_layers).verdict == NOT_YET
    assert check_layer_tiers(lambda *a: "cpu", default_layers).verdict == NOT_YET
    assert check_layer_tiers(stub, default_layers).verdict == NOT_ANSWERED


def test_cli_stage_plans_and_runs(q8_model, capsys):
    assert main(["stage", str(q8_model), "--ram", "6600K", "--chunk", "64K", "--run", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "plan for a CPU device" in out and "measured" in out and "dequantize" in out
    assert (
        main(
            [
                "stage",
                str(q8_model),
                "--device",
                "cuda",
                "--vram",
                "7M",
                "--ram",
                "1M",
                "--chunk",
                "64K",
                "--link",
                "pcie4-x16-pinned",
                "--run",
                "--json",
            ]
        )
        == 0
        or torch.cuda.is_available()
    )
    data = json.loads(capsys.readouterr().out)
    assert "projected_makespan_s" in data["projected"] and "measured_makespan_s" in data["measured"]
    assert not any(key.startswith("measured") for key in data["projected"])


def test_cli_generate_streams_under_a_budget(q8_model, capsys):
    assert main(["generate", str(q8_model), "hello", "-n", "4", "--ram", "6600K", "--quiet"]) == 0
    streamed = capsys.readouterr().out
    assert main(["generate", str(q8_model), "hello", "-n", "4", "--quiet", "--dtype", "float32"]) == 0
    assert capsys.readouterr().out == streamed


def test_cli_reads_with_mmap_when_asked(q8_model, capsys):
    assert main(["generate", str(q8_model), "hello", "-n", "4", "--ram", "6600K", "--quiet"]) == 0
    streamed = capsys.readouterr().out
    assert (
        main(["generate", str(q8_model), "hello", "-n", "4", "--ram", "6600K", "--quiet", "--io", "mmap"])
        == 0
    )
    assert capsys.readouterr().out == streamed
    assert main(["stage", str(q8_model), "--ram", "6600K", "--chunk", "64K", "--run", "--io", "mmap"]) == 0
    assert "measured" in capsys.readouterr().out
    if not torch.cuda.is_available():
        link = ["--link", "pcie4-x16-pinned"]
        assert main(["stage", str(q8_model), "--device", "cuda", "--vram", "64M", "--io", "mmap", *link]) == 2
        assert "io='mmap' computes on the mapped file in RAM" in capsys.readouterr().err


def test_cli_budget_errors_are_one_line(q8_model, capsys):
    assert main(["stage", str(q8_model), "--ram", "1M"]) == 2
    assert "smallest RAM budget that works" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["stage", str(q8_model), "--device", "cuda", "--vram", "64M"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
