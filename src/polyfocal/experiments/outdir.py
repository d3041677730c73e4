"""The results directory of ``polyfocal compare`` / ``sweep``: checked before any work, locked, written atomically.

* :func:`check_writable` finds an unusable ``--out`` (under a regular file, in an immutable or read-only
  directory, under ``/proc`` or ``/sys``) by creating and removing a probe file, before anything is trained.
* :class:`OutputLock` holds an exclusive ``flock`` on ``<out>/.lock`` for the whole command, so a second
  process on the same directory stops with a message naming the holder (or waits for it with ``wait=True``).
  The kernel drops the lock when its process dies, even by SIGKILL, so a lock is never stale.  Taking it
  also deletes temporary files a killed process left behind (:func:`remove_stale_temporaries`).
* :func:`write_atomic` writes through a uniquely named temporary file in the same directory and
  ``os.replace``-s it onto the target, with the permissions of a plainly created file (``0o666 & ~umask``).

Standard library only.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_NAME",
    "OutputError",
    "OutputLock",
    "check_writable",
    "is_temporary",
    "remove_stale_temporaries",
    "write_atomic",
]

LOCK_NAME = ".lock"
_TMP_SUFFIX = ".tmp"


class OutputError(ValueError):
    """The results directory cannot be used: not writable, or held by another process."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of this module's temporary files (``.<target>.<random>.tmp``), or one of the
    fixed-name temporaries older versions wrote (``.metrics.tmp.png``, ``.summary.csv.tmp``)."""
    return name.startswith(".") and (name.endswith(_TMP_SUFFIX) or name.endswith(".tmp.png"))


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` via a uniquely named temporary file in the same directory and ``os.replace``.

    Readers see the old file or the new one, never a partial one; two writers of the same path never share
    a temporary file.  The file gets mode ``0o666 & ~umask``, like one made with ``open(path, "w")``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _probe(directory: Path) -> None:
    fd, name = tempfile.mkstemp(dir=directory, prefix=".polyfocal-probe.", suffix=_TMP_SUFFIX)
    os.close(fd)
    os.unlink(name)


def check_writable(out: str | Path, *, flag: str = "--out", given: str | None = None) -> None:
    """Raise :class:`OutputError` (one line naming the cause) unless files can be created in ``out``.

    ``out`` may not exist yet: then its nearest existing ancestor must be a directory that accepts a new
    entry.  Nothing is left behind (the probe file is removed), and a missing ``out`` is not created.
    ``given`` is the value the message quotes as the user's (default ``out``)."""
    given = str(out) if given is None else given
    path = Path(os.path.abspath(out))
    existing = path
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        where = "is" if existing == path else f"is under {str(existing)!r}, which is"
        raise OutputError(
            f"expected {flag} to be a directory, got {given!r}, which {where} not a directory; pass another {flag}"
        )
    targets = [existing]
    runs = path / "runs"
    if existing == path and os.path.lexists(runs):
        if not runs.is_dir():
            raise OutputError(f"expected {str(runs)!r} to be a directory, got a file; delete it or pass another {flag}")
        targets.append(runs)
    for target in targets:
        try:
            _probe(target)
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise OutputError(
                f"expected a writable {flag}, got {given!r}: cannot create files in {str(target)!r} ({reason}); "
                f"pass another {flag}"
            ) from None


def remove_stale_temporaries(out: str | Path) -> list[Path]:
    """Delete the temporary files (:func:`is_temporary`) in ``out`` and ``out/runs``; return them.

    Call it only while holding :class:`OutputLock`: a live writer's temporary file would be deleted too."""
    removed = []
    for d in (Path(out), Path(out) / "runs"):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if is_temporary(p.name) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _describe(info: bytes) -> str:
    try:
        holder = json.loads(info.decode("utf-8"))
        return f"pid {holder['pid']} on {holder['host']} ({holder['command']}, since {holder['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


class OutputLock:
    """An exclusive lock on the results directory ``out`` (created if missing), as a context manager.

    ``acquire`` raises :class:`OutputError` naming the holder (pid, host, command, start time) if another
    process holds it; with ``wait=True`` it prints one line on stderr and blocks until the holder is done.
    ``release`` deletes the lock file, and ``out`` itself if the lock created it and it stayed empty."""

    def __init__(self, out: str | Path, *, wait: bool = False, command: str = "polyfocal") -> None:
        self.out = Path(out)
        self.wait = wait
        self.command = command
        self._fd: int | None = None
        self._created = False

    @property
    def path(self) -> Path:
        return self.out / LOCK_NAME

    def _open_locked(self) -> int:
        while True:
            if not self.out.is_dir():  # new, or removed by a holder that had created it and left it empty
                self.out.mkdir(parents=True, exist_ok=True)
                self._created = True
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            except FileNotFoundError:  # the directory went away between the two calls: make it again
                continue
            try:
                if not _try_lock(fd):
                    holder = _describe(os.pread(fd, 4096, 0)) if hasattr(os, "pread") else "another process"
                    if not self.wait:
                        raise OutputError(
                            f"results directory {str(self.out)!r} is in use by {holder}; wait for it to finish, "
                            "pass another --out, or add --wait"
                        )
                    print(f"polyfocal: waiting for {holder} to finish with {str(self.out)!r}", file=sys.stderr)
                    sys.stderr.flush()
                    _lock_blocking(fd)
                # the holder deletes the file before unlocking: if ours is no longer the one at the path, retry
                if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def acquire(self) -> OutputLock:
        if self._fd is not None:
            raise RuntimeError("OutputLock is not reentrant")
        self._created = False
        try:
            fd = self._open_locked()
        except BaseException:
            self._remove_if_created()
            raise
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(info).encode("utf-8"))
        self._fd = fd
        remove_stale_temporaries(self.out)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if fcntl is None:  # pragma: no cover - Windows cannot delete an open file
            os.close(fd)
            self.path.unlink(missing_ok=True)
        else:
            try:
                self.path.unlink(missing_ok=True)  # while still locked: see _open_locked
            finally:
                os.close(fd)  # closing the descriptor drops the lock
        self._remove_if_created()

    def _remove_if_created(self) -> None:
        if self._created:
            try:
                self.out.rmdir()  # only if empty
            except OSError:
                pass

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    import msvcrt  # pragma: no cover - Windows

    os.lseek(fd, 1 << 20, os.SEEK_SET)  # lock a byte past the holder description, which stays readable
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _lock_blocking(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    while not _try_lock(fd):  # pragma: no cover - Windows
        time.sleep(1.0)
