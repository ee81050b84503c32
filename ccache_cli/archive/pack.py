"""Pack entries as a deterministic, streamable `.tar.zst` archive.

This process writes the head (head.py); one process per core (pack_process.py) packs
groups of blobs, laid out from their sizes alone, and they write the groups into the
archive in turn. Headers are fixed (tarstream.py), so the same entries always give the
same bytes; the tar stream is compressed as independent zstd frames in groups of
whole members (frames.py), which any zstd decompressor reads as one stream. A file
output is written as a `.partial` beside it and renamed once whole.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ccache_cli.archive import pack_process, processes
from ccache_cli.archive.bloblist import BlobList
from ccache_cli.archive.frames import FrameWriter
from ccache_cli.archive.head import Progress, head_frames
from ccache_cli.archive.signing import Signer
from ccache_cli.archive.tarstream import end_marker, group_bounds, member_length
from ccache_cli.errors import BadInputError, CcacheError
from ccache_cli.store import durable, manifest, owners
from ccache_cli.store.manifest import Manifest
from ccache_cli.store.store import Store


@dataclass(frozen=True)
class PackResult:
    entries: tuple[Manifest, ...]
    blobs: int
    bytes: int  # uncompressed blob bytes


def pack(
    store: Store,
    entries: Sequence[Manifest],
    output: BinaryIO,
    level: int = 3,
    on_progress: Progress = lambda _: None,
    signer: Signer | None = None,
) -> PackResult:
    """Write `entries` and their blobs to `output`, a file or pipe, as one
    zstd-compressed tar stream, signed by `signer` if given. This process writes the
    head, one process per core (pack_process.py) each compresses some groups of blobs
    and writes them in turn."""
    blobs = manifest.blob_sizes(entries)
    names = sorted(blobs)
    sizes = [blobs[name] for name in names]
    total = sum(sizes)
    bounds = group_bounds(sizes)
    groups = [BlobList.of(names[start:end], sizes[start:end]) for start, end in bounds]
    output.flush()
    with _Packers(processes.worker_count(total), output.fileno(), str(store.root), level, groups) as packers:
        head, head_length = head_frames(entries, BlobList.listing(names, sizes), level, signer)  # while they compress
        output.write(head)
        output.flush()
        packers.pass_baton()
        for start, end in bounds:
            packers.wait_written()
            on_progress(sum(sizes[start:end]))
    FrameWriter(output, level).write(end_marker(head_length + sum(map(member_length, sizes))), starts_group=True)
    return PackResult(tuple(entries), len(blobs), total)


@contextlib.contextmanager
def open_output(path: str) -> Iterator[BinaryIO]:
    """An archive path written atomically (a `.partial` file beside it, renamed over it
    once whole: never a file that looks complete and is not), or `-` for stdout.
    `.partial` files of earlier writers on this host that were killed are removed first."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    if target.is_dir():
        raise BadInputError(f"{path} is a directory; give the archive's file name, such as {target / 'cache.tar.zst'}")
    folder = target.parent
    _remove_killed_partials(folder, target.name)
    partial = folder / f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.{socket.gethostname()}.partial"
    try:
        handle = open(partial, "xb")
    except OSError as exc:
        raise CcacheError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(partial, durable.shared_mode())
        os.replace(partial, target)
        durable.fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def _remove_killed_partials(folder: Path, name: str) -> None:
    """Remove the `.partial` files that killed writers on this host left beside archive `name`."""
    prefix, suffix = f".{name}.", f".{socket.gethostname()}.partial"
    with contextlib.suppress(OSError):
        for other in os.listdir(folder):
            pid = other[len(prefix) :].partition(".")[0]
            if other.startswith(prefix) and other.endswith(suffix) and pid.isdigit() and not owners.is_alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(folder / other)


class _Packers:
    """Processes running pack_process.py: group k is packed by process k mod n, sent
    all its groups at once by a thread of its own. They write to the archive in
    turn, passing a baton around a ring of pipes, from this process to the first."""

    def __init__(self, count: int, archive: int, store: str, level: int, groups: list[BlobList]) -> None:
        archive = os.dup(archive)  # above 2: a worker's stdin and stdout take 0 and 1
        rings = [os.pipe() for _ in range(count)]
        kept = (archive, *(fd for ring in rings for fd in ring))
        try:
            self._processes = processes.start(pack_process, count, kept)
        finally:
            for fd in kept:
                if fd != rings[0][1]:
                    os.close(fd)
        self._baton = rings[0][1]
        self._next = 0  # the process whose group is written next
        self._threads: list[threading.Thread] = []
        for at, process in enumerate(self._processes):
            job = {
                "store": store,
                "level": level,
                "archive": archive,
                "baton_in": rings[at][0],
                "baton_out": rings[(at + 1) % count][1],
            }
            messages = [
                pack_process.job_bytes(job),
                *map(pack_process.group_bytes, groups[at::count]),
                pack_process.group_bytes(BlobList.of([], [])),
            ]
            self._threads.append(threading.Thread(target=_send, args=(process, messages), daemon=True))
            self._threads[-1].start()

    def __enter__(self) -> _Packers:
        return self

    def __exit__(self, *exc: object) -> None:
        processes.stop(self._processes)
        os.close(self._baton)
        for thread in self._threads:
            thread.join()  # its writes fail now, if it had any left
        processes.close_pipes(self._processes)

    def pass_baton(self) -> None:
        """Let the first group be written: the head is."""
        os.write(self._baton, b"\1")

    def wait_written(self) -> None:
        """Wait until the next group is written to the archive."""
        process = self._processes[self._next % len(self._processes)]
        self._next += 1
        assert process.stdout is not None
        header = process.stdout.read(pack_process.REPORT.size)
        if len(header) < pack_process.REPORT.size:
            raise CcacheError(f"a packing process failed (exit {process.wait()})")
        kind, length = pack_process.REPORT.unpack(header)
        message = process.stdout.read(length).decode(errors="replace")
        if kind != pack_process.WRITTEN:
            raise CcacheError(message)


def _send(process: processes.Process, messages: list[bytes]) -> None:
    assert process.stdin is not None
    with contextlib.suppress(OSError):  # the process stopped: wait_written says why
        for message in messages:
            process.stdin.write(message)
        process.stdin.close()
