"""Pack and unpack entries as deterministic, streamable `.tar.zst` archives.

Members, in this order: `index.json` (format version, every manifest without its
file list, artifact counts per entry: all that `inspect ARCHIVE` reads, small whatever
the archive's size), `files.json` (each entry's files, every blob's size), then
`objects/<sha256>` once per blob, sorted. Headers are fixed (mtime 0, uid/gid 0, no
user names, mode 0644), so the same entries always give the same bytes.

Unpacking trusts nothing: the index must come first and be of a known format; every
other member must be a regular file named `objects/<sha256>` that files.json lists,
once, with the size it gives; its bytes must hash to its name. Blobs are
staged in the store's tmp/ and only adopted, and entries published, once the whole
archive has checked out, so a bad archive leaves the store exactly as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import queue
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import zstandard

from . import decompress
from .artifacts import KindSummary, summarize
from .errors import BadInputError, CcacheError
from .store import Entry, Store

ARCHIVE_FORMAT = 1
INDEX_NAME = "index.json"
FILES_NAME = "files.json"
_INDEX_LIMIT = 256 << 20  # an index past this is not one this tool wrote
_BLOB_NAME = re.compile(r"^objects/([0-9a-f]{64})$")
_CHUNK = 1 << 20
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)
_TAIL_LIMIT = 64 << 10  # tar pads its end to a 10 KiB record; allow for any record size

Progress = Callable[[int], None]  # called with a count of bytes just handled


class ArchiveError(BadInputError):
    """An archive that is not one this tool can read, or that fails a check."""


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
    blobs: dict[str, int] = {}
    for entry in entries:
        for ref in entry.files.values():
            blobs[ref.sha256] = ref.size
    ordered = sorted(entries, key=lambda entry: entry.id)
    # The first member holds what `inspect ARCHIVE` shows, small whatever the archive
    # size: manifests without their file lists, and artifact counts per entry.
    index = {
        "format": ARCHIVE_FORMAT,
        "entries": [{k: v for k, v in entry.manifest.items() if k != "files"} for entry in ordered],
        "artifacts": {
            entry.id: [[k.kind, k.count, k.bytes] for k in summarize({p: r.size for p, r in entry.files.items()})]
            for entry in ordered
        },
    }
    files = {
        "blobs": dict(sorted(blobs.items())),
        "files": {entry.id: entry.manifest["files"] for entry in ordered},
    }
    # threads=-1 uses every core; zstd's output does not depend on the worker count.
    compressor = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True)
    with compressor.stream_writer(output, closefd=False) as compressed:
        tar = _TarWriter(compressed)
        for name, content in ((INDEX_NAME, index), (FILES_NAME, files)):
            data = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
            tar.add(name, size=len(data), data=data)
        for sha256, size in files["blobs"].items():
            try:
                fd = os.open(store.blob_file(sha256), os.O_RDONLY)
            except FileNotFoundError:
                raise CcacheError(f"blob {sha256[:12]} is missing from store {store.root}; the store is damaged") from None
            try:
                tar.add(f"objects/{sha256}", size=size, fd=fd)
            finally:
                os.close(fd)
            on_progress(size)
        tar.close()
    return PackResult(tuple(entries), len(blobs), sum(blobs.values()))


def read_index(source: BinaryIO) -> dict[str, Any]:
    """The index of an archive, reading only as far as its first member."""
    with _open_tar(source) as tar:
        return _read_index(tar)


def unpack(
    store: Store,
    source: BinaryIO,
    select: Callable[[Entry], bool] = lambda _: True,
    on_progress: Progress = lambda _: None,
) -> UnpackResult:
    """Merge an archive's entries into `store`; all or nothing."""
    with store.staging() as staging, _open_tar_in_child(source, on_progress) as tar:
        manifests, blobs = _read_files(tar, _read_index(tar))
        wanted_entries, skipped = [], []
        for manifest in manifests:
            entry = Entry(manifest["id"], manifest)
            (wanted_entries if select(entry) else skipped).append(entry)
        wanted_blobs = {ref.sha256 for entry in wanted_entries for ref in entry.files.values()}
        wanted_blobs -= store.blobs_present(wanted_blobs)
        received: set[str] = set()
        staged: dict[str, int] = {}  # sha256 -> size of the blobs written to staging
        with _StagedBlobs(staging / "objects", (sha256[:2] for sha256 in wanted_blobs)) as sink:
            for sha256, size in _blob_members(tar, blobs, received):
                wanted = sha256 in wanted_blobs
                if size <= _CHUNK:  # most blobs: read whole; checked and written in a thread
                    sink.add(sha256, tar.read_member(f"blob {sha256[:12]}"), wanted)
                else:
                    _check_hash(_copy_member(tar, sha256, size, sink.create(sha256) if wanted else None), sha256)
                if wanted:
                    staged[sha256] = size
        missing = set(blobs) - received
        if missing:
            raise ArchiveError(f"archive is truncated or incomplete: {len(missing)} blob(s) listed in {FILES_NAME} are absent")
        store.adopt_verified_blobs(staging / "objects")
        published = store.publish(wanted_entries, staging)
    added_entries = [entry for entry, is_new in published if is_new]
    kept = [entry for entry, is_new in published if not is_new]
    new_bytes = sum(staged.values())
    return UnpackResult(tuple(added_entries), tuple(kept), tuple(e.id for e in skipped), len(staged), new_bytes)


def check_blobs(source: BinaryIO) -> tuple[list[Entry], dict[str, str]]:
    """Read a whole archive as a stream, writing nothing: its entries, and what is
    wrong with each blob that is absent or does not hash to its name. An archive
    that is not well formed raises ArchiveError."""
    with _open_tar_in_child(source, lambda _: None) as tar:
        manifests, blobs = _read_files(tar, _read_index(tar))
        received: set[str] = set()
        broken: dict[str, str] = {}
        for sha256, size in _blob_members(tar, blobs, received):
            if _copy_member(tar, sha256, size, None).hexdigest() != sha256:
                broken[sha256] = "content does not match its hash"
    for sha256 in set(blobs) - received:
        broken[sha256] = "absent from the archive"
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


def _header_template() -> bytes:
    info = tarfile.TarInfo("")
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.USTAR_FORMAT)


_HEADER_TEMPLATE = _header_template()
# The checksum of a header from the template, less its name and size fields.
_TEMPLATE_FIXED_SUM = sum(_HEADER_TEMPLATE[100:124]) + sum(_HEADER_TEMPLATE[136:148]) + 8 * ord(" ") + sum(_HEADER_TEMPLATE[156:])


def _ustar_header(name: str, size: int) -> bytes:
    """What tarfile writes for a regular file with our fixed metadata, built directly
    (tarfile's generic header code costs more than compressing small members).
    Sizes of 8 GiB and more use GNU's base-256 size field, which the reader accepts."""
    header = bytearray(_HEADER_TEMPLATE)
    encoded = name.encode()
    header[: len(encoded)] = encoded  # names we write are at most 72 bytes
    size_field = b"%011o\0" % size if size < 8**11 else b"\x80" + size.to_bytes(11, "big")
    header[124:136] = size_field
    # The template's other bytes never change: only name and size need summing.
    header[148:155] = b"%06o\0" % (_TEMPLATE_FIXED_SUM + sum(encoded) + sum(size_field))
    return bytes(header)


class _TarWriter:
    """Writes a ustar stream of regular files by hand, in large writes.

    Headers and file contents are placed straight into one reused buffer (files read
    with readv, no copies), which goes out whole: tarfile's stream writer re-buffers
    every byte through Python and builds each header generically, which together
    cost more than compressing small members.
    """

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._buffer = bytearray(_CHUNK)
        self._view = memoryview(self._buffer)
        self._used = 0
        self._written = 0

    def add(self, name: str, size: int, data: bytes | None = None, fd: int | None = None) -> None:
        """Add a member whose bytes are `data`, or are read from `fd`."""
        self._put(_ustar_header(name, size))
        padded = size + (-size % tarfile.BLOCKSIZE)
        if data is not None:
            self._put(data + bytes(padded - size))
            return
        if padded > _CHUNK - self._used:
            self._flush()
        if padded > _CHUNK:  # a large file: stream it through the buffer
            remaining = size
            while remaining:
                got = os.readv(fd, [self._view[: min(remaining, _CHUNK)]])  # type: ignore[arg-type]
                if not got:
                    raise CcacheError(f"{name} is shorter than {size} bytes; the store is damaged")
                self._used = got
                self._flush()
                remaining -= got
            self._put(bytes(padded - size))
            return
        start = self._used
        got = 0
        while got < size:
            n = os.readv(fd, [self._view[start + got : start + size]])  # type: ignore[arg-type]
            if not n:
                raise CcacheError(f"{name} is shorter than {size} bytes; the store is damaged")
            got += n
        self._view[start + size : start + padded] = _ZEROS[: padded - size]
        self._used = start + padded

    def close(self) -> None:
        end = 2 * tarfile.BLOCKSIZE
        self._put(bytes(end + (-(self._written + self._used + end)) % tarfile.RECORDSIZE))
        self._flush()

    def _put(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._used == _CHUNK:
                self._flush()
            take = min(len(view), _CHUNK - self._used)
            self._view[self._used : self._used + take] = view[:take]
            self._used += take
            view = view[take:]

    def _flush(self) -> None:
        self._out.write(self._view[: self._used])
        self._written += self._used
        self._used = 0


_ZEROS = bytes(tarfile.BLOCKSIZE)


@contextlib.contextmanager
def _open_tar(source: IO[bytes]) -> Iterator[_TarReader]:
    """A streaming tar reader over a zstd stream decompressed in this process: for
    reading only the first members."""
    head = source.read(4)
    if head != decompress.MAGIC:
        raise ArchiveError(_NOT_ZSTD)
    reader = zstandard.ZstdDecompressor().stream_reader(_Prefixed(head, source), closefd=False)
    try:
        yield _TarReader(lambda: reader.read(_CHUNK))
    except zstandard.ZstdError as exc:
        raise ArchiveError(f"corrupt zstd stream: {exc}") from exc


@contextlib.contextmanager
def _open_tar_in_child(source: BinaryIO, on_progress: Progress) -> Iterator[_TarReader]:
    """A streaming tar reader over a zstd stream decompressed by a child process (see
    decompress.py), for reading a whole archive."""
    child = _Decompressor(source, on_progress)
    try:
        yield _TarReader(child.next_chunk)
    finally:
        child.close()


_NOT_ZSTD = "not a zstd-compressed archive (expected a .tar.zst written by `ccache pack`)"


class _Decompressor:
    """Runs decompress.py on `source`, handing out what it writes in chunks.

    Its failures surface where its output ends, before the tar reader could take a
    short stream for a truncated one. Progress counts the archive bytes the child has
    read, from the file offset it shares with `source`, or, from a pipe, the bytes
    decompressed.
    """

    def __init__(self, source: BinaryIO, on_progress: Progress) -> None:
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("decompress.py"))],
            stdin=source, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert self._process.stdout is not None
        self._fd = self._process.stdout.fileno()
        with contextlib.suppress(OSError):  # larger pipe, fewer reads (Linux)
            fcntl.fcntl(self._fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _CHUNK)
        self._source_fd = source.fileno()
        self._offset = self._tell()
        self._on_progress = on_progress

    def next_chunk(self) -> bytes:
        """The next piece of the decompressed stream; b"" at its end."""
        data = os.read(self._fd, _CHUNK)
        if not data:
            self._check_exit()
        if self._offset is None:
            self._on_progress(len(data))
        else:
            offset = self._tell()
            self._on_progress(offset - self._offset)  # type: ignore[operator]
            self._offset = offset
        return data

    def close(self) -> None:
        if self._process.poll() is None:  # stopped early: by an error, or at the end marker
            self._process.kill()
        self._process.communicate()

    def _tell(self) -> int | None:
        try:
            return os.lseek(self._source_fd, 0, os.SEEK_CUR)
        except OSError:  # a pipe
            return None

    def _check_exit(self) -> None:
        _, stderr = self._process.communicate()
        message = stderr.decode(errors="replace").strip()
        code = self._process.returncode
        if code == decompress.NOT_ZSTD:
            raise ArchiveError(_NOT_ZSTD)
        if code == decompress.CORRUPT:
            raise ArchiveError(f"corrupt zstd stream: {message}")
        if code == decompress.TRUNCATED:
            raise ArchiveError("archive is truncated: its zstd stream ends inside a frame")
        if code != 0:
            raise CcacheError(f"decompressing the archive failed (exit {code}): {(message.splitlines() or [''])[-1]}")


def _read_json_member(tar: _TarReader, name: str) -> Any:
    member = tar.next()
    if member is None or member.name != name or member.type not in _REGULAR:
        where = "start with" if name == INDEX_NAME else f"have {name} after"
        raise ArchiveError(f"archive does not {where} {INDEX_NAME}; it was not written by `ccache pack`")
    if member.size > _INDEX_LIMIT:
        raise ArchiveError(f"{name} declares {member.size} bytes, more than any this tool writes")
    try:
        return json.loads(bytes(tar.read_exactly(member.size, f"its {name}")))
    except ValueError as exc:
        raise ArchiveError(f"{name} is malformed ({exc})") from exc


def _read_index(tar: _TarReader) -> dict[str, Any]:
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


def _read_files(tar: _TarReader, index: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The second member: each entry's file list and every blob's size. Returns the
    complete manifests and the blobs, checked against each other."""
    files = _read_json_member(tar, FILES_NAME)
    try:
        blobs = {str(sha): int(size) for sha, size in files["blobs"].items()}
        manifests = [{**manifest, "files": files["files"][manifest["id"]]} for manifest in index["entries"]]
        for manifest in manifests:
            for ref in manifest["files"].values():
                if blobs.get(ref["sha256"]) != ref["size"]:
                    raise ArchiveError(f"{FILES_NAME} is inconsistent: entry {manifest['id'][:12]} names a blob it does not list")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArchiveError(f"{FILES_NAME} is malformed ({exc})") from exc
    return manifests, blobs


def _blob_members(tar: _TarReader, blobs: dict[str, int], received: set[str]) -> Iterator[tuple[str, int]]:
    """The (sha256, size) of each member after files.json, each checked by
    `_check_member` and added to `received`; the caller reads the member's data.

    A header that is byte for byte what pack writes for the next blob in files.json's
    (sorted) order needs no parsing or checking: its name is that blob's, its size
    the listed one. Any other header takes the general path, so an archive in another
    order still unpacks, and a hostile one still fails with the right message.
    """
    pending = iter(blobs.items())

    def expected() -> _Member | None:
        item = next(pending, None)
        return None if item is None else _Member(f"objects/{item[0]}", item[1], tarfile.REGTYPE)

    expect = expected()
    while (member := tar.next(expect)) is not None:
        if member is expect and member.name[8:] not in received:
            sha256 = member.name[8:]
            expect = expected()
        else:
            sha256 = _check_member(member, blobs, received)
        received.add(sha256)
        yield sha256, member.size


def _check_member(member: _Member, blobs: dict[str, int], received: set[str]) -> str:
    name = member.name
    if name.startswith("/") or ".." in name.split("/"):
        raise ArchiveError(f"archive member {name!r} has an unsafe path")
    if member.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        raise ArchiveError(f"archive member {name!r} is a link; archives hold regular files only")
    if member.type not in _REGULAR:
        raise ArchiveError(f"archive member {name!r} is not a regular file")
    match = _BLOB_NAME.match(name)
    if match is None:
        raise ArchiveError(f"unexpected archive member {name!r}")
    sha256 = match.group(1)
    if sha256 in received:
        raise ArchiveError(f"archive member {name!r} appears twice")
    if sha256 not in blobs:
        raise ArchiveError(f"archive member {name!r} is not listed in {FILES_NAME}")
    if member.size != blobs[sha256]:
        raise ArchiveError(f"archive member {name!r} is {member.size} bytes; {FILES_NAME} says {blobs[sha256]}")
    return sha256


def _copy_member(tar: _TarReader, sha256: str, size: int, fd: int | None) -> Any:
    """Read exactly `size` bytes of blob `sha256`'s member, into the file open at `fd`
    (closed after) if given; returns their hash object."""
    digest = hashlib.sha256()
    try:
        remaining = size
        while remaining:
            chunk = tar.read_exactly(min(_CHUNK, remaining), f"blob {sha256[:12]}")
            digest.update(chunk)
            if fd is not None:
                os.write(fd, chunk)  # a regular file takes the whole chunk
            remaining -= len(chunk)
    finally:
        if fd is not None:
            os.close(fd)
    return digest


def _check_hash(digest: Any, sha256: str) -> None:
    if digest.hexdigest() != sha256:
        raise ArchiveError(f"blob {sha256[:12]} does not match its hash; the archive is corrupt")


class _StagedBlobs:
    """Checks blobs against their hashes and writes the new ones as read-only files
    `<root>/ab/<sha256>`, in threads.

    Blobs are handed over in batches, so hashing and the file system calls (both
    release the GIL) overlap with reading and parsing the next members. Each file is
    opened through its folder's descriptor, all folders made up front: no path
    building or lookup per blob, nothing shared that threads change. At most
    `_QUEUED` batches of up to `_BATCH_BYTES` each are held.
    """

    _FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    _BATCH_BYTES = 4 << 20
    _BATCH_BLOBS = 512
    _QUEUED = 4
    _THREADS = 2

    def __init__(self, root: Path, folders: Iterable[str]) -> None:
        self._folders: dict[str, int] = {}
        for folder in sorted(set(folders)):
            (root / folder).mkdir(parents=True)
            self._folders[folder] = os.open(root / folder, os.O_RDONLY | os.O_DIRECTORY)
        self._batch: list[tuple[str, bytes | memoryview, bool]] = []
        self._batch_bytes = 0
        self._batches: queue.Queue[list[tuple[str, bytes | memoryview, bool]] | None] = queue.Queue(self._QUEUED)
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._drain, daemon=True) for _ in range(self._THREADS)]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> _StagedBlobs:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self._flush()
        finally:
            for thread in self._threads:
                self._batches.put(None)
            for thread in self._threads:
                thread.join()
            for fd in self._folders.values():
                os.close(fd)
        if self._error is not None and exc[0] is None:
            raise self._error

    def add(self, sha256: str, data: bytes | memoryview, write: bool) -> None:
        """Check `data` against `sha256` and, if `write`, store it as a new file."""
        self._batch.append((sha256, data, write))
        self._batch_bytes += len(data)
        if self._batch_bytes >= self._BATCH_BYTES or len(self._batch) >= self._BATCH_BLOBS:
            self._flush()

    def create(self, sha256: str) -> int:
        """A new file for blob `sha256`, open for writing by the caller."""
        self._flush()
        self._batches.join()  # keeps members in order
        if self._error is not None:
            raise self._error
        return self._create(sha256)

    def _flush(self) -> None:
        if self._error is not None:
            raise self._error
        if self._batch:
            self._batches.put(self._batch)
            self._batch, self._batch_bytes = [], 0

    def _create(self, sha256: str) -> int:
        return os.open(sha256, self._FLAGS, 0o444, dir_fd=self._folders[sha256[:2]])

    def _drain(self) -> None:
        while (batch := self._batches.get()) is not None:
            try:
                if self._error is None:
                    for sha256, data, write in batch:
                        _check_hash(hashlib.sha256(data), sha256)
                        if write:
                            fd = self._create(sha256)
                            try:
                                os.write(fd, data)  # a regular file takes the whole buffer
                            finally:
                                os.close(fd)
            except BaseException as exc:  # raised in the reading thread
                self._error = exc
            finally:
                self._batches.task_done()
        self._batches.task_done()


@dataclass(frozen=True)
class _Member:
    name: str
    size: int
    type: bytes  # the ustar typeflag


def _parse_header(block: bytes) -> _Member:
    """A ustar header block; only what unpacking needs, checksum verified.

    tarfile's own parser handles every tar dialect and costs more than the rest of
    unpacking; archives of this tool are plain ustar.
    """
    template = _HEADER_TEMPLATE
    if block[156:] == template[156:] and block[100:124] == template[100:124] and block[136:148] == template[136:148]:
        # What pack writes: only name, size and checksum differ from the template,
        # so only they need summing (a full sum costs more than the rest of parsing).
        checksum = _TEMPLATE_FIXED_SUM + sum(block[:100]) + sum(block[124:136])
    else:
        checksum = sum(block[:148]) + 8 * ord(" ") + sum(block[156:])
    if _octal(block[148:156], "checksum") != checksum:
        raise ArchiveError("corrupt tar header (bad checksum); the archive is damaged")
    name = block[:100].split(b"\0", 1)[0]
    prefix = block[345:500].split(b"\0", 1)[0] if block[257:262] == b"ustar" else b""
    if prefix:
        name = prefix + b"/" + name
    return _Member(name.decode("utf-8", "surrogateescape"), _octal(block[124:136], "size"), block[156:157])


def _octal(field: bytes, what: str) -> int:
    if field[:1] == b"\x80":  # GNU base-256 for large numbers
        return int.from_bytes(field[1:], "big")
    try:
        return int(field.strip(b" \0") or b"0", 8)
    except ValueError:
        raise ArchiveError(f"corrupt tar header (bad {what} field); the archive is damaged") from None


class _TarReader:
    """Reads the members of a tar stream in order, holding none of them in memory.

    Works on the decompressed chunks directly: a read that fits in the current chunk
    is a view into it, no copy (most members do). tarfile's own stream mode
    re-buffers every byte in Python (slow for many small members) and stops without a
    word at an unreadable header, which would hide data after the last member; this
    reader does neither.
    """

    def __init__(self, next_chunk: Callable[[], bytes]) -> None:
        self._next_chunk = next_chunk  # b"" at the end of the stream
        self._view = memoryview(b"")  # what is left of the current chunk
        self._unread = 0  # bytes of the current member's data and padding not yet read
        self._size = 0  # the current member's size

    def next(self, expect: _Member | None = None) -> _Member | None:
        """The next member's header, or None at the end-of-archive marker. When the
        header is exactly what pack writes for `expect`, returns `expect` itself."""
        self._skip(self._unread)
        header = bytes(self.read_exactly(tarfile.BLOCKSIZE, "a member header"))
        if expect is not None and header == _ustar_header(expect.name, expect.size):
            member = expect
        elif header == _ZEROS:
            self._check_end()
            return None
        else:
            member = _parse_header(header)
        self._size = member.size
        self._unread = member.size + (-member.size % tarfile.BLOCKSIZE) if member.type in _REGULAR else 0
        return member

    def read_member(self, what: str) -> memoryview:
        """The whole data of the current member (its padding read and dropped)."""
        size = self._unread
        return self.read_exactly(size, what)[: size - (-self._size % tarfile.BLOCKSIZE)]

    def read_exactly(self, size: int, what: str) -> memoryview:
        data = self._read(size)
        if len(data) != size:
            raise ArchiveError(f"archive is truncated inside {what}")
        self._unread = max(self._unread - size, 0)
        return data

    def _read(self, size: int) -> memoryview:
        """Up to `size` bytes, fewer only at the end of the stream."""
        if size <= len(self._view):
            data, self._view = self._view[:size], self._view[size:]
            return data
        parts = [self._view]
        got = len(self._view)
        while got < size and (chunk := self._next_chunk()):
            self._view = memoryview(chunk)
            take = min(size - got, len(chunk))
            parts.append(self._view[:take])
            self._view = self._view[take:]
            got += take
        if got < size:
            self._view = memoryview(b"")
        return memoryview(b"".join(parts))

    def _skip(self, size: int) -> None:
        while size:
            size -= len(self.read_exactly(min(size, _CHUNK), "a member"))

    def _check_end(self) -> None:
        # Only tar's zero padding may follow the marker; read a bounded amount to tell.
        tail = self._read(_TAIL_LIMIT + 1)
        if len(tail) > _TAIL_LIMIT or bytes(tail).strip(b"\0"):
            raise ArchiveError("archive has data past its end-of-archive marker; it is corrupt or was tampered with")


class _Prefixed(io.RawIOBase):
    """`source` with bytes already read from it put back in front."""

    def __init__(self, head: bytes, source: IO[bytes]) -> None:
        self._head = head
        self._source = source

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            data = self._head if size < 0 else self._head[:size]
            self._head = self._head[len(data) :]
            return data
        return self._source.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
