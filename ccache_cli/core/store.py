"""The artifact store: content-addressed blobs and entry manifests.

Layout::

    <store>/store.json                  format version
    <store>/objects/ab/<sha256>         blobs, written once, never changed
    <store>/entries/<id>/manifest.json  one published entry
    <store>/machines/<probe>.json       exact machine fingerprints, cached for `inspect`
    <store>/tmp/                        staging areas of writers in progress
    <store>/.lock                       held by writers while they publish

Readers take no lock: blobs are published by `os.replace` and entries by renaming a
complete staged folder into `entries/`, so a reader sees an entry whole or not at all.
Writers stage under `tmp/` (same filesystem) and publish with check-lock-check.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import socket
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import BadInputError, EntryNotFoundError, StoreError
from .hashing import sha256_file

FORMAT_VERSION = 1
STORE_ENV = "CCACHE_CLI_STORE"
ID_DISPLAY_LENGTH = 12
_LOCK_TIMEOUT_S = 600
_LOCK_POLL_S = 0.05  # how often a writer waiting for the lock tries again


@dataclass(frozen=True)
class FileRef:
    sha256: str
    size: int


@dataclass(frozen=True)
class Source:
    """A Python file Dynamo traced, named independently of where it lies."""

    module: str
    path: str  # relative to its sys.path root, '/'-separated
    sha256: str


@dataclass(frozen=True)
class Entry:
    """A published entry, as its manifest describes it."""

    id: str
    manifest: Mapping[str, Any] = field(repr=False)

    @property
    def short_id(self) -> str:
        return self.id[:ID_DISPLAY_LENGTH]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def device(self) -> str:
        return self.manifest["key"]["compile"]["device"]

    @property
    def sizes(self) -> list[int]:
        return list(self.manifest["key"]["compile"]["sizes"])

    @property
    def dynamic(self) -> bool:
        return bool(self.manifest["key"]["compile"]["dynamic"])

    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self.manifest["key"]["fingerprint"])

    @functools.cached_property
    def sources(self) -> list[Source]:
        return [Source(**source) for source in self.manifest["key"]["sources"]]

    @functools.cached_property  # built once: entries can name tens of thousands of files
    def files(self) -> dict[str, FileRef]:
        return {path: FileRef(**ref) for path, ref in self.manifest["files"].items()}

    @property
    def bytes(self) -> int:
        return sum(ref["size"] for ref in self.manifest["files"].values())

    @property
    def created(self) -> str:
        return self.manifest["created"]


@dataclass(frozen=True)
class Scan:
    """The entries of a store, and what could not be read, as warnings."""

    entries: tuple[Entry, ...]
    warnings: tuple[str, ...]


def default_root() -> Path:
    if env := os.environ.get(STORE_ENV):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(xdg) / "ccache-cli"


STAGING_OWNER = ".owner"


class Store:
    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

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

    def blobs_present(self, wanted: Iterable[str]) -> set[str]:
        """Which of these blobs the store holds: one listing per two-letter folder
        instead of one stat per blob."""
        try:
            folders = os.listdir(self.objects_dir)
        except FileNotFoundError:
            folders = []
        if not folders:  # an empty store, as in an image build
            return set()
        looked_for = set(wanted)
        present: set[str] = set()
        for folder in {sha256[:2] for sha256 in looked_for}.intersection(folders):
            present.update(os.listdir(self.objects_dir / folder))
        return present & looked_for

    # -- reading -----------------------------------------------------------

    def scan(self) -> Scan:
        """Every readable entry, newest first; unreadable ones become warnings."""
        self._check_format()
        entries: list[Entry] = []
        warnings: list[str] = []
        if not self.entries_dir.is_dir():
            return Scan((), ())
        for path in sorted(self.entries_dir.iterdir()):
            try:
                entries.append(self._read_entry(path))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                warnings.append(f"entry {path.name[:ID_DISPLAY_LENGTH]}: unreadable manifest ({exc})")
        entries.sort(key=lambda entry: entry.created, reverse=True)
        return Scan(tuple(entries), tuple(warnings))

    def find(self, ref: str) -> Entry:
        """The one entry whose id starts with `ref`, or whose name is `ref`."""
        entries = self.scan().entries
        matches = [entry for entry in entries if entry.id.startswith(ref.lower())]
        if not matches:
            matches = [entry for entry in entries if entry.name == ref]
        if not matches:
            raise EntryNotFoundError(f"no entry matches {ref!r} in store {self.root}; `ccache inspect` lists them")
        if len(matches) > 1:
            ids = ", ".join(entry.short_id for entry in matches)
            raise BadInputError(f"{ref!r} matches {len(matches)} entries ({ids}); give a longer id prefix")
        return matches[0]

    def with_lookup_key(self, lookup: str) -> list[Entry]:
        """Entries compiled from the same model, options and environment."""
        return [entry for entry in self.scan().entries if entry.manifest.get("lookup") == lookup]

    def cached_machine_fingerprint(self, probe: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / "machines" / f"{probe}.json").read_text())
        except (OSError, ValueError):
            return None

    # -- writing -----------------------------------------------------------

    def ensure_writable(self) -> None:
        """Create the store's folders, or fail with one clear line."""
        try:
            for folder in (self.objects_dir, self.entries_dir, self.tmp_dir):
                folder.mkdir(parents=True, exist_ok=True)
            format_file = self.root / "store.json"
            if not format_file.exists():
                _atomic_write(format_file, json.dumps({"format": FORMAT_VERSION}).encode() + b"\n", self.tmp_dir)
            probe = tempfile.NamedTemporaryFile(dir=self.tmp_dir, prefix="probe-")
            probe.close()
        except OSError as exc:
            raise StoreError(
                f"cannot write to store {self.root}: {exc.strerror or exc}; "
                f"pass --store or set {STORE_ENV} to a writable directory"
            ) from exc
        self._check_format()

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A private folder inside the store, removed on exit whatever happens. Its
        owner file names this host and process, so that `gc` can tell the folder of a
        writer that was killed from one that is still at work."""
        self.ensure_writable()
        path = self.tmp_dir / f"stage-{uuid.uuid4().hex}"
        path.mkdir()
        (path / STAGING_OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def adopt_blob(self, path: Path) -> tuple[FileRef, bool]:
        """Move a staged file (under this store's tmp/) into the store as a blob.

        Returns the blob's reference and whether it was new to the store; a blob that
        is already there stays as it is and the staged file is left behind.
        """
        size = path.stat().st_size
        sha256 = sha256_file(path)
        target = self.blob_path(sha256)
        if target.exists():
            return FileRef(sha256, size), False
        target.parent.mkdir(exist_ok=True)
        os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.replace(path, target)
        return FileRef(sha256, size), True

    def stage_entries(self, entries: Sequence[Entry], staging: Path) -> None:
        """Check entries and write their manifests into `staging` (a folder from
        `staging()`), ready for `publish`, which needs the lock only to move them in."""
        for entry in entries:
            _validated(entry)
            folder = staging / "entries" / entry.id
            folder.mkdir(parents=True)
            (folder / "manifest.json").write_text(json.dumps(dict(entry.manifest), sort_keys=True) + "\n")

    def publish(self, entries: Sequence[Entry], staging: Path, staged_blobs: Collection[str] = ()) -> list[tuple[Entry, bool]]:
        """Publish entries under one lock, their blobs already in the store or staged.

        `staged_blobs`, each hashed as it was written and laid out read-only as
        `<staging>/objects/ab/<sha256>`, are moved into the store first, under the same
        lock (which `gc` takes too), so only the entries' other blobs are looked for.
        Entries not yet staged are staged first (`stage_entries`); each one's folder is
        renamed into entries/, so each entry appears whole or not at all.
        Returns each entry and whether it was new; one already there is kept as it is.
        """
        self.stage_entries([entry for entry in entries if not (staging / "entries" / entry.id).is_dir()], staging)
        with self.lock():
            if staged_blobs:
                self._adopt_staged_blobs(staging / "objects")
            new = [entry for entry in entries if not (self.entries_dir / entry.id).exists()]
            # From the manifests' own dicts: entry.files would build an object per file first.
            others = {ref["sha256"] for entry in new for ref in entry.manifest["files"].values()}.difference(staged_blobs)
            missing = others - self.blobs_present(others)
            if missing:
                entry, path = next((entry, path) for entry in new for path, ref in entry.manifest["files"].items()
                                   if ref["sha256"] in missing)
                raise StoreError(f"cannot publish entry {entry.short_id}: blob of {path} is missing")
            for entry in new:
                os.rename(staging / "entries" / entry.id, self.entries_dir / entry.id)
        new_ids = {entry.id for entry in new}
        return [
            (entry, True) if entry.id in new_ids else (self._read_entry(self.entries_dir / entry.id), False)
            for entry in entries
        ]

    def _adopt_staged_blobs(self, staged_objects: Path) -> None:
        """Move staged blobs into the store. A two-letter folder the store lacks is moved
        whole, one rename for all its blobs (unpacking into an empty store, as in an image
        build). A blob that another writer added meanwhile is replaced by the same bytes,
        which is harmless: readers keep the file they opened."""
        if not staged_objects.is_dir():
            return
        for folder in sorted(os.listdir(staged_objects)):
            source = os.path.join(staged_objects, folder)
            target = os.path.join(self.objects_dir, folder)
            if not os.path.exists(target):
                try:
                    os.rename(source, target)
                    continue
                except OSError:  # made meanwhile by a writer that takes no lock: merge file by file
                    pass
            os.makedirs(target, exist_ok=True)
            for name in os.listdir(source):
                os.replace(os.path.join(source, name), os.path.join(target, name))

    def save_machine_fingerprint(self, probe: str, fingerprint: Mapping[str, Any]) -> None:
        """Cache an exact machine fingerprint in an existing, writable store; else skip."""
        if not (self.root / "store.json").is_file():
            return
        with contextlib.suppress(OSError):
            folder = self.root / "machines"
            folder.mkdir(parents=True, exist_ok=True)
            _atomic_write(folder / f"{probe}.json", json.dumps(fingerprint, sort_keys=True).encode(), folder)

    def materialize(self, entry: Entry, dest: Path, prefix: str) -> int:
        """Copy the entry's files under `prefix` into `dest`; returns the file count."""
        count = 0
        for path, ref in entry.files.items():
            if not path.startswith(prefix):
                continue
            out = dest / path[len(prefix) :]
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.blob_path(ref.sha256), out)
            count += 1
        return count

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The store's write lock: an flock on `.lock`, which the kernel releases when
        the holder exits, however it exits."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + _LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreError(f"store {self.root} stayed locked for {_LOCK_TIMEOUT_S} s; is another writer stuck?") from None
                    time.sleep(_LOCK_POLL_S)
            yield
        finally:
            os.close(fd)  # releases the lock

    # -- internals ---------------------------------------------------------

    def _read_entry(self, path: Path) -> Entry:
        manifest = json.loads((path / "manifest.json").read_text())
        if manifest.get("id") != path.name:
            raise ValueError("id does not match its folder")
        return _validated(Entry(path.name, manifest))

    def _check_format(self) -> None:
        try:
            version = json.loads((self.root / "store.json").read_text())["format"]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{self.root / 'store.json'} is unreadable ({exc})") from exc
        if version != FORMAT_VERSION:
            raise StoreError(
                f"store {self.root} has format {version}; this ccache-cli reads format {FORMAT_VERSION}"
            )


def _validated(entry: Entry) -> Entry:
    """Touch every field once, so a malformed manifest fails here, not in a renderer."""
    entry.name, entry.device, entry.sizes, entry.fingerprint, entry.sources, entry.created
    # The file list is checked without building entry.files, an object per file, which
    # only some commands need: entries can name tens of thousands of files.
    for ref in entry.manifest["files"].values():
        if type(ref) is not dict or ref.keys() != _FILE_REF_FIELDS:
            raise TypeError(f"malformed file reference {ref!r}")
    return entry


_FILE_REF_FIELDS = {ref_field.name for ref_field in fields(FileRef)}


def _atomic_write(path: Path, data: bytes, tmp_dir: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=".write-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
