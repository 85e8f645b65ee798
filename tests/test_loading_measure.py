"""Measured loads: the record's invariants, the cache verdict, peers, the CLI, and bad requests.

These tests start real child processes and assert on bytes, counts and orderings, never on
how long anything took.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from labkit import loading
from labkit.cli import main
from labkit.errors import LoadError, MissingInputError
from labkit.hierarchy.pagecache import device_read_bytes, resident_fraction
from labkit.loading.child import touch
from labkit.loading.record import COLD, PARTLY, UNVERIFIABLE, WARM, LoadRecord, cache_verdict

HERE = Path(__file__).parent
CAN_EVICT = resident_fraction(__file__) is not None and device_read_bytes() is not None


@pytest.fixture(scope="module")
def f16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = loading.write_model_set(tmp_path_factory.mktemp("measure"), 3 << 20, quantized=(), containers=())
    return files["F16 gguf"]


def _check_invariants(record: LoadRecord) -> None:
    assert 0 < record.open_s <= record.first_tensor_s <= record.all_touched_s
    times = [t for t, _ in record.rss_series]
    assert len(times) >= 2 and times == sorted(times), "RSS samples go forward in time"
    assert times[0] <= 0.0 and times[-1] >= record.all_touched_s
    assert all(rss > 0 for _, rss in record.rss_series)
    during = [rss for t, rss in record.rss_series if 0 <= t <= record.all_touched_s]
    assert record.peak_rss_bytes >= max(during)
    assert record.peak_rss_bytes >= record.open_peak_rss_bytes >= record.rss_before_bytes > 0
    assert set(record.to_dict()["kinds"]) == {f.name for f in dataclasses.fields(LoadRecord)}


def test_every_field_has_a_kind() -> None:
    assert set(LoadRecord.FIELD_KINDS) == {f.name for f in dataclasses.fields(LoadRecord)}
    assert set(LoadRecord.FIELD_KINDS.values()) == {"measured", "counted", "given"}
    assert LoadRecord.FIELD_KINDS["device_read_bytes"] == "counted"
    assert LoadRecord.FIELD_KINDS["all_touched_s"] == "measured"


def test_lazy_eager_and_partial_records(f16: Path) -> None:
    lazy = loading.measure(f16, mode="lazy", cache="warm")
    eager = loading.measure(f16, mode="eager", cache="warm")
    part = loading.measure(f16, mode="partial", layers=[0], cache="warm")
    for record in (lazy, eager, part):
        _check_invariants(record)
    table = loading.tensor_table(f16)
    assert lazy.tensor_bytes == eager.tensor_bytes == sum(s.n_bytes for s in table)
    assert part.tensor_bytes == sum(s.n_bytes for s in loading.select(table, [0])) < eager.tensor_bytes
    assert lazy.checksum == eager.checksum, "the same bytes were touched"
    assert (lazy.n_tensors, part.n_tensors) == (len(table), len(loading.select(table, [0])))
    assert eager.added_peak_rss_bytes >= eager.tensor_bytes, (
        "an eager load holds every byte in process memory"
    )
    assert lazy.added_open_rss_bytes < lazy.tensor_bytes / 2, (
        "a lazy open maps the file and reads (almost) nothing"
    )
    if CAN_EVICT:
        assert lazy.cache_state == eager.cache_state == WARM and lazy.resident_before >= 0.99
        assert lazy.device_read_bytes == eager.device_read_bytes == 0, "warm: nothing came from the device"


@pytest.mark.skipif(not CAN_EVICT, reason="needs posix_fadvise, mincore and /proc/self/io")
def test_cold_partial_load_reads_only_its_tensors(f16: Path) -> None:
    record = loading.measure(f16, mode="partial", layers=[1], cache="cold")
    _check_invariants(record)
    assert record.cache_state == COLD and record.resident_before <= 0.01
    header_bytes = min(s.offset for s in loading.tensor_table(f16))  # type: ignore[type-var]
    assert record.tensor_bytes <= record.device_read_bytes <= record.tensor_bytes + header_bytes + 64 * 4096
    assert record.resident_after < 0.9, "the rest of the file stayed on the device"


@pytest.mark.skipif(not CAN_EVICT, reason="needs posix_fadvise, mincore and /proc/self/io")
def test_cold_lazy_load_reads_the_whole_file(f16: Path) -> None:
    record = loading.measure(f16, mode="lazy", cache="cold")
    assert record.cache_state == COLD
    assert record.device_read_bytes >= 0.9 * record.tensor_bytes
    assert record.resident_after >= 0.99


def _peer(path: str, mode: str, layers: object) -> object:
    """A peer as the bench writes them: the call opens, the iteration yields (name, tensor)."""
    tensors = loading.load(path, "eager").tensors
    return iter(tensors.items())


def test_a_peer_is_measured_the_same_way(f16: Path) -> None:
    record = loading.measure(f16, mode="eager", loader="test_loading_measure:_peer", loader_path=[HERE])
    _check_invariants(record)
    assert record.loader == "test_loading_measure:_peer"
    assert record.checksum == sum(touch(t) for t in loading.load(f16, "lazy").tensors.values())


def test_cache_verdicts_from_evidence() -> None:
    mib = 1 << 20
    assert (
        cache_verdict("cold", evicted=True, resident_before=0.0, device_bytes=None, expected_bytes=mib)[0]
        == COLD
    )
    assert (
        cache_verdict("cold", evicted=True, resident_before=None, device_bytes=mib, expected_bytes=mib)[0]
        == COLD
    )
    state, why = cache_verdict("cold", evicted=True, resident_before=0.5, device_bytes=0, expected_bytes=mib)
    assert state == UNVERIFIABLE and "50% still cached" in why
    state, why = cache_verdict(
        "cold", evicted=False, resident_before=None, device_bytes=None, expected_bytes=mib
    )
    assert state == UNVERIFIABLE and "not possible here" in why
    assert (
        cache_verdict("warm", evicted=None, resident_before=1.0, device_bytes=0, expected_bytes=mib)[0]
        == WARM
    )
    assert (
        cache_verdict("warm", evicted=None, resident_before=0.6, device_bytes=0, expected_bytes=mib)[0]
        == PARTLY
    )
    assert (
        cache_verdict("as-is", evicted=None, resident_before=0.0, device_bytes=0, expected_bytes=mib)[0]
        == COLD
    )
    assert cache_verdict("as-is", evicted=None, resident_before=None, device_bytes=0, expected_bytes=mib)[
        0
    ] == (UNVERIFIABLE)


def test_bad_requests_fail_before_any_child_starts(f16: Path, tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="cache 'hot' is not one of cold, warm, as-is"):
        loading.measure(f16, cache="hot")
    with pytest.raises(LoadError, match="mode 'quick'"):
        loading.measure(f16, mode="quick")
    with pytest.raises(LoadError, match="out of range"):
        loading.measure(f16, mode="partial", layers=[99])
    with pytest.raises(LoadError, match="sample_every_s"):
        loading.measure(f16, sample_every_s=5)
    with pytest.raises(MissingInputError):
        loading.measure(tmp_path / "missing.safetensors")


def test_a_failing_child_becomes_a_load_error(f16: Path) -> None:
    with pytest.raises(LoadError, match="failed .*ModuleNotFoundError"):
        loading.measure(f16, loader="no_such_module:load")


def test_cli_json_and_text(f16: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["load", str(f16), "--layers", "0", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (
        record["mode"] == "partial"
        and record["layers"] == [0]
        and record["timing"] == "measured on this machine"
    )
    assert record["kinds"]["peak_rss_bytes"] == "measured" and record["kinds"]["major_faults"] == "counted"
    assert main(["load", str(f16), "--mode", "eager", "--warm"]) == 0
    text = capsys.readouterr().out
    assert "all touched" in text and "[measured]" in text and "[counted]" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mode", "lazy", "--layers", "0-1"], "needs --mode partial"),
        (["--mode", "partial"], "needs the layers"),
        (["--layers", "1-0"], "not a list of layers"),
        (["--layers", "40"], "out of range"),
    ],
)
def test_cli_errors(f16: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(["load", str(f16), *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_unknown_format_and_refused_pickle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("not weights")
    assert main(["load", str(tmp_path / "notes.txt")]) == 2
    assert "unknown weights format" in capsys.readouterr().err
    torch.save({"f": print}, tmp_path / "code.pt")
    assert main(["load", str(tmp_path / "code.pt")]) == 2
    assert "safety feature" in capsys.readouterr().err


@pytest.mark.skipif(not CAN_EVICT, reason="needs posix_fadvise, mincore and /proc/self/io")
def test_cold_that_cannot_be_verified_runs_on_labelled(f16: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Pages a process keeps mapped stay cached whatever fadvise says: then the run is not called cold."""
    import mmap

    with f16.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        pinned = sum(
            mapped[i] for i in range(0, len(mapped), 4096)
        )  # every page mapped here, in this process
        record = loading.measure(f16, mode="lazy", cache="cold")
        assert record.cache_state == UNVERIFIABLE and "still cached" in record.cache_evidence, pinned
        assert main(["load", str(f16), "--cold", "--quiet"]) == 0
    assert "--cold could not be verified here" in capsys.readouterr().err
