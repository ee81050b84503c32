"""Pack and unpack entries as deterministic, streamable `.tar.zst` archives.

Members, in this order: `index.json` (format version, every manifest without its
file list, artifact counts per entry: all that `inspect ARCHIVE` reads, small whatever
the archive's size) and `blobs.txt` (each blob's sha256 and size, a line each, sorted),
the head; `files.json` (each entry's files) in a group of its own; then
`objects/<sha256>` once per blob, sorted. Headers are fixed (tarstream.py), so the same
entries always give the same bytes. The tar stream is compressed as independent zstd
frames in groups of whole members (frames.py); any zstd decompressor reads it as one
stream. Groups are laid out from the blobs' sizes alone and packed by one process per
core (pack_worker.py), which write them into the archive in turn.

Unpacking trusts nothing: the head must come first, of a known format, then files.json;
every other member must be a regular file named `objects/<sha256>` that blobs.txt
lists, once, with the size it gives; its bytes must hash to its name. Groups of blobs
are unpacked by one process per core (unpack_worker.py), which need only the head to
start: this process reads files.json while they work. Blobs are staged in the store's
tmp/ and only adopted, and entries published, once the whole archive has checked out,
so a bad archive leaves the store exactly as it was.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import queue
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from ccache_cli.archive import pack_process as pack_worker, processes, signing, unpack_process as unpack_worker
from ccache_cli.store import durable, manifest, owners
from ccache_cli.store import artifacts
from ccache_cli.store.artifacts import KindSummary
from ccache_cli.errors import ArchiveError, BadInputError, CcacheError
from ccache_cli.archive.frames import FRAME_SIZE, Frame, FrameReader, FrameWriter, cpu_count
from ccache_cli.store.hashing import hash_json
from ccache_cli.archive.signing import SIGNATURE_LIMIT, SIGNATURE_NAME, PublicKey, Signer
from ccache_cli.store.store import Entry, Store
from ccache_cli.archive.tarstream import (BLOB_PREFIX, BLOBS_NAME, REGULAR, BlobList, Member, TarReader, TarWriter, end_marker,
                        group_bounds, member_length)

# 2: the framed zstd layout of frames.py; 3: blobs.txt in the head; 4: each manifest's
# digest in the index, and the signature
ARCHIVE_FORMAT = 4
INDEX_NAME = "index.json"
FILES_NAME = "files.json"
_INDEX_LIMIT = 256 << 20  # an index, blob list or files.json past this is not one this tool wrote
_BYTES_PER_WORKER = 1 << 20  # below this, one more process costs more than it saves

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
    signer: Signer | None = None,
) -> PackResult:
    """Write `entries` and their blobs to `output`, a file or pipe, as one
    zstd-compressed tar stream, signed by `signer` if given. This process writes the
    head, one process per core (pack_worker.py) each compresses some groups of blobs
    and writes them in turn."""
    blobs = blob_sizes(entries)
    names = sorted(blobs)
    sizes = [blobs[name] for name in names]
    total = sum(sizes)
    bounds = group_bounds(sizes)
    groups = [BlobList.of(names[start:end], sizes[start:end]) for start, end in bounds]
    output.flush()
    with _Packers(_worker_count(total), output.fileno(), str(store.root), level, groups) as packers:
        head, head_length = _head_frames(entries, BlobList.listing(names, sizes), level, signer)  # while they compress
        output.write(head)
        output.flush()
        packers.pass_baton()
        for start, end in bounds:
            packers.wait_written()
            on_progress(sum(sizes[start:end]))
    FrameWriter(output, level).write(end_marker(head_length + sum(map(member_length, sizes))), starts_group=True)
    return PackResult(tuple(entries), len(blobs), total)


def _head_frames(entries: Sequence[Entry], listing: bytes, level: int, signer: Signer | None) -> tuple[bytes, int]:
    """The archive's first groups, as frames: index.json, blobs.txt and the signature,
    then files.json; and their length in the tar stream."""
    ordered = sorted(entries, key=lambda entry: entry.id)
    # The first member holds what `inspect ARCHIVE` shows, small whatever the archive
    # size: manifests without their file lists, artifact counts per entry, and the
    # digest of each whole manifest, which covers its file list in files.json.
    index = {
        "format": ARCHIVE_FORMAT,
        "entries": [{k: v for k, v in entry.manifest.items() if k != "files"} for entry in ordered],
        "artifacts": {entry.id: [[k.kind, k.count, k.bytes] for k in artifacts.kinds_of(entry.manifest)] for entry in ordered},
        "digests": {entry.id: hash_json(dict(entry.manifest)) for entry in ordered},
    }
    index_bytes = _json_bytes(index)
    members = [(INDEX_NAME, index_bytes), (BLOBS_NAME, listing)]
    if signer is not None:
        members.append((SIGNATURE_NAME, signer.signature(ARCHIVE_FORMAT, index_bytes, listing)))
    out = io.BytesIO()
    tar = TarWriter(FrameWriter(out, level))
    for name, data in members:
        tar.add(name, size=len(data), data=data)
    tar.cut()  # the head is a group of its own: what inspect reads, and all the unpacking processes need
    data = _json_bytes({"files": {entry.id: entry.manifest["files"] for entry in ordered}})
    tar.add(FILES_NAME, size=len(data), data=data)
    tar.cut()
    return out.getvalue(), tar.written


def _json_bytes(content: dict[str, Any]) -> bytes:
    return json.dumps(content, sort_keys=True, separators=(",", ":")).encode()


def blob_sizes(entries: Sequence[Entry]) -> dict[str, int]:
    """Each blob of `entries` once, with its size: what pack writes."""
    # From the manifests' own dicts: entry.files would build an object per file first.
    return {ref["sha256"]: ref["size"] for entry in entries for ref in entry.manifest["files"].values()}


def read_index(source: BinaryIO, trusted: Sequence[PublicKey] = ()) -> dict[str, Any]:
    """The index of an archive, checked against the signature where keys are trusted;
    reading only as far as its first member where none are."""
    if trusted:
        return _Head.read(source, trusted=trusted).index
    return _parse_index(_read_member(_Head(FrameReader(source)).tar, INDEX_NAME))


def unpack(
    store: Store,
    source: BinaryIO,
    select: Callable[[Entry], bool] = lambda _: True,
    on_progress: Progress = lambda _: None,
    trusted: Sequence[PublicKey] = (),
) -> UnpackResult:
    """Merge an archive's entries into `store`; all or nothing. Where keys are
    trusted, an archive none of them signed is refused before anything is written."""
    with _Workers(_source_worker_count(source)) as workers:
        head = _Head.read(source, on_progress, trusted)
        head.take_files_group()
        with store.staging() as staging:
            return _unpack(store, staging, workers, head, select)


def _unpack(store: Store, staging: Path, workers: _Workers, head: _Head, select: Callable[[Entry], bool]) -> UnpackResult:
    sizes = head.blobs.sizes()
    names = list(sizes)
    objects = staging / "objects"
    # Blobs the store has are linked into staging, so that publishing needs nothing
    # another process could remove meanwhile (gc, rm); the rest are written.
    present = _link_present(store, objects, names)
    for folder in sorted({sha256[:2] for sha256 in names if sha256 not in present}):
        (objects / folder).mkdir(parents=True, exist_ok=True)
    # Every blob is staged: which ones the chosen entries need is only known from
    # files.json, read meanwhile; the others are dropped below.
    write = bytes(sha256 not in present for sha256 in names) if present else b"\1" * len(names)
    workers.start({"objects": str(objects), "keep_going": False}, head.blobs, write)
    workers.send(head)
    wanted_entries, skipped = [], []
    for manifest in head.read_files(sizes):
        entry = Entry(manifest["id"], manifest)
        (wanted_entries if select(entry) else skipped).append(entry)
    # From the manifests, not entry.files: its objects would be held meanwhile.
    wanted_blobs = {ref["sha256"] for entry in wanted_entries for ref in entry.manifest["files"].values()}
    new_bytes = sum(sizes[sha256] for sha256 in wanted_blobs if sha256 not in present)
    store.stage_entries(wanted_entries, staging)
    received, _ = _merge(workers.finish(), names)
    if missing := len(names) - len(received):
        raise ArchiveError(f"archive is truncated or incomplete: {missing} blob(s) listed in {BLOBS_NAME} are absent")
    if len(wanted_blobs) < len(names):  # some blobs were staged for no chosen entry
        for sha256 in set(names).difference(wanted_blobs):
            os.unlink(objects / sha256[:2] / sha256)
    published = store.publish(wanted_entries, staging, wanted_blobs)
    added_entries = [entry for entry, is_new in published if is_new]
    kept = [entry for entry, is_new in published if not is_new]
    return UnpackResult(tuple(added_entries), tuple(kept), tuple(e.id for e in skipped),
                        len(wanted_blobs - present), new_bytes)


def _link_present(store: Store, objects: Path, names: list[str]) -> set[str]:
    """Hard-link into `objects` the blobs of `names` the store holds; the ones linked.
    One that cannot be linked (gone meanwhile, another user's file) is written instead."""
    linked: set[str] = set()
    folders: set[str] = set()
    for sha256 in store.blobs_present(names):
        try:
            if sha256[:2] not in folders:
                (objects / sha256[:2]).mkdir(parents=True, exist_ok=True)
                folders.add(sha256[:2])
            os.link(store.blob_file(sha256), objects / sha256[:2] / sha256)
        except OSError:
            continue
        linked.add(sha256)
    return linked


def check_blobs(source: BinaryIO, trusted: Sequence[PublicKey] = ()) -> tuple[list[Entry], dict[str, str]]:
    """Read a whole archive as a stream, writing nothing: its entries, and what is
    wrong with each blob that is absent or does not hash to its name. An archive
    that is not well formed raises ArchiveError, one no trusted key signed TrustError."""
    with _Workers(_source_worker_count(source)) as workers:
        head = _Head.read(source, trusted=trusted)
        head.take_files_group()
        sizes = head.blobs.sizes()
        names = list(sizes)
        workers.start({"objects": None, "keep_going": True}, head.blobs, bytes(len(names)))
        workers.send(head)
        manifests = head.read_files(sizes)
        received, broken_blobs = _merge(workers.finish(), names)
    broken = {names[at]: "content does not match its hash" for at in broken_blobs}
    broken.update((names[at], "absent from the archive") for at in set(range(len(names))) - received)
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
            pid = other[len(prefix):].partition(".")[0]
            if other.startswith(prefix) and other.endswith(suffix) and pid.isdigit() and not owners.is_alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(folder / other)


def is_archive_path(text: str) -> bool:
    """Whether an ENTRY argument names an archive rather than an entry."""
    return text == "-" or text.endswith((".tar.zst", ".tzst")) or os.path.isfile(text)


class _Head:
    """The archive's head (index.json, blobs.txt and the signature, if any), read and
    checked in this process, and files.json's group, kept to be read while the blobs
    unpack. Each must end where a group starts: `next_group` is the first frame of the
    blobs once `take_files_group` has run."""

    index: dict[str, Any]  # index.json, checked
    index_bytes: bytes
    blobs: BlobList  # blobs.txt, checked
    blobs_bytes: bytes
    signature: bytes | None  # signature.json

    def __init__(self, frames: FrameReader) -> None:
        self.frames = frames
        self.next_group: Frame | None = None
        self._in_head = True
        self._files_group: list[Frame] = []
        self.tar = TarReader(self._next_chunk)

    @classmethod
    def read(cls, source: IO[bytes], on_progress: Progress = lambda _: None,
             trusted: Sequence[PublicKey] = ()) -> _Head:
        """The head, checked; where keys are trusted, signed by one of them (TrustError if not)."""
        head = cls(FrameReader(source, on_progress))
        head.index_bytes = _read_member(head.tar, INDEX_NAME)
        head.blobs_bytes = _read_member(head.tar, BLOBS_NAME)
        head._in_head = False
        member = head.tar.next()
        head.signature = None
        if member is not None and member.name == SIGNATURE_NAME:
            if member.type not in REGULAR or member.size > SIGNATURE_LIMIT:
                raise ArchiveError(f"archive's {SIGNATURE_NAME} is not one this tool writes")
            head.signature = head.tar.read_exactly(member.size, f"its {SIGNATURE_NAME}").tobytes()
            member = head.tar.next()
        if member is not None or head.tar.ended:
            raise ArchiveError(f"archive has more than {INDEX_NAME}, {BLOBS_NAME} and {SIGNATURE_NAME} in their group; "
                               "it was not written by `ccache pack`")
        # Checked before any of it is parsed: what no trusted key signed is not looked at.
        signing.check(head.signature, _format_of(head.index_bytes), head.index_bytes, head.blobs_bytes, trusted)
        head.index = _parse_index(head.index_bytes)
        head.blobs = BlobList.parse(head.blobs_bytes)
        return head

    def take_files_group(self) -> None:
        """Take files.json's group, for `read_files`: the next group is then the first of the blobs."""
        self._files_group = self._take_group()

    def read_files(self, sizes: dict[str, int]) -> list[dict[str, Any]]:
        """files.json's group, read and checked against the index and `sizes` (blobs.txt's):
        the complete manifests, each checked whole and against its digest in the index."""
        chunks = (frame.decompress() for frame in self._files_group)
        tar = TarReader(lambda: next(chunks, b""))
        files = _read_json_member(tar, FILES_NAME)
        _check_group_ended(tar, FILES_NAME)
        return _complete_manifests(self.index, files, sizes)

    def _take_group(self) -> list[Frame]:
        """The frames of the group that starts at `next_group`, which then moves on."""
        group: list[Frame] = []
        size = 0
        frame = self.next_group
        while frame is not None and (not group or not frame.starts_group):
            size += frame.size
            if size > _INDEX_LIMIT + FRAME_SIZE:
                raise ArchiveError(f"{FILES_NAME} is larger than any this tool writes; the archive was not written by `ccache pack`")
            group.append(frame)
            frame = self.frames.read()
        self.next_group = frame
        return group

    def _next_chunk(self) -> bytes:
        if self.next_group is not None:
            return b""
        frame = self.frames.read()
        if frame is None:
            return b""
        if frame.starts_group and not self._in_head:
            self.next_group = frame
            return b""
        return frame.decompress()


def _check_group_ended(tar: TarReader, what: str) -> None:
    if tar.next() is not None or tar.ended:
        raise ArchiveError(f"archive has more than {what} in their group; it was not written by `ccache pack`")


def _source_worker_count(source: IO[bytes]) -> int:
    try:
        size = os.fstat(source.fileno()).st_size
    except (OSError, ValueError):
        size = 0
    return _worker_count(size) if size else cpu_count()  # from a pipe, as many as the cores


def _worker_count(size: int) -> int:
    """Processes for `size` bytes of archive or blobs."""
    return max(1, min(cpu_count(), size // _BYTES_PER_WORKER))


class _Workers:
    """Processes running unpack_worker.py, each fed whole groups of frames, group k to
    process k mod n, by a thread of its own (its writes wait while the process is busy)."""

    # Frames waiting, shared among the processes, besides those being written: work enough
    # for two to go on while this process reads files.json. Each holds at most FRAME_SIZE
    # (64 MB in all), about a third of that for caches like the benchmark's.
    _QUEUED = 32

    def __init__(self, count: int) -> None:
        self._processes = processes.start(unpack_worker, count)
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
        encoded = unpack_worker.job_bytes(job, blobs, write)
        for q in self._queues:
            q.put(encoded)
        for thread in self._threads:
            thread.start()

    def send(self, head: _Head) -> None:
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
        stderr = process.stderr.read() if process.stderr is not None else b""  # a traceback at most, which its pipe holds
        process.wait()
        try:
            return json.loads(stdout)  # type: ignore[no-any-return]
        except ValueError:
            tail = (stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
            raise CcacheError(f"an unpacking process failed (exit {process.returncode}): {tail}") from None


class _Packers:
    """Processes running pack_worker.py: group k is packed by process k mod n, sent
    all its groups at once by a thread of its own. They write to the archive in
    turn, passing a baton around a ring of pipes, from this process to the first."""

    def __init__(self, count: int, archive: int, store: str, level: int, groups: list[BlobList]) -> None:
        archive = os.dup(archive)  # above 2: a worker's stdin and stdout take 0 and 1
        rings = [os.pipe() for _ in range(count)]
        kept = (archive, *(fd for ring in rings for fd in ring))
        try:
            self._processes = processes.start(pack_worker, count, kept)
        finally:
            for fd in kept:
                if fd != rings[0][1]:
                    os.close(fd)
        self._baton = rings[0][1]
        self._next = 0  # the process whose group is written next
        self._threads: list[threading.Thread] = []
        for at, process in enumerate(self._processes):
            job = {"store": store, "level": level, "archive": archive,
                   "baton_in": rings[at][0], "baton_out": rings[(at + 1) % count][1]}
            messages = [pack_worker.job_bytes(job), *map(pack_worker.group_bytes, groups[at::count]),
                        pack_worker.group_bytes(BlobList.of([], []))]
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
        header = process.stdout.read(pack_worker.REPORT.size)
        if len(header) < pack_worker.REPORT.size:
            raise CcacheError(f"a packing process failed (exit {process.wait()})")
        kind, length = pack_worker.REPORT.unpack(header)
        message = process.stdout.read(length).decode(errors="replace")
        if kind != pack_worker.WRITTEN:
            raise CcacheError(message)


def _send(process: processes.Process, messages: list[bytes]) -> None:
    assert process.stdin is not None
    with contextlib.suppress(OSError):  # the process stopped: wait_written says why
        for message in messages:
            process.stdin.write(message)
        process.stdin.close()


def _merge(reports: list[dict[str, Any]], names: list[str]) -> tuple[set[int], set[int]]:
    """The blobs the processes received, and those that failed their hash, by their
    places in `names` (blobs.txt's); raises the first process's error, or ArchiveError
    for what no single process could see."""
    for report in reports:
        if report["error"] is not None:
            kind = ArchiveError if report["error"]["bad_input"] else CcacheError
            raise kind(report["error"]["message"])
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


def _expect_member(tar: TarReader, name: str) -> Member:
    member = tar.next()
    if member is None or member.name != name or member.type not in REGULAR:
        where = f"start with {name}" if name == INDEX_NAME else f"have {name} where it belongs"
        raise ArchiveError(f"archive does not {where}; it was not written by `ccache pack`")
    if member.size > _INDEX_LIMIT:
        raise ArchiveError(f"{name} declares {member.size} bytes, more than any this tool writes")
    return member


def _read_member(tar: TarReader, name: str) -> bytes:
    member = _expect_member(tar, name)
    return tar.read_exactly(member.size, f"its {name}").tobytes()


def _read_json_member(tar: TarReader, name: str) -> Any:
    try:
        return json.loads(_read_member(tar, name))
    except ValueError as exc:
        raise ArchiveError(f"{name} is malformed ({exc})") from exc


def _format_of(index: bytes) -> Any:
    """The format an index.json declares, read before anything else in it."""
    try:
        return json.loads(index).get("format")
    except (ValueError, AttributeError):
        return None


def _parse_index(data: bytes) -> dict[str, Any]:
    """index.json, checked: format, manifests without file lists, artifact counts, each
    whole manifest's digest."""
    try:
        index = json.loads(data)
    except ValueError as exc:
        raise ArchiveError(f"{INDEX_NAME} is malformed ({exc})") from exc
    version = index.get("format") if isinstance(index, dict) else None
    if version in _OLDER_FORMATS:
        raise ArchiveError(f"archive format {version} was written by an older ccache-cli, which did not cover "
                           "manifests by a hash; pack it again with this version")
    if version != ARCHIVE_FORMAT:
        raise ArchiveError(
            f"archive format {version!r} is not supported (this ccache-cli reads format {ARCHIVE_FORMAT}); upgrade ccache-cli"
        )
    try:
        if not isinstance(index["entries"], list):
            raise TypeError("entries is not a list")
        for entry_manifest in index["entries"]:
            manifest.check(entry_manifest, with_files=False)
        ids = [entry_manifest["id"] for entry_manifest in index["entries"]]
        if len(set(ids)) != len(ids):
            raise ArchiveError(f"{INDEX_NAME} lists an entry twice; the archive is corrupt or was tampered with")
        if not isinstance(index["digests"], dict) or set(index["digests"]) != set(ids):
            raise ArchiveError(f"{INDEX_NAME} does not give one manifest digest per entry")
        if not manifest.all_hex64(list(index["digests"].values())):
            raise TypeError("a manifest digest is not a sha256")
        index["artifacts"] = {
            entry_id: [KindSummary(str(kind), int(count), int(size)) for kind, count, size in index["artifacts"][entry_id]]
            for entry_id in ids
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArchiveError(f"{INDEX_NAME} is malformed ({exc})") from exc
    return index


_OLDER_FORMATS = (1, 2, 3)


def _complete_manifests(index: dict[str, Any], files: Any, sizes: dict[str, int]) -> list[dict[str, Any]]:
    """The index's manifests with files.json's file lists, each checked whole and
    against its digest in the index, each file's blob against `sizes` (blobs.txt's)."""
    try:
        if set(files["files"]) != {m["id"] for m in index["entries"]}:
            raise ArchiveError(f"{FILES_NAME} does not list the files of exactly the entries of {INDEX_NAME}")
        manifests = [{**m, "files": files["files"][m["id"]]} for m in index["entries"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ArchiveError(f"{FILES_NAME} is malformed ({exc})") from exc
    for complete in manifests:
        if hash_json(complete) != index["digests"][complete["id"]]:
            raise ArchiveError(f"manifest of entry {complete['id'][:12]} does not match its digest in {INDEX_NAME}: "
                               "the archive was changed after it was packed")
        manifest.check(complete)
        for ref in complete["files"].values():
            if sizes.get(ref["sha256"]) != ref["size"]:
                raise ArchiveError(f"{FILES_NAME} is inconsistent: entry {complete['id'][:12]} names a blob "
                                   f"that {BLOBS_NAME} does not list")
    return manifests
