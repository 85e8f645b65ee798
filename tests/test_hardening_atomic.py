"""Atomic output: a file appears complete or not at all, and nothing is left behind, even when killed.

The slow test interrupts 30 real ``labkit quantize`` runs (10 each with SIGINT, SIGTERM and
SIGKILL at random moments) and counts the files left in the output folder: none may be.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from labkit.errors import LabkitError
from labkit.gguf import atomic
from labkit.gguf.atomic import InterruptedWriteError, atomic_output, sweep

MODES = [pytest.param(True, id="unnamed"), pytest.param(False, id="named")]


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("unnamed", MODES)
def test_the_file_appears_complete_and_alone(tmp_path: Path, unnamed: bool) -> None:
    with atomic_output(tmp_path / "out.bin", unnamed=unnamed) as out:
        out.write(b"new bytes")
        assert _listing(tmp_path) == ([] if unnamed else _listing(tmp_path))  # unnamed: nothing visible yet
    assert (tmp_path / "out.bin").read_bytes() == b"new bytes"
    assert _listing(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("unnamed", MODES)
def test_an_error_leaves_the_old_file_and_nothing_else(tmp_path: Path, unnamed: bool) -> None:
    (tmp_path / "out.bin").write_bytes(b"old")
    with (
        pytest.raises(RuntimeError, match="boom"),
        atomic_output(tmp_path / "out.bin", unnamed=unnamed) as out,
    ):
        out.write(b"half of the new")
        raise RuntimeError("boom")
    assert _listing(tmp_path) == ["out.bin"]
    assert (tmp_path / "out.bin").read_bytes() == b"old"


@pytest.mark.parametrize("unnamed", MODES)
def test_an_existing_file_is_replaced(tmp_path: Path, unnamed: bool) -> None:
    (tmp_path / "out.bin").write_bytes(b"old")
    with atomic_output(tmp_path / "out.bin", unnamed=unnamed) as out:
        out.write(b"new")
    assert (tmp_path / "out.bin").read_bytes() == b"new"
    assert _listing(tmp_path) == ["out.bin"]


def test_this_machine_writes_unnamed_files(tmp_path: Path) -> None:
    """On Linux the SIGKILL-proof path is the one taken (if this fails, the fallback is in use)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("O_TMPFILE is Linux-only")
    assert atomic._linker_for(tmp_path) is not None


def test_sweep_removes_only_temp_files_of_dead_writers(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".model.gguf.{dead_pid}-0123abcd.tmp"
    live = tmp_path / f".model.gguf.{os.getpid()}-0123abcd.tmp"
    other = tmp_path / ".model.gguf.notapid.tmp"
    for path in (stale, live, other):
        path.write_bytes(b"x")
    assert sweep(tmp_path) == [stale]
    assert _listing(tmp_path) == sorted([live.name, other.name])


def test_the_next_write_sweeps_what_a_killed_writer_left(tmp_path: Path) -> None:
    """The named fallback killed with SIGKILL leaves its temp file; the next write removes it."""
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(tmp_path / "a.bin"), "0"], stdout=subprocess.PIPE
    )
    assert child.stdout is not None and child.stdout.readline().strip() == b"writing"
    child.kill()
    child.wait()
    assert [n for n in _listing(tmp_path) if n.endswith(".tmp")], "the fallback should have left a temp file"
    with atomic_output(tmp_path / "b.bin") as out:
        out.write(b"b")
    assert _listing(tmp_path) == ["b.bin"]


_SLOW_WRITER = """
import sys, time
from labkit.gguf.atomic import atomic_output
with atomic_output(sys.argv[1], unnamed=sys.argv[2] == "1") as out:
    out.write(b"x" * 1000); out.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("unnamed", ["1", "0"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_leave_nothing(tmp_path: Path, signum: int, unnamed: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(tmp_path / "out.bin"), unnamed],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == b"writing"
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=30)
    assert _listing(tmp_path) == []
    if signum == signal.SIGTERM:
        assert child.returncode == -signal.SIGTERM  # still ends the process as SIGTERM does
    else:
        assert b"KeyboardInterrupt" in stderr  # still raises KeyboardInterrupt, as Ctrl-C does


def test_handlers_are_restored_and_a_non_raising_handler_gets_our_error(tmp_path: Path) -> None:
    calls: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        before = signal.getsignal(signal.SIGTERM)
        with (
            pytest.raises(
                InterruptedWriteError, match=r"out\.bin was stopped by signal 15; nothing was written"
            ),
            atomic_output(tmp_path / "out.bin", unnamed=False) as out,
        ):
            out.write(b"x")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode
        assert calls == [signal.SIGTERM]  # the program's own handler still saw the signal
        assert signal.getsignal(signal.SIGTERM) is before
        with atomic_output(tmp_path / "ok.bin", unnamed=False) as out:
            out.write(b"ok")
        assert signal.getsignal(signal.SIGTERM) is before
        assert _listing(tmp_path) == ["ok.bin"]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_writing_from_a_thread_installs_no_handler(tmp_path: Path) -> None:
    seen: list[object] = []

    def write() -> None:
        with atomic_output(tmp_path / "t.bin", unnamed=False) as out:
            seen.append(signal.getsignal(signal.SIGTERM))
            out.write(b"t")

    before = signal.getsignal(signal.SIGTERM)
    worker = threading.Thread(target=write)
    worker.start()
    worker.join()
    assert seen == [before]
    assert (tmp_path / "t.bin").read_bytes() == b"t"


def test_an_interrupted_write_error_is_ours() -> None:
    assert issubclass(InterruptedWriteError, LabkitError)


# --- 30 interrupted `labkit quantize` runs ----------------------------------------------------

# One Python process imports labkit and torch once, then forks one `labkit quantize` per trial
# (a fork runs the same main() as the command, without paying torch's import 30 times), kills it
# after a random delay and reports how each run ended.
_DRIVER = """
import json, os, random, signal, sys, time
import torch  # imported once here, not in every fork
import labkit.hierarchy.threads, labkit.quant.requant
from labkit.cli import main
source, folder, trials = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
argv = ["quantize", source, os.path.join(folder, "out.gguf"), "--type", "Q4_K_M", "--quiet", "--threads", "1"]

def run(signum, delay_s):
    pid = os.fork()
    if pid == 0:
        sys.stdout = open(os.devnull, "w")
        code = 1
        try:
            code = main(argv)
        finally:
            os._exit(code)
    if delay_s is not None:
        time.sleep(delay_s)
        os.kill(pid, signum)
    _, status = os.waitpid(pid, 0)
    return status

run(0, None)  # warm-up: the first run pays for one-time setup
start = time.perf_counter(); run(0, None); full_s = time.perf_counter() - start
os.remove(os.path.join(folder, "out.gguf"))
results = []
for signum, fraction in trials:
    status = run(signum, fraction * full_s)
    finished = os.path.exists(os.path.join(folder, "out.gguf"))
    if finished:
        os.remove(os.path.join(folder, "out.gguf"))  # the kill came too late: a complete file
    results.append({"signal": signum, "status": status, "finished": finished, "left": sorted(os.listdir(folder))})
print(json.dumps({"full_s": full_s, "results": results}))
"""


@pytest.mark.slow
def test_thirty_interrupted_quantize_runs_leave_no_file(tmp_path: Path) -> None:
    from labkit.modelfiles import synthetic_llama

    source = synthetic_llama(tmp_path / "in.gguf", dim=256, n_layers=4, vocab_size=2048)
    folder = tmp_path / "out"
    folder.mkdir()
    rng = __import__("random").Random(12)
    trials = [
        (int(s), rng.uniform(0.02, 0.5))  # early enough to land mid-run even when runs vary
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
        for _ in range(10)
    ]
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(source), str(folder), json.dumps(trials)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    results = report["results"]
    assert len(results) == 30
    assert [r["left"] for r in results] == [[]] * 30  # nothing left after any trial
    assert _listing(folder) == []
    interrupted = [r for r in results if not r["finished"]]
    assert len(interrupted) >= 20, f"too few kills landed mid-run: {results}"  # the trials test something
    by_signal = {s: [r for r in interrupted if r["signal"] == s] for s in (2, 15, 9)}
    assert all(by_signal.values()), by_signal
    for r in by_signal[15] + by_signal[9]:
        assert os.WIFSIGNALED(r["status"]), r  # SIGTERM and SIGKILL still end the process
    for r in by_signal[2]:
        assert os.WEXITSTATUS(r["status"]) == 130, r  # Ctrl-C: "interrupted", exit 130
