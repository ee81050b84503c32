"""The tar side of archives: writing and reading ustar members by hand, in frames.

Written members have fixed headers (mtime 0, uid/gid 0, no user names, mode 0644).
tarfile's generic header code and its stream mode, which re-buffers every byte in
Python, cost more than compressing small members, and its reader stops without a word
at an unreadable header; this reader works on decompressed frames directly (a read
that fits in a frame is a view into it, no copy) and trusts nothing it reads.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from ccache_cli.archive.bloblist import BLOBS_NAME, BlobList
from ccache_cli.archive.frames import FRAME_SIZE, FrameWriter
from ccache_cli.errors import ArchiveError, CcacheError

BLOB_PREFIX = "objects/"
_BLOB_NAME = re.compile(rf"^{BLOB_PREFIX}([0-9a-f]{{64}})$")
_BLOCK = tarfile.BLOCKSIZE
_CHUNK = 1 << 20
REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)
_TAIL_LIMIT = 64 << 10  # tar pads its end to a 10 KiB record; allow for any record size
_ZEROS = bytes(_BLOCK)


def _header_template() -> bytes:
    info = tarfile.TarInfo("")
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.USTAR_FORMAT)


_HEADER_TEMPLATE = _header_template()
_TEMPLATE_MODES = _HEADER_TEMPLATE[100:124]  # mode, uid, gid
_TEMPLATE_MTIME = _HEADER_TEMPLATE[136:148]
_TEMPLATE_TAIL = _HEADER_TEMPLATE[156:]  # type, link, magic, user and group names, ...
# The checksum of a header from the template, less its name and size fields.
_TEMPLATE_FIXED_SUM = sum(_TEMPLATE_MODES) + sum(_TEMPLATE_MTIME) + 8 * ord(" ") + sum(_TEMPLATE_TAIL)


def ustar_header(name: str, size: int) -> bytes:
    """What tarfile writes for a regular file with our fixed metadata, built directly.
    Sizes of 8 GiB and more use GNU's base-256 size field, which the reader accepts."""
    encoded = name.encode()  # names we write are at most 72 bytes
    size_field = b"%011o\0" % size if size < 8**11 else b"\x80" + size.to_bytes(11, "big")
    # The template's other bytes never change: only name and size need summing.
    checksum = b"%06o\0 " % (_TEMPLATE_FIXED_SUM + sum(encoded) + sum(size_field))
    return b"".join(
        (encoded, bytes(100 - len(encoded)), _TEMPLATE_MODES, size_field, _TEMPLATE_MTIME, checksum, _TEMPLATE_TAIL)
    )


def member_length(size: int) -> int:
    """Bytes of the tar stream taken by a member of `size` bytes: header, data, padding."""
    return _BLOCK + size + (-size % _BLOCK)


def end_marker(stream_length: int) -> bytes:
    """What ends a tar stream of `stream_length` bytes: two zero blocks, then zeros to a
    whole record, as tar writes."""
    end = 2 * _BLOCK
    return bytes(end + (-(stream_length + end)) % tarfile.RECORDSIZE)


def group_bounds(sizes: list[int]) -> list[tuple[int, int]]:
    """How TarWriter groups members of these sizes, written from the start of a group:
    each group's first and past-last member. From the sizes alone, so that processes
    can each write some of the groups and the stream comes out the same."""
    bounds = []
    start = used = 0
    for at, size in enumerate(sizes):
        length = member_length(size)
        if used and used + length > FRAME_SIZE:
            bounds.append((start, at))
            start, used = at, 0
        used += length
        if used > FRAME_SIZE:  # it ran on into more pieces of its group
            used = (used - 1) % FRAME_SIZE + 1
    if start < len(sizes):
        bounds.append((start, len(sizes)))
    return bounds


class TarWriter:
    """Writes a ustar stream of regular files into pieces of at most FRAME_SIZE, each
    handed whole to the frame writer, cut so that groups hold whole members: a member
    that does not fit in what is left of a piece starts the next one (a group), and
    one larger than a piece runs on into pieces that continue its group.

    Headers and contents go straight into the piece being filled (files read with
    readv, no copies)."""

    def __init__(self, frames: FrameWriter) -> None:
        self._frames = frames
        self._written = 0  # bytes of the stream handed over
        self._new_piece(starts_group=True)

    def add(self, name: str, size: int, data: bytes | None = None, fd: int | None = None) -> None:
        """Add a member whose bytes are `data`, or are read from `fd`."""
        length = member_length(size)
        if self._used and self._used + length > FRAME_SIZE:
            self.cut()
        end = self._used + length
        if fd is not None and end <= FRAME_SIZE:  # most members: one copy and one readv
            start = self._used + _BLOCK
            self._view[self._used : start] = ustar_header(name, size)
            self._used = start
            self._read_from(fd, size, name)
            self._used = end  # the padding: a new piece is zeros
            return
        self._put(ustar_header(name, size))
        if data is not None:
            self._put(data)
        else:
            self._read_from(fd, size, name)  # type: ignore[arg-type]
        self._put(_ZEROS[: -size % _BLOCK])

    def cut(self) -> None:
        """Hand over what is written; the next member starts a new group."""
        if self._used:
            self._hand_over(next_starts_group=True)

    @property
    def written(self) -> int:
        """Bytes of the tar stream so far."""
        return self._written + self._used

    def _read_from(self, fd: int, size: int, name: str) -> None:
        while size:
            if self._used == FRAME_SIZE:
                self._hand_over(next_starts_group=False)
            got = os.readv(fd, [self._view[self._used : self._used + min(size, FRAME_SIZE - self._used)]])
            if not got:
                raise CcacheError(f"{name} is shorter than the store says; the store is damaged")
            self._used += got
            size -= got

    def _put(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._used == FRAME_SIZE:
                self._hand_over(next_starts_group=False)
            take = min(len(view), FRAME_SIZE - self._used)
            self._view[self._used : self._used + take] = view[:take]
            self._used += take
            view = view[take:]

    def _hand_over(self, next_starts_group: bool) -> None:
        self._frames.write(self._view[: self._used], self._starts_group)  # compressed in a thread
        self._written += self._used
        self._new_piece(next_starts_group)

    def _new_piece(self, starts_group: bool) -> None:
        self._view = memoryview(bytearray(FRAME_SIZE))
        self._used = 0
        self._starts_group = starts_group


class Member(NamedTuple):  # not a dataclass: the unpacking processes start faster without that import
    name: str
    size: int
    type: bytes  # the ustar typeflag


class TarReader:
    """Reads the members of a tar stream in order, holding none of them in memory.

    `next_chunk` hands out the stream in pieces, b"" at its end. The stream may end
    at the end-of-archive marker (then `ended` is True), or, for a run of whole
    groups, right after a member."""

    def __init__(self, next_chunk: Callable[[], bytes]) -> None:
        self._next_chunk = next_chunk
        self._view = memoryview(b"")  # what is left of the current chunk
        self._unread = 0  # bytes of the current member's data and padding not yet read
        self._size = 0  # the current member's size
        self.ended = False  # the end-of-archive marker was read

    def next(self) -> Member | None:
        """The next member's header, or None where the stream ends."""
        header = self.next_header()
        if header is None:
            return None
        member = _parse_header(header)
        self.begin(member.size if member.type in REGULAR else 0)
        return member

    def next_header(self) -> bytes | None:
        """The next header block, unparsed, or None where the stream ends (at the end
        marker, checked, or right after a member). Call `begin` with the member's
        data size before reading on."""
        if self._unread:
            self._skip(self._unread)
        if len(self._view) >= _BLOCK:  # most headers: in the chunk at hand, taken with fewer calls
            header = bytes(self._view[:_BLOCK])
            self._view = self._view[_BLOCK:]
        else:
            header = bytes(self._read(_BLOCK))
            if len(header) < _BLOCK:
                if header:
                    raise ArchiveError("archive is truncated inside a member header")
                return None
        if header == _ZEROS:
            self._check_end()
            return None
        return header

    def begin(self, size: int) -> None:
        """Start reading a member with `size` bytes of data."""
        self._size = size
        self._unread = size + (-size % _BLOCK)

    def read_member(self, what: str = "a blob") -> memoryview:
        """The whole data of the current member (its padding read and dropped)."""
        size = self._unread
        if size <= len(self._view):  # most members: in the chunk at hand
            data, self._view = self._view[: self._size], self._view[size:]
            self._unread = 0
            return data
        return self.read_exactly(size, what)[: self._size]

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
        self.ended = True


def _parse_header(block: bytes) -> Member:
    """A ustar header block; only what unpacking needs, checksum verified."""
    if block[156:] == _TEMPLATE_TAIL and block[100:124] == _TEMPLATE_MODES and block[136:148] == _TEMPLATE_MTIME:
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
    return Member(name.decode("utf-8", "surrogateescape"), _octal(block[124:136], "size"), block[156:157])


def _octal(field: bytes, what: str) -> int:
    if field[:1] == b"\x80":  # GNU base-256 for large numbers
        return int.from_bytes(field[1:], "big")
    try:
        return int(field.strip(b" \0") or b"0", 8)
    except ValueError:
        raise ArchiveError(f"corrupt tar header (bad {what} field); the archive is damaged") from None


def blob_members(tar: TarReader, blobs: BlobList, received: bytearray) -> Iterator[tuple[int, str, int]]:
    """The place in `blobs`, sha256 and size of each blob member to the end of the
    stream, each checked against `blobs` and marked in `received` (a flag per place);
    the caller reads the member's data.

    A header that is byte for byte what pack writes for the blob after the last one
    read (its checksum aside, which only covers the rest) needs no parsing or
    checking: its name is that blob's, its size the listed one. Any other header
    takes the general path, so an archive in another order still unpacks, and a
    hostile one still fails with the right message.
    """
    at, count = 0, len(blobs)
    while (header := tar.next_header()) is not None:
        expected = at < count and not received[at]
        if expected:
            name, size = blobs.name(at), blobs.size(at)
            expected = (
                size < 8**11 and header[:148] == _EXPECTED_START % (name, size) and header[156:] == _TEMPLATE_TAIL
            )
        if not expected:
            member = _parse_header(header)
            at = check_member(member, blobs, received)
            name, size = blobs.name(at), member.size
        tar.begin(size)
        received[at] = 1
        yield at, name.decode(), size
        at += 1


# What pack writes before a blob's checksum field, less the blob's name and size.
_EXPECTED_START = (
    BLOB_PREFIX.encode()
    + b"%b"
    + bytes(100 - len(BLOB_PREFIX) - 64)
    + _TEMPLATE_MODES.replace(b"%", b"%%")
    + b"%011o\0"
    + _TEMPLATE_MTIME.replace(b"%", b"%%")
)


def check_member(member: Member, blobs: BlobList, received: bytearray) -> int:
    """The place in `blobs` of a blob member that is safe and listed, else ArchiveError."""
    name = member.name
    if name.startswith("/") or ".." in name.split("/"):
        raise ArchiveError(f"archive member {name!r} has an unsafe path")
    if member.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        raise ArchiveError(f"archive member {name!r} is a link; archives hold regular files only")
    if member.type not in REGULAR:
        raise ArchiveError(f"archive member {name!r} is not a regular file")
    match = _BLOB_NAME.match(name)
    if match is None:
        raise ArchiveError(f"unexpected archive member {name!r}")
    at = blobs.find(match.group(1).encode())
    if at is None:
        raise ArchiveError(f"archive member {name!r} is not listed in {BLOBS_NAME}")
    if received[at]:
        raise ArchiveError(f"archive member {name!r} appears twice")
    if member.size != blobs.size(at):
        raise ArchiveError(f"archive member {name!r} is {member.size} bytes; {BLOBS_NAME} says {blobs.size(at)}")
    return at


def copy_member(tar: TarReader, sha256: str, size: int, fd: int | None) -> Any:
    """Read exactly `size` bytes of blob `sha256`'s member, in chunks, into the file
    open at `fd` if given; returns their hash object."""
    digest = hashlib.sha256()
    remaining = size
    while remaining:
        chunk = tar.read_exactly(min(_CHUNK, remaining), f"blob {sha256[:12]}")
        digest.update(chunk)
        if fd is not None:
            os.write(fd, chunk)  # a regular file takes the whole chunk
        remaining -= len(chunk)
    return digest
