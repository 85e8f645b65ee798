"""Where each layer lives: placing a model under a VRAM budget and a RAM budget.

Three tiers, named after where a layer's bytes sit between passes:

- ``gpu``:  resident in VRAM, dequantized once; each pass only computes.
- ``cpu``:  held in RAM as the file's bytes; each pass copies them to the device.
- ``disk``: left in the file; each pass reads them, copies them, computes.

On a machine without a GPU the compute device *is* the CPU: ``cpu`` then means "resident in
RAM, dequantized once", and everything else is ``disk``, streamed from the file every pass.

The walk follows accelerate's ``infer_auto_device_map``: first *reserve* what streaming needs
whatever the placement (``n_slots`` device slots of the largest streamed layer, the dequantize
scratch, the activations and KV cache; on the host, ``n_staging`` read buffers), then walk the
layers in order and fill the GPU, then RAM, and leave the rest on disk. ``order="back"`` keeps
the *last* layers resident, as llama.cpp's ``-ngl N`` does (``i_gpu_start = n_layer + 1 - N``,
the output layer counting as one). Several GPUs share the resident layers in proportion to
their budgets, as llama.cpp's ``--tensor-split`` does; the reservation sits on GPU 0.

References: accelerate ``src/accelerate/utils/modeling.py`` (``infer_auto_device_map``),
llama.cpp ``src/llama-model.cpp`` (``load_tensors``: ``i_gpu_start``, ``splits``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from labkit.errors import PlanError
from labkit.staging.layers import LayerSpec

TIERS = ("gpu", "cpu", "disk")
ORDERS = ("front", "back")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Placement:
    """One layer's place.

    Attributes:
        layer: ``"blk.N"`` or ``"output"``.
        index: position in the forward pass.
        tier: ``"gpu"``, ``"cpu"`` or ``"disk"``.
        gpu: which GPU holds it (tier ``gpu`` only).
        size_bytes: bytes it occupies in its tier (dense on the compute device, file bytes elsewhere).
    """

    layer: str
    index: int
    tier: str
    gpu: int | None
    size_bytes: int


@dataclass(frozen=True)
class Reservation:
    """Memory set aside before any layer is placed. ``where``: ``"gpu 0"``, ``"ram"``."""

    what: str
    where: str
    size_bytes: int
    why: str


@dataclass(frozen=True)
class Plan:
    """A placement of every layer, what was reserved, and the budgets it respects.

    Attributes:
        device: ``"cuda"`` (tiers gpu/cpu/disk) or ``"cpu"`` (tiers cpu/disk).
        placements: one per layer, in forward order.
        reservations: what was set aside and why.
        budgets: ``where -> bytes`` (``"gpu 0"``, ..., ``"ram"``); ``None`` means no limit.
        n_slots, n_staging, chunk_bytes, order: the streaming settings planned for.
    """

    device: str
    placements: tuple[Placement, ...]
    reservations: tuple[Reservation, ...]
    budgets: dict[str, int | None]
    n_slots: int
    n_staging: int
    chunk_bytes: int
    order: str

    def tier(self, index: int) -> str:
        return self.placements[index].tier

    @property
    def resident_tier(self) -> str:
        """The tier whose layers are dequantized once and computed in place."""
        return "gpu" if self.device == "cuda" else "cpu"

    @property
    def streamed(self) -> list[int]:
        """Indices of the layers copied to the compute device on every pass, in forward order."""
        return [p.index for p in self.placements if p.tier != self.resident_tier]

    @property
    def n_resident(self) -> int:
        return len(self.placements) - len(self.streamed)

    def bytes_on(self, where: str) -> int:
        """Bytes of layers plus reservations on ``"gpu 0"``..., ``"ram"`` or ``"disk"``."""
        layers = sum(p.size_bytes for p in self.placements if _where(p, self.device) == where)
        return layers + sum(r.size_bytes for r in self.reservations if r.where == where)

    @property
    def memory_bytes(self) -> int:
        """Everything the plan holds in memory (RAM and VRAM): resident layers plus reservations."""
        return sum(self.bytes_on(where) for where in self.budgets)

    def explain(self) -> str:
        """The plan as a table: layers and bytes per tier, reservations and why, budgets."""
        lines = [
            f"plan for a {self.device.upper()} device, order={self.order!r}, {self.n_slots} slots, "
            f"{self.n_staging} staging buffers of {_mib(self.chunk_bytes)}",
            f"{'tier':6} {'layers':>6}  {'bytes':>11}  which",
        ]
        for tier in TIERS:
            placed = [p for p in self.placements if p.tier == tier]
            if placed:
                lines.append(
                    f"{tier:6} {len(placed):>6}  {_mib(sum(p.size_bytes for p in placed)):>11}  "
                    f"{_ranges([p.index for p in placed], self.placements)}  ({TIER_MEANING[self.device][tier]})"
                )
        lines.append("reserved:")
        lines += [f"  {r.where:6} {_mib(r.size_bytes):>11}  {r.what}: {r.why}" for r in self.reservations]
        lines.append("budgets (used / budget):")
        for where, budget in self.budgets.items():
            limit = "no limit" if budget is None else _mib(budget)
            lines.append(f"  {where:6} {_mib(self.bytes_on(where)):>11} / {limit}")
        return "\n".join(lines)

    def device_map(self) -> dict[str, int | str]:
        """The plan as an accelerate/transformers ``device_map`` (module name -> GPU index, "cpu" or "disk")."""

        def target(p: Placement) -> int | str:
            return p.gpu if p.tier == "gpu" and p.gpu is not None else p.tier

        *blocks, output = self.placements
        device_map: dict[str, int | str] = {"model.embed_tokens": "cpu"}  # rows read on the host
        device_map.update({f"model.layers.{p.index}": target(p) for p in blocks})
        device_map.update({"model.norm": target(output), "lm_head": target(output)})
        return device_map


TIER_MEANING = {
    "cuda": {
        "gpu": "resident in VRAM",
        "cpu": "file bytes in RAM, copied each pass",
        "disk": "read each pass",
    },
    "cpu": {"gpu": "-", "cpu": "resident in RAM", "disk": "read from the file each pass"},
}


def _where(p: Placement, device: str) -> str:
    if p.tier == "gpu":
        return f"gpu {p.gpu}"
    return "ram" if p.tier == "cpu" else "disk"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _ranges(indices: list[int], placements: Sequence[Placement]) -> str:
    """``[0, 1, 2, 5]`` -> ``"blk.0-2, blk.5"``."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    names = [p.layer for p in placements]
    return ", ".join(
        names[r[0]] if len(r) == 1 else f"{names[r[0]]}-{names[r[-1]].split('.')[-1]}" for r in runs
    )


def plan_layers(
    layers: Sequence[LayerSpec],
    *,
    device: str = "cpu",
    vram_bytes: int | Sequence[int] | None = None,
    ram_bytes: int | None = None,
    reserve_bytes: int = 0,
    n_slots: int = 2,
    n_staging: int = 2,
    chunk_bytes: int = 4 << 20,
    order: str = "back",
    n_resident: int | None = None,
) -> Plan:
    """Place every layer on ``gpu``, ``cpu`` or ``disk`` under the budgets.

    Args:
        layers: the model's layers (``layer_specs``), in forward order.
        device: ``"cuda"`` or ``"cpu"`` (the compute device).
        vram_bytes: VRAM budget, or one budget per GPU (CUDA only; required there).
        ram_bytes: RAM budget (``None``: no limit). On a CPU device it is the resident budget.
        reserve_bytes: activations and KV cache, reserved on the compute device.
        n_slots: device slots for streamed layers (2: one computes while the next arrives).
        n_staging: host read buffers of ``chunk_bytes`` each.
        chunk_bytes: the read size.
        order: ``"back"`` keeps the output layer and the last blocks resident (llama.cpp's ``-ngl``);
            ``"front"`` the first blocks, the output layer last (accelerate's walk in module order).
        n_resident: keep exactly this many layers resident along the walk, whatever the budget
            of the compute device (llama.cpp's ``-ngl N``); ``vram_bytes`` may then be ``None``.
    Returns:
        A ``Plan``.
    Raises:
        PlanError: a bad setting, or a budget below what streaming needs; the message gives the
            smallest budget that works.
    """
    if n_resident is not None and not 0 <= n_resident <= len(layers):
        raise PlanError(
            f"n_resident={n_resident}; choose 0 to {len(layers)} (this model's layers, the output one included)"
        )
    if n_resident is not None and device == "cuda" and vram_bytes is None:
        vram_bytes = [sum(lay.resident_bytes for lay in layers) << 1]  # no VRAM limit: the count decides
    if n_resident is not None and device == "cpu":
        ram_bytes = None  # the count decides, not a budget
    _check_settings(layers, device, vram_bytes, n_slots, n_staging, chunk_bytes, order)
    walk = list(layers) if order == "front" else list(reversed(layers))
    staging = n_staging * chunk_bytes
    if device == "cpu":
        resident_budget, gpu_budgets = ram_bytes, []
    else:
        gpu_budgets = [vram_bytes] if isinstance(vram_bytes, int) else list(vram_bytes)  # type: ignore[arg-type]
        resident_budget = sum(gpu_budgets)

    def device_reservation(n_resident: int) -> list[Reservation]:
        streamed = walk[n_resident:]
        return _slot_reservations(streamed, n_slots, reserve_bytes, staging if device == "cpu" else 0, device)

    if n_resident is not None:
        n_gpu = n_resident
    else:
        n_gpu = _fit(
            walk,
            [lay.resident_bytes for lay in walk],
            resident_budget,
            device_reservation,
            device,
            gpu_budgets if device == "cuda" else None,
        )
    reservations = device_reservation(n_gpu)
    placements: dict[int, Placement] = {}
    if device == "cuda":
        for lay, gpu in zip(walk[:n_gpu], _split(walk[:n_gpu], gpu_budgets, reservations), strict=True):
            placements[lay.index] = Placement(lay.name, lay.index, "gpu", gpu, lay.resident_bytes)
        rest = walk[n_gpu:]
        n_cpu = _fit_ram(rest, ram_bytes, staging)
        host = [
            Reservation(
                "staging buffers",
                "ram",
                staging,
                f"{n_staging} x {_mib(chunk_bytes)} pinned read buffers for the disk layers",
            )
        ]
        reservations += host if n_cpu < len(rest) else []
        for lay in rest[:n_cpu]:
            placements[lay.index] = Placement(lay.name, lay.index, "cpu", None, lay.file_bytes)
        rest = rest[n_cpu:]
    else:
        for lay in walk[:n_gpu]:
            placements[lay.index] = Placement(lay.name, lay.index, "cpu", None, lay.resident_bytes)
        rest = walk[n_gpu:]
    for lay in rest:
        placements[lay.index] = Placement(lay.name, lay.index, "disk", None, lay.file_bytes)
    budgets: dict[str, int | None] = {f"gpu {g}": b for g, b in enumerate(gpu_budgets)}
    budgets["ram"] = ram_bytes
    return Plan(
        device,
        tuple(placements[i] for i in range(len(layers))),
        tuple(reservations),
        budgets,
        n_slots,
        n_staging,
        chunk_bytes,
        order,
    )


def _check_settings(
    layers: Sequence[LayerSpec],
    device: str,
    vram_bytes: object,
    n_slots: int,
    n_staging: int,
    chunk_bytes: int,
    order: str,
) -> None:
    problems = [
        (not layers, "the model has no layers to place"),
        (device not in DEVICES, f"device={device!r}; choose one of {list(DEVICES)}"),
        (
            order not in ORDERS,
            f"order={order!r}; choose 'front' (first layers resident) or 'back' (last, llama.cpp)",
        ),
        (n_slots < 1, f"n_slots={n_slots}; at least 1 slot is needed to stream a layer (2 to overlap)"),
        (n_staging < 1, f"n_staging={n_staging}; at least 1 staging buffer is needed to read from the file"),
        (
            chunk_bytes < 4096 or chunk_bytes % 4096,
            f"chunk_bytes={chunk_bytes}; use a multiple of 4096 (a page)",
        ),
        (
            device == "cuda" and vram_bytes is None,
            "a CUDA plan needs vram_bytes (one budget, or one per GPU)",
        ),
        (device == "cpu" and vram_bytes is not None, "a CPU plan has no VRAM: pass the budget as ram_bytes"),
    ]
    for failed, message in problems:
        if failed:
            raise PlanError(message)


def _slot_reservations(
    streamed: Sequence[LayerSpec], n_slots: int, reserve_bytes: int, staging: int, device: str
) -> list[Reservation]:
    where = "gpu 0" if device == "cuda" else "ram"
    rows = [
        Reservation(
            "activations + KV cache", where, reserve_bytes, "the largest step's tensors and the cache"
        )
    ]
    if streamed:
        largest = max(streamed, key=lambda lay: lay.raw_slot_bytes + lay.dense_bytes)
        slot = largest.raw_slot_bytes + largest.dense_bytes
        scratch = max(lay.largest_float32_bytes for lay in streamed)
        rows += [
            Reservation(
                "slots",
                where,
                n_slots * slot,
                f"{n_slots} x the largest streamed layer "
                f"({largest.name}: {_mib(largest.raw_slot_bytes)} file + {_mib(largest.dense_bytes)} dense)",
            ),
            Reservation("dequantize scratch", where, scratch, "the largest streamed tensor in float32"),
        ]
        if staging:
            rows.append(
                Reservation("staging buffers", "ram", staging, "read buffers for the streamed layers")
            )
    return rows


def _fit(
    walk: list[LayerSpec],
    sizes: list[int],
    budget: int | None,
    reservation,
    device: str,
    gpu_budgets: list[int] | None,
) -> int:
    """The most layers (a prefix of the walk) that fit beside the reservation their streaming needs."""
    if budget is None:
        return len(walk)
    needs = [
        sum(sizes[:n]) + sum(r.size_bytes for r in reservation(n) if r.where != "disk")
        for n in range(len(walk) + 1)
    ]
    for n in range(len(walk), -1, -1):
        if needs[n] <= budget and (gpu_budgets is None or _packs(walk[:n], gpu_budgets, reservation(n))):
            return n
    smallest = min(range(len(needs)), key=lambda n: needs[n])  # often 0; 1 when a big head is better resident
    name = "VRAM" if device == "cuda" else "RAM"
    raise PlanError(
        f"the {name} budget of {_mib(budget)} is below what streaming needs: with {smallest} layer(s) resident, "
        + "; ".join(f"{r.what} {_mib(r.size_bytes)}" for r in reservation(smallest))
        + (f"; resident layers {_mib(sum(sizes[:smallest]))}" if smallest else "")
        + f". The smallest {name} budget that works is {needs[smallest]:,} bytes ({_mib(needs[smallest])}); "
        "raise the budget, or lower n_slots / chunk_bytes / the context reserved"
    )


def _packs(layers: list[LayerSpec], budgets: list[int], reservations: list[Reservation]) -> bool:
    """Whether these layers fit on the GPUs in order (reservation on GPU 0), filling one GPU after another."""
    free = list(budgets)
    free[0] -= sum(r.size_bytes for r in reservations if r.where == "gpu 0")
    gpu = 0
    for lay in layers:
        while gpu < len(free) and lay.resident_bytes > free[gpu]:
            gpu += 1
        if gpu == len(free):
            return False
        free[gpu] -= lay.resident_bytes
    return free[0] >= 0


def _split(layers: list[LayerSpec], budgets: list[int], reservations: list[Reservation]) -> list[int]:
    """The GPU of each resident layer: contiguous runs in proportion to the budgets (llama.cpp's split),
    or GPU after GPU when the proportional cut would overflow one."""
    if len(budgets) == 1:
        return [0] * len(layers)
    free = list(budgets)
    free[0] -= sum(r.size_bytes for r in reservations if r.where == "gpu 0")
    total, bounds, acc = sum(lay.resident_bytes for lay in layers), [], 0.0
    for b in budgets:
        acc += b / sum(budgets)
        bounds.append(acc)
    gpus, placed = [], 0
    for lay in layers:
        middle = (placed + lay.resident_bytes / 2) / max(total, 1)  # where the layer's middle falls
        gpus.append(next(g for g, bound in enumerate(bounds) if middle <= bound + 1e-12))
        placed += lay.resident_bytes
    used = [
        sum(lay.resident_bytes for lay, g in zip(layers, gpus, strict=True) if g == k)
        for k in range(len(budgets))
    ]
    if all(u <= f for u, f in zip(used, free, strict=True)):
        return gpus
    sequential, gpu = [], 0
    for lay in layers:
        while lay.resident_bytes > free[gpu]:
            gpu += 1
        free[gpu] -= lay.resident_bytes
        sequential.append(gpu)
    return sequential


def _fit_ram(rest: list[LayerSpec], ram_bytes: int | None, staging: int) -> int:
    """How many of the remaining layers RAM holds (file bytes), keeping staging room if any go to disk."""
    if ram_bytes is None:
        return len(rest)
    for n in range(len(rest), -1, -1):
        need = sum(lay.file_bytes for lay in rest[:n]) + (staging if n < len(rest) else 0)
        if need <= ram_bytes:
            return n
    raise PlanError(
        f"the RAM budget of {_mib(ram_bytes)} cannot hold the {_mib(staging)} of staging buffers "
        f"that reading layers from disk needs; the smallest RAM budget that works is {staging:,} "
        "bytes: raise it, or lower n_staging / chunk_bytes"
    )
