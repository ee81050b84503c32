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
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ccache_cli.archive import processes
from ccache_cli.archive.head import Index, index_document, parse_index
from ccache_cli.archive.pack import blob_sizes
from ccache_cli.archive.unpack import link_present
from ccache_cli.errors import ArchiveError, CcacheError, RegistryError
from ccache_cli.store.manifest import Manifest
from ccache_cli.store.store import Store

from . import fetch_process, layout
from .client import Remote
from .layout import Layer

Progress = Callable[[int], None]  # called with a count of bytes just moved
TRANSFERS = 8  # requests in flight, over all processes
_T = TypeVar("_T")
_R = TypeVar("_R")


def in_threads(function: Callable[[_T], _R], items: Sequence[_T], threads: int = TRANSFERS) -> list[_R]:
    """`function` over `items` on `threads` threads, in order; the first failure is
    raised once the others have stopped (those not started are cancelled)."""
    if len(items) <= 1 or threads <= 1:
        return [function(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(function, item) for item in items]
        try:
            return [future.result() for future in futures]
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
    store: Store, entries: Sequence[Manifest], remote: Remote, on_progress: Progress = lambda _: None
) -> PushResult:
    """Upload `entries` as one artifact under `remote`'s tag, each layer only if the
    registry lacks it; the tag moves only once every layer is there."""
    entries = list({entry.id: entry for entry in entries}.values())
    sizes = blob_sizes(entries)
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

    pack_layers = dict(zip(packs, in_threads(send_pack, packs)))
    big_layers = in_threads(send_big, big)
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
    chosen: list[Manifest] = []
    skipped: list[str] = []
    for entry in index.entries:
        if select(entry):
            chosen.append(entry)
        else:
            skipped.append(entry.id)
    downloads = [artifact.index]

    def read_catalog(listed: Manifest) -> layout.Catalog:
        layer = artifact.catalogs[listed.id]
        return layout.parse_catalog(
            remote.blob(layer.digest, layer.size, layout.DOCUMENT_LIMIT), listed, index, artifact
        )

    catalogs = in_threads(read_catalog, chosen)
    downloads += [artifact.catalogs[entry.id] for entry in chosen]
    entries = [catalog.entry for catalog in catalogs]
    sizes = blob_sizes(entries)
    with store.staging() as staging:
        objects = staging / "objects"
        present = link_present(store, objects, list(sizes))
        needed = set(sizes) - present
        jobs = _jobs(catalogs, needed)
        for folder in {sha256[:2] for sha256 in needed}:
            (objects / folder).mkdir(parents=True, exist_ok=True)
        layers = [(artifact.layers[digest], blobs, wanted) for digest, (blobs, wanted) in jobs.items()]
        verified, error = _fetch(remote, objects, sizes, layers, on_progress)
        if error is not None:
            if error["kind"] == "transfer":  # cut off by the network: keep what was verified, for the next pull
                _keep_only(objects, verified | present)
                store.publish([], staging, verified)
                raise RegistryError(error["message"])
            raise (ArchiveError if error["kind"] == "artifact" else CcacheError)(error["message"])
        downloads += [layer for layer, _, _ in layers]
        if verified != needed:
            raise ArchiveError(
                f"{remote.reference}: its layers lack {len(needed - verified)} blob(s) its catalogs name"
            )
        published = store.publish(entries, staging, needed)
    return PullResult(
        remote.reference,
        tuple(entry for entry, is_new in published if is_new),
        tuple(entry for entry, is_new in published if not is_new),
        tuple(skipped),
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


def _fetch(
    remote: Remote,
    objects: Path,
    sizes: dict[str, int],
    layers: list[tuple[Layer, tuple[str, ...], frozenset[str]]],
    on_progress: Progress,
) -> tuple[set[str], dict[str, Any] | None]:
    """Download `layers` into `objects` in one process per core (fetch_process.py),
    the largest first, each process's share about equal in bytes. The blobs verified,
    and the first error: one that is not the network's stops the others at once."""
    if not layers:
        return set(), None
    count = min(len(layers), processes.worker_count(sum(layer.size for layer, _, _ in layers)))
    shares: list[list[Any]] = [[] for _ in range(count)]
    loads = [0] * count
    for layer, blobs, wanted in sorted(layers, key=lambda job: -job[0].size):
        least = loads.index(min(loads))
        shares[least].append([layer.digest, layer.media_type, layer.size, list(blobs), sorted(wanted)])
        loads[least] += layer.size
    workers = processes.start(fetch_process, count)
    verified: set[str] = set()
    errors: list[dict[str, Any]] = []
    reported = 0
    lock = threading.Lock()

    def follow(worker: processes.Process) -> None:
        nonlocal reported
        assert worker.stdout is not None
        for line in worker.stdout:
            report = json.loads(line)
            if "bytes" in report:
                with lock:
                    on_progress(report["bytes"])
                continue
            with lock:
                reported += 1
                verified.update(report["verified"])
                if report["error"] is not None:
                    errors.append(report["error"])
                    if report["error"]["kind"] != "transfer":  # the others need not go on
                        for other in workers:
                            if other is not worker:
                                other.kill()

    try:
        for worker, share in zip(workers, shares):
            assert worker.stdin is not None
            job = {
                "reference": remote.reference,
                "insecure": remote.scheme == "http",
                "objects": str(objects),
                "sizes": {sha256: sizes[sha256] for layer in share for sha256 in layer[3]},
                "layers": share,
                "threads": max(1, TRANSFERS // count),
            }
            worker.stdin.write(json.dumps(job).encode() + b"\n")
            worker.stdin.close()
        in_threads(follow, workers, len(workers))
    finally:
        processes.stop(workers)
        processes.close_pipes(workers)
    if reported < len(workers):  # killed, or crashed: what it wrote is unknown
        errors.append({"message": "a downloading process ended without a report", "kind": "failed"})
    worst = sorted(errors, key=lambda error: error["kind"] == "transfer")  # a transfer error only if alone
    return verified, (worst or [None])[0]


def _keep_only(objects: Path, kept: set[str]) -> None:
    """Remove from staging every blob file but `kept` (the verified ones and the store's
    own, linked in), before what a cut-off pull verified is adopted."""
    for folder in os.listdir(objects):
        for name in os.listdir(objects / folder):
            if name not in kept:
                os.unlink(objects / folder / name)
