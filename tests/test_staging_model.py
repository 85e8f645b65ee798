"""The real model streamed: logits equal to the all-resident runtime, trace invariants, honest projections."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from labkit import runtime, staging
from labkit.errors import DeviceUnavailableError, PlanError, StagingError
from labkit.gguf import open as open_gguf
from labkit.modelfiles import synthetic_llama
from labkit.staging import LINK_PRESETS, Span, Trace, project

IDS = [1, 5, 9, 200, 33, 7]
CHUNK = 64 << 10  # small staging buffers, so that small budgets stream
STREAM_RAM = int(6.4 * 2**20)  # the q8 model with 2 of its 7 layers resident


@pytest.fixture(scope="module")
def q8_model(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("staging") / "q8.gguf"
    return synthetic_llama(path, n_layers=6, dim=128, n_heads=4, n_kv_heads=2, qtype="Q8_0", vocab_size=300)


@pytest.fixture(scope="module")
def reference(q8_model):
    return runtime.load(q8_model, dtype=torch.float32).logits(IDS)


def budgets_for_each_resident_count(path, n_slots: int) -> dict[int, int]:
    """The smallest budget for each number of resident layers the planner picks (found by planning)."""
    with staging.load(path).weights as weights:  # type: ignore[attr-defined]
        layers = weights.layers
    reserve = staging.reserve_bytes(runtime.load(path, dtype=torch.float32).config, 256, torch.float32)
    found: dict[int, int] = {}
    for budget in range(0, sum(lay.dense_bytes for lay in layers) + reserve + (1 << 20), 32 << 10):
        try:
            plan = staging.plan_layers(
                layers,
                device="cpu",
                reserve_bytes=reserve,
                ram_bytes=budget,
                chunk_bytes=CHUNK,
                n_slots=n_slots,
            )
        except PlanError:
            continue
        found.setdefault(plan.n_resident, budget)
    return found


@pytest.mark.parametrize("n_slots", [1, 2])
def test_streamed_logits_equal_resident_for_every_resident_count(q8_model, reference, n_slots):
    budgets = budgets_for_each_resident_count(q8_model, n_slots)
    assert {0 if n_slots == 2 else 1, 2, 3, 7} <= set(budgets)  # 7: all resident (no slots needed then)
    for n_resident, budget in budgets.items():
        model = staging.load(q8_model, ram=budget, chunk_bytes=CHUNK, n_slots=n_slots)
        assert model.weights.plan.n_resident == n_resident
        assert torch.equal(model.logits(IDS), reference), f"{n_resident} resident layers"
        model.weights.close()


@pytest.mark.parametrize("order", ["front", "back"])
@pytest.mark.parametrize("mode", ["overlap", "serial"])
def test_generation_streams_to_the_same_tokens(q8_model, order, mode):
    want = runtime.load(q8_model, dtype=torch.float32).generate(IDS, 6)
    model = staging.load(
        q8_model,
        ram=STREAM_RAM,
        chunk_bytes=CHUNK,
        order=order,
        mode=mode,
        n_slots=1 if mode == "serial" else 2,
    )
    assert 0 < model.weights.plan.n_resident < 7
    assert model.generate(IDS, 6) == want
    model.weights.close()


def test_bfloat16_and_an_untied_head(tmp_path):
    path = synthetic_llama(tmp_path / "f32.gguf", n_layers=8, dim=64, qtype="F32", tie_embeddings=False)
    for dtype, ram in ((torch.float32, 1400 << 10), (torch.bfloat16, 900 << 10)):
        want = runtime.load(path, dtype=dtype).logits(IDS)
        model = staging.load(path, ram=ram, dtype=dtype, n_staging=1, chunk_bytes=CHUNK, context_tokens=16)
        assert "disk" in {p.tier for p in model.weights.plan.placements}
        assert torch.equal(model.logits(IDS), want)
        model.weights.close()


def test_a_file_already_in_the_compute_format_streams_without_dequantizing(tmp_path):
    path = synthetic_llama(tmp_path / "f16.gguf", n_layers=6, dim=64, qtype="F16")
    with open_gguf(path) as f:
        layers = staging.layer_specs(f, dtype=torch.float16)
        assert all(lay.aliased and lay.dense_bytes == 0 for lay in layers)
        assert not any(lay.aliased for lay in staging.layer_specs(f, dtype=torch.float32))
    want = runtime.load(path, dtype=torch.float16).logits(IDS)
    model = staging.load(path, n_resident=3, dtype=torch.float16, chunk_bytes=CHUNK)
    assert 0 < model.weights.plan.n_resident < 7
    logits, trace = staging.trace_pass(model, IDS)
    assert torch.equal(logits[0], want)
    assert all(
        s.size_bytes == 0 for s in trace.lane("dequantize")
    )  # nothing to decode: views of the bytes read
    model.weights.close()


def test_the_default_model_streamed_equals_resident(default_model):
    ids = list(range(100, 106))
    want = runtime.load(default_model, dtype=torch.float32).logits(ids)
    model = staging.load(default_model, ram=300 << 20)
    assert 0 < model.weights.plan.n_resident < 31
    assert torch.equal(model.logits(ids), want)
    model.weights.close()


def test_a_pass_cut_short_starts_over_cleanly(q8_model, reference):
    model = staging.load(q8_model, ram=STREAM_RAM, chunk_bytes=CHUNK)
    streamed = model.weights.plan.streamed
    model.weights.rows("token_embd.weight", torch.tensor([[1]]))
    model.weights.get(f"blk.{streamed[1]}.attn_qkv.weight")  # as if a pass died in the middle
    assert torch.equal(model.logits(IDS), reference)
    model.weights.close()


def test_a_worker_error_reaches_the_caller(q8_model, tmp_path):
    copy = tmp_path / "copy.gguf"
    shutil.copy(q8_model, copy)
    model = staging.load(
        copy, ram=STREAM_RAM, chunk_bytes=CHUNK, n_slots=1
    )  # the workers run at most 2 layers ahead
    streamed = model.weights.plan.streamed
    assert len(streamed) >= 4
    with open(copy, "r+b") as f:
        f.truncate(model.weights.layers[streamed[0]].parts[0].file_offset)  # the blocks' bytes are gone
    with pytest.raises(StagingError, match="worker failed"):
        model.logits(IDS)
    model.weights.close()


def test_a_gpu_pass_without_a_gpu_needs_a_link(q8_model):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceUnavailableError, match="link=LinkModel"):
        staging.load(q8_model, device="cuda", vram=64 << 20)
    with pytest.raises(StagingError, match="same memory"):
        staging.load(q8_model, vram=1 << 20, ram=1 << 20)


def check_invariants(trace: Trace, eps: float = 1e-9) -> None:
    """read ends before its copy, copy before dequantize before compute; lanes never overlap;
    at most n_slots streamed layers between their first copy and their compute's end; at most
    n_staging chunks read and not yet copied."""
    by_seq: dict[int, dict[str, list[Span]]] = defaultdict(lambda: defaultdict(list))
    for span in trace.spans:
        by_seq[span.seq][span.stage].append(span)
    for seq, stages in by_seq.items():
        if seq < 0:
            continue
        reads = {s.chunk: s for s in stages["read"]}
        for copy in stages["copy"]:
            if copy.chunk in reads:
                assert reads[copy.chunk].end_s <= copy.start_s + eps
        [dequantize], [compute] = stages["dequantize"], stages["compute"]
        into_slot = stages["copy"] or stages["read"]  # a CPU plan reads straight into the slot
        assert max(c.end_s for c in into_slot) <= dequantize.start_s + eps
        assert dequantize.end_s <= compute.start_s + eps
        earlier = by_seq.get(seq - trace.n_slots) if seq >= trace.n_slots else None
        if earlier:
            assert earlier["compute"][0].end_s <= min(c.start_s for c in into_slot) + eps
    for lane in (("read",), ("copy", "dequantize"), ("compute",)):
        spans = sorted((s for s in trace.spans if s.stage in lane), key=lambda s: s.start_s)
        assert all(a.end_s <= b.start_s + eps for a, b in zip(spans, spans[1:], strict=False)), lane
    reads = sorted(trace.lane("read"), key=lambda s: s.start_s)
    copies = {(s.seq, s.chunk): s for s in trace.lane("copy")}
    for i, read in enumerate(reads[trace.n_staging :] if copies else []):  # staging buffers in use
        freed_by = reads[i]
        assert copies[(freed_by.seq, freed_by.chunk)].end_s <= read.start_s + eps


@pytest.mark.parametrize(
    ("n_slots", "n_staging", "chunk_bytes"), [(2, 2, 64 << 10), (1, 1, 1 << 20), (3, 4, 16 << 10)]
)
def test_trace_invariants(q8_model, reference, n_slots, n_staging, chunk_bytes):
    model = staging.load(
        q8_model,
        ram=STREAM_RAM + n_staging * chunk_bytes,
        n_slots=n_slots,
        n_staging=n_staging,
        chunk_bytes=chunk_bytes,
    )
    assert len(model.weights.plan.streamed) >= 3
    logits, trace = staging.trace_pass(model, IDS)
    assert torch.equal(logits[0], reference)
    assert trace.kind == "measured" and all(s.source == "measured" and s.clock == "host" for s in trace.spans)
    assert {s.layer for s in trace.lane("compute")} == set(range(7))  # every layer computed once
    assert sorted(s.seq for s in trace.lane("dequantize")) == list(range(len(model.weights.plan.streamed)))
    assert not trace.lane("copy")  # a CPU plan reads straight into its slots
    assert sum(s.size_bytes for s in trace.lane("read")) >= sum(
        model.weights.layers[i].file_bytes for i in model.weights.plan.streamed
    )
    check_invariants(trace)
    summary = trace.summary()
    assert summary.pipeline_bound_s <= summary.serial_sum_s
    assert summary.pipeline_bound_s <= summary.fill_drain_bound_s <= summary.makespan_s + 1e-6
    model.weights.close()


@pytest.mark.parametrize("io", ["pread", "odirect"])
def test_cold_and_odirect_passes_read_the_same_bytes(q8_model, reference, io):
    try:
        model = staging.load(q8_model, ram=STREAM_RAM, chunk_bytes=CHUNK, io=io)
    except StagingError:
        pytest.skip("this file system refuses O_DIRECT")
    logits, trace = staging.trace_pass(model, IDS, cold=True)
    assert torch.equal(logits[0], reference)
    assert any("cold (evicted first)" in note for note in trace.notes)
    model.weights.close()


def test_a_modelled_link_is_honest(q8_model, reference):
    link = LINK_PRESETS["pcie4-x16-pinned"]
    layers = staging.load(q8_model).weights.layers
    vram = staging.reserve_bytes(
        runtime.load(q8_model, dtype=torch.float32).config, 256, torch.float32
    ) + int(3.2 * 2**20)
    model = staging.load(
        q8_model,
        device="cuda",
        vram=vram,
        ram=2 * CHUNK + layers[0].file_bytes + 1000,
        chunk_bytes=CHUNK,
        link=link,
    )
    assert {p.tier for p in model.weights.plan.placements} == {"gpu", "cpu", "disk"}
    logits, trace = staging.trace_pass(model, IDS)
    assert torch.equal(logits[0], reference)
    check_invariants(trace)
    projected = project(trace, link)
    copies = projected.lane("copy")
    assert copies and all(s.source == "modelled" and s.clock == "link model" for s in copies)
    assert all(s.elapsed_s == pytest.approx(link.copy_s(s.size_bytes), rel=1e-9) for s in copies)
    assert all(s.source == "measured" for s in projected.spans if s.stage != "copy")
    check_invariants(projected)
    out = projected.summary().to_dict()
    assert "projected_makespan_s" in out and not any(k.startswith("measured") for k in out)
    assert "copy_modelled_busy_s" in out and "copy_measured_busy_s" not in out
    with pytest.raises(StagingError, match="cannot hold modelled"):
        Trace(projected.spans, kind="measured")
    model.weights.close()


def test_projection_of_constant_stages_is_the_textbook_pipeline():
    """Three stages of d seconds over N layers, enough buffers: (N + 2) d; one slot serialises."""
    d, n = 0.01, 5
    link = staging.LinkModel("test", 1.0, d, "a test link: every copy takes d")
    spans = []
    for seq in range(n):
        spans += [
            Span(seq, f"blk.{seq}", "read", 0, d, 0, "measured", "host", seq, 0),
            Span(seq, f"blk.{seq}", "copy", 0, 0, 0, "measured", "host", seq, 0),
            Span(seq, f"blk.{seq}", "dequantize", 0, 0, 0, "measured", "host", seq),
            Span(seq, f"blk.{seq}", "compute", 0, d, 0, "measured", "host", seq),
        ]
    deep = project(Trace(tuple(spans), n_slots=3, n_staging=3), link).summary()
    assert deep.makespan_s == pytest.approx((n + 2) * d)
    one = project(Trace(tuple(spans), n_slots=1, n_staging=1), link).summary()
    assert one.makespan_s == pytest.approx(n * 2 * d + d)  # copy and compute alternate; the first read leads


def test_fill_and_drain_of_constant_stages_is_the_textbook_pipeline():
    """N streamed layers (read, copy, compute d each) then R resident ones: the read lane's N d is
    followed by the last layer's copy and compute and by the R resident computes."""
    d, n, r = 0.01, 5, 3
    spans = []
    for seq in range(n):
        spans += [
            Span(seq, f"blk.{seq}", "read", seq * d, (seq + 1) * d, 0, "measured", "host", seq, 0),
            Span(seq, f"blk.{seq}", "copy", (seq + 1) * d, (seq + 2) * d, 0, "measured", "host", seq, 0),
            Span(seq, f"blk.{seq}", "compute", (seq + 2) * d, (seq + 3) * d, 0, "measured", "host", seq),
        ]
    spans += [
        Span(i, f"blk.{i}", "compute", (i + 2) * d, (i + 3) * d, 0, "measured", "host", -1)
        for i in range(n, n + r)
    ]
    summary = Trace(tuple(spans)).summary()
    assert summary.pipeline_bound_s == pytest.approx((n + r) * d)  # the compute lane's busy time
    assert summary.fill_drain_bound_s == pytest.approx((n + 2 + r) * d)
    assert summary.makespan_s == pytest.approx(summary.fill_drain_bound_s)  # this schedule is the best


def test_resident_layers_load_without_a_raw_copy(tmp_path):
    """Loading holds the resident layers' dense tensors, one staging buffer and a few slabs of decode
    scratch: never the file bytes of a whole layer beside its dense copy (the head's are 33 MiB)."""
    from labkit.staging.layers import SLAB_FLOAT32_BYTES
    from labkit.staging.slots import peak_rss_bytes, reset_peak_rss, rss_bytes

    path = synthetic_llama(
        tmp_path / "big-head.gguf",
        n_layers=2,
        dim=512,
        n_heads=8,
        n_kv_heads=8,
        qtype="Q8_0",
        vocab_size=64000,
    )
    staging.load(path).weights.close()  # torch's and the tokenizer's code paged in once
    if not reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs: the peak cannot be reset here")
    baseline = rss_bytes()
    model = staging.load(path)
    peak = peak_rss_bytes()
    weights = model.weights
    assert baseline is not None and peak is not None and weights.tokenizer_bytes is not None
    dense = sum(lay.resident_bytes for lay in weights.layers)
    raw_head = weights.layers[-1].raw_slot_bytes
    allowed = dense + weights.plan.chunk_bytes + 3 * SLAB_FLOAT32_BYTES
    assert allowed < dense + raw_head  # the bound would catch a raw copy of the head
    assert peak - baseline - weights.tokenizer_bytes <= allowed
    assert torch.equal(model.logits(IDS[:3]), runtime.load(path, dtype=torch.float32).logits(IDS[:3]))
    weights.close()


def test_a_resident_read_wider_than_a_staging_buffer_comes_in_pieces(q8_model, reference):
    """Resident layers are read through one staging buffer (``chunk_bytes`` + 2 pages); a tensor
    wider than that (a norm of a 4,096-wide model with ``chunk_bytes=4096``) is read in pieces."""
    model = staging.load(q8_model, chunk_bytes=4096)
    stager, data = model.weights.stager, Path(q8_model).read_bytes()
    part = max(model.weights.layers[0].parts, key=lambda p: p.n_bytes)
    assert part.n_bytes > stager.staging[0].numel()  # wider than the buffer
    got = stager._read_part(part, 100, part.n_bytes - 100)
    assert bytes(got.numpy()) == data[part.file_offset + 100 : part.file_offset + part.n_bytes]
    assert torch.equal(model.logits(IDS), reference)
    model.weights.close()


@pytest.mark.gpu
def test_a_cuda_pass_matches_the_cpu_and_keeps_the_invariants(q8_model, reference):
    model = staging.load(
        q8_model, device="cuda", vram=int(6.4 * 2**20), ram=2 * CHUNK + (300 << 10), chunk_bytes=CHUNK
    )
    assert {p.tier for p in model.weights.plan.placements} == {"gpu", "cpu", "disk"}
    model.forward(IDS)
    logits, trace = staging.trace_pass(model, IDS)
    torch.testing.assert_close(logits[0], reference, atol=1e-3, rtol=1e-3)  # GPU kernels sum in another order
    assert {s.clock for s in trace.lane("copy")} == {"cuda_event"}
    assert trace.peak_device_bytes is not None
    check_invariants(trace, eps=5e-4)  # event times are placed on the host clock within a sync's latency
    model.weights.close()


@pytest.mark.parametrize("mode", ["overlap", "serial"])
def test_mmap_streams_in_place_and_equals_resident(tmp_path, mode):
    """io="mmap": an F16 file's streamed layers are computed on the mapping (no copy lane), the
    logits equal the resident model's, and each computed layer's pages leave the process."""
    path = synthetic_llama(tmp_path / "f16.gguf", n_layers=12, dim=256, qtype="F16")
    want = runtime.load(path, dtype=torch.float16).logits(IDS)
    model = staging.load(path, n_resident=2, dtype=torch.float16, chunk_bytes=CHUNK, io="mmap", mode=mode)
    stager = model.weights.stager  # type: ignore[attr-defined]
    assert stager.in_place and set(stager.in_place) <= set(stager.order)
    for _ in range(2):  # the second pass reads the pages again after they were dropped
        logits, trace = staging.trace_pass(model, IDS)
        assert torch.equal(logits[0], want)
    assert trace.lane("read") and not trace.lane("copy")  # faults on the map, nothing copied
    assert any("page faults on the mapped file" in note for note in trace.notes)
    largest = max(stager.layers[i].raw_slot_bytes for i in stager.order)
    held = _mapped_rss_bytes(path)  # what of the file this process still holds after two passes
    # in flight: n_slots layers (the reader maps one only once its slot is free); besides, a fault
    # also maps the cached pages of its 64 KiB window ("fault-around"), so up to 64 KiB at each
    # streamed layer's edge may stay mapped after the drop
    assert held <= stager.plan.n_slots * largest + len(stager.order) * (64 << 10)
    assert sum(stager.layers[i].raw_slot_bytes for i in stager.order) > 2 * held  # most were dropped
    model.weights.close()


def _mapped_rss_bytes(path) -> int:
    """Resident bytes of this process's mappings of ``path`` (``/proc/self/smaps``)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0]:  # a mapping's header line: "start-end perms offset dev inode path"
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def test_mmap_dequantizes_straight_from_the_map(q8_model, reference):
    model = staging.load(q8_model, ram=STREAM_RAM, chunk_bytes=CHUNK, io="mmap")
    logits, trace = staging.trace_pass(model, IDS, cold=True)
    assert torch.equal(logits[0], reference)
    assert trace.lane("dequantize") and not trace.lane("copy")
    model.weights.close()


def test_a_traced_mmap_pass_first_unmaps_what_the_workers_read_ahead(q8_model, tmp_path):
    """The workers map layers of the next pass ahead of time, and a mapped page cannot be evicted
    from the page cache: a cold trace would read those layers from RAM. So a trace unmaps them
    before it evicts the file (the process then maps none of it)."""
    path = tmp_path / "cold.gguf"
    shutil.copy(q8_model, path)
    model = staging.load(path, ram=STREAM_RAM, chunk_bytes=CHUNK, io="mmap")
    model.logits(IDS)
    assert _mapped_rss_bytes(path) > 0  # the workers hold the next pass's first layers
    held: list[int] = []  # measured where the eviction would run: workers stopped, not yet restarted
    model.weights.stager.start_trace(before_start=lambda: held.append(_mapped_rss_bytes(path)))
    assert held == [0]
    logits, _ = staging.trace_pass(model, IDS, cold=True)
    assert torch.equal(logits[0], runtime.load(path, dtype=torch.float32).logits(IDS))
    model.weights.close()


def test_mmap_is_for_a_cpu_device(q8_model):
    layers_path = q8_model
    with pytest.raises(StagingError, match="io='mmap' computes on the mapped file in RAM"):
        staging.Stager(layers_path, [], None, device="cuda", io="mmap")  # type: ignore[arg-type]
