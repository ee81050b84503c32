"""Which process owns a folder or holds a lock, whether it still runs, and worker
processes that end with the process that started them.

An owner is written as one line, `<host> <pid> <start>`: the process's start time
(from /proc, empty where there is none) tells a live owner from a process that
reused the pid of a dead one. Standard library only.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable


def describe(pid: int | None = None) -> str:
    """The owner line of `pid` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()} {pid} {started(pid)}".rstrip()


def started(pid: int) -> str:
    """When `pid` started, in clock ticks since boot (Linux); empty where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The command name (field 2) may hold spaces and parentheses: count from its end.
            return stat.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return ""


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def owner_alive(line: str) -> bool | None:
    """Whether the owner an owner line names still runs: None where it is on another
    host (or the line is not one), which this host cannot tell."""
    parts = line.split()
    if len(parts) not in (2, 3) or not parts[1].isdigit() or parts[0] != socket.gethostname():
        return None
    pid = int(parts[1])
    if not is_alive(pid):
        return False
    return len(parts) == 2 or started(pid) in ("", parts[2])


PARENT_ENV = "CCACHE_CLI_PARENT_PID"  # for a worker started as a new interpreter: whose death ends it


def die_with_parent(parent: int | None = None) -> None:
    """End this worker when the process that started it ends (`parent`, else the one
    PARENT_ENV names): the kernel kills it (Linux), or a thread watches (elsewhere)."""
    if parent is None:
        parent = int(os.environ.get(PARENT_ENV) or os.getppid())
    prctl_function = prctl()
    if prctl_function is not None:
        prctl_function(_PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # it ended before the kernel was asked
        os._exit(1)


_PR_SET_PDEATHSIG = 1


@functools.cache
def prctl() -> Callable[..., int] | None:
    """Linux's prctl(2), loaded once; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
