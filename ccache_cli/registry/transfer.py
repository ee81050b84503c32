"""`push` and `pull`: entries to and from a registry, each layer moved only where the
other side lacks it, several at once, streamed.

A pull trusts nothing it downloads: the manifest must be a ccache artifact, the index
and each catalog must hash to their digests, each catalog's file list to its
manifest's digest in the index, each layer to its digest and each blob to its name.
Blobs are staged in the store's tmp/ and entries published only when everything
checked out, as `unpack` does. A pull cut off by the network keeps the blobs it
verified (in the store, named by no entry until a pull completes; `gc` removes them
otherwise), so the next pull resumes where it stopped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import zstandard

from ccache_cli.archive.head import Index, index_document, parse_index
from ccache_cli.archive.tarstream import TarReader, blob_members, copy_member
from ccache_cli.archive.unpack import link_present
from ccache_cli.errors import ArchiveError, RegistryError
from ccache_cli.store.manifest import Manifest
from ccache_cli.store.store import Store

from . import layout
from .client import Remote
from .layout import Layer

Progress = Callable[[int], None]  # called with a count of bytes just moved
TRANSFERS = 8  # layers moved at once
_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class PushResult:
    reference: str
    digest: str  # the manifest's
    entries: tuple[Manifest, ...]
    layers: int  # the config and every layer
    uploaded: int  # of those, the ones the registry lacked
    uploaded_bytes: int
    total_bytes: int


def push(
    store: Store, entries: Sequence[Manifest], remote: Remote, on_progress: Progress = lambda _: None
) -> PushResult:
    """Upload `entries` as one artifact under `remote`'s tag, each layer only if the
    registry lacks it; the tag moves only once every layer is there."""
    sizes = {ref["sha256"]: ref["size"] for entry in entries for ref in entry.files.values()}
    cuts = {entry.id: layout.cut(entry) for entry in entries}
    packs = sorted({pack for entry_packs, _ in cuts.values() for pack in entry_packs})
    big = sorted({sha256 for _, entry_big in cuts.values() for sha256 in entry_big})
    uploads = _Tally()

    def read_blob(sha256: str) -> bytes:
        with open(store.blob_file(sha256), "rb") as handle:
            return handle.read()

    def send_pack(blobs: tuple[str, ...]) -> Layer:
        data = layout.pack_bytes(blobs, sizes, read_blob)
        layer = Layer.of(layout.PACK_TYPE, data)
        uploads.add(layer, _ensure(remote, layer, data))
        on_progress(sum(sizes[sha256] for sha256 in blobs))
        return layer

    def send_big(sha256: str) -> Layer:
        layer = Layer(layout.BLOB_TYPE, "sha256:" + sha256, sizes[sha256])
        sent = False
        if not remote.has_blob(layer.digest):
            with open(store.blob_file(sha256), "rb") as handle:
                remote.put_blob(layer.digest, layer.size, handle)
            sent = True
        uploads.add(layer, sent)
        on_progress(layer.size)
        return layer

    pack_layers = dict(zip(packs, _parallel(send_pack, packs)))
    big_layers = _parallel(send_big, big)
    catalogs = []
    for entry in sorted(entries, key=lambda e: e.id):
        entry_packs, entry_big = cuts[entry.id]
        data = layout.catalog_bytes(entry, [(pack_layers[pack].digest, pack) for pack in entry_packs], entry_big)
        catalog = Layer.of(layout.CATALOG_TYPE, data, {layout.ENTRY_ANNOTATION: entry.id})
        uploads.add(catalog, _ensure(remote, catalog, data))
        catalogs.append(catalog)
    index_bytes = index_document(entries)
    index = Layer.of(layout.INDEX_TYPE, index_bytes)
    uploads.add(index, _ensure(remote, index, index_bytes))
    others = sorted({layer.digest: layer for layer in [*pack_layers.values(), *big_layers]}.values(), key=_digest)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    digest = remote.put_manifest(layout.manifest_bytes(index, [*catalogs, *others], created))
    return PushResult(
        remote.reference,
        digest,
        tuple(entries),
        len(uploads.layers),
        uploads.sent,
        uploads.sent_bytes,
        sum(layer.size for layer in uploads.layers.values()),
    )


def _digest(layer: Layer) -> str:
    return layer.digest


def _ensure(remote: Remote, layer: Layer, data: bytes) -> bool:
    """Upload a layer the registry lacks; whether it was uploaded."""
    if remote.has_blob(layer.digest):
        return False
    remote.put_blob(layer.digest, layer.size, data)
    return True


class _Tally:
    """Layers of a push, counted once each, from several threads."""

    def __init__(self) -> None:
        self.layers: dict[str, Layer] = {}
        self.sent = 0
        self.sent_bytes = 0
        self._lock = threading.Lock()

    def add(self, layer: Layer, sent: bool) -> None:
        with self._lock:
            if layer.digest in self.layers:
                return
            self.layers[layer.digest] = layer
            if sent:
                self.sent += 1
                self.sent_bytes += layer.size


# -- pull ----------------------------------------------------------------------


@dataclass(frozen=True)
class PullResult:
    reference: str
    added: tuple[Manifest, ...]  # entries new to the store
    kept: tuple[Manifest, ...]  # entries the store already had
    skipped: tuple[str, ...]  # ids left out by the selection
    new_blobs: int
    new_bytes: int
    layers: int  # of the artifact
    downloaded: int  # layers downloaded, catalogs and config included
    downloaded_bytes: int


def read_listing(remote: Remote) -> tuple[layout.Artifact, Index]:
    """The artifact's manifest and index (its config): all `inspect REF` and `verify REF` read."""
    artifact = layout.parse_manifest(remote.manifest(layout.MANIFEST_LIMIT), remote.reference)
    index = parse_index(remote.blob(artifact.index.digest, artifact.index.size, layout.DOCUMENT_LIMIT))
    if set(artifact.catalogs) != {entry.id for entry in index.entries}:
        raise ArchiveError(
            f"{remote.reference}: its manifest does not hold a catalog for exactly the entries of its index"
        )
    return artifact, index


def pull(
    store: Store,
    remote: Remote,
    select: Callable[[Manifest], bool] = lambda _: True,
    on_progress: Progress = lambda _: None,
) -> PullResult:
    """Merge the artifact's entries into `store`, downloading only the layers holding
    blobs the store lacks; all or nothing (but see the module's note on resuming)."""
    artifact, index = read_listing(remote)
    chosen = [entry for entry in index.entries if select(entry)]
    skipped = tuple(entry.id for entry in index.entries if not select(entry))
    downloads = [artifact.index]

    def read_catalog(listed: Manifest) -> layout.Catalog:
        layer = artifact.catalogs[listed.id]
        return layout.parse_catalog(
            remote.blob(layer.digest, layer.size, layout.DOCUMENT_LIMIT), listed, index, artifact
        )

    catalogs = _parallel(read_catalog, chosen)
    downloads += [artifact.catalogs[entry.id] for entry in chosen]
    entries = [catalog.entry for catalog in catalogs]
    sizes = {ref["sha256"]: ref["size"] for entry in entries for ref in entry.files.values()}
    with store.staging() as staging:
        objects = staging / "objects"
        present = link_present(store, objects, list(sizes))
        needed = set(sizes) - present
        jobs = _jobs(catalogs, needed)
        for folder in {sha256[:2] for sha256 in needed}:
            (objects / folder).mkdir(parents=True, exist_ok=True)
        fetcher = _Fetcher(remote, objects, sizes, on_progress)
        try:
            _parallel(
                fetcher.fetch, [(artifact.layers[digest], blobs, wanted) for digest, (blobs, wanted) in jobs.items()]
            )
        except RegistryError:
            # Cut off by the network: keep what was verified, for the next pull.
            store.publish([], staging, fetcher.verified)
            raise
        downloads += [artifact.layers[digest] for digest in jobs]
        if fetcher.verified != needed:
            raise ArchiveError(
                f"{remote.reference}: its layers lack {len(needed - fetcher.verified)} blob(s) its catalogs name"
            )
        published = store.publish(entries, staging, needed)
    return PullResult(
        remote.reference,
        tuple(entry for entry, is_new in published if is_new),
        tuple(entry for entry, is_new in published if not is_new),
        skipped,
        len(needed),
        sum(sizes[sha256] for sha256 in needed),
        artifact.layer_count + 1,
        len(downloads),
        sum(layer.size for layer in downloads),
    )


def _jobs(catalogs: Sequence[layout.Catalog], needed: set[str]) -> dict[str, tuple[tuple[str, ...], frozenset[str]]]:
    """The layers to download, by digest: each with its blobs (a pack's, in order) and
    those of them to write, each needed blob taken from the first layer that holds it."""
    assigned: set[str] = set()
    jobs: dict[str, tuple[tuple[str, ...], set[str]]] = {}
    for catalog in catalogs:
        holders = [(digest, blobs) for digest, blobs in catalog.packs]
        holders += [("sha256:" + sha256, (sha256,)) for sha256 in catalog.big]
        for digest, blobs in holders:
            wanted = {sha256 for sha256 in blobs if sha256 in needed and sha256 not in assigned}
            if wanted:
                assigned.update(wanted)
                jobs.setdefault(digest, (blobs, set()))[1].update(wanted)
    return {digest: (blobs, frozenset(wanted)) for digest, (blobs, wanted) in jobs.items()}


class _Fetcher:
    """Downloads layers into a staging folder, from several threads."""

    def __init__(self, remote: Remote, objects: Path, sizes: dict[str, int], on_progress: Progress) -> None:
        self.remote = remote
        self.objects = objects
        self.sizes = sizes
        self.on_progress = on_progress
        self.verified: set[str] = set()  # blobs written whole and hashing to their names
        self._lock = threading.Lock()

    def fetch(self, job: tuple[Layer, tuple[str, ...], frozenset[str]]) -> None:
        layer, blobs, wanted = job
        chunks = self._counted(self.remote.stream(layer.digest, layer.size))
        if layer.media_type == layout.BLOB_TYPE:
            (sha256,) = blobs
            with self._blob_file(sha256) as fd:
                for chunk in chunks:  # the stream checks size and digest, the digest being the blob's
                    os.write(fd, chunk)
            return
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        pieces = (decompressor.decompress(chunk) for chunk in chunks)
        tar = TarReader(lambda: next(pieces, b""))
        listing = layout.pack_list(blobs, self.sizes)
        received = bytearray(len(blobs))
        try:
            for _, sha256, size in blob_members(tar, listing, received):
                if sha256 in wanted:
                    with self._blob_file(sha256) as fd:
                        digest = copy_member(tar, sha256, size, fd)
                        _check_blob(digest.hexdigest(), sha256)
                else:
                    _check_blob(copy_member(tar, sha256, size, None).hexdigest(), sha256)
            for _ in pieces:  # the rest of the stream: the layer's digest is checked at its end
                pass
        except zstandard.ZstdError as exc:
            raise ArchiveError(f"{self.remote.reference}: pack {layer.digest[7:19]} is corrupt ({exc})") from exc
        if not tar.ended or not all(received):
            raise ArchiveError(f"{self.remote.reference}: pack {layer.digest[7:19]} lacks blobs its catalog names")

    @contextlib.contextmanager
    def _blob_file(self, sha256: str) -> Iterator[int]:
        """A blob's file in staging, written whole or removed; verified on a clean exit."""
        path = self.objects / sha256[:2] / sha256
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        try:
            yield fd
            os.fchmod(fd, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        finally:
            os.close(fd)
        with self._lock:
            self.verified.add(sha256)

    def _counted(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.on_progress(len(chunk))
            yield chunk


def _check_blob(actual: str, sha256: str) -> None:
    if actual != sha256:
        raise ArchiveError(f"blob {sha256[:12]} does not match its hash; the registry's copy is corrupt")


def _parallel(function: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """`function` over `items` on TRANSFERS threads, in order; the first failure is
    raised once the others have stopped (those not started are cancelled)."""
    if len(items) <= 1:
        return [function(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(TRANSFERS) as pool:
        futures = [pool.submit(function, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
