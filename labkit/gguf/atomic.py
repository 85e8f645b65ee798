"""Atomic output files: a new file appears complete under its name, or not at all.

``with atomic_output(path) as out: out.write(...)`` writes to a file that has no name
yet, in the destination folder, and gives it ``path`` only once the ``with`` body has
finished and the bytes are on disk (``fsync``). An error, Ctrl-C, ``kill`` (SIGTERM),
even ``kill -9`` (SIGKILL) or a power cut in the middle leaves ``path`` as it was and
nothing else behind.

How, from best to fallback:

1. **An unnamed file** (Linux ``open(folder, O_TMPFILE)``): the kernel creates an inode
   in the folder that no directory entry points to. If the process dies, the kernel frees
   it: nothing is ever visible. When the file is complete it gets a name with
   ``linkat("/proc/self/fd/N", name)``, or where that is refused ``linkat(fd, "", name,
   AT_EMPTY_PATH)``; see ``man 2 open`` (O_TMPFILE) and ``man 2 linkat``. Whether either
   works is checked on a tiny file before the real write.
2. **A hidden named file** ``.NAME.PID-RANDOM.tmp`` where the OS or filesystem has no
   O_TMPFILE (macOS, Windows, some network filesystems). It is removed on an error, on
   SIGINT and on SIGTERM (handlers installed only while writing, only in the main thread,
   and restored afterwards). Only SIGKILL or a crash can leave one behind, and the next
   write to the same folder removes every such file whose writer (PID) is gone (``sweep``).

Either way the final step is ``rename`` over ``path``, which POSIX makes atomic: a reader
sees the old file or the new one, never a mix (``man 2 rename``).
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from labkit.errors import LabkitError, OutputPathError

TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")  # .out.gguf.1234-89abcdef.tmp
CLEANUP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class InterruptedWriteError(LabkitError):
    """A signal stopped an atomic write and the program's own handler chose to carry on."""


def check_output_path(path: Path) -> None:
    """Refuse a path the file cannot be given, before any work is done.

    Raises:
        OutputPathError: ``path`` is a folder, its folder is missing or is not a folder,
            or the folder is not writable.
    """
    folder = path.parent
    if path.is_dir():
        raise OutputPathError(
            f"cannot write {path}: it is a folder; give a file name, e.g. {path / 'out.gguf'}"
        )
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"cannot write {path}: {folder} is not a folder; pick another output path")
    if not folder.is_dir():
        raise OutputPathError(
            f"cannot write {path}: the folder {folder} does not exist; "
            f"create it first (mkdir -p {folder}) or pick another output path"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"cannot write {path}: the folder {folder} is not writable; "
            "pick an output path in a folder you can write to"
        )


@contextmanager
def atomic_output(path: str | os.PathLike[str], *, unnamed: bool = True) -> Iterator[IO[bytes]]:
    """A binary file that appears at ``path`` only if the ``with`` body finishes.

    Args:
        path: the destination; an existing file there is replaced only at the very end.
        unnamed: use an unnamed O_TMPFILE file where the OS allows it (``False`` forces the
            named fallback, for tests and for comparison).

    Yields:
        A writable binary file object.

    Example:
        >>> with atomic_output(tmp / "numbers.bin") as out:
        ...     out.write(bytes(range(10)))
    """
    path = Path(path)
    sweep(path.parent)
    unnamed_file = _open_unnamed(path.parent) if unnamed else None
    if unnamed_file is not None:
        fd, linker = unnamed_file
        with os.fdopen(fd, "wb") as out:
            yield out
            _flush(out)
            with _signals_blocked():  # the name may be given in two steps; finish both
                _link_unnamed(out.fileno(), path, linker)
    else:
        temp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        with _removed_on_signal(temp, path):
            with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as out:
                yield out
                _flush(out)
            os.replace(temp, path)
    _fsync_folder(path.parent)


def sweep(folder: Path) -> list[Path]:
    """Remove the hidden temp files (``.NAME.PID-RANDOM.tmp``) of writers that are no longer running.

    A process can only leave one behind when it was killed with SIGKILL on a system without
    O_TMPFILE. A PID is "running" if ``kill(pid, 0)`` finds it; a PID from another PID
    namespace sharing the folder would look gone, so do not share an output folder across
    containers while writing. Returns the files removed.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = TEMP_NAME.match(entry.name)
        if match and entry.is_file(follow_symlinks=False) and not _pid_alive(int(match["pid"])):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass  # another sweeper got there first, or the folder is read-only
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except (OverflowError, OSError):
        return False
    return True


def _open_unnamed(folder: Path) -> tuple[int, Linker] | None:
    """An O_TMPFILE descriptor in ``folder`` and a way to name it, or None where there is none."""
    linker = _linker_for(folder)
    return None if linker is None else (_tmpfile(folder), linker)


def _tmpfile(folder: Path) -> int:
    return os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o666)


def _link_via_proc(fd: int, path: Path) -> None:
    """``linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, path, AT_SYMLINK_FOLLOW)``, as ``man 2 open`` shows."""
    os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)


def _link_empty_path(fd: int, path: Path) -> None:
    """``linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH)``: for root (CAP_DAC_READ_SEARCH) where /proc fails."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(path), _AT_EMPTY_PATH) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(path))


Linker = Callable[[int, Path], None]
_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000  # from <fcntl.h>
_LINKERS: tuple[Linker, ...] = (_link_via_proc, _link_empty_path)
_linker_of_device: dict[int, Linker | None] = {}  # st_dev -> the linker that works there


def _linker_for(folder: Path) -> Linker | None:
    """The first linker that can name an O_TMPFILE file in ``folder``'s filesystem (tried once per device).

    Each is tried on a tiny file *before* the real write, so a write never ends with data that
    cannot be given a name. The probe name matches ``TEMP_NAME``, so ``sweep`` would remove it.
    """
    if not hasattr(os, "O_TMPFILE") or not sys.platform.startswith("linux"):
        return None
    device = folder.stat().st_dev
    if device not in _linker_of_device:
        _linker_of_device[device] = None
        for linker in _LINKERS:
            if _links_in(folder, linker):
                _linker_of_device[device] = linker
                break
    return _linker_of_device[device]


def _links_in(folder: Path, linker: Linker) -> bool:
    try:
        fd = _tmpfile(folder)
    except OSError:
        return False  # this filesystem (or kernel) has no O_TMPFILE
    probe = folder / f".labkit-probe.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        linker(fd, probe)
    except (OSError, AttributeError):
        return False
    finally:
        os.close(fd)
    probe.unlink(missing_ok=True)
    return True


def _link_unnamed(fd: int, path: Path, linker: Linker) -> None:
    """Give the unnamed file its name: directly if ``path`` is free, else via a temp name and rename."""
    try:
        linker(fd, path)
        return
    except FileExistsError:
        pass
    temp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    linker(fd, temp)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _flush(out: IO[bytes]) -> None:
    out.flush()
    os.fsync(out.fileno())


class _Signalled(BaseException):
    """Raised by our handler to unwind an atomic write; never escapes ``_removed_on_signal``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_signalled(signum: int, frame: Any) -> None:
    raise _Signalled(signum)


@contextmanager
def _removed_on_signal(temp: Path, path: Path) -> Iterator[None]:
    """Remove ``temp`` on any exception and on SIGINT/SIGTERM, then let the signal act as before.

    Handlers go in only in the main thread (Python's rule) and only for signals not set to be
    ignored; the previous handlers come back afterwards, so Jupyter's own handling is untouched.
    After the cleanup the signal is raised again for the previous handler: with the default
    handler SIGTERM still ends the process, and SIGINT still raises ``KeyboardInterrupt``.
    """
    previous = _install(_raise_signalled) if threading.current_thread() is threading.main_thread() else {}
    try:
        yield
    except _Signalled as signalled:
        temp.unlink(missing_ok=True)
        _restore(previous)
        signal.raise_signal(signalled.signum)  # the previous handler acts now (may raise or exit)
        raise InterruptedWriteError(
            f"writing {path} was stopped by signal {signalled.signum}; nothing was written, {path} is unchanged"
        ) from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        _restore(previous)


def _install(handler: Callable[[int, Any], None]) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    for signum in CLEANUP_SIGNALS:
        current = signal.getsignal(signum)
        if current is not signal.SIG_IGN and current is not None:
            previous[signum] = signal.signal(signum, handler)
    return previous


def _restore(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    previous.clear()


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends (they are delivered right after)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, CLEANUP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _fsync_folder(folder: Path) -> None:
    """Make the new name durable (best effort: not every OS lets you fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
