"""Unpacks groups of an archive's frames in a process of its own; `archive.unpack`
and `archive.check_blobs` run one per core, forked from themselves where they can
(`serve`), else started as `python -m ccache_cli.archive.unpack_process`.

Reads from stdin a job (its length, then JSON: the staging folder for new blobs and
whether to go on past a blob that fails its hash; then the archive's blobs.txt, as a
BlobList, and a flag per blob, whether to write it; the report names blobs by their
place in that list), then frames as they are in the archive, whole groups only,
until the end: decompresses them, checks every member against the list and every blob
against its hash, and writes the new blobs, read-only, as `<objects>/ab/<sha256>`
(folders made by the caller). Writes one JSON report to stdout at the end.

Why processes: a thread that makes thousands of small system calls (open, write,
close per blob) gives the GIL up at each one and waits to get it back while another
thread parses, so threads left the cores idle; processes share nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
import sys
from pathlib import Path
from typing import IO, Any

from ccache_cli.archive.bloblist import BlobList
from ccache_cli.archive.frames import FrameReader
from ccache_cli.archive.tarstream import BLOB_PREFIX, TarReader, blob_members, copy_member
from ccache_cli.errors import ArchiveError, CcacheError, ReportedError
from ccache_cli.store import durable, owners

_JOB_LENGTH = struct.Struct("<Q")
_WHOLE = 1 << 20  # blobs up to this size are read whole, larger ones in chunks
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def job_bytes(job: dict[str, Any], blobs: BlobList, write: bytes) -> bytes:
    """A job as this process reads it from stdin: its JSON, then the blob list and a
    flag per blob, whether to write it."""
    encoded = json.dumps({**job, "count": len(blobs)}).encode()
    return _JOB_LENGTH.pack(len(encoded)) + encoded + blobs.to_bytes() + write


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """Read a job and its frames from `stdin`; write the report to `stdout`."""
    (length,) = _JOB_LENGTH.unpack(stdin.read(_JOB_LENGTH.size))
    job = json.loads(stdin.read(length))
    blobs = BlobList.read(stdin, job["count"])
    write = stdin.read(job["count"])
    report: dict[str, Any] = {"received": [], "broken": [], "ended": False, "error": None}
    try:
        _unpack(stdin, job, blobs, write, report)
    except CcacheError as exc:
        report["error"] = ReportedError.of(exc).to_json()
    except OSError as exc:
        report["error"] = ReportedError(CcacheError.__name__, _write_failure(job["objects"], exc)).to_json()
    except Exception as exc:  # a bug: said in the report, which the caller turns into one line
        report["error"] = ReportedError(CcacheError.__name__, f"an unpacking process failed: {exc!r}").to_json()
    stdin.close()  # before reporting: a caller still writing learns at once that this one stopped
    stdout.write(json.dumps(report).encode())
    stdout.flush()


def _unpack(stdin: IO[bytes], job: dict[str, Any], blobs: BlobList, write: bytes, report: dict[str, Any]) -> None:
    frames = FrameReader(stdin, part=True)

    def next_chunk() -> bytes:
        frame = frames.read()
        return b"" if frame is None else frame.decompress()

    tar = TarReader(next_chunk)
    folders: dict[str, int] = {}  # descriptors of the folders blobs are written to
    received = bytearray(len(blobs))  # a flag per blob
    try:
        for number, sha256, size in blob_members(tar, blobs, received):
            folder = None  # where the blob is written, if it is
            if write[number]:
                folder = folders.get(sha256[:2])
                if folder is None:
                    folder = folders[sha256[:2]] = os.open(
                        os.path.join(job["objects"], sha256[:2]), os.O_RDONLY | os.O_DIRECTORY
                    )
            if size <= _WHOLE:  # most blobs: checked before anything is written
                data = tar.read_member()
                good = hashlib.sha256(data).hexdigest() == sha256
                if good and folder is not None:
                    fd = _create(sha256, folder)
                    try:
                        os.write(fd, data)  # a regular file takes the whole buffer
                    finally:
                        os.close(fd)
            else:
                fd = _create(sha256, folder) if folder is not None else None
                try:
                    good = copy_member(tar, sha256, size, fd).hexdigest() == sha256
                finally:
                    if fd is not None:
                        os.close(fd)
                if not good and folder is not None:
                    os.unlink(sha256, dir_fd=folder)
            if not good:
                if not job["keep_going"]:
                    raise ArchiveError(f"blob {sha256[:12]} does not match its hash; the archive is corrupt")
                report["broken"].append(number)
    finally:
        for fd in folders.values():
            os.close(fd)
    report["received"] = list(itertools.compress(range(len(received)), received))
    report["ended"] = tar.ended


def _create(sha256: str, folder: int) -> int:
    try:
        return os.open(sha256, _CREATE, 0o444, dir_fd=folder)
    except FileExistsError:  # the staging folder is this unpack's own: another process wrote it
        raise ArchiveError(f"archive member '{BLOB_PREFIX}{sha256}' appears twice") from None


def _write_failure(objects: str, exc: OSError) -> str:
    """Why the blobs could not be written to the staging folder `objects`, in one line."""
    if durable.is_disk_full(exc):
        return durable.disk_full_message(f"store {Path(objects).parents[2]}")
    return f"cannot write blobs to {objects}: {exc.strerror or exc}"


if __name__ == "__main__":
    owners.die_with_parent()
    serve(sys.stdin.buffer, sys.stdout.buffer)
