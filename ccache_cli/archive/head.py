"""The archive's head: what it holds, written and read.

Members, in this order: `index.json` (format version, every manifest without its file
list, artifact counts per entry, and each whole manifest's SHA-256: all that `inspect
ARCHIVE` reads, small whatever the archive's size), `blobs.txt` (each blob's sha256
and size, a line each, sorted) and, when signed, `signature.json`: the head, a group
of its own; then `files.json` (each entry's files) in a group of its own. Reading
trusts nothing: the signature is checked (where keys are trusted) before anything is
parsed, every manifest against the schema and its digest.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

from ccache_cli.archive import signing
from ccache_cli.archive.bloblist import BLOBS_NAME, BlobList
from ccache_cli.archive.frames import FRAME_SIZE, Frame, FrameReader, FrameWriter
from ccache_cli.archive.signing import SIGNATURE_LIMIT, SIGNATURE_NAME, PublicKey, Signer
from ccache_cli.archive.tarstream import REGULAR, Member, TarReader, TarWriter
from ccache_cli.errors import ArchiveError
from ccache_cli.store import documents, manifest, schema
from ccache_cli.store.artifacts import KindSummary
from ccache_cli.store.hashing import hash_json
from ccache_cli.store.manifest import Manifest

Progress = Callable[[int], None]  # called with a count of bytes just handled

ARCHIVE_FORMAT = 5
# Format 4 manifests list their .pyc files inline; 5's may name a bytecode list
# (store/bytecode_list.py), which an older reader would not lay out: it refuses format 5.
_READABLE_FORMATS = (4, ARCHIVE_FORMAT)
INDEX_NAME = "index.json"
FILES_NAME = "files.json"
_INDEX_LIMIT = 256 << 20  # an index, blob list or files.json past this is not one this tool wrote


def head_frames(entries: Sequence[Manifest], listing: bytes, level: int, signer: Signer | None) -> tuple[bytes, int]:
    """The archive's first groups, as frames: index.json, blobs.txt and the signature,
    then files.json; and their length in the tar stream."""
    ordered = sorted(entries, key=lambda entry: entry.id)
    index_bytes = index_document(ordered)
    members = [(INDEX_NAME, index_bytes), (BLOBS_NAME, listing)]
    if signer is not None:
        members.append((SIGNATURE_NAME, signer.signature(ARCHIVE_FORMAT, index_bytes, listing)))
    out = io.BytesIO()
    tar = TarWriter(FrameWriter(out, level))
    for name, data in members:
        tar.add(name, size=len(data), data=data)
    tar.cut()  # the head is a group of its own: what inspect reads, and all the unpacking processes need
    data = _json_bytes({"files": {entry.id: entry.files for entry in ordered}})
    tar.add(FILES_NAME, size=len(data), data=data)
    tar.cut()
    return out.getvalue(), tar.written


def index_document(entries: Sequence[Manifest]) -> bytes:
    """index.json: what `inspect ARCHIVE` and `inspect REF` show, small whatever the
    archive's size: manifests without their file lists, artifact counts per entry, and
    the digest of each whole manifest, which covers its file list (files.json, or a
    registry's catalog layer)."""
    ordered = sorted(entries, key=lambda entry: entry.id)
    return _json_bytes(
        {
            "format": ARCHIVE_FORMAT,
            "entries": [entry.without_files() for entry in ordered],
            "artifacts": {entry.id: [[k.kind, k.count, k.bytes] for k in entry.totals.kinds] for entry in ordered},
            "digests": {entry.id: entry.digest() for entry in ordered},
        }
    )


def _json_bytes(content: dict[str, Any]) -> bytes:
    return json.dumps(content, sort_keys=True, separators=(",", ":")).encode()


def read_index(source: BinaryIO, trusted: Sequence[PublicKey] = ()) -> Index:
    """The index of an archive, checked against the signature where keys are trusted;
    reading only as far as its first member where none are."""
    if trusted:
        return Head.read(source, trusted=trusted).index
    return parse_index(read_member(Head(FrameReader(source)).tar, INDEX_NAME))


class Head:
    """The archive's head (index.json, blobs.txt and the signature, if any), read and
    checked in this process, and files.json's group, kept to be read while the blobs
    unpack. Each must end where a group starts: `next_group` is the first frame of the
    blobs once `take_files_group` has run."""

    index: Index  # index.json, checked
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
    def read(cls, source: IO[bytes], on_progress: Progress = lambda _: None, trusted: Sequence[PublicKey] = ()) -> Head:
        """The head, checked; where keys are trusted, signed by one of them (TrustError if not)."""
        head = cls(FrameReader(source, on_progress))
        head.index_bytes = read_member(head.tar, INDEX_NAME)
        head.blobs_bytes = read_member(head.tar, BLOBS_NAME)
        head._in_head = False
        member = head.tar.next()
        head.signature = None
        if member is not None and member.name == SIGNATURE_NAME:
            if member.type not in REGULAR or member.size > SIGNATURE_LIMIT:
                raise ArchiveError(f"archive's {SIGNATURE_NAME} is not one this tool writes")
            head.signature = head.tar.read_exactly(member.size, f"its {SIGNATURE_NAME}").tobytes()
            member = head.tar.next()
        if member is not None or head.tar.ended:
            raise ArchiveError(
                f"archive has more than {INDEX_NAME}, {BLOBS_NAME} and {SIGNATURE_NAME} in their group; "
                "it was not written by `ccache pack`"
            )
        # Checked before any of it is parsed: what no trusted key signed is not looked at.
        signing.check(head.signature, _format_of(head.index_bytes), head.index_bytes, head.blobs_bytes, trusted)
        head.index = parse_index(head.index_bytes)
        head.blobs = BlobList.parse(head.blobs_bytes)
        return head

    def take_files_group(self) -> None:
        """Take files.json's group, for `read_files`: the next group is then the first of the blobs."""
        self._files_group = self._take_group()

    def read_files(self, sizes: dict[str, int]) -> list[Manifest]:
        """files.json's group, read and checked against the index and `sizes` (blobs.txt's):
        the complete manifests, each checked whole and against its digest in the index."""
        chunks = (frame.decompress() for frame in self._files_group)
        tar = TarReader(lambda: next(chunks, b""))
        files = read_json_member(tar, FILES_NAME)
        check_group_ended(tar, FILES_NAME)
        return _complete_manifests(self.index, files, sizes)

    def _take_group(self) -> list[Frame]:
        """The frames of the group that starts at `next_group`, which then moves on."""
        group: list[Frame] = []
        size = 0
        frame = self.next_group
        while frame is not None and (not group or not frame.starts_group):
            size += frame.size
            if size > _INDEX_LIMIT + FRAME_SIZE:
                raise ArchiveError(
                    f"{FILES_NAME} is larger than any this tool writes; the archive was not written by `ccache pack`"
                )
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


def check_group_ended(tar: TarReader, what: str) -> None:
    if tar.next() is not None or tar.ended:
        raise ArchiveError(f"archive has more than {what} in their group; it was not written by `ccache pack`")


def expect_member(tar: TarReader, name: str) -> Member:
    member = tar.next()
    if member is None or member.name != name or member.type not in REGULAR:
        where = f"start with {name}" if name == INDEX_NAME else f"have {name} where it belongs"
        raise ArchiveError(f"archive does not {where}; it was not written by `ccache pack`")
    if member.size > _INDEX_LIMIT:
        raise ArchiveError(f"{name} declares {member.size} bytes, more than any this tool writes")
    return member


def read_member(tar: TarReader, name: str) -> bytes:
    member = expect_member(tar, name)
    return tar.read_exactly(member.size, f"its {name}").tobytes()


def read_json_member(tar: TarReader, name: str) -> Any:
    try:
        return documents.parse(read_member(tar, name), name)
    except ValueError as exc:
        raise ArchiveError(f"{name} is malformed ({exc})") from exc


def _format_of(index: bytes) -> Any:
    """The format an index.json declares, read before anything else in it."""
    try:
        return documents.parse(index, INDEX_NAME).get("format")
    except (ValueError, AttributeError):
        return None


def parse_index(data: bytes) -> Index:
    """index.json, checked: format, manifests without file lists, artifact counts, each
    whole manifest's digest."""
    try:
        index = documents.parse(data, INDEX_NAME)
    except ValueError as exc:
        raise ArchiveError(f"{INDEX_NAME} is malformed ({exc})") from exc
    version = index.get("format") if isinstance(index, dict) else None
    if version in _OLDER_FORMATS:
        raise ArchiveError(
            f"archive format {version} was written by an older ccache-cli, which did not cover "
            "manifests by a hash; pack it again with this version"
        )
    if version not in _READABLE_FORMATS:
        raise ArchiveError(
            f"archive format {version!r} is not supported (this ccache-cli reads format {ARCHIVE_FORMAT}); upgrade ccache-cli"
        )
    try:
        if not isinstance(index["entries"], list):
            raise TypeError("entries is not a list")
        entries = tuple(manifest.parse(document, with_files=False) for document in index["entries"])
        ids = [entry.id for entry in entries]
        if len(set(ids)) != len(ids):
            raise ArchiveError(f"{INDEX_NAME} lists an entry twice; the archive is corrupt or was tampered with")
        digests = index["digests"]
        if not isinstance(digests, dict) or set(digests) != set(ids) or not schema.all_hex64(list(digests.values())):
            raise ArchiveError(f"{INDEX_NAME} does not give one manifest digest (a sha256) per entry")
        kinds = {
            entry_id: tuple(
                KindSummary(str(kind), int(count), int(size)) for kind, count, size in index["artifacts"][entry_id]
            )
            for entry_id in ids
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArchiveError(f"{INDEX_NAME} is malformed ({exc})") from exc
    return Index(entries, kinds, digests)


@dataclass(frozen=True)
class Index:
    """An archive's index.json: its entries without their file lists."""

    entries: tuple[Manifest, ...]
    kinds: Mapping[str, tuple[KindSummary, ...]]  # per entry id: artifact counts and bytes by kind
    digests: Mapping[str, str]  # per entry id: the SHA-256 of its whole manifest


_OLDER_FORMATS = (1, 2, 3)


def _complete_manifests(index: Index, files: Any, sizes: dict[str, int]) -> list[Manifest]:
    """The index's manifests with files.json's file lists, each checked whole and
    against its digest in the index, each file's blob against `sizes` (blobs.txt's)."""
    try:
        if set(files["files"]) != {entry.id for entry in index.entries}:
            raise ArchiveError(f"{FILES_NAME} does not list the files of exactly the entries of {INDEX_NAME}")
        lists = [files["files"][entry.id] for entry in index.entries]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ArchiveError(f"{FILES_NAME} is malformed ({exc})") from exc
    complete = []
    for listed, file_list in zip(index.entries, lists):
        entry = complete_manifest(index, listed, file_list, "archive")
        for ref in entry.files.values():
            if sizes.get(ref["sha256"]) != ref["size"]:
                raise ArchiveError(
                    f"{FILES_NAME} is inconsistent: entry {entry.short_id} names a blob that {BLOBS_NAME} does not list"
                )
        complete.append(entry)
    return complete


def complete_manifest(index: Index, listed: Manifest, file_list: Any, carrier: str) -> Manifest:
    """An index's manifest with its file list put back, checked whole and against its
    digest in the index; `carrier` (archive, artifact) names what was changed if not."""
    document = listed.with_files(file_list)
    if hash_json(document) != index.digests[listed.id]:
        raise ArchiveError(
            f"manifest of entry {listed.short_id} does not match its digest in {INDEX_NAME}: "
            f"the {carrier} was changed after it was written"
        )
    return manifest.parse(document)
