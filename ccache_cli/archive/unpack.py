"""Unpack an archive into a store, all or nothing, and read one through without
writing (verify).

Unpacking trusts nothing: the head must come first, of a known format, then
files.json; every other member must be a regular file named `objects/<sha256>` that
blobs.txt lists, once, with the size it gives; its bytes must hash to its name. Groups
of blobs are unpacked by one process per core (unpack_process.py), which need only the
head to start: this process reads files.json while they work. Blobs are staged in the
store's tmp/ (those the store has, linked) and only adopted, and entries published,
once the whole archive has checked out, so a bad archive leaves the store exactly as
it was.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from ccache_cli.archive import processes, unpack_process
from ccache_cli.archive.bloblist import BLOBS_NAME, BlobList
from ccache_cli.archive.frames import Frame, cpu_count
from ccache_cli.archive.head import Head, Progress
from ccache_cli.archive.signing import PublicKey
from ccache_cli.archive.tarstream import BLOB_PREFIX
from ccache_cli.errors import ArchiveError, BadInputError, CcacheError, ReportedError
from ccache_cli.store.bytecode_list import carried_blobs
from ccache_cli.store.manifest import Manifest
from ccache_cli.store.staging import link_present, staged_reader
from ccache_cli.store.store import Store


@dataclass(frozen=True)
class UnpackResult:
    added: tuple[Manifest, ...]  # entries new to the store
    kept: tuple[Manifest, ...]  # entries the store already had
    skipped: tuple[str, ...]  # ids left out by --compatible-only
    new_blobs: int
    new_bytes: int


def unpack(
    store: Store,
    source: BinaryIO,
    select: Callable[[Manifest], bool] = lambda _: True,
    on_progress: Progress = lambda _: None,
    trusted: Sequence[PublicKey] = (),
) -> UnpackResult:
    """Merge an archive's entries into `store`; all or nothing. Where keys are
    trusted, an archive none of them signed is refused before anything is written."""
    with _Workers(source_worker_count(source)) as workers:
        head = Head.read(source, on_progress, trusted)
        head.take_files_group()
        with store.staging() as staging:
            return _unpack(store, staging, workers, head, select)


def _unpack(
    store: Store, staging: Path, workers: _Workers, head: Head, select: Callable[[Manifest], bool]
) -> UnpackResult:
    sizes = head.blobs.sizes()
    names = list(sizes)
    objects = staging / "objects"
    # Blobs the store has are linked into staging, so that publishing needs nothing
    # another process could remove meanwhile (gc, rm); the rest are written.
    present = link_present(store, objects, sizes)
    for folder in sorted({sha256[:2] for sha256 in names if sha256 not in present}):
        (objects / folder).mkdir(parents=True, exist_ok=True)
    # Every blob is staged: which ones the chosen entries need is only known from
    # files.json, read meanwhile; the others are dropped below.
    write = bytes(sha256 not in present for sha256 in names) if present else b"\1" * len(names)
    workers.start({"objects": str(objects), "keep_going": False}, head.blobs, write)
    workers.send(head)
    wanted_entries, skipped = [], []
    for entry in head.read_files(sizes):
        (wanted_entries if select(entry) else skipped).append(entry)
    store.stage_entries(wanted_entries, staging)
    received, _ = _merge(workers.finish(), names)
    if missing := len(names) - len(received):
        raise ArchiveError(f"archive is truncated or incomplete: {missing} blob(s) listed in {BLOBS_NAME} are absent")
    # Every blob is staged now, the entries' bytecode lists too, which name their .pyc files.
    staged = staged_reader(objects)
    wanted_entries = [entry.reading(staged) for entry in wanted_entries]
    wanted_blobs = carried_blobs(wanted_entries, sizes, "archive")
    new_bytes = sum(sizes[sha256] for sha256 in wanted_blobs if sha256 not in present)
    if len(wanted_blobs) < len(names):  # some blobs were staged for no chosen entry
        for sha256 in set(names).difference(wanted_blobs):
            os.unlink(objects / sha256[:2] / sha256)
    published = store.publish(wanted_entries, staging, wanted_blobs)
    added_entries = [entry for entry, is_new in published if is_new]
    kept = [entry for entry, is_new in published if not is_new]
    return UnpackResult(
        tuple(added_entries), tuple(kept), tuple(e.id for e in skipped), len(wanted_blobs - present), new_bytes
    )


def check_blobs(source: BinaryIO, trusted: Sequence[PublicKey] = ()) -> tuple[list[Manifest], dict[str, str]]:
    """Read a whole archive as a stream, writing nothing: its entries, and what is
    wrong with each blob that is absent or does not hash to its name. An archive
    that is not well formed raises ArchiveError, one no trusted key signed TrustError."""
    with _Workers(source_worker_count(source)) as workers:
        head = Head.read(source, trusted=trusted)
        head.take_files_group()
        sizes = head.blobs.sizes()
        names = list(sizes)
        workers.start({"objects": None, "keep_going": True}, head.blobs, bytes(len(names)))
        workers.send(head)
        manifests = head.read_files(sizes)
        received, broken_blobs = _merge(workers.finish(), names)
    broken = {names[at]: "content does not match its hash" for at in broken_blobs}
    broken.update((names[at], "absent from the archive") for at in set(range(len(names))) - received)
    return manifests, broken


@contextlib.contextmanager
def open_source(path: str) -> Iterator[BinaryIO]:
    """An archive path, or `-` for standard input."""
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise BadInputError(f"cannot read archive {path}: {exc.strerror or exc}") from exc
    with handle:
        yield handle


def is_archive_path(text: str) -> bool:
    """Whether an ENTRY argument names an archive rather than an entry."""
    return text == "-" or text.endswith((".tar.zst", ".tzst")) or os.path.isfile(text)


def source_worker_count(source: IO[bytes]) -> int:
    try:
        size = os.fstat(source.fileno()).st_size
    except (OSError, ValueError):
        size = 0
    return processes.worker_count(size) if size else cpu_count()  # from a pipe, as many as the cores


class _Workers:
    """Processes running unpack_process.py, each fed whole groups of frames, group k to
    process k mod n, by a thread of its own (its writes wait while the process is busy)."""

    # Frames waiting, shared among the processes, besides those being written: work enough
    # for two to go on while this process reads files.json. Each holds at most FRAME_SIZE
    # (64 MB in all), about a third of that for caches like the benchmark's.
    _QUEUED = 32

    def __init__(self, count: int) -> None:
        self._processes = processes.start(unpack_process, count)
        self._queues: list[queue.Queue[bytes | Frame | None]] = [
            queue.Queue(max(1, self._QUEUED // count)) for _ in range(count)
        ]
        self._threads = [threading.Thread(target=self._feed, args=(i,), daemon=True) for i in range(count)]
        self._first_failed: int | None = None  # the process that stopped reading first

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        processes.stop(self._processes)
        for q, thread in zip(self._queues, self._threads):
            if thread.is_alive():  # stopped by an error: its writes now fail, and it drains its queue
                q.put(None)
                thread.join()
        processes.close_pipes(self._processes)

    def start(self, job: dict[str, Any], blobs: BlobList, write: bytes) -> None:
        """Send each process the job, with the archive's blobs and a flag per blob, whether to write it."""
        encoded = unpack_process.job_bytes(job, blobs, write)
        for q in self._queues:
            q.put(encoded)
        for thread in self._threads:
            thread.start()

    def send(self, head: Head) -> None:
        """Queue every group after the head's; all but the last few are sent on return."""
        group = -1
        frame = head.next_group
        while frame is not None and self._first_failed is None:
            if frame.starts_group:
                group += 1
            self._queues[group % len(self._queues)].put(frame)
            frame = head.frames.read()
        for q in self._queues:
            q.put(None)

    def finish(self) -> list[dict[str, Any]]:
        """The processes' reports, once they are done; the first failure first."""
        for thread in self._threads:
            thread.join()
        reports = [self._report(process) for process in self._processes]
        if self._first_failed is not None:
            reports.insert(0, reports.pop(self._first_failed))
        return reports

    def _feed(self, index: int) -> None:
        process, q = self._processes[index], self._queues[index]
        assert process.stdin is not None
        while (item := q.get()) is not None:
            if self._first_failed is not None:
                continue  # drop what is queued: the archive is being abandoned
            try:
                if isinstance(item, Frame):
                    process.stdin.write(item.sizes)
                    process.stdin.write(item.data)
                else:
                    process.stdin.write(item)
            except OSError:  # the process stopped reading: its report says why
                if self._first_failed is None:
                    self._first_failed = index
        with contextlib.suppress(OSError):
            process.stdin.close()

    def _report(self, process: processes.Process) -> dict[str, Any]:
        assert process.stdout is not None
        stdout = process.stdout.read()  # its stdin is closed: communicate() would flush it
        stderr = (
            process.stderr.read() if process.stderr is not None else b""
        )  # a traceback at most, which its pipe holds
        process.wait()
        try:
            return json.loads(stdout)  # type: ignore[no-any-return]
        except ValueError:
            tail = (stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
            raise CcacheError(f"an unpacking process failed (exit {process.returncode}): {tail}") from None


def _merge(reports: list[dict[str, Any]], names: list[str]) -> tuple[set[int], set[int]]:
    """The blobs the processes received, and those that failed their hash, by their
    places in `names` (blobs.txt's); raises the first process's error, or ArchiveError
    for what no single process could see."""
    for report in reports:
        if report["error"] is not None:
            raise ReportedError.from_json(report["error"]).raised()
    received: set[int] = set()
    for report in reports:
        received.update(report["received"])
    if len(received) < sum(len(report["received"]) for report in reports):  # a blob in two processes' groups
        counts = collections.Counter(number for report in reports for number in report["received"])
        twice = min(number for number, count in counts.items() if count > 1)
        raise ArchiveError(f"archive member '{BLOB_PREFIX}{names[twice]}' appears twice")
    ends = sum(1 for report in reports if report["ended"])
    if ends > 1:
        raise ArchiveError("archive has data past its end-of-archive marker; it is corrupt or was tampered with")
    if not ends:
        raise ArchiveError("archive is truncated: it has no end-of-archive marker")
    return received, {number for report in reports for number in report["broken"]}
