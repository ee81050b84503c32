"""How entries lie in a registry: the layers of a ccache artifact and its manifest
(docs/registry-format.md).

Layers are cut so that a push uploads only what the registry lacks and a pull
downloads only what the store lacks:

- a blob of BIG_BLOB bytes or more is a layer of its own, raw, so its layer digest is
  its sha256: shared by every entry and every push that has it;
- an entry's smaller blobs go into packs (a tar of `objects/<sha256>`, zstd): walking
  its files in path order, a pack ends after a file whose path hashes to 0 modulo
  PACK_FILES (or before one that would take its tar past PACK_BYTES). The cuts depend on
  the paths alone, so two entries that share most files (another size set, a model
  edited in a few places) cut most packs at the same files: same bytes, same digest,
  one layer in the registry. Packs are per entry: one entry changed changes only its own;
- a catalog per entry: its file list and which layer holds each blob;
- the config: the archive's index.json (every manifest without its file list, each
  whole manifest's digest), all that `inspect REF` and `verify REF` read.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import zstandard

from ccache_cli.archive.head import Index, complete_manifest
from ccache_cli.archive.signing import SIGNATURE_LIMIT
from ccache_cli.archive.tarstream import BLOB_PREFIX, end_marker, member_length, ustar_header
from ccache_cli.errors import ArchiveError, StoreError
from ccache_cli.store import documents, schema
from ccache_cli.store.manifest import Manifest

ARTIFACT_TYPE = "application/vnd.ccache-cli.cache.v1"
INDEX_TYPE = "application/vnd.ccache-cli.index.v1+json"
CATALOG_TYPE = "application/vnd.ccache-cli.catalog.v1+json+zstd"
PACK_TYPE = "application/vnd.ccache-cli.pack.v1.tar+zstd"
BLOB_TYPE = "application/vnd.ccache-cli.blob.v1"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
ENTRY_ANNOTATION = "dev.ccache-cli.entry"
CREATED_ANNOTATION = "org.opencontainers.image.created"
SIGNATURE_ANNOTATION = "dev.ccache-cli.signature"
CATALOGS_AT_ONCE = (
    8  # catalogs a pull reads at the same time (its transfers)  # `push --sign`: the signature of the config's digest
)

BIG_BLOB = 1 << 20
PACK_BYTES = 16 << 20
# The most tar a pull accepts of a pack, which a fetching process holds whole: twice
# what push writes, so that packs cut by their blobs' bytes alone (headers and padding
# not counted, as before) still read.
PACK_LIMIT = 2 * PACK_BYTES
PACK_FILES = 1024
ZSTD_LEVEL = 3
_PIECE = 4 << 20
MANIFEST_LIMIT = 4 << 20  # what registries accept at most (distribution's default)
DOCUMENT_LIMIT = 256 << 20  # an index or catalog past this is not one ccache wrote


@dataclass(frozen=True)
class Layer:
    """A descriptor of the manifest: a layer, or the config."""

    media_type: str
    digest: str  # "sha256:<64 hex>"
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, media_type: str, data: bytes, annotations: Mapping[str, str] | None = None) -> Layer:
        return cls(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data), dict(annotations or {}))

    def descriptor(self) -> dict[str, Any]:
        described: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            described["annotations"] = dict(self.annotations)
        return described


# -- cutting -------------------------------------------------------------------


def cut(entry: Manifest) -> tuple[list[tuple[str, ...]], list[str]]:
    """An entry's packs (each its blobs, sorted) and its blobs big enough for a layer
    of their own, sorted; each blob once."""
    packs: list[list[str]] = [[]]
    filled = 0
    big: set[str] = set()
    seen: set[str] = set()
    files = entry.all_files
    for path in sorted(files):
        ref = files[path]
        sha256, size = ref["sha256"], ref["size"]
        if sha256 in seen:
            continue
        seen.add(sha256)
        if size >= BIG_BLOB:
            big.add(sha256)
            continue
        if packs[-1] and filled + member_length(size) > PACK_BYTES:
            packs.append([])
            filled = 0
        packs[-1].append(sha256)
        filled += member_length(size)
        if int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "big") % PACK_FILES == 0:
            packs.append([])
            filled = 0
    return [tuple(sorted(pack)) for pack in packs if pack], sorted(big)


def pack_bytes(blobs: Sequence[str], sizes: Mapping[str, int], read_blob: Callable[[str], bytes]) -> bytes:
    """A pack: the tar of `objects/<sha256>` for each blob (sorted), zstd-compressed as
    it is read (one blob in memory at a time, beside the compressed bytes). The same
    blobs give the same bytes (fixed tar headers, one zstd frame at a fixed level, fed
    a member's parts at a time)."""
    length = sum(member_length(sizes[sha256]) for sha256 in blobs)
    end = end_marker(length)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compressobj(size=length + len(end))
    compressed: list[bytes] = []
    piece = bytearray()  # fed to zstd a few MiB at a time: a call per blob costs more than the copy
    for sha256 in blobs:
        data = read_blob(sha256)
        if len(data) != sizes[sha256] or hashlib.sha256(data).hexdigest() != sha256:
            raise StoreError(f"blob {sha256[:12]} of the store is damaged; `ccache verify` names its entry")
        piece += ustar_header(BLOB_PREFIX + sha256, len(data))
        piece += data
        piece += bytes(-len(data) % 512)
        if len(piece) >= _PIECE:
            compressed.append(compressor.compress(piece))
            piece.clear()
    compressed += (compressor.compress(piece + end), compressor.flush())
    return b"".join(compressed)


def pack_length(sizes: Sequence[int]) -> int:
    """Bytes of the tar of a pack of blobs of these sizes, its end marker included."""
    length = sum(map(member_length, sizes))
    return length + len(end_marker(length))


def _zstd_bound(size: int) -> int:
    """The most one zstd frame makes of `size` bytes (zstd's ZSTD_COMPRESSBOUND)."""
    return size + (size >> 8) + ((((128 << 10) - size) >> 11) if size < 128 << 10 else 0)


# -- documents -----------------------------------------------------------------


def catalog_bytes(entry: Manifest, packs: Sequence[tuple[str, Sequence[str]]], big: Sequence[str]) -> bytes:
    """An entry's catalog: its file list (which, with the index's manifest, hashes to
    the digest in the index), the blobs its bytecode list names besides (sha256 ->
    size: what a pull downloads before it can read the list), each pack's layer digest
    and blobs, its raw blobs."""
    own = {ref["sha256"] for ref in entry.files.values()}
    listed = {ref["sha256"]: ref["size"] for ref in entry.all_files.values() if ref["sha256"] not in own}
    document = {
        "files": dict(entry.files),
        "listed": dict(sorted(listed.items())),
        "packs": [[digest, list(blobs)] for digest, blobs in packs],
        "blobs": big,
    }
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(_canonical(document))


def manifest_bytes(index: Layer, layers: Sequence[Layer], created: str, signature: bytes | None = None) -> bytes:
    """The manifest; `signature`, the signature document of the config's digest
    (archive/signing.py), goes in its annotations."""
    annotations = {CREATED_ANNOTATION: created, **({SIGNATURE_ANNOTATION: signature.decode()} if signature else {})}
    return _canonical(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "config": index.descriptor(),
            "layers": [layer.descriptor() for layer in layers],
            "annotations": annotations,
        }
    )


def _canonical(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# -- reading -------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """A ccache artifact's manifest, read back and checked."""

    index: Layer  # the config: index.json
    catalogs: Mapping[str, Layer]  # per entry id
    layers: Mapping[str, Layer]  # packs and raw blobs, by digest
    signature: bytes | None = None  # the signature document of the config's digest, if signed

    @property
    def layer_count(self) -> int:
        return len(self.catalogs) + len(self.layers)


def parse_manifest(data: bytes, reference: str) -> Artifact:
    """A manifest, checked: one of ccache's artifacts, every descriptor well formed."""
    try:
        document = documents.parse(data, "its manifest")
    except ValueError as exc:
        raise ArchiveError(f"{reference}: its manifest is not JSON ({exc})") from exc
    if not isinstance(document, dict) or document.get("schemaVersion") != 2:
        raise ArchiveError(f"{reference} is not an OCI image manifest")
    config = document.get("config") if isinstance(document.get("config"), dict) else {}
    kind = document.get("artifactType") or config.get("mediaType")
    if kind != ARTIFACT_TYPE and config.get("mediaType") != INDEX_TYPE:
        raise ArchiveError(
            f"{reference} is not a ccache artifact (its type is {kind or document.get('mediaType')!r}); "
            "push one with `ccache push`"
        )
    try:
        index = _layer(config, {INDEX_TYPE})
        catalogs: dict[str, Layer] = {}
        layers: dict[str, Layer] = {}
        for described in document["layers"]:
            layer = _layer(described, {CATALOG_TYPE, PACK_TYPE, BLOB_TYPE})
            if layer.media_type == CATALOG_TYPE:
                entry_id = layer.annotations.get(ENTRY_ANNOTATION, "")
                if not schema.all_hex64([entry_id]) or entry_id in catalogs:
                    raise ValueError(f"a catalog layer names entry {entry_id!r}")
                catalogs[entry_id] = layer
            else:
                layers[layer.digest] = layer
        annotations = document.get("annotations") or {}
        signature = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
        if signature is not None and (not isinstance(signature, str) or len(signature) > SIGNATURE_LIMIT):
            raise ValueError("its signature annotation is not a signature")
    except (KeyError, TypeError, ValueError) as exc:
        raise ArchiveError(f"{reference}: its manifest is malformed ({exc})") from exc
    return Artifact(index, catalogs, layers, signature.encode() if signature is not None else None)


def _layer(described: Any, media_types: set[str]) -> Layer:
    if not isinstance(described, dict):
        raise TypeError("a descriptor is not an object")
    media_type, digest, size = described["mediaType"], described["digest"], described["size"]
    annotations = described.get("annotations") or {}
    if media_type not in media_types:
        raise ValueError(f"unexpected media type {media_type!r}")
    if not (isinstance(digest, str) and digest.startswith("sha256:") and schema.all_hex64([digest[7:]])):
        raise ValueError(f"digest {digest!r} is not a sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"size {size!r}")
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise ValueError("annotations are not strings")
    return Layer(media_type, digest, size, annotations)


@dataclass(frozen=True)
class Catalog:
    """An entry's catalog, checked against the index and the manifest."""

    entry: Manifest  # complete: its files put back, hashing to its digest in the index
    packs: tuple[tuple[str, tuple[str, ...]], ...]  # each pack's layer digest and blobs
    big: tuple[str, ...]  # blobs that are layers of their own
    sizes: Mapping[str, int]  # every blob of the entry, its bytecode list's too, with its size


def parse_catalog(data: bytes, listed: Manifest, index: Index, artifact: Artifact) -> Catalog:
    try:
        text = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read(DOCUMENT_LIMIT + 1)
        if len(text) > DOCUMENT_LIMIT:
            raise ValueError("it is larger than any ccache writes")
        # A pull reads up to CATALOGS_AT_ONCE catalogs at a time: each gets its share.
        document = documents.parse(text, "its catalog", documents.PEAK_BYTES // CATALOGS_AT_ONCE)
        packs = tuple((str(digest), tuple(map(str, blobs))) for digest, blobs in document["packs"])
        big = tuple(map(str, document["blobs"]))
        entry = complete_manifest(index, listed, document["files"], "artifact")
        bytecode_blobs = document.get("listed", {})
        if not isinstance(bytecode_blobs, dict) or not all(
            isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in bytecode_blobs.values()
        ):
            raise ValueError("its listed blobs are not sizes by sha256")
        if not schema.all_hex64(list(bytecode_blobs)):
            raise ValueError("its listed blobs are not named by sha256")
    except (zstandard.ZstdError, ValueError, KeyError, TypeError) as exc:
        raise ArchiveError(f"the catalog of entry {listed.short_id} is malformed ({exc})") from exc
    held: set[str] = set(big)
    for digest, blobs in packs:
        layer = artifact.layers.get(digest)
        if layer is None or layer.media_type != PACK_TYPE:
            raise ArchiveError(f"the catalog of entry {listed.short_id} names a pack the manifest lacks")
        held.update(blobs)
    for sha256 in big:
        layer = artifact.layers.get("sha256:" + sha256)
        if layer is None or layer.media_type != BLOB_TYPE:
            raise ArchiveError(f"the catalog of entry {listed.short_id} names a blob layer the manifest lacks")
    sizes = {**bytecode_blobs, **{ref["sha256"]: ref["size"] for ref in entry.files.values()}}
    if held != set(sizes) or any(artifact.layers["sha256:" + sha256].size != sizes.get(sha256) for sha256 in big):
        raise ArchiveError(f"the catalog of entry {listed.short_id} does not account for every blob of the entry")
    for digest, blobs in packs:  # a pull holds a pack whole: bounded, as push makes them
        length = pack_length([sizes[sha256] for sha256 in blobs])
        if length > PACK_LIMIT or artifact.layers[digest].size > _zstd_bound(length):
            raise ArchiveError(f"the catalog of entry {listed.short_id} names a pack larger than any ccache writes")
    return Catalog(entry, packs, big, sizes)
