"""The processes a pull downloads through (fetch_process.py), seen from the pull:
started one per core, sent the layers to download as the catalogs name them, a few at
a time each, and followed for their progress and reports."""

from __future__ import annotations

import collections
import contextlib
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from ccache_cli.archive import processes
from ccache_cli.errors import CcacheError, ReportedError

from . import fetch_process
from .client import Remote
from .layout import Layer

_NO_REPORT = ReportedError(CcacheError.__name__, "a downloading process ended without a report")


class Downloads:
    """The processes that download a pull's layers (fetch_process.py), one per core,
    sent layers as the catalogs name them. Each holds a few at a time (as many as it
    downloads at once, and two more); the rest wait here for whichever process writes
    one first, so that the processes end together however long each layer takes."""

    def __init__(
        self, remote: Remote, objects: Path, count: int, transfers: int, on_progress: Callable[[int], None]
    ) -> None:
        self._on_progress = on_progress
        self._progress_lock = threading.Lock()
        self._lock = threading.Condition()  # guards what follows, and the pipes' writes
        self.verified: set[str] = set()
        self.errors: list[ReportedError] = []
        self._workers = processes.start(fetch_process, max(1, count))
        self._held = [0] * len(self._workers)  # layers sent to each process and not yet written
        self._live = [True] * len(self._workers)
        self._reported = [False] * len(self._workers)
        self._waiting: collections.deque[bytes] = collections.deque()  # layers sent to none yet
        threads = max(1, transfers // len(self._workers))
        self._window = fetch_process.held_at_most(threads)
        self._followers = [threading.Thread(target=self._follow, args=(n,)) for n in range(len(self._workers))]
        header = {"reference": remote.reference, "insecure": remote.scheme == "http", "objects": str(objects)}
        try:
            for worker in self._workers:
                self._write(worker, json.dumps({**header, "threads": threads}).encode())
            for follower in self._followers:
                follower.start()
        except BaseException:
            self.__exit__()
            raise

    @property
    def failed(self) -> bool:
        """Whether a process failed other than by the network (the others stop)."""
        with self._lock:
            return any(not error.transfer for error in self.errors)

    def send(self, layer: Layer, blobs: Sequence[str], wanted: frozenset[str], sizes: dict[str, int]) -> None:
        flags = "".join("1" if sha256 in wanted else "0" for sha256 in blobs)
        job = [layer.digest, layer.media_type, layer.size, "".join(blobs), flags, [sizes[s] for s in blobs]]
        with self._lock:
            self._waiting.append(json.dumps(job).encode())
            self._dispatch()

    def finish(self) -> tuple[set[str], ReportedError | None]:
        """Wait for every layer sent to be written and every process's report: the
        blobs verified, and the first error (one that is not the network's stops the
        others at once; after any, no more layers are sent)."""
        with self._lock:
            self._lock.wait_for(lambda: not self._waiting or self.errors or not any(self._live))
            self._waiting.clear()
        for worker in self._workers:
            with contextlib.suppress(OSError):
                assert worker.stdin is not None
                worker.stdin.close()
        for follower in self._followers:
            follower.join()
        worst = sorted(self.errors, key=lambda error: error.transfer)  # a transfer error only if alone
        return self.verified, (worst or [None])[0]

    def __enter__(self) -> Downloads:
        return self

    def __exit__(self, *exc_info: object) -> None:
        processes.stop(self._workers)
        for follower in self._followers:
            if follower.is_alive():
                follower.join()
        processes.close_pipes(self._workers)

    def _dispatch(self) -> None:
        """Send waiting layers to the processes with room, fewest held first (the lock
        held: a process's stdin is read by a thread of its own, so a write waits only
        on a process that stopped running)."""
        while self._waiting and not self.errors:
            room = [n for n, live in enumerate(self._live) if live and self._held[n] < self._window]
            if not room:
                return
            least = min(room, key=self._held.__getitem__)
            self._held[least] += 1
            self._write(self._workers[least], self._waiting.popleft())

    @staticmethod
    def _write(worker: processes.Process, line: bytes) -> None:
        """A line to a process; one that stopped says why in its report."""
        assert worker.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            worker.stdin.write(line + b"\n")
            worker.stdin.flush()

    def _follow(self, number: int) -> None:
        """Relay a process's progress, send it more layers as it writes them and keep its
        report; a line cut short (a process killed while writing) is no report, and a
        process that ends without one fails the pull at once."""
        worker = self._workers[number]
        assert worker.stdout is not None
        try:
            for line in worker.stdout:
                report = json.loads(line)
                if "bytes" in report:
                    with self._progress_lock:
                        self._on_progress(report["bytes"])
                    continue
                with self._lock:
                    if "done" in report:
                        self._held[number] -= 1
                        self._dispatch()
                        self._lock.notify_all()
                    else:
                        self._reported[number] = True
                        self.verified.update(report["verified"])
                        if report["error"] is not None:
                            self.errors.append(ReportedError.from_json(report["error"]))
                            if not self.errors[-1].transfer:  # the others need not go on
                                for other in self._workers:
                                    if other is not worker:
                                        other.kill()
        except ValueError:
            pass
        except Exception as exc:  # a bug: said as the pull's error
            with self._lock:
                self.errors.append(
                    ReportedError(CcacheError.__name__, f"following a downloading process failed: {exc!r}")
                )
            worker.kill()
        finally:
            with self._lock:
                self._live[number] = False
                if not self._reported[number]:  # killed, or crashed: what it wrote is unknown
                    self.errors.append(_NO_REPORT)
                self._lock.notify_all()
