"""The one atomic write and the one file lock, for every file claude-mailbox keeps (stdlib only).

Readers never see a half-written file: data goes to a temporary file beside the target, then
`os.replace` swaps it in. The lock is an advisory, non-blocking, exclusive lock on a lock file
(flock on POSIX, msvcrt.locking on Windows), released when the `with` block ends.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def atomic_write(path: Path, data: bytes | str, *, mode: int | None = None) -> None:
    """Replace `path` with `data` in one step; `mode` (e.g. 0o600) is set before the swap."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
    fd = os.open(temporary, flags, 0o600 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())  # the rename must not reach the disk before the data
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


PRIVATE = 0o600  # every file the daemon writes: mail, token, logs, pid and url files (issue 20.2)


def make_private(path: Path | str) -> None:
    """Tighten an existing file of this user's to 0600 (one an older version, or a wide umask, left
    readable by others); a missing file or someone else's is left alone."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        status = os.stat(path)
        if status.st_mode & 0o077 and status.st_uid == os.getuid():
            os.chmod(path, PRIVATE)


def open_private(path: Path | str, flags: int) -> int:
    """os.open that creates the file 0600 (and tightens one that exists), whatever the umask."""
    fd = os.open(path, flags | os.O_CREAT | getattr(os, "O_BINARY", 0), PRIVATE)
    make_private(path)
    return fd


def write_if_changed(path: Path, data: bytes) -> bool:
    """atomic_write unless the file already holds exactly `data`; True when it wrote."""
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            return False
    atomic_write(path, data)
    return True


@contextlib.contextmanager
def file_lock(path: Path, wait: float = 0.0, poll: float = 0.1) -> Iterator[bool]:
    """Hold an exclusive lock on `path` for the block; yields False when it could not be taken
    within `wait` seconds (or the file cannot be opened), so callers decide what that means."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+b")  # noqa: SIM115 - closed below
    except OSError:
        yield False
        return
    deadline = time.monotonic() + wait
    with handle:
        while True:
            try:
                _lock(handle.fileno(), handle)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(poll)
        try:
            yield True
        finally:
            _unlock(handle.fileno(), handle)


if sys.platform == "win32":
    import msvcrt

    def _lock(fileno: int, handle: object) -> None:
        handle.seek(0)  # type: ignore[attr-defined]
        msvcrt.locking(fileno, msvcrt.LK_NBLCK, 1)

    def _unlock(fileno: int, handle: object) -> None:
        with contextlib.suppress(OSError):
            handle.seek(0)  # type: ignore[attr-defined]
            msvcrt.locking(fileno, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fileno: int, handle: object) -> None:
        fcntl.flock(fileno, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fileno: int, handle: object) -> None:
        pass  # closing the file releases the flock
