"""The real model, streamed: a weights provider the runtime's ``Model`` uses unchanged.

``labkit.runtime.Model`` asks its weights object for each block's tensors as the forward pass
reaches that block (``weights.get("blk.3.attn_qkv.weight")``). ``StreamedWeights`` answers from
the resident layers, or from the slot the executor has just filled, and takes the request for
layer ``i + 1`` as the sign that layer ``i`` finished computing, which frees its slot for the
layer ``n_slots`` further on. Nothing in the runtime knows that layers are streamed::

    model = labkit.staging.load(path, ram=64 << 20)      # plan, executor, Model in one call
    model.generate("The GPU reads", 16)                   # layers beyond the budget stream each pass
    logits, trace = labkit.staging.trace_pass(model, ids)  # one pass, span by span

Input embedding rows are read from the file (``pread`` of just those rows) unless the head
that shares them is resident.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from labkit.errors import DeviceUnavailableError, StagingError
from labkit.formats import FORMATS
from labkit.gguf import codec
from labkit.hierarchy.memory import return_large_frees
from labkit.runtime.kvcache import kv_cache_size_bytes
from labkit.runtime.model import LlamaConfig, Model
from labkit.runtime.tokenizer import Tokenizer
from labkit.staging.executor import Stager
from labkit.staging.layers import LayerSpec, layer_specs
from labkit.staging.plan import Plan, plan_layers
from labkit.staging.reader import PAGE_BYTES
from labkit.staging.slots import rss_bytes
from labkit.staging.trace import LinkModel, Trace


class StreamedWeights:
    """The runtime's ``Weights`` interface (``get``, ``rows``, ``stored_bytes``...), backed by a ``Stager``.

    Attributes:
        plan: where each layer lives.
        layers: the layers (``LayerSpec``), in forward order.
        stager: the executor that fills the slots.
        link: the link model for projections (a GPU plan run without a GPU), or ``None``.
        tokenizer_bytes: RSS the model's tokenizer took when ``load`` built it (measured; outside
            the plan, which places weights, slots, buffers and activations), or ``None``.
    """

    def __init__(
        self,
        path: str | Path,
        layers: Sequence[LayerSpec],
        plan: Plan,
        stager: Stager,
        *,
        embedding: tuple[str, int, tuple[int, ...], int],
        dtype: torch.dtype,
        link: LinkModel | None = None,
        tokenizer_bytes: int | None = None,
    ) -> None:
        self.path, self.layers, self.plan, self.stager, self.link = (
            Path(path),
            list(layers),
            plan,
            stager,
            link,
        )
        self.device, self.dtype = stager.device, dtype
        self.packed: dict = {}  # nothing is held quantized for the runtime: the stager dequantizes
        self._layer_of = {t.name: lay.index for lay in layers for t in lay.tensors}
        self._size_of = {t.name: t.size_bytes for lay in layers for t in lay.tensors}
        self._embedding = embedding  # (qtype, file offset, shape, n_bytes) of token_embd
        self._current: tuple[int, dict[str, torch.Tensor]] | None = None
        self.tokenizer_bytes = tokenizer_bytes
        self._finalizer = weakref.finalize(self, stager.close)

    # --- what Model calls -----------------------------------------------------------------------------

    def get(self, name: str) -> torch.Tensor:
        """A tensor of the layer the forward pass is in (entering that layer on its first tensor)."""
        if name not in self._layer_of:
            raise StagingError(f"{name!r} is not a tensor of any layer of {self.path.name}")
        layer = self._layer_of[name]
        if self._current is None or self._current[0] != layer:
            self._current = (layer, self.stager.enter(layer))
        return self._current[1][name]

    def row_slabs(self, name: str) -> Iterator[tuple[int, torch.Tensor]]:
        """The whole tensor as one slab starting at row 0 (the stager hands out dense layers)."""
        yield 0, self.get(name)

    def rows(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """Embedding rows ``ids`` (``(B, T)`` -> ``(B, T, C)``); a forward pass starts here."""
        self.stager.end_pass()  # the previous pass's last layer is done
        self._current = None
        head = self._layer_of.get(name)
        if head is not None and head in self.stager.resident:
            return self.stager.resident[head][name][ids]
        qtype, offset, (n_rows, n_cols), n_bytes = self._embedding
        row_bytes = n_bytes // n_rows
        wanted = ids.reshape(-1).cpu()
        raw = torch.empty(wanted.numel(), row_bytes, dtype=torch.uint8)  # (N, bytes per row)
        for i, row in enumerate(wanted.tolist()):
            view = memoryview(raw[i].numpy())  # type: ignore[arg-type]
            got = os.preadv(self.stager.fd, [view], offset + row * row_bytes)
            if got != row_bytes:
                raise StagingError(f"{self.path}: short read of embedding row {row}; was the file changed?")
        values = codec.decode(raw.reshape(-1), qtype, (wanted.numel(), n_cols), self.dtype, name)
        return values.view(*ids.shape, n_cols).to(self.device)

    def stored_bytes(self, name: str) -> int:
        """Bytes the tensor takes once dequantized (in a slot or resident)."""
        if name in self._size_of:
            return self._size_of[name]
        qtype, _, shape, _ = self._embedding
        return shape[0] * shape[1] * torch.empty((), dtype=self.dtype).element_size()

    def row_bytes(self, name: str) -> int:
        """Bytes of one embedding row as read from the file."""
        _, _, shape, n_bytes = self._embedding
        return n_bytes // shape[0]

    @property
    def names(self) -> list[str]:
        return list(self._layer_of)

    @property
    def dense(self) -> dict[str, torch.Tensor]:
        """The resident tensors (streamed ones live in slots and are not listed)."""
        return {name: t for tensors in self.stager.resident.values() for name, t in tensors.items()}

    @property
    def total_bytes(self) -> int:
        return sum(self._size_of.values())

    # --- staging ----------------------------------------------------------------------------------------

    def bytes_per_pass(self) -> dict[str, int]:
        """Bytes one pass moves, counted: read from the file, copied to the device (none for the layers
        a CPU plan reads straight into the slot, or computes in place on the mapped file), dequantized."""
        tiers = {p.index: p.tier for p in self.plan.placements}
        streamed = [lay for lay in self.layers if tiers[lay.index] != self.plan.resident_tier]
        return {
            "read": sum(lay.file_bytes for lay in streamed if tiers[lay.index] == "disk"),
            "copy": sum(
                lay.raw_slot_bytes
                for lay in streamed
                if not (self.stager.direct and tiers[lay.index] == "disk")
                and lay.index not in self.stager.in_place
            ),
            "dequantize": sum(lay.dense_bytes for lay in streamed),
            "resident": sum(lay.resident_bytes for lay in self.layers if lay not in streamed),
        }

    def close(self) -> None:
        """Stop the executor's threads and close the file."""
        self._finalizer()

    def __enter__(self) -> StreamedWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reserve_bytes(config: LlamaConfig, context_tokens: int, dtype: torch.dtype) -> int:
    """Activations and KV cache for ``context_tokens`` (modelled): what the compute device keeps free.

    KV: ``labkit.runtime.kvcache``'s formula. Activations: the widest step's float32 tensors,
    ``T x (4 dim + qkv + 3 ffn + vocab)`` (residual, norms, q/k/v, gate/up/product, logits).
    """
    element = torch.empty((), dtype=dtype).element_size()
    kv = kv_cache_size_bytes(
        n_layers=config.n_layers,
        n_kv_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        context_length=context_tokens,
        bytes_per_element=element,
    )
    qkv = (config.n_heads + 2 * config.n_kv_heads) * config.head_dim
    return kv + 4 * context_tokens * (4 * config.dim + qkv + 3 * config.ffn_dim + config.vocab_size)


def _measured_tokenizer(metadata: Any) -> tuple[Tokenizer, int | None]:
    """Build the tokenizer and measure what it holds: the growth of this process's RSS across the
    build (``None`` where RSS cannot be read). The plan does not hold it: a plan places weights,
    slots, buffers and activations; ``StreamedWeights.tokenizer_bytes`` reports it beside them."""
    before = rss_bytes()
    tokenizer = Tokenizer.from_metadata(metadata)
    after = rss_bytes()
    return tokenizer, max(0, after - before) if before is not None and after is not None else None


def _devices(
    device: str | torch.device | None,
    vram: int | Sequence[int] | None,
    ram: int | None,
    link: LinkModel | None,
    *,
    need_vram: bool = True,
) -> tuple[str, torch.device, int | Sequence[int] | None, int | None]:
    """(plan device, compute device, vram budget, ram budget) for ``load``'s arguments."""
    wanted = torch.device(device or "cpu")
    if wanted.type == "cpu":
        if vram is not None and ram is not None:
            raise StagingError(
                "on a CPU, vram and ram name the same memory (the resident budget); give one of them"
            )
        if link is not None:
            raise StagingError(
                "a link model projects a GPU's host->device copies: plan for device='cuda' to use it"
            )
        return "cpu", wanted, None, ram if vram is None else (vram if isinstance(vram, int) else sum(vram))
    if wanted.type != "cuda":
        raise StagingError(f"device={str(wanted)!r}; choose 'cpu' or 'cuda'")
    if vram is None and need_vram:
        raise StagingError("a GPU plan needs a VRAM budget: pass vram=... (bytes, or one budget per GPU)")
    if torch.cuda.is_available():
        return "cuda", wanted, vram, ram
    if link is None:
        raise DeviceUnavailableError(
            "device='cuda' was asked for, but this machine has no CUDA GPU. Pass "
            "link=LinkModel(...) (e.g. labkit.staging.LINK_PRESETS['pcie4-x16-pinned']) "
            "to run the pass on the CPU with the host->device copies modelled, or use "
            "device='cpu' with a ram budget"
        )
    return "cuda", torch.device("cpu"), vram, ram


def load(
    path: str | Path,
    *,
    vram: int | Sequence[int] | None = None,
    ram: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    plan: Plan | None = None,
    n_slots: int = 2,
    n_staging: int = 2,
    chunk_bytes: int | None = None,
    order: str = "back",
    mode: str = "overlap",
    io: str = "pread",
    link: LinkModel | None = None,
    context_tokens: int = 256,
    n_resident: int | None = None,
) -> Model:
    """Load a llama GGUF with only the planned layers resident; the rest stream from the file each pass.

    Args:
        path: the ``.gguf`` file.
        vram: VRAM budget in bytes (or one per GPU); on a CPU it is the RAM budget ("VRAM" = RAM).
        ram: RAM budget in bytes (``None``: no limit).
        device: ``"cpu"`` (default) or ``"cuda"``. ``"cuda"`` without a GPU needs ``link``: the pass
            then runs on the CPU and the host->device copies are projected from the link.
        dtype: compute dtype (``torch.float32``: logits equal to ``labkit.runtime.load``'s, bit for bit).
        plan: a ready plan (skips planning; budgets are then ignored).
        n_slots, n_staging, order: see ``plan_layers``.
        chunk_bytes: the read size (default: 4 MiB, or the largest layer rounded up to a page if smaller).
        mode: ``"overlap"`` or ``"serial"``.
        io: ``"pread"`` (read -> staging buffer -> slot), ``"odirect"`` (the same, around the page
            cache) or ``"mmap"`` (a CPU device only: compute on the mapped file, no copies; faster,
            as llama.cpp and accelerate read weights on a CPU, but a file truncated while mapped
            kills the process with SIGBUS where ``pread`` raises a ``StagingError``).
        link: a ``LinkModel`` for projections (only with ``device="cuda"``).
        context_tokens: tokens of context to reserve room for (activations + KV cache); a new KV
            cache holds this many positions, and a longer context grows it past the plan.
        n_resident: keep exactly this many layers resident, whatever the budget (llama.cpp's ``-ngl``).

    The plan holds the weights, slots, buffers and activations; the tokenizer is measured apart
    (``model.weights.tokenizer_bytes``). So that RSS follows the plan, ``load`` fixes glibc's mmap
    threshold (``labkit.hierarchy.memory.return_large_frees``): every freed slab leaves the process.

    Returns:
        A ``labkit.runtime.Model`` whose ``weights`` is a ``StreamedWeights``.
    Raises:
        PlanError: a budget below what streaming needs (the message gives the smallest that works).
        DeviceUnavailableError: ``device="cuda"`` on a machine without a GPU and no ``link``.
        ModelError, GGUFFormatError: the file is not a llama GGUF labkit can run.
    """
    from labkit import gguf

    if not Path(path).is_file():
        raise StagingError(f"no model file at {path}; pass the path of a .gguf file")
    # A budget is a promise about RSS: glibc must give freed dequantize slabs back, not keep them.
    return_large_frees()
    plan_device, compute_device, vram, ram = _devices(device, vram, ram, link, need_vram=n_resident is None)
    with gguf.open(path) as gguf_file:
        shapes = {name: tuple(info.shape) for name, info in gguf_file.tensors.items()}
        config = LlamaConfig.from_gguf(gguf_file.metadata, shapes)
        tokenizer, tokenizer_bytes = _measured_tokenizer(gguf_file.metadata)
        layers = layer_specs(gguf_file, dtype=dtype, device=compute_device)
        embd = gguf_file.tensors["token_embd.weight"]
        if embd.qtype not in FORMATS:
            raise StagingError(f"token_embd.weight is {embd.qtype}, which labkit cannot dequantize")
        embedding = (embd.qtype, int(embd.offset), tuple(int(s) for s in embd.shape), int(embd.n_bytes))
    if chunk_bytes is None:
        largest = max(lay.file_bytes for lay in layers)
        chunk_bytes = min(4 << 20, -(-largest // PAGE_BYTES) * PAGE_BYTES)
    if plan is None:
        plan = plan_layers(
            layers,
            device=plan_device,
            vram_bytes=vram,
            ram_bytes=ram,
            reserve_bytes=reserve_bytes(config, context_tokens, dtype),
            n_slots=n_slots,
            n_staging=n_staging,
            chunk_bytes=chunk_bytes,
            order=order,
            n_resident=n_resident,
        )
    if plan.device == "cuda" and len(plan.budgets) > 2:
        raise StagingError(
            "this plan spreads layers over several GPUs; labkit's executor runs one GPU. "
            "Use plan.explain() / plan.device_map() to study it, and plan one GPU to run"
        )
    stager = Stager(path, layers, plan, device=compute_device, mode=mode, io=io)
    streamed = StreamedWeights(
        path,
        layers,
        plan,
        stager,
        embedding=embedding,
        dtype=dtype,
        link=link,
        tokenizer_bytes=tokenizer_bytes,
    )
    # A new KV cache holds the context the plan reserved room for; a longer one grows past the plan.
    return Model(config, tokenizer, streamed, cache_tokens=context_tokens)  # type: ignore[arg-type]


def trace_pass(
    model: Model, ids: Sequence[int] | torch.Tensor, cache: object = None, *, cold: bool = False
) -> tuple[torch.Tensor, Trace]:
    """Run one forward pass from an empty pipeline and return ``(logits, trace)``.

    Args:
        model: a model from ``labkit.staging.load``.
        ids: the token ids of the pass.
        cache: a KV cache to extend (``None``: a new one, as ``model.logits`` uses).
        cold: evict the file from the page cache first (``posix_fadvise(DONTNEED)``), so that the
            streamed layers come from the device; the trace's notes say how much was still cached
            (``mincore``) and how many bytes the device delivered (``/proc/self/io``).
    Returns:
        Float32 logits ``(1, T, vocab)``, and the pass's ``Trace``.
    """
    from labkit.hierarchy.pagecache import device_read_bytes, evict, resident_fraction

    weights = model.weights
    if not isinstance(weights, StreamedWeights):
        raise StagingError("trace_pass needs a model from labkit.staging.load (its weights stream)")
    cache = model.new_cache() if cache is None else cache
    weights.stager.start_trace(before_start=(lambda: evict(weights.path)) if cold else None)
    cached, device_before = resident_fraction(weights.path), device_read_bytes()
    logits = model.forward(ids, cache)  # type: ignore[arg-type]
    trace = weights.stager.stop_trace()
    device_after = device_read_bytes()
    state = "cold (evicted first)" if cold else "warm"
    note = (
        f"page cache: {state}; mincore: {cached:.1%} of the file cached as the pass began"
        if cached is not None
        else (f"page cache: {state}; not verifiable here (no mincore)")
    )
    if device_before is not None and device_after is not None:
        note += (
            f"; /proc/self/io: {device_after - device_before:,} bytes read from the device during the pass"
        )
    return logits, replace(trace, notes=(*trace.notes, note))
