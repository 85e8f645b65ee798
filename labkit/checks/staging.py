"""The check for notebook 06's exercise: which layers fit a budget, and which tier each lands on.

The student writes ``tiers(table, budget_bytes, reserve_bytes) -> list[str]``: ``table`` lists the
layers in forward order (dicts with ``name`` and ``dense_bytes``, the output layer last),
``reserve_bytes`` is what streaming needs whatever the placement (slots, scratch, staging buffers,
activations). Walking from the output layer backwards, as llama.cpp does, a layer stays
``"cpu"`` (resident) while the resident bytes so far plus ``reserve_bytes`` fit the budget; from
the first that does not fit, every layer is ``"disk"`` (streamed). The check runs
``labkit.staging.plan_layers`` on the same table and budget and compares the tiers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from labkit.checks import CheckResult, NotYet, attempt, verdict
from labkit.staging import LayerSpec, Plan, plan_layers

MiB = 1 << 20


def exercise_table(layers: Sequence[LayerSpec]) -> list[dict[str, Any]]:
    """The tensor table the student gets: name, file bytes and dense bytes of each layer."""
    return [
        {"name": lay.name, "file_bytes": lay.file_bytes, "dense_bytes": lay.resident_bytes} for lay in layers
    ]


def planner_case(layers: Sequence[LayerSpec], budget_bytes: int, reserve_bytes: int) -> tuple[int, Plan]:
    """The planner's answer, and the reservation it made (what the student is given)."""
    plan = plan_layers(
        layers, device="cpu", ram_bytes=budget_bytes, reserve_bytes=reserve_bytes, order="back"
    )
    return sum(r.size_bytes for r in plan.reservations), plan


def _hint(got: list[str], want: list[str]) -> str:
    n_got, n_want = got.count("cpu"), want.count("cpu")
    if got and got[0] == "cpu" and want[0] == "disk":
        return "walk from the *output* layer backwards: llama.cpp keeps the last layers resident"
    if n_got == n_want + 1:
        return "one layer too many: the reserve counts too, before any layer (resident + reserve <= budget)"
    if n_got > n_want:
        return "subtract reserve_bytes from the budget first: the slots and buffers are needed whatever fits"
    if n_got < n_want:
        return "a layer fits when resident + reserve is *at most* the budget (<=, not <)"
    return "keep every layer after the first that does not fit on 'disk', even a smaller one"


def check_layer_tiers(
    tiers: Callable[[list[dict[str, Any]], int, int], list[str]], layers: Sequence[LayerSpec]
) -> CheckResult:
    """Compare a student's placement with ``plan_layers`` on budgets from tight to roomy.

    Args:
        tiers: ``tiers(table, budget_bytes, reserve_bytes) -> list[str]``, one ``"cpu"``/``"disk"`` per layer.
        layers: the model's layers (``labkit.staging.layer_specs``), several blocks of one size.
    """
    table = exercise_table(layers)
    total = sum(lay.resident_bytes for lay in layers)
    streamed_reserve = 3 * MiB
    budgets = [int(total * share) + 12 * MiB for share in (0.2, 0.3, 0.45, 0.6, 0.75, 0.9, 1.2)]
    cases = []
    for budget in budgets:
        try:
            cases.append((budget, *planner_case(layers, budget, streamed_reserve)))
        except Exception:  # noqa: BLE001 - a budget below the reservation is not a case
            continue

    def run() -> str:
        for budget, reserve, plan in cases:
            want = [p.tier for p in plan.placements]
            label = f"budget {budget / MiB:,.1f} MiB with {reserve / MiB:,.2f} MiB reserved"
            got = attempt(tiers, [dict(row) for row in table], budget, reserve, case=label)
            if not isinstance(got, list) or len(got) != len(want):
                raise NotYet(
                    f"{label}: expected a list of {len(want)} tiers, one per layer, got {got!r:.80}",
                    "return one string per row of the table, in the same order",
                )
            if list(got) != want:
                first = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
                raise NotYet(
                    f"{label}: layer {table[first]['name']} should be {want[first]!r}, your function said "
                    f"{got[first]!r} ({want.count('cpu')} layers resident expected, {got.count('cpu')} "
                    "in your answer)",
                    _hint(list(got), want),
                )
        return f"all {len(cases)} budgets placed exactly as labkit's planner places them"

    return verdict(run, n_cases=len(cases))
