"""The store's write lock: `filelock` (an flock on `<store>/.lock` on Unix, which the
kernel releases when its holder exits, however it exits), taken by writers only, so
read-only commands start without importing it. The holder writes who it is beside the
lock, so that a writer that waits more than a second can say who holds it."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from ccache_cli.errors import StoreError
from ccache_cli.store import owners

TIMEOUT_S = 600
_NOTICE_S = 1.0  # a writer waiting longer says who holds the lock
_POLL_S = 0.05  # how often a waiting writer tries again


@contextlib.contextmanager
def store_lock(root: Path, notify: Callable[[str], None]) -> Iterator[None]:
    import filelock

    lock = filelock.FileLock(str(root / ".lock"))
    holder = root / ".lock-holder"
    try:
        lock.acquire(timeout=_NOTICE_S, poll_interval=_POLL_S)
    except filelock.Timeout:
        notify(f"waiting for the lock of store {root}, held by {_holder(holder)}")
        try:
            lock.acquire(timeout=TIMEOUT_S, poll_interval=_POLL_S)
        except filelock.Timeout:
            raise StoreError(
                f"store {root} stayed locked for {TIMEOUT_S} s by {_holder(holder)}; is that writer stuck?"
            ) from None
    try:
        with contextlib.suppress(OSError):
            holder.write_text(json.dumps({"owner": owners.describe(), "command": _command_line()}) + "\n")
        yield
    finally:
        with contextlib.suppress(OSError):
            holder.unlink()  # before the lock goes: the next holder's line must stay
        lock.release()


def _holder(holder: Path) -> str:
    """Who holds the lock, as its holder wrote it: `pid N on HOST (COMMAND)`."""
    try:
        written = json.loads(holder.read_text())
        host, pid = written["owner"].split()[:2]
        return f"pid {pid} on {host} ({written['command']})"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "another process"


def _command_line() -> str:
    return " ".join([os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python", *sys.argv[1:]])[:300]
