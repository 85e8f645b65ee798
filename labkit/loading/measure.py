"""Measure a load in a fresh child process and return a ``LoadRecord``.

``measure(path, mode=..., layers=..., cache=...)`` checks the request here first (so a bad
file, mode or layer list fails at once with a clear error), then starts
``python -m labkit.loading.child`` and, while it runs, samples the child's resident memory
every few milliseconds from the outside. The child times the load and reads the kernel's
counters from the inside (see ``labkit.loading.child``). Why a fresh process: memory, page
faults and device reads are per process, and a process that has loaded a file before keeps
its pages mapped, its allocator warm and its counters polluted.

The child's first second or so goes to starting Python and importing torch; the record's
clock starts when the load itself starts.

References: psutil ``Process.memory_info`` (RSS from ``/proc/<pid>/statm`` on Linux).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

from labkit.errors import LoadError
from labkit.loading.loaders import check_request, open_weights
from labkit.loading.record import CACHE_REQUESTS, LoadRecord, cache_verdict

SAMPLE_EVERY_S = 0.005
LEAD_S = 0.05  # RSS samples kept from before the load starts: the baseline in the plot


def measure(
    path: str | os.PathLike[str],
    *,
    mode: str = "lazy",
    layers: Iterable[int] | None = None,
    shared: bool = True,
    cache: str = "as-is",
    loader: str | None = None,
    loader_path: Iterable[str] = (),
    sample_every_s: float = SAMPLE_EVERY_S,
    timeout_s: float = 600.0,
    on_sample: Callable[[float, int], None] | None = None,
) -> LoadRecord:
    """Load ``path`` in a fresh child process, touching every tensor, and measure it.

    Args:
        path: a GGUF, safetensors or PyTorch checkpoint file.
        mode: ``"eager"``, ``"lazy"`` or ``"partial"`` (see ``labkit.loading.loaders``).
        layers: with ``"partial"``: the layer numbers.
        shared: with ``"partial"``: also load the tensors outside every layer (embeddings, norm, head).
        cache: ``"cold"`` (evict the file first and verify), ``"warm"`` (read it once first) or
            ``"as-is"``. A cold request that cannot be verified is run anyway and labelled
            ``"not verifiable here"``.
        loader: a peer to measure instead of labkit, as ``"module:function"`` (see the child's docstring).
        loader_path: folders to put on the child's ``sys.path`` to import ``loader``.
        sample_every_s: how often to sample the child's RSS.
        timeout_s: stop the child and raise after this long.
        on_sample: called with ``(seconds since start, rss_bytes)`` for every sample (progress bars).

    Returns:
        A ``LoadRecord``.

    Raises:
        LoadError: a bad mode, format, layer list or cache request (before the child starts), or
            the child failed or ran out of time.
    """
    path = Path(path)
    wanted = check_request(mode, layers)
    if cache not in CACHE_REQUESTS:
        raise LoadError(f"cache {cache!r} is not one of {', '.join(CACHE_REQUESTS)}")
    if not 0.0005 <= sample_every_s <= 1.0:
        raise LoadError(f"sample_every_s={sample_every_s} must be between 0.0005 and 1 second")
    fmt = (
        open_weights(path, mode, wanted, shared=shared).format if loader is None else "peer"
    )  # fails here on bad input
    request = {
        "path": str(path),
        "mode": mode,
        "layers": wanted,
        "shared": shared,
        "cache": cache,
        "loader": loader,
        "sys_path": [str(p) for p in loader_path],
    }
    result, samples = _run_child(request, sample_every_s, timeout_s, on_sample)
    return _record(path, fmt, mode, loader or "labkit", wanted, result, samples, cache)


def _run_child(
    request: dict, sample_every_s: float, timeout_s: float, on_sample: Callable[[float, int], None] | None
) -> tuple[dict, list[tuple[float, int]]]:
    """Start the child, sample its RSS until it exits, and return its JSON result and the samples."""
    command = [sys.executable, "-m", "labkit.loading.child", json.dumps(request)]
    # Files, not pipes: a child that writes more than a pipe holds would block while we only sample it.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        samples = _sample(child, request, sample_every_s, timeout_s, on_sample)
        out.seek(0)
        err.seek(0)
        return _parse_result(request, child.returncode, out.read(), err.read()), samples


def _sample(
    child: subprocess.Popen,
    request: dict,
    sample_every_s: float,
    timeout_s: float,
    on_sample: Callable[[float, int], None] | None,
) -> list[tuple[float, int]]:
    """Sample the child's RSS every ``sample_every_s`` until it exits (killed after ``timeout_s``)."""
    samples: list[tuple[float, int]] = []
    start = time.monotonic()
    try:
        process = psutil.Process(child.pid)
        while child.poll() is None:
            if time.monotonic() - start > timeout_s:
                raise LoadError(
                    f"the load of {request['path']} ran longer than {timeout_s:.0f} s and was stopped"
                )
            try:
                samples.append((time.monotonic(), process.memory_info().rss))
            except psutil.Error:  # the child exited between poll() and the sample
                break
            if on_sample is not None:
                on_sample(samples[-1][0] - start, samples[-1][1])
            time.sleep(sample_every_s)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return samples


def _parse_result(request: dict, returncode: int, stdout: str, stderr: str) -> dict:
    lines = stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if "error" in result:
        raise LoadError(result["message"])
    if returncode != 0 or not result:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        raise LoadError(
            f"the child process that loads {request['path']} failed (exit code {returncode}): {tail}"
        )
    return result


def _record(
    path: Path,
    fmt: str,
    mode: str,
    loader: str,
    layers: list[int] | None,
    result: dict,
    samples: list[tuple[float, int]],
    cache: str,
) -> LoadRecord:
    t0, end = result["t0"], result["t0"] + result["all_touched_s"]
    inside = [(0.0, result["rss_before_bytes"]), (result["all_touched_s"], result["rss_after_bytes"])]
    outside = [(t - t0, rss) for t, rss in samples if t0 - LEAD_S <= t <= end + LEAD_S]
    series = tuple(sorted([point for point in inside if point[1] is not None] + outside))
    during = [rss for t, rss in samples if t0 <= t <= end]
    peak = result["peak_rss_bytes"] or max(during, default=result["rss_before_bytes"] or 0)
    expected = result["tensor_bytes"] or path.stat().st_size
    state, evidence = cache_verdict(
        cache,
        evicted=result["evicted"],
        resident_before=result["resident_before"],
        device_bytes=result["device_read_bytes"],
        expected_bytes=expected,
    )
    return LoadRecord(
        path=str(path),
        format=fmt,
        mode=mode,
        loader=loader,
        layers=None if layers is None else tuple(layers),
        file_size_bytes=path.stat().st_size,
        tensor_bytes=result["tensor_bytes"],
        n_tensors=result["n_tensors"],
        open_s=result["open_s"],
        first_tensor_s=result["first_tensor_s"],
        all_touched_s=result["all_touched_s"],
        rss_before_bytes=result["rss_before_bytes"] or 0,
        open_peak_rss_bytes=result["open_peak_rss_bytes"] or 0,
        peak_rss_bytes=max(peak, *during, 0),
        rss_series=series,
        major_faults=result["major_faults"],
        minor_faults=result["minor_faults"],
        device_read_bytes=result["device_read_bytes"],
        resident_before=result["resident_before"],
        resident_after=result["resident_after"],
        cache_state=state,
        cache_evidence=evidence,
        checksum=result["checksum"],
    )
