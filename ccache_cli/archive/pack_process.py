"""Packs groups of an archive's blobs in a process of its own; `archive.pack` runs one
per core, forked from itself where it can (`serve`), else started as
`python -m ccache_cli.archive.pack_process`.

Reads from stdin a job (its length, then JSON: the store, the zstd level, and the
descriptors of the archive and of its two baton pipes), then its groups (group_bounds),
each a count and that many blobs as a BlobList, until a count of 0.

Compresses each group into memory as soon as it has it, up to _AHEAD bytes ahead,
and writes it to the archive itself when it holds the baton: a byte in its pipe,
passed on to the next process when the group is written, so that the groups go into
the archive in order while every process compresses. Reports on stdout, for each
group in turn, that it is written; or why it failed, after which it stops.
"""

from __future__ import annotations

import collections
import io
import json
import os
import select
import struct
import sys
from typing import IO, Any

from ccache_cli.archive.bloblist import BlobList
from ccache_cli.archive.frames import FrameWriter
from ccache_cli.archive.tarstream import BLOB_PREFIX, TarWriter
from ccache_cli.errors import CcacheError
from ccache_cli.store import owners
from ccache_cli.store.store import Store

WRITTEN, FAILED = b"W", b"X"
REPORT = struct.Struct("<cI")  # kind, length of the message that follows
_COUNT = struct.Struct("<Q")
# Compressed bytes held, waiting for the baton: enough to go on while the caller writes
# the head (a quarter of a second), or while the other processes write theirs.
_AHEAD = 8 << 20


def job_bytes(job: dict[str, Any]) -> bytes:
    encoded = json.dumps(job).encode()
    return _COUNT.pack(len(encoded)) + encoded


def group_bytes(blobs: BlobList) -> bytes:
    """A group as this process reads it; an empty one ends the job."""
    return _COUNT.pack(len(blobs)) + blobs.to_bytes()


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    (length,) = _COUNT.unpack(stdin.read(_COUNT.size))
    job: dict[str, Any] = json.loads(stdin.read(length))
    held: collections.deque[tuple[bytes | None, str]] = collections.deque()  # frames, or why they failed
    held_bytes = 0

    def write_held() -> bool:
        """Wait for the baton, write the oldest held group and pass the baton on; False
        where that group failed (the baton stops here)."""
        nonlocal held_bytes
        frames, failure = held.popleft()
        held_bytes -= len(frames or b"")
        if not os.read(job["baton_in"], 1):
            raise SystemExit(1)  # the caller stopped
        if frames is None:
            _report(stdout, FAILED, failure)
            return False
        view = memoryview(frames)
        try:
            while view:
                view = view[os.write(job["archive"], view) :]
        except OSError as exc:
            _report(stdout, FAILED, f"cannot write the archive: {exc.strerror or exc}")
            return False
        _report(stdout, WRITTEN, "")
        os.write(job["baton_out"], b"\1")
        return True

    out = io.BytesIO()
    frames = FrameWriter(out, job["level"])
    with Store(job["store"]).blob_opener() as open_blob:
        while True:
            (count,) = _COUNT.unpack(stdin.read(_COUNT.size))
            if not count:
                break
            blobs = BlobList.read(stdin, count)
            try:
                _pack_group(TarWriter(frames), blobs, open_blob, job["store"])
                held.append((out.getvalue(), ""))
                held_bytes += out.tell()
            except CcacheError as exc:
                held.append((None, str(exc)))
            except OSError as exc:
                held.append((None, f"cannot read the blobs of store {job['store']}: {exc.strerror or exc}"))
            out.seek(0)
            out.truncate()
            # Write what the baton allows now, and wait for it once too much is held.
            while held and (held_bytes > _AHEAD or select.select([job["baton_in"]], [], [], 0)[0]):
                if not write_held():
                    return
    while held:
        if not write_held():
            return


def _pack_group(tar: TarWriter, blobs: BlobList, open_blob: Any, store: str) -> None:
    for at in range(len(blobs)):
        sha256 = blobs.name(at).decode()
        try:
            fd = open_blob(sha256)
        except FileNotFoundError:
            raise CcacheError(f"blob {sha256[:12]} is missing from store {store}; the store is damaged") from None
        try:
            tar.add(f"{BLOB_PREFIX}{sha256}", size=blobs.size(at), fd=fd)
        finally:
            os.close(fd)
    tar.cut()


def _report(stdout: IO[bytes], kind: bytes, message: str) -> None:
    encoded = message.encode()
    stdout.write(REPORT.pack(kind, len(encoded)) + encoded)
    stdout.flush()


if __name__ == "__main__":
    owners.die_with_parent()
    serve(sys.stdin.buffer, sys.stdout.buffer)
