"""Benchmark: labkit.loading (eager, lazy, partial) against safetensors, torch.load, gguf-py and llama.cpp.

Every load runs in a fresh child process through ``labkit.loading.measure`` -- labkit's own loads
and every peer's -- so all of them are timed, sampled and counted the same way: time to open, to
the first tensor, until every tensor was touched (one byte read from each page, so each byte is
in RAM and mapped), peak RSS, page faults and bytes from the device, with the page cache cold
(evicted, and verified with mincore) or warm.

Files: the default model (SmolLM2-135M Q4_1), and one synthetic llama written by
``labkit.loading`` at ``--size-mib`` as F16 GGUF, Q4_0 GGUF (the same weights), F16 safetensors and
F16 ``.pt``; and an F16/Q4_K_M pair at ``--q4km-mib`` (the K-quant quantizer is too slow on 2 cores
to write 1 GiB of Q4_K_M in a bench run).

Peers (each given its best configuration: safetensors' own default and its copying backend,
torch.load with and without mmap, llama.cpp with and without mmap, 2 threads, OMP passive):

- ``readinto``: one ``preadv`` of the whole file into one buffer: the plain-read baseline;
- safetensors ``load_file`` (0.8 default: a zero-copy mmap), ``load_file(backend="pread")`` (copies),
  ``safe_open`` + ``get_tensor`` (all, or only the partial load's tensors);
- ``torch.load(weights_only=True)`` with ``mmap=True`` and without;
- gguf-py ``GGUFReader`` + ``torch.from_numpy`` of every tensor;
- llama.cpp (llama-cpp-python): ``Llama(...)`` is the open; "all touched" is one decoded token,
  which reads every weight once (and includes that token's compute).

    flock /tmp/labkit-bench.lock .venv/bin/python bench/bench_loading.py [--size-mib 1024] [--repeats 2]

Prints a markdown report and writes bench/results/loading.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from _common import machine, other_cpu_share

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labkit import loading  # noqa: E402
from labkit.loading.table import layer_of  # noqa: E402
from labkit.modelfiles import default_model_path  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "loading.md"
PARTIAL_LAYERS = [0, 1, 2, 3]
MiB = 1 << 20


# --- peers: each is ``(path, mode, layers) -> iterable of (name, tensor)``; the call is the open ----------


class _Lazily:
    """An iterable whose iteration runs ``produce``: for peers whose open does no reading."""

    def __init__(self, produce: Any) -> None:
        self._produce = produce

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self._produce()


def readinto(path: str, mode: str, layers: Any) -> _Lazily:
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)

    def produce() -> Iterator[tuple[str, torch.Tensor]]:
        buffer = torch.empty(size, dtype=torch.uint8)
        view, done = buffer.numpy().data, 0
        while done < size:
            done += os.preadv(fd, [view[done:]], done)
        os.close(fd)
        yield "the whole file", buffer

    return _Lazily(produce)


def st_load_file(path: str, mode: str, layers: Any) -> Any:
    from safetensors.torch import load_file

    return load_file(path).items()


def st_load_file_pread(path: str, mode: str, layers: Any) -> Any:
    from safetensors.torch import load_file

    return load_file(path, backend="pread").items()


def st_safe_open(path: str, mode: str, layers: Any) -> _Lazily:
    from safetensors import safe_open

    handle = safe_open(path, framework="pt")
    wanted = None if layers is None else set(layers)
    names = [n for n in handle.keys() if wanted is None or layer_of(n) in wanted or layer_of(n) is None]
    return _Lazily(lambda: ((n, handle.get_tensor(n)) for n in names))


def torch_load(path: str, mode: str, layers: Any) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=False).items()


def torch_load_mmap(path: str, mode: str, layers: Any) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True).items()


def gguf_reader(path: str, mode: str, layers: Any) -> _Lazily:
    import warnings

    import gguf

    reader = gguf.GGUFReader(path)

    def produce() -> Iterator[tuple[str, torch.Tensor]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # from_numpy of a read-only map
            for t in reader.tensors:
                yield t.name, torch.from_numpy(t.data)

    return _Lazily(produce)


def _llama(path: str, use_mmap: bool) -> _Lazily:
    from labkit.peers import open_llama

    model = open_llama(path, n_threads=2, n_ctx=64, use_mmap=use_mmap)

    def produce() -> Iterator[tuple[str, torch.Tensor]]:
        model.eval([1])  # one token reads every weight once
        yield "one decoded token", torch.empty(0)

    return _Lazily(produce)


def llama_mmap(path: str, mode: str, layers: Any) -> _Lazily:
    return _llama(path, True)


def llama_no_mmap(path: str, mode: str, layers: Any) -> _Lazily:
    return _llama(path, False)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# --- the run --------------------------------------------------------------------------------------------


def cases(files: dict[str, Path], default: Path) -> list[tuple[str, Path, str, str | None, str]]:
    """``(file label, path, loader label, peer function name or None for labkit, mode)`` to measure."""
    llama = _installed("llama_cpp")
    rows: list[tuple[str, Path, str, str | None, str]] = []
    for label, path in [("F16 gguf", files["F16 gguf"]), ("default Q4_1 gguf", default)]:
        rows += [(label, path, f"labkit {m}", None, m) for m in ("eager", "lazy", "partial")]
        rows += [
            (label, path, "readinto", "readinto", "eager"),
            (label, path, "gguf-py GGUFReader", "gguf_reader", "lazy"),
        ]
        if llama:
            rows += [
                (label, path, "llama.cpp mmap", "llama_mmap", "lazy"),
                (label, path, "llama.cpp no mmap", "llama_no_mmap", "eager"),
            ]
    for label in ("Q4_0 gguf", "Q4_K_M gguf"):
        rows += [(label, files[label], f"labkit {m}", None, m) for m in ("eager", "lazy")]
        rows += [(label, files[label], "readinto", "readinto", "eager")]
        if llama and label == "Q4_0 gguf":
            rows.append((label, files[label], "llama.cpp mmap", "llama_mmap", "lazy"))
    for small_f16 in (label for label in files if label.startswith("F16 gguf ")):  # the Q4_K_M pair's own F16
        rows.append((small_f16, files[small_f16], "labkit lazy", None, "lazy"))
    path = files["F16 safetensors"]
    rows += [("F16 safetensors", path, f"labkit {m}", None, m) for m in ("eager", "lazy", "partial")]
    rows += [
        ("F16 safetensors", path, name, fn, mode)
        for name, fn, mode in [
            ("readinto", "readinto", "eager"),
            ("safetensors load_file", "st_load_file", "lazy"),
            ("safetensors load_file pread", "st_load_file_pread", "eager"),
            ("safetensors safe_open", "st_safe_open", "lazy"),
            ("safetensors safe_open partial", "st_safe_open", "partial"),
        ]
    ]
    path = files["F16 pt"]
    rows += [("F16 pt", path, f"labkit {m}", None, m) for m in ("lazy", "partial")]
    rows += [
        ("F16 pt", path, name, fn, mode)
        for name, fn, mode in [
            ("readinto", "readinto", "eager"),
            ("torch.load", "torch_load", "eager"),
            ("torch.load mmap", "torch_load_mmap", "lazy"),
        ]
    ]
    return rows


def measure_case(path: Path, loader: str | None, mode: str, cache: str) -> loading.LoadRecord:
    layers = PARTIAL_LAYERS if mode == "partial" else None
    if loader is None:
        return loading.measure(path, mode=mode, layers=layers, cache=cache)
    return loading.measure(
        path, mode=mode, layers=layers, cache=cache, loader=f"bench_loading:{loader}", loader_path=[HERE]
    )


def run(
    files: dict[str, Path], repeats: int, on_case: Any = None
) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Measure every case cold and warm, ``repeats`` rounds, rotating the order each round."""
    order = ["F16 gguf", "F16 safetensors", "Q4_0 gguf", "Q4_K_M gguf", "F16 pt", "default Q4_1 gguf"]
    todo = sorted(
        cases(files, default_model_path()), key=lambda case: order.index(case[0]) if case[0] in order else 9
    )
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for round_index in range(repeats):
        shift = round_index * 7 % len(todo)
        for file_label, path, loader_label, loader, mode in todo[shift:] + todo[:shift]:
            for cache in ("cold", "warm"):
                record, other = other_cpu_share(lambda: measure_case(path, loader, mode, cache))  # noqa: B023
                results[(file_label, loader_label, cache)].append({"record": record, "other_cpu": other})
                print(
                    f"  {file_label:18} {loader_label:30} {cache:4} {record.cache_state:25} "
                    f"open {record.open_s * 1e3:9.2f} ms  all {record.all_touched_s * 1e3:9.1f} ms",
                    flush=True,
                )
            if on_case is not None:
                on_case(dict(results))  # a partial report after every case: a cut-short run still leaves one
    return results


def write_files(folder: Path, size_mib: int, q4km_mib: int) -> dict[str, Path]:
    """The synthetic set (F16, Q4_0, safetensors, .pt at ``size_mib``), plus an F16/Q4_K_M pair at
    ``q4km_mib``: labkit's K-quant quantizer needs minutes per 100 MB on 2 cores, so the Q4_K_M pair is
    smaller. Files a previous run left complete in ``folder`` are reused."""
    from labkit.modelfiles import synthetic_llama
    from labkit.quant.requant import requantize

    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # quantizing on a shared 2-core machine: OpenMP threads that spin collapse
    files: dict[str, Path] = {}
    for mib, quantized, containers in ((size_mib, "Q4_0", True), (q4km_mib, "Q4_K_M", False)):
        stem = folder / f"synthetic-{mib}MiB-seed0"
        f16 = Path(f"{stem}-F16.gguf")
        if not f16.exists():
            synthetic_llama(f16, qtype="F16", target_size_bytes=mib * MiB, seed=0)
        small = Path(f"{stem}-{quantized}.gguf")
        if not small.exists():
            requantize(f16, small, quantized, progress=True)
        suffix = "" if containers or mib == size_mib else f" {mib} MiB"
        files[f"F16 gguf{suffix}"], files[f"{quantized} gguf"] = f16, small
        for container in ("safetensors", "pt") if containers else ():
            path = Path(f"{stem}-F16.{container}")
            if not path.exists():
                loading.write_as(f16, path, container)
            files[f"F16 {container}"] = path
    return files


# --- the report -----------------------------------------------------------------------------------------


def _median(rows: list[dict[str, Any]], field: str) -> float:
    values = [getattr(r["record"], field) for r in rows]
    return (
        statistics.median(v for v in values if v is not None)
        if any(v is not None for v in values)
        else float("nan")
    )


def table(results: dict[tuple[str, str, str], list[dict[str, Any]]]) -> list[str]:
    lines = [
        "| file | loader | cache (verified) | open ms | first tensor ms | all touched ms | GB/s | +open RSS MiB "
        "| +peak RSS MiB | device MiB | major faults | tensors MiB | other CPU |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (file_label, loader_label, cache), rows in results.items():
        states = sorted({r["record"].cache_state.split(" (")[0] for r in rows})
        tensor_mib = _median(rows, "tensor_bytes") / MiB
        size_bytes = rows[0]["record"].tensor_bytes or rows[0]["record"].file_size_bytes
        lines.append(
            f"| {file_label} | {loader_label} | {cache}: {'/'.join(states)} | {_median(rows, 'open_s') * 1e3:,.2f} "
            f"| {_median(rows, 'first_tensor_s') * 1e3:,.2f} | {_median(rows, 'all_touched_s') * 1e3:,.1f} "
            f"| {size_bytes / _median(rows, 'all_touched_s') / 1e9:,.2f} "
            f"| {_median(rows, 'added_open_rss_bytes') / MiB:,.1f} "
            f"| {_median(rows, 'added_peak_rss_bytes') / MiB:,.1f} "
            f"| {_median(rows, 'device_read_bytes') / MiB:,.1f} | {_median(rows, 'major_faults'):,.0f} "
            f"| {tensor_mib:,.1f} | {statistics.median(r['other_cpu'] for r in rows):.0%} |"
        )
    return lines


def _ratio(
    results: dict, a: tuple[str, str, str], b: tuple[str, str, str], field: str = "all_touched_s"
) -> float:
    """How many times faster ``a`` is than ``b`` (b's time / a's time), medians of the rounds."""
    return _median(results[b], field) / _median(results[a], field)


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _lazy_bandwidth(results: dict) -> list[str]:
    lines = []
    for cache, goal in (("warm", 0.95), ("cold", 0.90)):
        lazy, plain = results[("F16 gguf", "labkit lazy", cache)], results[("F16 gguf", "readinto", cache)]
        ratio = (_median(lazy, "tensor_bytes") / _median(lazy, "all_touched_s")) / (
            _median(plain, "tensor_bytes") / _median(plain, "all_touched_s")
        )
        lines.append(
            f"| lazy, every tensor touched, {cache}: bandwidth vs plain readinto | ≥ {goal}× | {ratio:.2f}× "
            f"| {_verdict(ratio >= goal)} |"
        )
    return lines


def _first_tensor(results: dict) -> list[str]:
    lines = []
    for cache in ("cold", "warm"):
        share = _median(results[("F16 gguf", "labkit lazy", cache)], "first_tensor_s") / _median(
            results[("F16 gguf", "labkit eager", cache)], "all_touched_s"
        )
        lines.append(
            f"| lazy time to first tensor vs eager load, {cache} | ≤ 1/20 (0.05) | {share:.4f} "
            f"| {_verdict(share <= 0.05)} |"
        )
    return lines


def _eager_vs_safetensors(results: dict) -> list[str]:
    st, lines = "F16 safetensors", []
    for cache in ("cold", "warm"):
        for peer in ("safetensors load_file", "safetensors load_file pread"):
            ratio = _ratio(results, (st, "labkit eager", cache), (st, peer, cache))
            lines.append(
                f"| eager vs {peer}, same file, {cache} | ≥ 1.0× | {ratio:.2f}× | {_verdict(ratio >= 1.0)} |"
            )
        ratio = _ratio(results, (st, "labkit lazy", cache), (st, "safetensors load_file", cache))
        lines.append(f"| (lazy vs safetensors load_file, both zero-copy, {cache}) | – | {ratio:.2f}× | – |")
    return lines


def _partial(results: dict) -> list[str]:
    part = results[("F16 gguf", "labkit partial", "cold")]
    device, wanted = _median(part, "device_read_bytes"), _median(part, "tensor_bytes")
    overhead, peak = _median(part, "rss_before_bytes"), _median(part, "added_peak_rss_bytes")
    return [
        f"| partial (layers 0-3), cold: device bytes vs its tensors' bytes | within 5% | "
        f"{device / wanted - 1:+.1%} | {_verdict(abs(device / wanted - 1) <= 0.05)} |",
        f"| partial, cold: peak RSS above the start vs its tensors' bytes (fixed overhead before the load: "
        f"{overhead / MiB:.0f} MiB, Python + torch) | within 10% | {peak / wanted - 1:+.1%} "
        f"| {_verdict(abs(peak / wanted - 1) <= 0.10)} |",
    ]


def _open_rss(results: dict) -> list[str]:
    lines = []
    for cache in ("cold", "warm"):
        lazy = results[("F16 gguf", "labkit lazy", cache)]
        share = _median(lazy, "added_open_rss_bytes") / lazy[0]["record"].file_size_bytes
        lines.append(
            f"| lazy open, {cache}: peak RSS added before any touch vs file size | ≤ 2% | {share:.2%} "
            f"| {_verdict(share <= 0.02)} |"
        )
    return lines


def targets(results: dict, size_mib: int) -> list[str]:
    """Each target's row; a block whose loads are not (yet) measured says so instead."""
    lines = []
    for block in (_lazy_bandwidth, _first_tensor, _eager_vs_safetensors, _partial, _open_rss):
        try:
            lines += block(results)
        except (KeyError, IndexError, ZeroDivisionError, statistics.StatisticsError):
            lines.append(
                f"| {block.__name__.strip('_').replace('_', ' ')} | – | not measured in this run | – |"
            )
    return lines


def pair(results: dict) -> list[str]:
    try:
        return _pair(results)
    except (KeyError, IndexError, ZeroDivisionError, statistics.StatisticsError):
        return ["| (not measured in this run) | | | |"]


def _pair(results: dict) -> list[str]:
    lines = []
    for cache in ("cold", "warm"):
        small_f16 = next((key[0] for key in results if key[0].startswith("F16 gguf ")), "F16 gguf")
        for big_label, small_label in (("F16 gguf", "Q4_0 gguf"), (small_f16, "Q4_K_M gguf")):
            big, small = (
                results[(big_label, "labkit lazy", cache)],
                results[(small_label, "labkit lazy", cache)],
            )
            bytes_ratio = big[0]["record"].file_size_bytes / small[0]["record"].file_size_bytes
            time_ratio = _median(big, "all_touched_s") / _median(small, "all_touched_s")
            lines.append(
                f"| F16 vs {small_label.split()[0]}, lazy, every tensor touched, {cache} | "
                f"{big[0]['record'].file_size_bytes / 1e9:.3f} GB vs {small[0]['record'].file_size_bytes / 1e9:.3f} GB "
                f"| {bytes_ratio:.2f}× | {time_ratio:.2f}× |"
            )
    return lines


def render(results: dict, args: argparse.Namespace, files: dict[str, Path]) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sizes = ", ".join(f"{label} {p.stat().st_size / 1e9:.3f} GB" for label, p in files.items())
    return "\n".join(
        [
            "# Loading benchmark (chapter 4)",
            "",
            f"Run {when} on {machine()}; `bench/bench_loading.py --size-mib {args.size_mib} --q4km-mib {args.q4km_mib} "
            f"--repeats {args.repeats}`. "
            f"Files: {sizes}; default model {default_model_path().stat().st_size / 1e9:.3f} GB. "
            "Every load ran in a fresh child process (`labkit.loading.measure`); numbers are medians of the rounds. "
            "Times, RSS and cache state: measured; device bytes and faults: counted by the kernel "
            "(`/proc/self/io`, getrusage); tensors: counted. "
            '"other CPU" is the share of all CPUs other processes used meanwhile.',
            "",
            "## Targets",
            "",
            "| target | goal | result | verdict |",
            "|---|---|---|---|",
            *targets(results, args.size_mib),
            "",
            "## The article's pair, scaled: bytes ratio beside load-time ratio (labkit lazy)",
            "",
            "| pair | sizes | bytes ratio | time ratio |",
            "|---|---|---:|---:|",
            *pair(results),
            "",
            "## Every load",
            "",
            *table(results),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="F16 file size (default 1024)")
    parser.add_argument(
        "--q4km-mib", type=int, default=64, help="F16 size of the F16/Q4_K_M pair (default 64)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every case, cold and warm")
    parser.add_argument(
        "--workdir", type=Path, default=Path("/tmp/labkit-bench-loading"), help="where the files go"
    )
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # llama.cpp's children share 2 cores with the sampler
    files = write_files(args.workdir, args.size_mib, args.q4km_mib)
    results = run(files, args.repeats, lambda partial: RESULTS.write_text(render(partial, args, files)))
    report = render(dict(results), args, files)
    RESULTS.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
