"""Writes that survive a crash and a power cut: the one atomic-write helper, folder
and file-system syncs, and the file mode that lets other users read what is written.

A file is written to a temporary name beside it, flushed to disk, renamed over its
target and its folder flushed too, so that after a crash at any moment the target is
either the old file or the new one, whole. The caches readers write (the entries'
index, the usage totals) start with a line naming their format and the SHA-256 of
the rest, so that one damaged or edited by hand is not read. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path | str, data: bytes, tmp_dir: Path | str | None = None) -> None:
    """Replace `path` by a file holding `data`, durably; readable as the umask allows
    (not 0600 as a temporary file is made), so a store built by one user serves others."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, shared_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_checked(path: Path | str, data: bytes, version: int, tmp_dir: Path | str) -> None:
    """`data` after a line naming its format `version` and its SHA-256, written atomically."""
    atomic_write(path, _check_line(data, version) + b"\n" + data, tmp_dir)


def read_checked(path: Path | str, version: int) -> bytes | None:
    """What `write_checked` wrote with format `version`; None where the file is missing,
    unreadable, of another format, or not as it was written."""
    try:
        with open(path, "rb") as handle:
            line, _, data = handle.read().partition(b"\n")
    except OSError:
        return None
    return data if line == _check_line(data, version) else None


def _check_line(data: bytes, version: int) -> bytes:
    return json.dumps({"format": version, "sha256": hashlib.sha256(data).hexdigest()}).encode()


def modes_allow_writes(root: Path | str) -> bool:
    """Whether a store's modes let a reader write its caches (index.py, usage_totals.py):
    a store made read-only by its modes is left alone even by a user they do not stop
    (root), as the usage logs are."""
    try:
        return bool(os.stat(root).st_mode & 0o222)
    except OSError:
        return False


def fsync_dir(path: Path | str) -> None:
    """Flush a folder's entries (names made, renamed or removed in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path | str) -> None:
    """Flush everything written to the file system holding `path`: one call for the
    thousands of files an unpack or a precompile writes, where a flush per file would
    cost a disk round trip each."""
    syncfs = _syncfs()
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            import ctypes

            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2), which Python does not wrap; None elsewhere."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError, ImportError):
        return None


@functools.cache
def shared_mode(executable: bool = False) -> int:
    """0666 (0777) less the process's umask: what `open` and `mkdir` would give."""
    return (0o777 if executable else 0o666) & ~_umask()


def _umask() -> int:
    try:  # read without changing it: another thread may be creating files
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(where: str) -> str:
    """What a write that ran out of space or inodes says, whichever command it was."""
    return (
        f"no space left on the device of {where}; nothing was changed: "
        "free some space (`ccache gc --max-size`) and run it again"
    )
