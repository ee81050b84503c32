"""Pack and unpack entries as deterministic, streamable `.tar.zst` archives.

Members, in this order: `index.json` (format version, every manifest without its
file list, artifact counts per entry: all that `inspect ARCHIVE` reads, small whatever
the archive's size), `files.json` (each entry's files, every blob's size), then
`objects/<sha256>` once per blob, sorted. Headers are fixed (tarstream.py), so the same
entries always give the same bytes. The tar stream is compressed as independent zstd
frames in groups of whole members (frames.py); any zstd decompressor reads it as one
stream.

Unpacking trusts nothing: index.json must come first, of a known format, then
files.json, both before the first group of blobs; every other member must be a
regular file named `objects/<sha256>` that files.json lists, once, with the size it
gives; its bytes must hash to its name. Groups are unpacked by one process per core
(unpack_worker.py). Blobs are staged in the store's tmp/ and only adopted, and
entries published, once the whole archive has checked out, so a bad archive leaves
the store exactly as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from .artifacts import KindSummary
from .errors import ArchiveError, BadInputError, CcacheError
from .frames import Frame, FrameReader, FrameWriter, cpu_count
from .inspect import kinds_of
from .store import Entry, Store
from .tarstream import BLOB_PREFIX, REGULAR, SHA256_HEX, BlobList, TarReader, TarWriter
from .unpack_worker import job_bytes

ARCHIVE_FORMAT = 2  # 2: the framed zstd layout of frames.py
INDEX_NAME = "index.json"
FILES_NAME = "files.json"
_INDEX_LIMIT = 256 << 20  # an index past this is not one this tool wrote
_BYTES_PER_WORKER = 1 << 20  # of archive: below this, one more unpacking process costs more than it saves

Progress = Callable[[int], None]  # called with a count of bytes just handled


@dataclass(frozen=True)
class PackResult:
    entries: tuple[Entry, ...]
    blobs: int
    bytes: int  # uncompressed blob bytes


@dataclass(frozen=True)
class UnpackResult:
    added: tuple[Entry, ...]  # entries new to the store
    kept: tuple[Entry, ...]  # entries the store already had
    skipped: tuple[str, ...]  # ids left out by --compatible-only
    new_blobs: int
    new_bytes: int


def pack(
    store: Store,
    entries: Sequence[Entry],
    output: BinaryIO,
    level: int = 3,
    on_progress: Progress = lambda _: None,
) -> PackResult:
    """Write `entries` and their blobs to `output` as one zstd-compressed tar stream."""
    blobs = blob_sizes(entries)
    ordered = sorted(entries, key=lambda entry: entry.id)
    # The first member holds what `inspect ARCHIVE` shows, small whatever the archive
    # size: manifests without their file lists, and artifact counts per entry.
    index = {
        "format": ARCHIVE_FORMAT,
        "entries": [{k: v for k, v in entry.manifest.items() if k != "files"} for entry in ordered],
        "artifacts": {
            entry.id: [[k.kind, k.count, k.bytes] for k in kinds_of(entry)] for entry in ordered
        },
    }
    files = {
        "blobs": dict(sorted(blobs.items())),
        "files": {entry.id: entry.manifest["files"] for entry in ordered},
    }
    frames = FrameWriter(output, level)
    try:
        tar = TarWriter(frames)
        for name, content in ((INDEX_NAME, index), (FILES_NAME, files)):
            data = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
            tar.add(name, size=len(data), data=data)
        tar.cut()  # the head (what inspect reads) is a group of its own
        with store.blob_opener() as open_blob:
            for sha256, size in files["blobs"].items():
                try:
                    fd = open_blob(sha256)
                except FileNotFoundError:
                    raise CcacheError(f"blob {sha256[:12]} is missing from store {store.root}; the store is damaged") from None
                try:
                    tar.add(f"{BLOB_PREFIX}{sha256}", size=size, fd=fd)
                finally:
                    os.close(fd)
                on_progress(size)
        tar.close()
    finally:
        frames.close()
    return PackResult(tuple(entries), len(blobs), sum(blobs.values()))


def blob_sizes(entries: Sequence[Entry]) -> dict[str, int]:
    """Each blob of `entries` once, with its size: what pack writes."""
    # From the manifests' own dicts: entry.files would build an object per file first.
    return {ref["sha256"]: ref["size"] for entry in entries for ref in entry.manifest["files"].values()}


def read_index(source: BinaryIO) -> dict[str, Any]:
    """The index of an archive, reading only as far as its first member."""
    return _read_index(_Head(FrameReader(source)).tar)


def unpack(
    store: Store,
    source: BinaryIO,
    select: Callable[[Entry], bool] = lambda _: True,
    on_progress: Progress = lambda _: None,
) -> UnpackResult:
    """Merge an archive's entries into `store`; all or nothing."""
    with store.staging() as staging, _Workers(_worker_count(source)) as workers:
        head, manifests, blobs = _Head.read(source, on_progress)
        wanted_entries, skipped = [], []
        for manifest in manifests:
            entry = Entry(manifest["id"], manifest)
            (wanted_entries if select(entry) else skipped).append(entry)
        # From the manifests, not entry.files: its objects would be held while the processes run.
        wanted_blobs = {ref["sha256"] for entry in wanted_entries for ref in entry.manifest["files"].values()}
        wanted_blobs -= store.blobs_present(wanted_blobs)
        objects = staging / "objects"
        for folder in sorted({sha256[:2] for sha256 in wanted_blobs}):
            (objects / folder).mkdir(parents=True)
        order = workers.start({"objects": str(objects), "keep_going": False}, blobs, wanted_blobs)
        reports = workers.run(head)
        received, _ = _merge(reports, order)
        if missing := set(blobs) - received:
            raise ArchiveError(f"archive is truncated or incomplete: {len(missing)} blob(s) listed in {FILES_NAME} are absent")
        published = store.publish(wanted_entries, staging, wanted_blobs)
    added_entries = [entry for entry, is_new in published if is_new]
    kept = [entry for entry, is_new in published if not is_new]
    new_bytes = sum(blobs[sha256] for sha256 in wanted_blobs)
    return UnpackResult(tuple(added_entries), tuple(kept), tuple(e.id for e in skipped), len(wanted_blobs), new_bytes)


def check_blobs(source: BinaryIO) -> tuple[list[Entry], dict[str, str]]:
    """Read a whole archive as a stream, writing nothing: its entries, and what is
    wrong with each blob that is absent or does not hash to its name. An archive
    that is not well formed raises ArchiveError."""
    with _Workers(_worker_count(source)) as workers:
        head, manifests, blobs = _Head.read(source)
        order = workers.start({"objects": None, "keep_going": True}, blobs, set())
        received, broken_blobs = _merge(workers.run(head), order)
    broken = {sha256: "content does not match its hash" for sha256 in broken_blobs}
    broken.update((sha256, "absent from the archive") for sha256 in set(blobs) - received)
    return [Entry(manifest["id"], manifest) for manifest in manifests], broken


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


@contextlib.contextmanager
def open_output(path: str) -> Iterator[BinaryIO]:
    """An archive path written atomically (temp file, then rename), or `-` for stdout."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=f".{target.name}.")
    except OSError as exc:
        raise CcacheError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def is_archive_path(text: str) -> bool:
    """Whether an ENTRY argument names an archive rather than an entry."""
    return text == "-" or text.endswith((".tar.zst", ".tzst")) or os.path.isfile(text)


class _Head:
    """The archive's first members (index.json and files.json), read in this process.
    They must end where a group starts: that frame is kept for the workers."""

    def __init__(self, frames: FrameReader) -> None:
        self.frames = frames
        self.next_group: Frame | None = None
        self._at_end = False
        self.tar = TarReader(self._next_chunk)

    @classmethod
    def read(cls, source: IO[bytes], on_progress: Progress = lambda _: None) -> tuple[_Head, list[dict[str, Any]], dict[str, int]]:
        """The head of an archive, read whole and checked: its manifests and blobs."""
        head = cls(FrameReader(source, on_progress))
        manifests, blobs = _read_files(head.tar, _read_index(head.tar))
        head._check_ended()
        return head, manifests, blobs

    def _check_ended(self) -> None:
        self._at_end = True
        if self.tar.next() is not None or self.tar.ended:
            raise ArchiveError(f"archive has more than {INDEX_NAME} and {FILES_NAME} before its first blob group; "
                               "it was not written by `ccache pack`")

    def _next_chunk(self) -> bytes:
        if self.next_group is not None:
            return b""
        frame = self.frames.read()
        if frame is None:
            return b""
        if frame.starts_group and self._at_end:
            self.next_group = frame
            return b""
        return frame.decompress()


def _worker_count(source: IO[bytes]) -> int:
    try:
        size = os.fstat(source.fileno()).st_size
    except (OSError, ValueError):
        size = 0
    if not size:  # a pipe
        return cpu_count()
    return max(1, min(cpu_count(), size // _BYTES_PER_WORKER))


class _Workers:
    """Processes running unpack_worker.py, each fed whole groups of frames, group k to
    process k mod n, by a thread of its own (its writes wait while the process is busy)."""

    _QUEUED = 1  # frames waiting per process, besides the one being written: each up to FRAME_SIZE

    def __init__(self, count: int) -> None:
        self._processes = [
            subprocess.Popen([sys.executable, "-m", "ccache_cli.core.unpack_worker"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(count)
        ]
        self._queues: list[queue.Queue[bytes | Frame | None]] = [queue.Queue(self._QUEUED) for _ in range(count)]
        self._threads = [threading.Thread(target=self._feed, args=(i,), daemon=True) for i in range(count)]
        self._first_failed: int | None = None  # the process that stopped reading first

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for q, thread in zip(self._queues, self._threads):
            if thread.is_alive():  # stopped by an error: its writes now fail, and it drains its queue
                q.put(None)
                thread.join()
        for process in self._processes:
            for pipe in (process.stdin, process.stdout, process.stderr):
                with contextlib.suppress(OSError):
                    pipe.close()  # type: ignore[union-attr]

    def start(self, job: dict[str, Any], blobs: dict[str, int], write: set[str]) -> list[str]:
        """Send each process the job, with files.json's `blobs` and which of them to
        write; returns the blobs in the order the reports name them by (sorted)."""
        order = sorted(blobs)
        encoded = job_bytes(job, BlobList.of(order, blobs), bytes(sha256 in write for sha256 in order))
        for q in self._queues:
            q.put(encoded)
        for thread in self._threads:
            thread.start()
        return order

    def run(self, head: _Head) -> list[dict[str, Any]]:
        """Send every group after the head; the processes' reports, the first failure first."""
        group = -1
        frame = head.next_group
        while frame is not None and self._first_failed is None:
            if frame.starts_group:
                group += 1
            self._queues[group % len(self._queues)].put(frame)
            frame = head.frames.read()
        for q in self._queues:
            q.put(None)
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

    def _report(self, process: subprocess.Popen[bytes]) -> dict[str, Any]:
        assert process.stdout is not None and process.stderr is not None
        stdout = process.stdout.read()  # its stdin is closed: communicate() would flush it
        stderr = process.stderr.read()  # a traceback at most, which its pipe holds
        process.wait()
        try:
            return json.loads(stdout)  # type: ignore[no-any-return]
        except ValueError:
            tail = (stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
            raise CcacheError(f"an unpacking process failed (exit {process.returncode}): {tail}") from None


def _merge(reports: list[dict[str, Any]], order: list[str]) -> tuple[set[str], set[str]]:
    """The blobs the processes received, and those that failed their hash (reported by
    their place in `order`); raises the first process's error, or ArchiveError for
    what no single process could see."""
    for report in reports:
        if report["error"] is not None:
            kind = ArchiveError if report["error"]["bad_input"] else CcacheError
            raise kind(report["error"]["message"])
    received: set[str] = set()
    for report in reports:
        for number in report["received"]:
            if order[number] in received:
                raise ArchiveError(f"archive member '{BLOB_PREFIX}{order[number]}' appears twice")
            received.add(order[number])
    ends = sum(1 for report in reports if report["ended"])
    if ends > 1:
        raise ArchiveError("archive has data past its end-of-archive marker; it is corrupt or was tampered with")
    if not ends:
        raise ArchiveError("archive is truncated: it has no end-of-archive marker")
    return received, {order[number] for report in reports for number in report["broken"]}


def _read_json_member(tar: TarReader, name: str) -> Any:
    member = tar.next()
    if member is None or member.name != name or member.type not in REGULAR:
        where = "start with" if name == INDEX_NAME else f"have {name} after"
        raise ArchiveError(f"archive does not {where} {INDEX_NAME}; it was not written by `ccache pack`")
    if member.size > _INDEX_LIMIT:
        raise ArchiveError(f"{name} declares {member.size} bytes, more than any this tool writes")
    try:
        return json.loads(bytes(tar.read_exactly(member.size, f"its {name}")))
    except ValueError as exc:
        raise ArchiveError(f"{name} is malformed ({exc})") from exc


def _read_index(tar: TarReader) -> dict[str, Any]:
    """The first member: format, manifests without file lists, artifact counts."""
    index = _read_json_member(tar, INDEX_NAME)
    version = index.get("format") if isinstance(index, dict) else None
    if version != ARCHIVE_FORMAT:
        raise ArchiveError(
            f"archive format {version!r} is not supported (this ccache-cli reads format {ARCHIVE_FORMAT}); upgrade ccache-cli"
        )
    try:
        index["artifacts"] = {
            manifest["id"]: [KindSummary(str(kind), int(count), int(size)) for kind, count, size in index["artifacts"][manifest["id"]]]
            for manifest in index["entries"]
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArchiveError(f"{INDEX_NAME} is malformed ({exc})") from exc
    return index


def _read_files(tar: TarReader, index: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The second member: each entry's file list and every blob's size. Returns the
    complete manifests and the blobs, checked against each other."""
    files = _read_json_member(tar, FILES_NAME)
    try:
        blobs = {str(sha): int(size) for sha, size in files["blobs"].items()}
        for sha256, size in blobs.items():
            if not SHA256_HEX.fullmatch(sha256) or not 0 <= size < 1 << 63:
                raise ArchiveError(f"{FILES_NAME} is malformed (blob {sha256[:70]!r} of {size} bytes)")
        manifests = [{**manifest, "files": files["files"][manifest["id"]]} for manifest in index["entries"]]
        for manifest in manifests:
            for ref in manifest["files"].values():
                if blobs.get(ref["sha256"]) != ref["size"]:
                    raise ArchiveError(f"{FILES_NAME} is inconsistent: entry {manifest['id'][:12]} names a blob it does not list")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArchiveError(f"{FILES_NAME} is malformed ({exc})") from exc
    return manifests, blobs
