"""Unit tests of the archive's codecs: the ustar headers, group layout, frames."""

from __future__ import annotations

import io
import subprocess
import tarfile

import pytest
import zstandard

from ccache_cli.archive.frames import FRAME_SIZE, FrameReader, FrameWriter
from ccache_cli.archive.tarstream import TarReader, TarWriter, end_marker, group_bounds, member_length, ustar_header
from ccache_cli.errors import ArchiveError


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 10**9, 8**11 - 1])
def test_ustar_header_is_what_tarfile_writes(size: int) -> None:
    info = tarfile.TarInfo("objects/" + "ab" * 32)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    assert ustar_header(info.name, size) == info.tobuf(tarfile.USTAR_FORMAT)


def test_sizes_past_8_gib_use_base_256_which_tarfile_reads() -> None:
    size = 8**11 + 5
    parsed = tarfile.TarInfo.frombuf(ustar_header("objects/big", size), "utf-8", "surrogateescape")
    assert parsed.size == size


def test_member_length_and_end_marker() -> None:
    assert member_length(0) == 512
    assert member_length(1) == 1024
    assert member_length(512) == 1024
    for length in (0, 512, 10240, 12345 * 512):
        end = end_marker(length)
        assert len(end) >= 1024 and (length + len(end)) % 10240 == 0 and not any(end)


def _written_groups(sizes: list[int]) -> list[tuple[int, int]]:
    """The groups TarWriter actually writes for members of `sizes`: from the frames' flags."""
    out = io.BytesIO()
    tar = TarWriter(FrameWriter(out, 1))
    for at, size in enumerate(sizes):
        tar.add(f"m{at}", size=size, data=bytes([at % 251]) * size)
    tar.cut()
    if not sizes:
        return []
    reader = FrameReader(io.BytesIO(out.getvalue()))
    starts, stream, member_starts, offset = [], 0, [], 0
    for size in sizes:
        member_starts.append(offset)
        offset += member_length(size)
    while (frame := reader.read()) is not None:
        if frame.starts_group:
            starts.append(member_starts.index(stream))  # a group starts at a member
        stream += frame.size
    return [(start, end) for start, end in zip(starts, [*starts[1:], len(sizes)])]


@pytest.mark.parametrize(
    "sizes",
    [
        [],
        [10],
        [FRAME_SIZE - 512] * 3,  # each fills a piece exactly
        [FRAME_SIZE - 1024, 100, 5],
        [3 * FRAME_SIZE + 7, 10, 20, FRAME_SIZE // 2, FRAME_SIZE // 2, 1],  # runs on, then continues its piece
        [1000] * 5000,
    ],
)
def test_group_bounds_predicts_what_the_writer_does(sizes: list[int]) -> None:
    assert group_bounds(sizes) == _written_groups(sizes)


def test_tar_stream_round_trips_and_zstd_reads_it_as_one_stream() -> None:
    members = {f"m{at}": bytes(range(at % 256)) * (at * 37) for at in range(40)}
    members["big"] = b"x" * (FRAME_SIZE * 2 + 3)
    out = io.BytesIO()
    tar = TarWriter(FrameWriter(out, 3))
    for name, data in members.items():
        tar.add(name, size=len(data), data=data)
    tar.cut()
    FrameWriter(out, 3).write(end_marker(tar.written), starts_group=True)
    archive = out.getvalue()

    reader = FrameReader(io.BytesIO(archive))
    chunks = iter(lambda: frame.decompress() if (frame := reader.read()) else b"", b"")
    ours = TarReader(lambda: next(chunks, b""))
    got = {}
    while (member := ours.next()) is not None:
        got[member.name] = bytes(ours.read_exactly(member.size, member.name))
    assert got == members

    # Any zstd decompressor skips the sizes frames; tar reads the stream.
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(archive), read_across_frames=True).read()
    with tarfile.open(fileobj=io.BytesIO(plain)) as standard:
        assert {m.name: standard.extractfile(m).read() for m in standard.getmembers()} == members
    listed = subprocess.run(["zstd", "-dc"], input=archive, capture_output=True, check=False)
    if listed.returncode == 0:  # where the zstd command is installed
        assert listed.stdout == plain


def test_frame_reader_tells_truncated_from_corrupt() -> None:
    out = io.BytesIO()
    writer = FrameWriter(out, 3)
    writer.write(b"a" * 1000, starts_group=True)
    writer.write(b"b" * 1000, starts_group=False)
    archive = out.getvalue()

    frames = FrameReader(io.BytesIO(archive))
    first, second = frames.read(), frames.read()
    assert (first.starts_group, second.starts_group) == (True, False)
    assert (first.decompress(), second.decompress()) == (b"a" * 1000, b"b" * 1000)
    assert frames.read() is None

    with pytest.raises(ArchiveError, match="truncated"):
        reader = FrameReader(io.BytesIO(archive[:-5]))
        while reader.read() is not None:
            pass
    corrupt = bytearray(archive)
    corrupt[8] ^= 0xFF  # the first frame's compressed size
    with pytest.raises(ArchiveError, match="corrupt|truncated"):
        reader = FrameReader(io.BytesIO(bytes(corrupt)))
        while (frame := reader.read()) is not None:
            frame.decompress()
    with pytest.raises(ArchiveError, match="plain zstd stream"):
        FrameReader(io.BytesIO(zstandard.ZstdCompressor().compress(b"tar"))).read()
    with pytest.raises(ArchiveError, match="not a zstd-compressed archive"):
        FrameReader(io.BytesIO(b"PK\x03\x04" + bytes(30))).read()
