"""Which process owns a folder or holds a lock, and whether it still runs.

An owner is written as one line, `<host> <pid> <start>`: the process's start time
(from /proc, empty where there is none) tells a live owner from a process that
reused the pid of a dead one. Standard library only.
"""

from __future__ import annotations

import os
import socket


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
