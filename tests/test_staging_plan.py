"""The placement planner: every layer placed once, budgets respected, monotone, llama.cpp's order, clear errors."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.errors import PlanError
from labkit.staging import plan_layers
from labkit.staging.layers import DenseTensor, FilePart, LayerSpec

MiB = 1 << 20


def fake_layers(sizes: list[tuple[int, int]]) -> list[LayerSpec]:
    """Layers with given ``(file_bytes, dense_bytes)``: blocks, then the output layer last."""
    layers = []
    for index, (file_bytes, dense_bytes) in enumerate(sizes):
        name = "output" if index == len(sizes) - 1 else f"blk.{index}"
        part = FilePart(f"{name}.w", f"{name}.w", "F32", (file_bytes // 4,), 1000 * index, file_bytes, 0, 0)
        tensor = DenseTensor(f"{name}.w", (dense_bytes // 4,), torch.float32, False, 0)
        layers.append(LayerSpec(name, index, (part,), (tensor,)))
    return layers


layer_sizes = st.lists(
    st.tuples(st.integers(1, 64).map(lambda k: k * 4096), st.integers(1, 256).map(lambda k: k * 4096)),
    min_size=2,
    max_size=12,
)


def plan_or_none(layers, **kwargs):
    try:
        return plan_layers(layers, **kwargs)
    except PlanError:
        return None


@settings(max_examples=150, deadline=None)
@given(
    sizes=layer_sizes,
    budget=st.integers(0, 4096 * 4000),
    order=st.sampled_from(["front", "back"]),
    n_slots=st.integers(1, 3),
)
def test_cpu_plan_places_every_layer_once_within_the_budget(sizes, budget, order, n_slots):
    layers = fake_layers(sizes)
    plan = plan_or_none(
        layers,
        device="cpu",
        ram_bytes=budget,
        reserve_bytes=12345,
        n_slots=n_slots,
        chunk_bytes=4096,
        order=order,
    )
    if plan is None:
        return
    assert [p.index for p in plan.placements] == list(range(len(layers)))
    assert all(p.tier in ("cpu", "disk") for p in plan.placements)
    assert plan.bytes_on("ram") <= budget
    assert sorted(plan.streamed + [p.index for p in plan.placements if p.tier == "cpu"]) == list(
        range(len(layers))
    )


@settings(max_examples=150, deadline=None)
@given(
    sizes=layer_sizes,
    vram=st.integers(0, 4096 * 3000),
    ram=st.integers(0, 4096 * 600),
    order=st.sampled_from(["front", "back"]),
)
def test_gpu_plan_respects_vram_and_ram(sizes, vram, ram, order):
    layers = fake_layers(sizes)
    plan = plan_or_none(
        layers,
        device="cuda",
        vram_bytes=vram,
        ram_bytes=ram,
        reserve_bytes=4096,
        chunk_bytes=4096,
        order=order,
    )
    if plan is None:
        return
    assert [p.index for p in plan.placements] == list(range(len(layers)))
    assert plan.bytes_on("gpu 0") <= vram
    assert plan.bytes_on("ram") <= ram
    tiers = [p.tier for p in plan.placements]
    walk = tiers if order == "front" else tiers[::-1]
    assert walk == sorted(
        walk, key=["gpu", "cpu", "disk"].index
    )  # gpu first along the walk, then cpu, then disk


@settings(max_examples=100, deadline=None)
@given(
    sizes=layer_sizes,
    budget=st.integers(0, 4096 * 3000),
    extra=st.integers(0, 4096 * 500),
    order=st.sampled_from(["front", "back"]),
)
def test_more_budget_never_means_fewer_resident_layers(sizes, budget, extra, order):
    layers = fake_layers(sizes)
    small = plan_or_none(layers, device="cpu", ram_bytes=budget, chunk_bytes=4096, order=order)
    large = plan_or_none(layers, device="cpu", ram_bytes=budget + extra, chunk_bytes=4096, order=order)
    if small is not None:
        assert large is not None
        assert large.n_resident >= small.n_resident
    gpu_small = plan_or_none(layers, device="cuda", vram_bytes=budget, chunk_bytes=4096, order=order)
    gpu_large = plan_or_none(layers, device="cuda", vram_bytes=budget + extra, chunk_bytes=4096, order=order)
    if gpu_small is not None:
        assert gpu_large is not None and gpu_large.n_resident >= gpu_small.n_resident


@settings(max_examples=60, deadline=None)
@given(n_layers=st.integers(1, 10), budget_layers=st.integers(0, 12))
def test_back_order_is_llama_cpp_i_gpu_start(n_layers, budget_layers):
    """llama.cpp: a layer (the output counting as layer n_layer) is on the GPU iff il >= n_layer + 1 - ngl."""
    layers = fake_layers([(4096, 8 * 4096)] * (n_layers + 1))
    slots = 2 * (4096 + 8 * 4096) + 4096  # two slots + the dequantize scratch
    plan = plan_layers(
        layers, device="cuda", vram_bytes=slots + budget_layers * 8 * 4096, chunk_bytes=4096, order="back"
    )
    ngl = plan.n_resident
    i_gpu_start = max(n_layers + 1 - ngl, 0)
    assert [p.tier == "gpu" for p in plan.placements] == [i >= i_gpu_start for i in range(n_layers + 1)]
    assert ngl == min(budget_layers, n_layers + 1) or (ngl == n_layers + 1)


def test_front_order_keeps_the_first_blocks():
    layers = fake_layers([(4096, 10 * MiB)] * 5)
    plan = plan_layers(layers, device="cpu", ram_bytes=45 * MiB, chunk_bytes=4096, order="front")
    assert [p.tier for p in plan.placements] == ["cpu", "cpu", "disk", "disk", "disk"]
    assert plan.tier(4) == "disk"


def test_too_small_a_budget_names_the_smallest_that_works():
    layers = fake_layers([(MiB, 4 * MiB)] * 4)
    with pytest.raises(PlanError, match=r"smallest RAM budget that works is ([\d,]+) bytes") as error:
        plan_layers(layers, device="cpu", ram_bytes=MiB, reserve_bytes=3 * MiB)
    smallest = int(re.search(r"works is ([\d,]+) bytes", str(error.value)).group(1).replace(",", ""))
    plan = plan_layers(layers, device="cpu", ram_bytes=smallest, reserve_bytes=3 * MiB)
    assert plan.bytes_on("ram") <= smallest
    with pytest.raises(PlanError):
        plan_layers(layers, device="cpu", ram_bytes=smallest - 1, reserve_bytes=3 * MiB)


def test_ram_too_small_for_staging_on_a_gpu_plan():
    layers = fake_layers([(MiB, 4 * MiB)] * 4)
    with pytest.raises(PlanError, match="staging buffers"):
        plan_layers(layers, device="cuda", vram_bytes=12 * MiB, ram_bytes=4096, chunk_bytes=MiB)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"device": "tpu", "ram_bytes": 1}, "device='tpu'"),
        ({"device": "cpu", "ram_bytes": 1 << 30, "order": "middle"}, "order='middle'"),
        ({"device": "cpu", "ram_bytes": 1 << 30, "n_slots": 0}, "n_slots=0"),
        ({"device": "cpu", "ram_bytes": 1 << 30, "chunk_bytes": 1000}, "chunk_bytes=1000"),
        ({"device": "cuda"}, "needs vram_bytes"),
        ({"device": "cpu", "vram_bytes": 5}, "no VRAM"),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(PlanError, match=re.escape(match)):
        plan_layers(fake_layers([(4096, 4096)] * 3), **kwargs)


def test_two_gpus_share_resident_layers_in_proportion():
    layers = fake_layers([(MiB, 10 * MiB)] * 9)  # 8 blocks + output
    plan = plan_layers(layers, device="cuda", vram_bytes=[1000 * MiB, 1000 * MiB], reserve_bytes=0)
    gpus = [p.gpu for p in plan.placements]
    assert plan.n_resident == 9
    assert gpus.count(0) in (4, 5) and gpus.count(1) in (4, 5)
    assert gpus == sorted(gpus, reverse=True)  # back order: contiguous runs, the output layer on GPU 0
    uneven = plan_layers(layers, device="cuda", vram_bytes=[300 * MiB, 100 * MiB], reserve_bytes=0)
    assert [p.gpu for p in uneven.placements].count(0) > [p.gpu for p in uneven.placements].count(1)
    assert uneven.bytes_on("gpu 0") <= 300 * MiB and uneven.bytes_on("gpu 1") <= 100 * MiB


def test_explain_and_device_map():
    layers = fake_layers([(MiB, 4 * MiB)] * 5)
    plan = plan_layers(
        layers, device="cuda", vram_bytes=30 * MiB, ram_bytes=2 * MiB + 8 * MiB, chunk_bytes=MiB
    )
    text = plan.explain()
    for word in ("gpu", "reserved", "slots", "budgets"):
        assert word in text
    device_map = plan.device_map()
    assert set(device_map) == {
        "model.embed_tokens",
        "model.norm",
        "lm_head",
        *(f"model.layers.{i}" for i in range(4)),
    }
    assert device_map["lm_head"] == 0  # back order: the output layer is the first resident
    assert set(device_map.values()) <= {0, "cpu", "disk"}
    assert sum(1 for p in plan.placements if p.tier == "disk") == sum(
        1 for v in device_map.values() if v == "disk"
    ) - (1 if device_map["lm_head"] == "disk" else 0)
