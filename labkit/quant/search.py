"""The K-quant scale searches: how Q2_K ... Q6_K pick each sub-block's scale.

Legacy formats take the scale straight from the block's extreme value. The
K-quants instead *search*: try a handful of candidate scales, quantize the
sub-block with each, and keep the one with the smallest weighted error. That
is most of why Q4_K beats Q4_0 at the same size (see notebook 02).

Three searches from ggml's ``src/ggml-quants.c`` are ported here:

* ``make_qkx2_quants`` (Q2_K, Q4_K, Q5_K): fit ``x ~ scale * q + min`` with
  ``q`` in ``0..nmax``, by least squares, for ``nstep + 1`` trial grids.
* ``make_qx_quants`` (Q6_K): fit ``x ~ scale * q`` with ``q`` in
  ``-nmax..nmax-1``, trying 18 slightly stretched grids.
* ``make_q3_quants`` (Q3_K): the same symmetric fit, then improve it one
  weight at a time (coordinate descent) for up to 5 passes.

Layout: every function works on *all sub-blocks at once*. ``x`` has shape
``(n, S)``: element index first, sub-block second, so ``x[i]`` is "weight i
of every sub-block" and one torch op does one C statement for all S
sub-blocks. Loops remain only where C has them over the few trial scales or
the n (16 or 32) weights of a sub-block, the latter wherever C accumulates a
float sum (``sequential_sum``: float addition is not associative, and the
sums decide which trial wins).
"""

from __future__ import annotations

import numpy as np
import torch

from labkit.quant.rounding import divide_into, nearest_int, sequential_sum

GROUP_MAX_EPS = float(np.float32(1e-15))  # ggml: a sub-block below this is "all zero"


def _f32(value: float) -> float:
    """Round a Python float to float32, as a C ``float`` constant expression would be."""
    return float(np.float32(value))


def signed_absmax(values: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest magnitude along ``dim`` and the signed value that has it.

    C scans with ``if (fabsf(v) > amax) { amax = fabsf(v); max = v; }`` from
    ``amax = 0``: the *first* of ``+a`` and ``-a`` wins, an all-zero group
    gives ``+0.0``, and a NaN never wins. ``amax``/``amin`` find the values
    fast; the rare exact ties are settled by position.

    Returns:
        ``(amax, max)``, each ``values`` reduced over ``dim``.
    """
    values = values.nan_to_num(nan=0.0)  # C: (NaN > amax) is false
    hi, lo = values.amax(dim=dim), values.amin(dim=dim)
    signed = torch.where(hi >= -lo, hi, lo) + 0.0  # + 0.0 turns -0.0 into +0.0
    tie = (hi == -lo) & (hi > 0)
    if bool(tie.any()):
        where = tie.nonzero().squeeze(1)
        group = values.index_select(1 - dim, where)  # only the tied groups
        first_hi = (group == hi[where].unsqueeze(dim)).to(torch.uint8).argmax(dim=dim)
        first_lo = (group == lo[where].unsqueeze(dim)).to(torch.uint8).argmax(dim=dim)
        signed[where] = torch.where(first_lo < first_hi, lo[where], hi[where])
    return torch.maximum(hi, -lo), signed


# --- make_qkx2_quants: scale and min, least squares over trial grids ----------


def _grid(iscale: torch.Tensor, lo: torch.Tensor, x: torch.Tensor, nmax: int) -> torch.Tensor:
    """Levels of an affine grid: ``clamp(nearest_int(iscale * (x - lo)), 0, nmax)``, as float32."""
    scaled = x - lo  # (n, S)
    scaled *= iscale  # same float32 product as iscale * (x - lo)
    return nearest_int(scaled).clamp_(0, nmax).to(x.dtype)


def _weighted_error(
    scale: torch.Tensor,
    offset: torch.Tensor,
    levels: torch.Tensor,
    x: torch.Tensor,
    weights: torch.Tensor,
    use_mad: bool,
) -> torch.Tensor:
    """``sum_i w_i * err(scale * q_i + offset - x_i)`` with err = |.| (MAD) or squared."""
    diff = levels * scale  # (n, S), then C's order: ((scale*q) + min) - x
    diff += offset
    diff -= x
    if use_mad:
        diff.abs_()
    else:
        diff *= diff
    diff *= weights
    return sequential_sum(diff)  # (S,)


def _least_squares(
    sum_w: torch.Tensor, sum_x: torch.Tensor, sum_l: torch.Tensor, sum_l2: torch.Tensor, sum_xl: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best ``scale``, ``min`` for ``x ~ scale * q + min`` given the levels ``q``.

    Minimizing ``sum w (scale*q + min - x)**2`` gives two linear equations;
    Cramer's rule solves them with the determinant ``det``. A positive ``min``
    cannot be stored (Q*_K store ``-min >= 0``), so then ``min = 0`` and the
    scale is refitted alone. Returns ``(det, scale, min)``, each (S,).
    """
    det = sum_w * sum_l2 - sum_l * sum_l
    scale = (sum_w * sum_xl - sum_x * sum_l) / det
    offset = (sum_l2 * sum_x - sum_l * sum_xl) / det
    positive = offset > 0
    return det, torch.where(positive, sum_xl / sum_l2, scale), torch.where(positive, 0.0, offset)


def make_qkx2_quants(
    x: torch.Tensor, weights: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Find ``scale``, ``min`` and levels ``q in 0..nmax`` so that ``x ~ scale*q - min``.

    The search, for each sub-block:

    1. Start from the plain grid: ``min = min(x, 0)``, ``scale = (max - min) / nmax``,
       ``q = round((x - min) / scale)``; remember its weighted error.
    2. For ``is = 0..nstep``, stretch the grid: ``iscale = (nmax + rmin + rdelta*is)
       / (max - min)``, round ``q = round(iscale * (x - min))``, then *given these q*
       solve the 2x2 weighted least-squares problem for the best ``scale`` and
       ``min`` in closed form (``D`` is its determinant). A positive ``min`` is not
       allowed (it is stored as a subtracted, non-negative value), so then the
       fit is redone with ``min = 0``.
    3. Keep the trial with the smallest weighted error. Note C's quirk, kept
       here: a better trial also replaces ``min``, and later trials build their
       grid from the *updated* ``min``.

    Instead of copying the winning levels after every trial, the grid that won
    (its ``iscale`` and ``min``) is remembered and its levels rebuilt once at
    the end: the same numbers, with less work.

    Args:
        x: ``(n, S)`` float32, element index first.
        weights: ``(n, S)`` importance of each weight in the error.
        nmax: the largest level (3, 15 or 31).
        rmin, rdelta, nstep: the trial grid (e.g. Q4_K: -1.0, 0.1, 20).
        use_mad: absolute instead of squared error (Q2_K).

    Returns:
        ``scale`` (S,), ``the_min`` (S,) (the positive amount to subtract) and
        levels ``(n, S)`` int32.
    """
    lo = x.amin(dim=0).clamp(max=0.0)  # (S,)  C: if (min > 0) min = 0
    hi = x.amax(dim=0)
    flat = hi == lo
    sum_w = sequential_sum(weights)
    sum_x = sequential_sum(weights * x)

    # 1. the plain grid
    iscale = divide_into(nmax, hi - lo)
    scale = divide_into(1.0, iscale)
    best_error = _weighted_error(scale, lo, _grid(iscale, lo, x, nmax), x, weights, use_mad)
    best_iscale, best_lo = iscale, lo

    # 2. the stretched grids
    products = x.new_empty(x.shape[0], 3, x.shape[1])  # w*q, w*q*q, w*q*x for one trial
    for step in range(nstep + 1):
        numerator = _f32(_f32(_f32(rmin) + _f32(_f32(rdelta) * step)) + nmax)
        trial_iscale = divide_into(numerator, hi - lo)
        q = _grid(trial_iscale, lo, x, nmax)
        wq = torch.mul(weights, q, out=products[:, 0])
        torch.mul(wq, q, out=products[:, 1])
        torch.mul(wq, x, out=products[:, 2])
        sum_l, sum_l2, sum_xl = sequential_sum(products)  # each (S,)
        det, this_scale, this_min = _least_squares(sum_w, sum_x, sum_l, sum_l2, sum_xl)
        error = _weighted_error(this_scale, this_min, q, x, weights, use_mad)
        # 3. keep the better fit (NaN from det <= 0 never compares as better)
        better = (det > 0) & (error < best_error)
        best_iscale = torch.where(better, trial_iscale, best_iscale)
        best_lo = torch.where(better, lo, best_lo)
        best_error = torch.where(better, error, best_error)
        scale = torch.where(better, this_scale, scale)
        lo = torch.where(better, this_min, lo)

    levels = _grid(best_iscale, best_lo, x, nmax).to(torch.int32)
    levels *= ~flat  # 0 for a flat sub-block (a broadcast multiply is faster than masked_fill_)
    return torch.where(flat, 0.0, scale), -lo, levels


# --- make_qx_quants: symmetric scale, RMSE-weighted trials (Q6_K) --------------


def _symmetric_levels(x: torch.Tensor, iscale: torch.Tensor, nmax: int) -> torch.Tensor:
    """Signed levels ``clamp(nearest_int(iscale * x), -nmax, nmax - 1)`` as float32."""
    return nearest_int(iscale * x).clamp_(-nmax, nmax - 1).to(x.dtype)  # (n, S)


def _symmetric_sums(
    levels: torch.Tensor, weights: torch.Tensor, wx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sumlx = sum w*x*l`` and ``suml2 = sum w*l*l``: the best scale for these levels is their ratio."""
    products = levels.new_empty(levels.shape[0], 2, levels.shape[1])
    torch.mul(wx, levels, out=products[:, 0])  # (w*x)*l
    torch.mul(weights, levels, out=products[:, 1]).mul_(levels)  # (w*l)*l
    sumlx, suml2 = sequential_sum(products)
    return sumlx, suml2


def make_qx_quants(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric ``x ~ scale * (q - nmax)``, weights ``x**2`` (ggml's ``rmse_type = 1``).

    Start from the grid that maps the signed extreme to ``-nmax``, take the
    least-squares scale for those levels, then try 18 grids stretched by
    ``+-0.1 .. 0.9`` levels and keep a trial if it explains more of the signal
    (``sumlx**2 / suml2`` larger, i.e. smaller squared error).

    Args:
        x: ``(n, S)`` float32.
        nmax: 32 for Q6_K (levels ``0..63``).

    Returns:
        ``scale`` (S,) and levels ``(n, S)`` int32 in ``0..2*nmax-1``
        (0 everywhere for an all-zero sub-block).
    """
    amax, signed_max = signed_absmax(x, dim=0)
    zero = amax < GROUP_MAX_EPS
    weights = x * x
    wx = weights * x
    best_iscale = divide_into(-nmax, signed_max)
    sumlx, suml2 = _symmetric_sums(_symmetric_levels(x, best_iscale, nmax), weights, wx)
    scale = torch.where(suml2 != 0, sumlx / suml2, 0.0)
    best = scale * sumlx
    for step in [*range(-9, 0), *range(1, 10)]:
        numerator = -_f32(nmax + _f32(_f32(0.1) * step))
        iscale = divide_into(numerator, signed_max)
        sumlx, suml2 = _symmetric_sums(_symmetric_levels(x, iscale, nmax), weights, wx)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        best_iscale = torch.where(better, iscale, best_iscale)
        scale = torch.where(better, sumlx / suml2, scale)
        best = torch.where(better, scale * sumlx, best)
    levels = _symmetric_levels(x, best_iscale, nmax).to(torch.int32) + nmax
    levels *= ~zero  # 0 for an all-zero sub-block
    return torch.where(zero, 0.0, scale), levels


# --- make_q3_quants: symmetric fit + coordinate descent (Q3_K) -----------------


def _descent_pass(
    x: torch.Tensor,
    weights: torch.Tensor,
    wx: torch.Tensor,
    levels: torch.Tensor,
    sumlx: torch.Tensor,
    suml2: torch.Tensor,
    nmax: int,
) -> torch.Tensor:
    """One pass of make_q3_quants' coordinate descent, updating levels/sums in place.

    Step i is C's loop body for weight i, for every sub-block at once: take
    weight i out of the sums, ask which level fits it best given the others,
    and keep that level only if the whole sub-block's fit improves.

    Speed: on CPU, torch's comparisons that return ``bool`` and
    ``torch.where`` run element by element, several times slower than
    arithmetic. So each test writes ``1.0``/``0.0`` into a float buffer
    (``out=``), the tests are combined by multiplying, and the level is
    updated by arithmetic (exact on small integers); only the two float sums
    still need ``torch.where`` (arithmetic could turn an ``inf`` into NaN).

    Returns:
        (S,) float32: how many levels of each sub-block changed in this pass.
    """
    n_changed = torch.zeros_like(sumlx)
    accept = torch.empty_like(sumlx)  # 1.0 where weight i's new level is kept, else 0.0
    test = torch.empty_like(sumlx)
    for xi, wi, wxi, li in zip(
        x, weights, wx, levels, strict=True
    ):  # row i of each; li is a view into levels
        slx = sumlx - wxi * li  # the sums without weight i ...
        sl2 = suml2 - wi * li * li
        new_l = nearest_int(xi * sl2 / slx).clamp_(-nmax, nmax - 1).to(x.dtype)
        torch.gt(slx, 0.0, out=accept)  # C: if (slx > 0) ...
        accept *= torch.ne(new_l, li, out=test)  # ... if (new_l != L[i]) ...
        slx += wxi * new_l  # ... and with weight i at its new level
        sl2 += wi * new_l * new_l
        accept *= torch.gt(sl2, 0.0, out=test)  # ... if (sl2 > 0 && the fit is better)
        accept *= torch.gt(slx * slx * suml2, sumlx * sumlx * sl2, out=test)
        li += accept * (new_l - li)  # updates levels in place
        keep = accept.bool()
        torch.where(keep, slx, sumlx, out=sumlx)
        torch.where(keep, sl2, suml2, out=suml2)
        n_changed += accept
    return n_changed


def make_q3_quants(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric ``x ~ scale * (q - nmax)``, then refine one level at a time.

    After the plain grid, C walks the weights in order: for weight i it asks
    "with every other level fixed, which level of weight i gives the best
    least-squares fit?" and keeps the change if the fit improves. It makes up
    to 5 passes and stops a sub-block early after a pass with no change.

    Two facts let this port skip work C does, with the same result:

    * Only sub-blocks whose extreme weight is *negative* can change. If it is
      positive, ``iscale = -nmax / max`` is negative, every level has the
      opposite sign of its weight, every term ``w*x*l`` is ``<= 0``, and so
      is their sum with any one term left out: C's ``if (slx > 0)`` never
      fires. (A quirk of C: half the sub-blocks keep their plain grid.)
    * A pass with no change leaves a sub-block as it was, so each pass runs
      only on the sub-blocks that changed in the pass before.

    Args:
        x: ``(n, S)`` float32.
        nmax: 4 for Q3_K (levels ``0..7``).

    Returns:
        ``scale`` (S,) and levels ``(n, S)`` int32 in ``0..2*nmax-1``
        (0 everywhere for an all-zero sub-block).
    """
    amax, signed_max = signed_absmax(x, dim=0)
    zero = amax < GROUP_MAX_EPS
    weights = x * x
    wx = weights * x
    levels = _symmetric_levels(x, divide_into(-nmax, signed_max), nmax)  # (n, S) signed, float32
    sumlx, suml2 = _symmetric_sums(levels, weights, wx)
    lanes = (signed_max < 0).nonzero().squeeze(1)  # the sub-blocks that may still change
    for _ in range(5):
        if lanes.numel() == 0:
            break
        x_part = x.index_select(1, lanes)  # (n, L): the sub-blocks in play
        w_part = x_part * x_part
        part = [x_part, w_part, w_part * x_part, levels.index_select(1, lanes), sumlx[lanes], suml2[lanes]]
        n_changed = _descent_pass(part[0], part[1], part[2], part[3], part[4], part[5], nmax)
        levels.index_copy_(1, lanes, part[3])  # write the refined sub-blocks back
        sumlx.index_copy_(0, lanes, part[4])
        suml2.index_copy_(0, lanes, part[5])
        lanes = lanes[n_changed.nonzero().squeeze(1)]
    scale = torch.where(suml2 > 0, sumlx / suml2, 0.0)
    levels = levels.to(torch.int32) + nmax
    levels *= ~zero  # 0 for an all-zero sub-block
    return torch.where(zero, 0.0, scale), levels
