"""`push` and `pull`: entries to and from a registry, each layer moved only where the
other side lacks it, several at once, streamed.

A pull trusts nothing it downloads: the manifest must be a ccache artifact, the index
and each catalog must hash to their digests, each catalog's file list to its
manifest's digest in the index, each blob layer to its digest, each pack's members to
the catalog's list and each blob to its name.
Blobs are staged in the store's tmp/ and entries published only when everything
checked out, as `unpack` does. A pull cut off by the network keeps the blobs it
verified (in the store, named by no entry until a pull completes; `gc` removes them
otherwise), so the next pull resumes where it stopped.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ccache_cli.archive import processes, signing
from ccache_cli.archive.head import Index, index_document, parse_index
from ccache_cli.errors import ArchiveError, RegistryError, ReportedError
from ccache_cli.store import bytecode_list, manifest
from ccache_cli.store.manifest import Manifest
from ccache_cli.store.staging import link_present, staged_reader
from ccache_cli.store.store import Store

from . import layout
from .client import Remote
from .downloads import Downloads
from .layout import Layer

Progress = Callable[[int], None]  # called with a count of bytes just moved
TRANSFERS = layout.CATALOGS_AT_ONCE  # requests in flight, over all processes
_T = TypeVar("_T")
_R = TypeVar("_R")


def in_threads(function: Callable[[_T], _R], items: Sequence[_T], threads: int = TRANSFERS) -> Iterator[_R]:
    """`function` over `items` on `threads` threads, each result as soon as it is ready;
    the first failure is raised once the calls under way have ended (those not started
    are cancelled)."""
    if len(items) <= 1 or threads <= 1:
        yield from map(function, items)
        return
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(function, item) for item in items]
        try:
            for future in concurrent.futures.as_completed(futures):
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


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
    store: Store,
    entries: Sequence[Manifest],
    remote: Remote,
    on_progress: Progress = lambda _: None,
    signer: signing.Signer | None = None,
) -> PushResult:
    """Upload `entries` as one artifact under `remote`'s tag, each layer only if the
    registry lacks it; the tag moves only once every layer is there. With `signer`,
    the manifest carries its signature of the config's digest."""
    entries = list({entry.id: entry for entry in entries}.values())
    sizes = manifest.blob_sizes(entries)
    cuts = {entry.id: layout.cut(entry) for entry in entries}
    packs = sorted({pack for entry_packs, _ in cuts.values() for pack in entry_packs})
    big = sorted({sha256 for _, entry_big in cuts.values() for sha256 in entry_big})
    uploads = _Tally()

    def send_pack(blobs: tuple[str, ...]) -> tuple[tuple[str, ...], Layer]:
        data = layout.pack_bytes(blobs, sizes, store.read_blob)
        layer = Layer.of(layout.PACK_TYPE, data)
        uploads.add(layer, _ensure(remote, layer, data))
        on_progress(sum(sizes[sha256] for sha256 in blobs))
        return blobs, layer

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

    pack_layers = dict(in_threads(send_pack, packs))
    big_layers = list(in_threads(send_big, big))
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
    created = max(entry.created for entry in entries)  # the same entries give the same manifest
    signature = signer.sign(signing.artifact_message(index.digest)) if signer is not None else None
    digest = remote.put_manifest(layout.manifest_bytes(index, [*catalogs, *others], created, signature))
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


def read_listing(remote: Remote, trusted: Sequence[signing.PublicKey] = ()) -> tuple[layout.Artifact, Index]:
    """The artifact's manifest and index (its config): all `inspect REF` and `verify REF`
    read. With `trusted` keys, one of them must have signed it (TrustError), checked
    before anything else is downloaded."""
    artifact = layout.parse_manifest(remote.manifest(layout.MANIFEST_LIMIT), remote.reference)
    signing.check_message(
        artifact.signature,
        signing.artifact_message(artifact.index.digest),
        trusted,
        remote.reference,
        "signature annotation",
    )
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
    trusted: Sequence[signing.PublicKey] = (),
) -> PullResult:
    """Merge the artifact's entries into `store`, downloading only the layers holding
    blobs the store lacks; all or nothing (but see the module's note on resuming).

    Each catalog's layers start downloading as soon as it has been read and checked,
    while the others are still on their way (as unpack writes blobs while it reads
    the manifests)."""
    artifact, index = read_listing(remote, trusted)
    chosen: list[Manifest] = []
    skipped: list[str] = []
    for entry in index.entries:
        if select(entry):
            chosen.append(entry)
        else:
            skipped.append(entry.id)

    def read_catalog(listed: Manifest) -> layout.Catalog:
        layer = artifact.catalogs[listed.id]
        return layout.parse_catalog(
            remote.blob(layer.digest, layer.size, layout.DOCUMENT_LIMIT), listed, index, artifact
        )

    sizes: dict[str, int] = {}
    present: set[str] = set()
    needed: set[str] = set()
    fetched: dict[str, Layer] = {}  # layers sent to download, by digest
    catalogs: dict[str, layout.Catalog] = {}
    listings: dict[str, set[str]] = {}  # the store's blob folders, each listed once
    with store.staging() as staging:
        objects = staging / "objects"
        objects.mkdir()
        # Started before any thread (so they are forked), for the layers the artifact has.
        workers = processes.worker_count(sum(layer.size for layer in artifact.layers.values()))
        with Downloads(remote, objects, min(workers, len(artifact.layers)), TRANSFERS, on_progress) as downloads:
            cut_off: RegistryError | None = None
            try:
                for catalog in in_threads(read_catalog, chosen):
                    catalogs[catalog.entry.id] = catalog
                    new = {sha256: size for sha256, size in catalog.sizes.items() if sha256 not in sizes}
                    sizes.update(new)
                    linked = link_present(store, objects, new, listings)
                    present |= linked
                    wanted_now = set(new) - linked
                    needed |= wanted_now
                    for digest, blobs, wanted in _jobs(catalog, wanted_now, artifact):
                        fetched[digest] = artifact.layers[digest]
                        downloads.send(fetched[digest], blobs, wanted, sizes)
                    if downloads.failed:  # the pull cannot complete: no more to send
                        break
            except RegistryError as exc:  # the network cut a catalog off: keep what the layers brought
                cut_off = exc
            verified, error = downloads.finish()
        if error is None and cut_off is not None:
            error = ReportedError.of(cut_off)
        if error is not None:
            if error.transfer:  # cut off by the network: keep what was verified, for the next pull
                _keep_only(objects, verified | present)
                store.publish([], staging, verified)
            raise error.raised()
        if verified != needed:
            raise ArchiveError(
                f"{remote.reference}: its layers lack {len(needed - verified)} blob(s) its catalogs name"
            )
        staged = staged_reader(objects)
        entries = [catalogs[listed.id].entry.reading(staged) for listed in chosen]
        for entry in entries:  # each bytecode list names only blobs its catalog carries
            bytecode_list.carried_blobs([entry], catalogs[entry.id].sizes, remote.reference)
        published = store.publish(entries, staging, needed | present)  # linked ones too: rm and gc may run
    downloads_made = [artifact.index, *(artifact.catalogs[entry.id] for entry in chosen), *fetched.values()]
    return PullResult(
        remote.reference,
        tuple(entry for entry, is_new in published if is_new),
        tuple(entry for entry, is_new in published if not is_new),
        tuple(skipped),
        len(needed),
        sum(sizes[sha256] for sha256 in needed),
        artifact.layer_count + 1,
        len(downloads_made),
        sum(layer.size for layer in downloads_made),
    )


def _jobs(
    catalog: layout.Catalog, needed: set[str], artifact: layout.Artifact
) -> list[tuple[str, tuple[str, ...], frozenset[str]]]:
    """The layers of `catalog` to download for `needed` (its blobs that neither the
    store nor the layers of a catalog read earlier bring), largest first: each with its
    digest, its blobs (a pack's, in order) and those of them to write, each blob taken
    from the first of the catalog's layers that holds it."""
    jobs = []
    holders = [*catalog.packs, *(("sha256:" + sha256, (sha256,)) for sha256 in catalog.big)]
    for digest, blobs in holders:
        wanted = needed.intersection(blobs)
        if wanted:
            needed = needed - wanted
            jobs.append((digest, blobs, frozenset(wanted)))
    return sorted(jobs, key=lambda job: -artifact.layers[job[0]].size)


def _keep_only(objects: Path, kept: set[str]) -> None:
    """Remove from staging every blob file but `kept` (the verified ones and the store's
    own, linked in), before what a cut-off pull verified is adopted."""
    for folder in os.listdir(objects):
        for name in os.listdir(objects / folder):
            if name not in kept:
                os.unlink(objects / folder / name)
