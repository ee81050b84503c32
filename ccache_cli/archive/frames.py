"""The archive's compressed layout: the tar stream cut into pieces of at most
`FRAME_SIZE` bytes, each an independent zstd frame, each frame preceded by a skippable
frame (part of the zstd format, ignored by every decompressor) that gives its
compressed and decompressed sizes and whether it starts a group. `zstd -d | tar -x`
reads it as one stream.

A group is a frame that starts at a tar header, with the frames after it that continue
its last member: it holds whole members only, so groups are packed and unpacked in
parallel processes, each writing or reading its own. They are cut at fixed rules, so
the output does not depend on the process count. Knowing each frame's sizes before
touching it, a reader never allocates more than a frame, never decompresses past what
the frame declares, and tells a truncated archive from a corrupt one.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import IO, NamedTuple

import zstandard

from ccache_cli.errors import ArchiveError

FRAME_SIZE = 2 << 20  # 4 MiB compressed 0.1% smaller but held 20 MB more while unpacking
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # how every zstd data frame starts
# A skippable frame (magic 0x184D2A5?, payload length 12) holding the next frame's
# compressed and decompressed sizes and flags.
_SIZES = struct.Struct("<4sIIII")
_SIZES_MAGIC = struct.pack("<I", 0x184D2A5C)
_STARTS_GROUP = 1
_MAX_COMPRESSED = FRAME_SIZE + (FRAME_SIZE >> 8) + (1 << 16)  # above zstd's worst case for a frame
_MAX_WORKERS = 8  # each holds a frame in and out and a zstd context: bounds memory on big machines


def cpu_count() -> int:
    """How many threads or processes to compress or unpack with."""
    return max(1, min(os.cpu_count() or 1, _MAX_WORKERS))


class Frame(NamedTuple):  # not a dataclass: the unpacking processes start faster without that import
    sizes: bytes  # the skippable frame with the sizes, as read
    data: bytes  # the zstd frame
    size: int  # decompressed
    starts_group: bool

    def decompress(self) -> bytes:
        try:
            data = zstandard.ZstdDecompressor().decompress(self.data, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise ArchiveError(f"corrupt zstd stream: {exc}") from exc
        if len(data) != self.size:
            raise ArchiveError("corrupt archive: a frame's size does not match its header")
        return data


class FrameWriter:
    """Compresses pieces of a stream, each into its own frame, and writes them to `out`."""

    def __init__(self, out: IO[bytes], level: int) -> None:
        self._out = out
        self._compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)

    def write(self, piece: bytes | bytearray | memoryview, starts_group: bool) -> None:
        """Compress `piece` (at most FRAME_SIZE bytes) as the next frame."""
        frame = self._compressor.compress(piece)
        self._out.write(
            _SIZES.pack(_SIZES_MAGIC, 12, len(frame), len(piece), _STARTS_GROUP if starts_group else 0) + frame
        )


class FrameReader:
    """Reads the frames of a stream one at a time, checking their sizes: a frame may
    not declare more than FRAME_SIZE, and its zstd header must declare the same.
    `source` is a whole archive, or with `part`, some of its groups (maybe none)."""

    def __init__(
        self, source: IO[bytes], on_progress: Callable[[int], None] = lambda _: None, part: bool = False
    ) -> None:
        self._source = source
        self._on_progress = on_progress
        self._started = part

    def read(self) -> Frame | None:
        """The next frame; None at the end of the stream."""
        head = self._read(_SIZES.size)
        if not self._started:
            self._started = True
            if head[:4] == ZSTD_MAGIC:
                raise ArchiveError(
                    "archive is a plain zstd stream, not the framed layout `ccache pack` writes "
                    "(it was not packed by this version of ccache-cli)"
                )
            if head[:4] != _SIZES_MAGIC:
                raise ArchiveError("not a zstd-compressed archive (expected a .tar.zst written by `ccache pack`)")
        if not head:
            return None
        if len(head) < _SIZES.size:
            raise ArchiveError("archive is truncated: it ends inside a frame")
        magic, length, compressed, size, flags = _SIZES.unpack(head)
        if magic != _SIZES_MAGIC or length != 12 or not 0 < compressed <= _MAX_COMPRESSED or not 0 < size <= FRAME_SIZE:
            raise ArchiveError("corrupt archive: bad frame header")
        frame = self._read(compressed)
        if len(frame) < compressed:
            raise ArchiveError("archive is truncated: it ends inside a frame")
        try:
            declared = zstandard.frame_content_size(frame)  # what decompressing would allocate
        except zstandard.ZstdError as exc:
            raise ArchiveError(f"corrupt zstd stream: {exc}") from exc
        if declared != size:
            raise ArchiveError("corrupt archive: a frame's size does not match its header")
        self._on_progress(_SIZES.size + compressed)
        return Frame(head, frame, size, bool(flags & _STARTS_GROUP))

    def _read(self, size: int) -> bytes:
        data = self._source.read(size)
        if 0 < len(data) < size:  # a raw pipe hands out what it has
            parts = [data]
            got = len(data)
            while got < size and (more := self._source.read(size - got)):
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        return data
