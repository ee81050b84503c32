"""The processes that pack and unpack groups of an archive in parallel, one per core.

Forked from the calling process where that is safe, that is where it runs no other
thread: they start at once, with every module they need already imported, where a new
interpreter costs 50 ms of CPU each. Else they are new interpreters running the worker
module (`python -m ...`). Either way a worker is its module's `serve(stdin, stdout)`
on two pipes, with the descriptors it is given kept open, and it dies with the process
that started it (killed with -9, that process cannot stop it itself).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import IO, Union

from ccache_cli.archive import frames
from ccache_cli.store import owners


class Forked:
    """A worker forked from this process, with what the callers use of a Popen."""

    stderr = None  # the child's goes to /dev/null: it reports its errors on stdout

    def __init__(self, serve: Callable[[IO[bytes], IO[bytes]], None], keep: tuple[int, ...] = ()) -> None:
        child_in, parent_out = os.pipe()
        parent_in, child_out = os.pipe()
        parent = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                owners.die_with_parent(parent)
                os.dup2(child_in, 0)
                os.dup2(child_out, 1)
                os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
                # Close the rest (the other workers' pipes among them), as Popen does.
                for low, high in zip((3, *[fd + 1 for fd in sorted(keep)]), (*sorted(keep), os.sysconf("SC_OPEN_MAX"))):
                    os.closerange(low, high)
                serve(open(0, "rb", closefd=False), open(1, "wb", closefd=False))
                code = 0
            finally:
                os._exit(code)  # nothing of the parent's runs: no atexit handlers, no buffers flushed
        os.close(child_in)
        os.close(child_out)
        self.stdin = open(parent_out, "wb")
        self.stdout = open(parent_in, "rb")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


Process = Union[Forked, "subprocess.Popen[bytes]"]


def start(worker: ModuleType, count: int, keep: tuple[int, ...] = ()) -> list[Process]:
    """`count` workers running `worker.serve`, with the descriptors in `keep` open."""
    fork = threading.active_count() == 1 and hasattr(os, "fork")
    owners.prctl()  # loaded before forking, so that each forked worker has it
    env = {**os.environ, owners.PARENT_ENV: str(os.getpid())}
    return [
        Forked(worker.serve, keep)
        if fork
        else subprocess.Popen(
            [sys.executable, "-m", worker.__name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=keep,
            env=env,
        )
        for _ in range(count)
    ]


def stop(processes: list[Process]) -> None:
    """Kill the workers still running and reap them all."""
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def close_pipes(processes: list[Process]) -> None:
    for process in processes:
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


_BYTES_PER_WORKER = 1 << 20  # below this, one more process costs more than it saves


def worker_count(size: int) -> int:
    """Processes for `size` bytes of archive or blobs."""
    return max(1, min(frames.cpu_count(), size // _BYTES_PER_WORKER))
