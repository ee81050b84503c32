"""The artifact store: content-addressed blobs and entry manifests.

Layout::

    <store>/store.json                  format version
    <store>/objects/ab/<sha256>         blobs, written once, never changed
    <store>/entries/<id>/manifest.json  one published entry
    <store>/index.json                  what each manifest holds, to list entries fast (index.py)
    <store>/machines/<probe>.json       exact machine fingerprints, cached for `inspect`
    <store>/pycache/                    .pyc of precompile's processes where the environment has none
    <store>/tmp/                        staging areas of writers in progress
    <store>/.lock                       held by writers while they publish

Readers take no lock: blobs are published by `os.replace` and entries by renaming a
complete staged folder into `entries/`, so a reader sees an entry whole or not at all.
Writers stage under `tmp/` (same filesystem) and publish with check-lock-check.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import sys
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccache_cli.errors import BadInputError, EntryNotFoundError, StoreError
from ccache_cli.store import durable, index, leftovers, lock, manifest, owners, schema
from ccache_cli.store.hashing import sha256_file
from ccache_cli.store.leftovers import REMOVED_PREFIX, STAGING_OWNER, remove
from ccache_cli.store.manifest import FileRef, Manifest
from ccache_cli.store.totals import Totals

FORMAT_VERSION = 1
STORE_ENV = "CCACHE_CLI_STORE"
PYCACHE_FOLDER = "pycache"  # precompile's bytecode where the environment has none (compile_process.py)


@dataclass(frozen=True)
class Scan:
    """The entries of a store, and what could not be read, as warnings."""

    entries: tuple[Manifest, ...]
    warnings: tuple[str, ...]


def default_root() -> Path:
    if env := os.environ.get(STORE_ENV):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(xdg) / "ccache-cli"


def _to_stderr(message: str) -> None:
    sys.stderr.write(f"ccache: {message}\n")


class Store:
    def __init__(self, root: Path | str | None = None, notify: Callable[[str], None] | None = None) -> None:
        # Absolute: views link to blobs by path, and a relative one would dangle.
        self.root = (Path(root) if root is not None else default_root()).absolute()
        self.notify = notify or _to_stderr  # says what a long wait is waiting for

    # -- paths -------------------------------------------------------------

    @property
    def objects_dir(self) -> Path:
        return self.root / "objects"

    @property
    def entries_dir(self) -> Path:
        return self.root / "entries"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def blob_path(self, sha256: str) -> Path:
        return Path(self.blob_file(sha256))

    def blob_file(self, sha256: str) -> str:
        """`blob_path` as a str: cheaper where tens of thousands of blobs are visited."""
        return f"{self.root}/objects/{sha256[:2]}/{sha256}"

    def read_blob(self, sha256: str) -> bytes:
        """A blob's bytes (an entry's bytecode list: Manifest.read_blob)."""
        with open(self.blob_file(sha256), "rb") as blob:
            return blob.read()

    @contextlib.contextmanager
    def blob_opener(self) -> Iterator[Callable[[str], int]]:
        """A function that opens a blob for reading by its sha256 and returns the
        descriptor (the caller closes it): through its folder's descriptor, so each
        open looks up one name instead of the whole path."""
        folders: dict[str, int] = {}

        def open_blob(sha256: str) -> int:
            folder = folders.get(sha256[:2])
            if folder is None:
                folder = folders[sha256[:2]] = os.open(self.objects_dir / sha256[:2], os.O_RDONLY | os.O_DIRECTORY)
            return os.open(sha256, os.O_RDONLY, dir_fd=folder)

        try:
            yield open_blob
        finally:
            for fd in folders.values():
                os.close(fd)

    def blobs_present(self, wanted: Iterable[str], listings: dict[str, set[str]] | None = None) -> set[str]:
        """Which of these blobs the store holds: one listing per two-letter folder
        instead of one stat per blob. A caller asking several times passes `listings`,
        which keeps each folder's listing for the next time."""
        listings = {} if listings is None else listings
        if "" not in listings:  # the store's folders
            try:
                listings[""] = set(os.listdir(self.objects_dir))
            except FileNotFoundError:
                listings[""] = set()
        looked_for = set(wanted)
        present: set[str] = set()
        for folder in {sha256[:2] for sha256 in looked_for}.intersection(listings[""]):
            if folder not in listings:
                listings[folder] = set(os.listdir(self.objects_dir / folder))
            present |= listings[folder] & looked_for
        return present

    # -- reading -----------------------------------------------------------

    def scan(self, whole: bool = False) -> Scan:
        """Every readable entry, newest first; unreadable ones become warnings. Entries
        whose manifest the index recorded as it is come from the index (index.py), and
        read the rest of their manifest when asked; `whole` reads every manifest now,
        for commands that use every entry's files (an entry removed meanwhile is then
        skipped, never found missing halfway)."""
        self._check_format()
        try:
            names = sorted(os.listdir(self.entries_dir))
        except (FileNotFoundError, NotADirectoryError):
            return Scan((), ())
        recorded = index.load(self.root)
        records: index.Records = {}
        entries: list[Manifest] = []
        warnings: list[str] = []
        folder = str(self.entries_dir)
        for name in names:
            try:
                found = index.signature(os.stat(f"{folder}/{name}/manifest.json"))
                record = recorded.get(name)
                if record is None or record[0] != found:
                    entry = self._read_entry(self.entries_dir / name)
                    record = [found, entry.summary, entry.totals.to_json()]
                elif whole:
                    entry = self._read_entry(self.entries_dir / name)
                else:
                    entry = self._from_record(record, found, f"{folder}/{name}")
                    if entry is None:  # a record the index holds damaged: read the manifest
                        entry = self._read_entry(self.entries_dir / name)
                        record = [found, entry.summary, entry.totals.to_json()]
                records[name] = record
                entries.append(entry)
            except schema.ManifestError as exc:
                warnings.append(f"entry {name[: manifest.ID_DISPLAY_LENGTH]} is skipped: {exc}")
            except FileNotFoundError as exc:
                if os.path.exists(f"{folder}/{name}"):  # else removed meanwhile (rm, gc): not there, nothing to say
                    warnings.append(
                        f"entry {name[: manifest.ID_DISPLAY_LENGTH]} is skipped: unreadable manifest ({exc})"
                    )
            except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
                warnings.append(f"entry {name[: manifest.ID_DISPLAY_LENGTH]} is skipped: unreadable manifest ({exc})")
        if records.keys() != recorded.keys() or any(records[name] is not recorded[name] for name in records):
            index.save(self.root, records, self.tmp_dir)
        entries.sort(key=lambda entry: entry.created, reverse=True)
        return Scan(tuple(entries), tuple(warnings))

    def find(self, ref: str) -> Manifest:
        """The one entry whose id starts with `ref` (of the folder names: no other entry is read), or named `ref`."""
        self._check_format()
        names = os.listdir(self.entries_dir) if self.entries_dir.is_dir() else []
        ids = [name for name in names if name.startswith(ref.lower()) and schema.HEX64.fullmatch(name)]
        if not ids:
            ids = [entry.id for entry in self.scan().entries if entry.name == ref]
        if not ids:
            raise EntryNotFoundError(f"no entry matches {ref!r} in store {self.root}; `ccache inspect` lists them")
        if len(ids) > 1:
            shown = sorted(entry_id[: manifest.ID_DISPLAY_LENGTH] for entry_id in ids)
            listed = ", ".join(shown[:5]) + ", ..." * (len(shown) > 5)
            raise BadInputError(f"{ref!r} matches {len(ids)} entries ({listed}); give a longer id prefix")
        try:  # read whole now: the one entry a command works on
            return self._read_entry(self.entries_dir / ids[0])
        except FileNotFoundError:
            raise EntryNotFoundError(f"no entry matches {ref!r} in store {self.root}: it was just removed") from None

    def with_lookup_key(self, lookup: str) -> list[Manifest]:
        """Entries compiled from the same model, options and environment."""
        return [entry for entry in self.scan().entries if entry.lookup == lookup]

    def cached_machine_fingerprint(self, probe: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / "machines" / f"{probe}.json").read_text())
        except (OSError, ValueError, RecursionError):
            return None

    # -- writing -----------------------------------------------------------

    def ensure_writable(self) -> None:
        """Create the store's folders, or fail with one clear line."""
        try:
            for folder in (self.objects_dir, self.entries_dir, self.tmp_dir):
                folder.mkdir(parents=True, exist_ok=True)
            format_file = self.root / "store.json"
            if not format_file.exists():
                durable.atomic_write(format_file, json.dumps({"format": FORMAT_VERSION}).encode() + b"\n", self.tmp_dir)
            if not os.access(self.tmp_dir, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        except OSError as exc:
            raise StoreError(
                f"cannot write to store {self.root}: {exc.strerror or exc}; "
                f"pass --store or set {STORE_ENV} to a writable directory"
            ) from exc
        self._check_format()

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A private folder inside the store, removed on exit whatever happens. Its
        owner file names this host and process, so that the next writer (or `gc`) can
        tell the folder of a writer that was killed from one still at work, and
        reclaims it."""
        self.ensure_writable()
        path = self.tmp_dir / f"stage-{uuid.uuid4().hex}"
        try:
            path.mkdir()
            (path / STAGING_OWNER).write_text(owners.describe() + "\n")
        except OSError as exc:
            shutil.rmtree(path, ignore_errors=True)
            raise StoreError(f"cannot write to store {self.root}: {exc.strerror or exc}") from exc
        for leftover in self.leftovers():
            remove(leftover)
        try:
            yield path
        except OSError as exc:
            if durable.is_disk_full(exc):
                raise StoreError(durable.disk_full_message(f"store {self.root}")) from exc
            raise
        finally:
            self._discard(path)

    def _discard(self, staging: Path) -> None:
        # Renamed first: rmtree may delete the owner file before it is killed, and a
        # staging folder without one is only reclaimed after a while (leftovers.py), while a
        # removed- folder always is.
        trash = self.trash_folder()
        try:
            os.rename(staging, trash)
        except OSError:
            trash = staging
        shutil.rmtree(trash, ignore_errors=True)

    def trash_folder(self) -> Path:
        """A new name in tmp/ for a folder to delete: renamed there first, it is reclaimed
        by the next writer or `gc` if its deleter is killed (Store.leftovers)."""
        return self.tmp_dir / f"{REMOVED_PREFIX}{uuid.uuid4().hex}"

    def leftovers(self, other_hosts_after_s: float = 7 * 86400) -> tuple[Path, ...]:
        """What killed writers left in tmp/ (leftovers.py)."""
        return leftovers.find(self.tmp_dir, other_hosts_after_s)

    def stage_blob(self, staging: Path, path: Path) -> FileRef:
        """Move a file of `staging` to where `publish` adopts it into the store as a
        blob (`<staging>/objects/ab/<sha256>`, read-only)."""
        size = path.stat().st_size
        sha256 = sha256_file(path)
        target = staging / "objects" / sha256[:2] / sha256
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.replace(path, target)
        return FileRef(sha256, size)

    def stage_entries(self, entries: Sequence[Manifest], staging: Path) -> None:
        """Write entries' manifests into `staging` (a folder from `staging()`), ready for
        `publish`, which needs the lock only to move them in."""
        for entry in entries:
            folder = staging / "entries" / entry.id
            folder.mkdir(parents=True)
            (folder / "manifest.json").write_text(json.dumps(dict(entry.document), sort_keys=True) + "\n")

    def publish(
        self, entries: Sequence[Manifest], staging: Path, staged_blobs: Collection[str] = ()
    ) -> list[tuple[Manifest, bool]]:
        """Publish entries under one lock, their blobs already in the store or staged.

        `staged_blobs`, laid out read-only as `<staging>/objects/ab/<sha256>` (each
        hashed as it was written), are moved into the store first, under the same
        lock (which `gc` and `rm` take too), so only the entries' other blobs are
        looked for. Entries not yet staged are staged first (`stage_entries`); each
        one's folder is renamed into entries/, so each entry appears whole or not at
        all. Everything is on disk before the entries that name it appear, so a power
        cut never leaves an entry whose files are lost. Returns each entry and whether
        it was new; one already there is kept, and read before the lock is released.
        """
        self.stage_entries([entry for entry in entries if not (staging / "entries" / entry.id).is_dir()], staging)
        entries = [entry.reading(self.read_blob) for entry in entries]  # its bytecode list, once adopted
        durable.sync_filesystem(staging)  # the staged blobs' and manifests' bytes
        with self.lock():
            if staged_blobs:
                self._adopt_staged_blobs(staging / "objects")
            new = [entry for entry in entries if not (self.entries_dir / entry.id).exists()]
            others = {sha256 for entry in new for sha256 in entry.blobs()}.difference(staged_blobs)
            missing = others - self.blobs_present(others)
            if missing:
                entry, path = next(
                    (entry, path) for entry in new for path, ref in entry.all_files.items() if ref["sha256"] in missing
                )
                raise StoreError(f"cannot publish entry {entry.short_id}: blob of {path} is missing")
            if staged_blobs:
                durable.sync_filesystem(self.objects_dir)  # the blobs' new names, before the entries naming them
            for entry in new:
                os.rename(staging / "entries" / entry.id, self.entries_dir / entry.id)
            if new:
                durable.fsync_dir(self.entries_dir)
            new_ids = {entry.id for entry in new}
            published = [
                (entry, True) if entry.id in new_ids else (self._read_entry(self.entries_dir / entry.id), False)
                for entry in entries
            ]
        if new:
            self.scan()  # brings the index up to date: an image's store may be read-only where it runs
        return published

    def _adopt_staged_blobs(self, staged_objects: Path) -> None:
        """Move staged blobs into the store. A two-letter folder the store lacks is moved
        whole, one rename for all its blobs (unpacking into an empty store, as in an image
        build). A blob already there is replaced by the same bytes, which is harmless:
        readers keep the file they opened."""
        if not staged_objects.is_dir():
            return
        for folder in sorted(os.listdir(staged_objects)):
            source = os.path.join(staged_objects, folder)
            target = os.path.join(self.objects_dir, folder)
            if not os.path.exists(target):
                os.rename(source, target)
                continue
            for name in os.listdir(source):
                os.replace(os.path.join(source, name), os.path.join(target, name))

    def save_machine_fingerprint(self, probe: str, fingerprint: Mapping[str, Any]) -> None:
        """Cache an exact machine fingerprint in an existing, writable store; else skip."""
        if not (self.root / "store.json").is_file():
            return
        with contextlib.suppress(OSError):
            folder = self.root / "machines"
            folder.mkdir(parents=True, exist_ok=True)
            durable.atomic_write(folder / f"{probe}.json", json.dumps(fingerprint, sort_keys=True).encode())

    def materialize(self, entry: Manifest, dest: Path, prefix: str) -> int:
        """Copy the entry's files under `prefix` into `dest`; returns the file count."""
        count = 0
        for path, ref in entry.all_files.items():
            if not path.startswith(prefix):
                continue
            out = schema.inside(dest, path[len(prefix) :])
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.blob_path(ref["sha256"]), out)
            count += 1
        return count

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The store's write lock (lock.py)."""
        return lock.store_lock(self.root, self.notify)

    # -- internals ---------------------------------------------------------

    def _read_entry(self, path: Path) -> Manifest:
        document = json.loads((path / "manifest.json").read_bytes())
        return manifest.parse(document, folder=path.name, read_blob=self.read_blob)

    def _from_record(self, record: list[Any], found: list[int], folder: str) -> Manifest | None:
        try:
            return manifest.from_summary(
                record[1], Totals.from_json(record[2]), index.loader(folder, found), self.read_blob
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    def _check_format(self) -> None:
        try:
            version = json.loads((self.root / "store.json").read_text())["format"]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{self.root / 'store.json'} is unreadable ({exc})") from exc
        if version != FORMAT_VERSION:
            raise StoreError(f"store {self.root} has format {version}; this ccache-cli reads format {FORMAT_VERSION}")
