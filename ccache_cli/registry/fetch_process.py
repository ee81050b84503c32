"""Downloads a share of a pull's layers in a process of its own; a pull runs one per
core (downloads.py), forked from itself where it can (`serve`), else started as
`python -m ccache_cli.registry.fetch_process`.

Reads JSON lines from stdin: first the reference (and whether plain HTTP), the
staging folder for blobs and how many downloads to run at once; then one line per
layer, as the caller learns of it from the catalogs, until stdin ends: digest, media
type, size, the names of the blobs the layer holds run together, whether to write
each (a 1 or a 0), and each one's size.
Downloads them, a few at once: a raw blob layer straight into its file, through its
SHA-256, a pack into memory and then, on the main thread, through zstd and the
archive's tar reader; checks every blob against its name and writes the wanted ones,
read-only, as `<objects>/ab/<sha256>` (folders made as needed). Writes JSON lines
to stdout: `{"bytes": n}` as layers arrive, `{"done": 1}` as each is written (the
caller sends the next), then `{"verified": [...], "error": ...}`.

Why processes: as for unpacking (archive/unpack_process.py), tens of thousands of
small blobs mean as many open, write and close calls, and threads doing those wait on
each other for the GIL. So one thread per process unpacks, while the downloads, which
wait on the network, overlap in threads beside it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import hashlib
import io
import json
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import requests
import zstandard

from ccache_cli.archive.bloblist import BlobList
from ccache_cli.archive.tarstream import TarReader, blob_members, copy_member
from ccache_cli.errors import ArchiveError, CcacheError, RegistryError, ReportedError
from ccache_cli.store import durable, owners

from . import layout
from .client import Remote
from .layout import Layer

_PIECE = 1 << 20  # decompressed bytes read at a time
_CORRUPT_BLOB = "blob {} does not match its hash; the registry's copy is corrupt"
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL
Job = tuple[
    Layer, tuple[str, ...], tuple[int, ...], frozenset[str]
]  # a layer, its blobs and their sizes, those to write


def held_at_most(threads: int) -> int:
    """Layers a process holds at once, downloading `threads` at a time: those, one
    being unpacked and one downloaded waiting for it. Its caller sends no more."""
    return threads + 2


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    job = json.loads(stdin.readline())
    lock = threading.Lock()

    def report(line: dict[str, Any]) -> None:
        with lock:
            stdout.write(json.dumps(line).encode() + b"\n")
            stdout.flush()

    verified: set[str] = set()
    error = None
    try:
        remote = Remote(job["reference"], job["insecure"])
        fetcher = Fetcher(remote, Path(job["objects"]), lambda n: report({"bytes": n}), lambda: report({"done": 1}))
        verified = fetcher.verified

        def layers() -> Iterator[Job]:
            for line in stdin:
                digest, media_type, size, names, flags, sizes = json.loads(line)
                blobs = tuple(names[at : at + 64] for at in range(0, len(names), 64))
                wanted = frozenset(sha256 for sha256, flag in zip(blobs, flags) if flag == "1")
                yield Layer(media_type, digest, size), blobs, tuple(sizes), wanted

        try:
            fetcher.fetch_all(layers(), job["threads"])
        finally:
            fetcher.close()
    except CcacheError as exc:
        error = ReportedError.of(exc)
    except requests.RequestException as exc:  # an OSError too, but the network's, not the disk's
        error = ReportedError(RegistryError.__name__, f"lost the connection to the registry: {exc}")
    except OSError as exc:
        error = ReportedError(CcacheError.__name__, _write_failure(job["objects"], exc))
    except Exception as exc:  # a bug: said in the report, which the caller turns into one line
        error = ReportedError(CcacheError.__name__, f"a downloading process failed: {exc!r}")
    report({"verified": sorted(verified), "error": None if error is None else error.to_json()})


class Fetcher:
    """Downloads layers into a staging folder: several at once, on threads; packs are
    unpacked on the calling thread, one at a time."""

    def __init__(
        self, remote: Remote, objects: Path, on_progress: Callable[[int], None], on_done: Callable[[], None]
    ) -> None:
        self.remote = remote
        self.objects = objects
        self.on_progress = on_progress  # bytes downloaded
        self.on_done = on_done  # a layer written
        self.verified: set[str] = set()  # blobs written whole and hashing to their names
        self._folders: dict[str, int] = {}
        self._lock = threading.Lock()

    def fetch_all(self, jobs: Iterable[Job], threads: int) -> None:
        """Fetch every layer of `jobs`, an iterator that may wait for the next while the
        layers before it download (read on a thread of its own, so that the sender is
        never kept waiting); the first failure is raised once the downloads under way
        have ended (those not started are cancelled).

        A pack is downloaded whole (checked against its size) and then unpacked here:
        one thread makes a pack's thousands of small writes, instead of several taking
        turns at the GIL, while the others download. At most `held_at_most(threads)` layers are
        held, each no more than a pack (PACK_LIMIT decompressed; its layer no larger
        than zstd makes of that)."""
        events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

        def read() -> None:
            try:
                for job in jobs:
                    events.put(("job", job))
                events.put(("end", None))
            except BaseException as exc:  # a job that is not one, or stdin lost: the main thread raises it
                events.put(("failed", exc))

        threading.Thread(target=read, daemon=True).start()
        waiting: collections.deque[Job] = collections.deque()
        held = 0  # layers downloading, or downloaded and not yet unpacked
        ended = False
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            try:
                while not ended or waiting or held:
                    while waiting and held < held_at_most(threads):
                        job = waiting.popleft()
                        pool.submit(self._download, job).add_done_callback(functools.partial(_downloaded, events, job))
                        held += 1
                    kind, value = events.get()
                    if kind == "job":
                        waiting.append(value)
                    elif kind == "end":
                        ended = True
                    elif kind == "failed":
                        raise value
                    else:
                        job, future = value
                        data = future.result()
                        if data is not None:
                            self._unpack(job, data)
                        held -= 1
                        self.on_done()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    def _download(self, job: Job) -> bytes | None:
        """A pack's bytes; a raw blob layer is written as it arrives (None)."""
        layer, blobs, _, _ = job
        if layer.media_type != layout.BLOB_TYPE:
            # A pack's digest is not taken: what is kept of it is checked on its own
            # (its members against the catalog, each blob against its name), so hashing
            # the layer as well would only repeat that check over every byte.
            return b"".join(self._counted(self.remote.stream(layer.digest, layer.size, hashed=False)))
        chunks = self._counted(self.remote.stream(layer.digest, layer.size))
        (sha256,) = blobs

        def write_all(fd: int) -> None:
            for chunk in chunks:  # the digest checked is the blob's
                os.write(fd, chunk)

        self._write(sha256, write_all)
        return None

    def _unpack(self, job: Job, data: bytes) -> None:
        layer, blobs, sizes, wanted = job
        # Read in bounded pieces: a pack that decompresses to more than its tar of the
        # listed blobs is refused within a piece past its end, however it was made.
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_size=_PIECE, read_across_frames=True)
        tar = TarReader(lambda: reader.read(_PIECE))
        received = bytearray(len(blobs))
        try:
            for _, sha256, size in blob_members(tar, BlobList.of(list(blobs), list(sizes)), received):
                if size >= layout.BIG_BLOB:  # not what push packs, but read in pieces all the same
                    if sha256 in wanted:
                        self._write(sha256, functools.partial(_copy_checked, tar, sha256, size))
                    else:
                        _copy_checked(tar, sha256, size, None)
                    continue
                content = tar.read_member()
                if hashlib.sha256(content).hexdigest() != sha256:
                    raise ArchiveError(_CORRUPT_BLOB.format(sha256[:12]))
                if sha256 in wanted:
                    self._write(sha256, functools.partial(_write_bytes, content))
        except zstandard.ZstdError as exc:
            raise ArchiveError(f"{self.remote.reference}: pack {layer.digest[7:19]} is corrupt ({exc})") from exc
        if not tar.ended or not all(received):
            raise ArchiveError(f"{self.remote.reference}: pack {layer.digest[7:19]} lacks blobs its catalog names")

    def _write(self, sha256: str, fill: Callable[[int], object]) -> None:
        """Write a blob's file in staging with `fill(fd)`, whole or not at all (read-only
        from the start: the descriptor still writes); verified once `fill` returns."""
        folder = self._folder(sha256[:2])
        fd = os.open(sha256, _CREATE, 0o444, dir_fd=folder)
        try:
            fill(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(sha256, dir_fd=folder)
            raise
        os.close(fd)
        self.verified.add(sha256)

    def _folder(self, name: str) -> int:
        """A two-letter folder of staging, made if need be and opened once (each blob's
        open then looks up one name)."""
        fd = self._folders.get(name)
        if fd is None:
            with self._lock:
                fd = self._folders.get(name)
                if fd is None:
                    os.makedirs(self.objects / name, exist_ok=True)  # the other processes may make it too
                    fd = self._folders[name] = os.open(self.objects / name, os.O_RDONLY | os.O_DIRECTORY)
        return fd

    def close(self) -> None:
        for fd in self._folders.values():
            os.close(fd)
        self._folders.clear()

    def _counted(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.on_progress(len(chunk))
            yield chunk


def _downloaded(
    events: queue.SimpleQueue[tuple[str, Any]], job: Job, future: concurrent.futures.Future[bytes | None]
) -> None:
    events.put(("downloaded", (job, future)))


def _write_bytes(data: bytes, fd: int) -> None:
    os.write(fd, data)  # a regular file takes the whole buffer


def _copy_checked(tar: TarReader, sha256: str, size: int, fd: int | None) -> None:
    """Read a pack's member (into `fd`, if given), checking it hashes to its name."""
    if copy_member(tar, sha256, size, fd).hexdigest() != sha256:
        raise ArchiveError(_CORRUPT_BLOB.format(sha256[:12]))


def _write_failure(objects: str, exc: OSError) -> str:
    """Why the blobs could not be written to the staging folder `objects`, in one line."""
    if durable.is_disk_full(exc):
        return durable.disk_full_message(f"store {Path(objects).parents[2]}")
    return f"cannot write blobs to {objects}: {exc.strerror or exc}"


if __name__ == "__main__":
    owners.die_with_parent()
    serve(sys.stdin.buffer, sys.stdout.buffer)
    os._exit(0)  # the report is out; the thread reading stdin may still wait in a read
