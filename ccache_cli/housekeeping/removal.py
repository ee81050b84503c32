"""`ccache gc` and `ccache rm`: plans first (what `--dry-run` prints), then removal.

Entries go least recently used first (last use from usage.py, else creation). An
entry that a running program uses is never removed: activation writes
`users/<pid>` into the view, and a view whose process is alive holds its entries.
Blobs go only when no remaining entry names them. An entry is removed by renaming
its folder out of entries/ under the lock (readers see it whole or not at all),
then its unreferenced blobs; a writer that meanwhile published an entry naming a
removed blob fails its own check-lock-check cleanly instead of publishing it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import stat
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccache_cli.errors import CcacheError, StoreError, UnsafeFolderError
from ccache_cli.in_program import usage
from ccache_cli.serve import views
from ccache_cli.store import bytecode_list, durable, owners, usage_totals
from ccache_cli.store.leftovers import remove
from ccache_cli.store.manifest import Manifest
from ccache_cli.store.schema import ManifestError
from ccache_cli.store.store import PYCACHE_FOLDER, Store


class EntryInUseError(CcacheError):
    """An entry asked to be removed is in use by a running program."""


@dataclass(frozen=True)
class Plan:
    remove: tuple[Manifest, ...]
    in_use: tuple[Manifest, ...]  # would have gone, kept because a running program uses them
    blobs: tuple[str, ...]  # blobs no remaining entry names
    abandoned: tuple[Path, ...]  # what killed writers left in tmp/ (Store.leftovers)
    blob_bytes: int  # of `blobs`
    abandoned_bytes: int  # of `abandoned`
    store_bytes: int  # every blob before the plan
    warnings: tuple[str, ...] = ()  # entries that could not be read, which stay
    pycache_bytes: int = 0  # of precompile's bytecode cache, which gc clears (store.PYCACHE_FOLDER)

    @property
    def freed_bytes(self) -> int:
        return self.blob_bytes + self.abandoned_bytes + self.pycache_bytes

    @property
    def store_bytes_after(self) -> int:
        return self.store_bytes - self.blob_bytes


@dataclass(frozen=True)
class Cleanup:
    """A plan carried out, or only shown (`--dry-run`)."""

    plan: Plan
    dry_run: bool

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.plan.warnings

    def to_json(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "dry_run": self.dry_run,
            "removed": [entry.id for entry in plan.remove],
            "kept_in_use": [entry.id for entry in plan.in_use],
            "blobs": len(plan.blobs),
            "abandoned_staging": [str(path) for path in plan.abandoned],
            "pycache_bytes": plan.pycache_bytes,
            "freed_bytes": plan.freed_bytes,
            "store_bytes": plan.store_bytes if self.dry_run else plan.store_bytes_after,
            "warnings": list(plan.warnings),
        }


def carry_out(store: Store, plan: Plan, dry_run: bool) -> Cleanup:
    """Apply `plan` unless `dry_run`."""
    if not dry_run:
        apply(store, plan)
    return Cleanup(plan, dry_run)


def plan_gc(store: Store, max_size: int | None, older_than: dt.timedelta | None) -> Plan:
    """Least recently used entries first, until every limit holds."""
    scan = store.scan(whole=True)
    scanned = scan.entries
    logs = usage_totals.read_all(store, [entry.id for entry in scanned])
    used = {entry.id: usage.moment(logs[entry.id].last_used or entry.created) for entry in scanned}
    entries = sorted(scanned, key=lambda entry: used[entry.id])
    busy = in_use(store)
    sizes = _blob_sizes(store)
    # How many entries name each blob, and the bytes of the named ones: what the store
    # holds once gc has also removed the blobs nobody names.
    names = Counter(sha256 for entry in entries for sha256 in _blobs_of(entry))
    size = sum(sizes.get(sha256, 0) for sha256 in names)
    now = dt.datetime.now(dt.timezone.utc)
    chosen: list[Manifest] = []
    kept_busy: list[Manifest] = []
    for entry in entries:
        too_old = older_than is not None and now - used[entry.id] > older_than
        too_big = max_size is not None and size > max_size
        if not (too_old or too_big):
            continue
        if entry.id in busy:
            kept_busy.append(entry)
            continue
        chosen.append(entry)
        for sha256 in _blobs_of(entry):
            names[sha256] -= 1
            if not names[sha256]:
                size -= sizes.get(sha256, 0)
    plan = _plan(store, entries, chosen, kept_busy, sizes, store.leftovers(), scan.warnings)
    # precompile's own bytecode, for environments without .pyc: the next precompile writes it again
    return dataclasses.replace(plan, pycache_bytes=_tree_bytes(store.root / PYCACHE_FOLDER))


def _blobs_of(entry: Manifest) -> set[str]:
    """An entry's blobs; where its bytecode list cannot be read, those its manifest names
    (what it would free: its .pyc files stay, named by no list gc can read, until a gc
    after the list is mended or every entry naming it is gone)."""
    try:
        return entry.blobs()
    except ManifestError:
        return {ref["sha256"] for ref in entry.files.values()}


def plan_rm(store: Store, refs: Sequence[str]) -> Plan:
    chosen = list({entry.id: entry for entry in (store.find(ref) for ref in refs)}.values())
    busy = in_use(store)
    for entry in chosen:
        if entry.id in busy:
            raise EntryInUseError(
                f"entry {entry.short_id} ({entry.name}) is in use by running process {busy[entry.id]}"
            )
    scan = store.scan(whole=True)
    return _plan(store, list(scan.entries), chosen, [], _blob_sizes(store), (), scan.warnings)


def apply(store: Store, plan: Plan) -> None:
    """Remove the plan's entries, then the blobs no remaining entry names. An entry
    leaves entries/ by one rename, made durable before any of its blobs goes, so that
    no crash leaves an entry whose blobs are gone."""
    store.ensure_writable()
    with store.lock():
        busy = in_use(store)  # check again under the lock: a program may have started
        for entry in plan.remove:
            if entry.id in busy:
                raise EntryInUseError(
                    f"entry {entry.short_id} ({entry.name}) came into use by process {busy[entry.id]}"
                )
        trash = []
        for entry in plan.remove:
            folder = store.entries_dir / entry.id
            if folder.is_dir():
                trash.append(store.trash_folder())
                os.rename(folder, trash[-1])
            usage.forget(store, entry.id)
        if trash:
            durable.fsync_dir(store.entries_dir)
        named = _named_blobs(store)
        for sha256 in plan.blobs:
            if sha256 not in named:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(store.blob_file(sha256))
    for folder in [*trash, *plan.abandoned]:
        remove(folder)
    if plan.pycache_bytes:
        remove(store.root / PYCACHE_FOLDER)


def in_use(store: Store) -> dict[str, int]:
    """Manifest id -> the pid of a running program whose view holds it."""
    busy: dict[str, int] = {}
    try:
        root = views.views_root()
    except UnsafeFolderError:  # no view of this user's can be there
        return busy
    store_path = str(store.root.resolve())
    for view in root.iterdir():
        users = view / "users"
        if not users.is_dir():
            continue
        try:
            description = views.read_description(view)
        except (OSError, ValueError, TypeError):
            continue
        if str(Path(description.store).resolve()) != store_path:
            continue
        for pid in (int(name) for name in os.listdir(users) if name.isdigit()):
            if owners.is_alive(pid):
                for entry in description.entries:
                    busy.setdefault(entry.id, pid)
    return busy


def _blob_sizes(store: Store) -> dict[str, int]:
    """Each blob in the store and its size (one another writer removes meanwhile is left out)."""
    sizes = {}
    with contextlib.suppress(FileNotFoundError):
        for folder in os.scandir(store.objects_dir):
            for blob in os.scandir(folder.path):
                with contextlib.suppress(FileNotFoundError):
                    sizes[blob.name] = blob.stat().st_size
    return sizes


def _plan(
    store: Store,
    entries: Sequence[Manifest],
    chosen: Sequence[Manifest],
    busy: Sequence[Manifest],
    sizes: dict[str, int],
    abandoned: tuple[Path, ...],
    warnings: tuple[str, ...],
) -> Plan:
    gone = {entry.id for entry in chosen}
    kept = _kept_blobs([entry for entry in entries if entry.id not in gone])
    if warnings:  # an entry that could not be read keeps the blobs it names: it may be mended
        kept |= _named_blobs(store) - {sha256 for entry in chosen for sha256 in _blobs_of(entry)}
    blobs = tuple(sorted(sha256 for sha256 in sizes if sha256 not in kept))
    return Plan(
        tuple(chosen),
        tuple(busy),
        blobs,
        abandoned,
        sum(sizes[sha256] for sha256 in blobs),
        sum(_tree_bytes(folder) for folder in abandoned),
        sum(sizes.values()),
        warnings,
    )


def _tree_bytes(folder: Path) -> int:
    """Bytes of the files under `folder`; of one that its writer is removing meanwhile,
    what is left (os.walk passes over folders that vanish)."""
    total = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                status = os.lstat(os.path.join(parent, name))
                total += status.st_size if stat.S_ISREG(status.st_mode) else 0
    return total


def _kept_blobs(kept: Sequence[Manifest]) -> set[str]:
    """The blobs of the entries that stay. Delete nothing while one of them has a
    bytecode list that cannot be read: which blobs its .pyc files are is not known, and
    they may be any the plan frees."""
    blobs: set[str] = set()
    for entry in kept:
        try:
            blobs |= entry.blobs()
        except ManifestError as exc:
            raise StoreError(
                f"{exc}; nothing is deleted while it names blobs that cannot be known: unpack or pull the "
                f"entry again, or remove it (with every entry naming the same list) with `ccache rm`"
            ) from None
    return blobs


def _named_blobs(store: Store) -> set[str]:
    """Every blob any entry folder's manifest names (its bytecode list's too), whether
    or not the manifest passes its checks: what `gc` must keep."""
    named: set[str] = set()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(store.entries_dir):
            try:
                files = json.loads((store.entries_dir / name / "manifest.json").read_bytes())["files"]
                named.update(ref["sha256"] for ref in files.values() if isinstance(ref.get("sha256"), str))
                listed = files.get(bytecode_list.LIST_PATH)
                if listed is not None:  # its .pyc files, named in the list
                    named.update(ref["sha256"] for ref in bytecode_list.read(listed, store.read_blob).files.values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError, ManifestError):
                continue
    return named
