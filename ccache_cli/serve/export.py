"""`unpack --export-dir DIR`: one entry's Inductor cache (and its bytecode tree, under
`pycache/`) as a plain folder, for programs given only TORCHINDUCTOR_CACHE_DIR.

The export is built whole in a new folder beside DIR, then renamed into place where
DIR is missing or empty; into a DIR that holds files, its files are moved in one by
one after every path was checked: no link inside DIR is ever followed, and a conflict
(a link, a file where a folder goes) is refused before anything is moved, so a failed
export leaves DIR as it was.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccache_cli.errors import BadInputError, StoreError
from ccache_cli.key.compat import fits
from ccache_cli.serve.views import export_bytecode
from ccache_cli.store.manifest import Manifest
from ccache_cli.store.store import Store

PYCACHE_DIR = "pycache"  # the exported bytecode tree, inside the exported Inductor cache


@dataclass(frozen=True)
class Exported:
    entry: Manifest
    pycache: Path | None  # its bytecode tree, if it has one
    env: dict[str, str]  # what a process sets to hit the exported cache


def export_fitting(
    store: Store, entries: Sequence[Manifest], ref: str | None, target: Path, machine: dict[str, Any], exact: bool
) -> Exported:
    """Export the entry `ref` names, else the one of `entries` that fits `machine`."""
    if ref is not None:
        chosen = store.find(ref)
    else:
        fitting = fits(entries, machine, exact)
        if len(fitting) != 1:
            ids = ", ".join(e.short_id for e in fitting) or "none"
            raise BadInputError(
                f"--export-dir needs one entry that fits this machine; found {len(fitting)} ({ids}): pass --entry"
            )
        chosen = fitting[0]
    pycache = export(store, chosen, target)
    # Where it is, and the Inductor settings its graphs were compiled with (part of their keys).
    env = {"TORCHINDUCTOR_CACHE_DIR": str(target), **chosen.compile.inductor_env}
    if pycache is not None:
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return Exported(chosen, pycache, env)


def export(store: Store, entry: Manifest, target: Path) -> Path | None:
    """Export `entry` to `target`; its bytecode tree, if it has one."""
    target = Path(os.path.abspath(target))
    _check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    building = target.parent / f".{target.name}.exporting-{uuid.uuid4().hex[:12]}"
    building.mkdir(mode=0o755)
    try:
        try:
            store.materialize(entry, building, "inductor/")
            modules = export_bytecode(store, entry, building / PYCACHE_DIR)
        except FileNotFoundError as exc:  # its blobs removed meanwhile (rm and gc of another process)
            raise StoreError(f"entry {entry.short_id} was removed from the store while it was exported: {exc}") from exc
        _move_into_place(building, target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target / PYCACHE_DIR if modules else None


def _check_target(target: Path) -> None:
    try:
        found = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(found.st_mode):
        raise BadInputError(f"--export-dir {target} is a symbolic link: export into a real folder")
    if not stat.S_ISDIR(found.st_mode):
        raise BadInputError(f"--export-dir {target} is not a folder")


def _move_into_place(building: Path, target: Path) -> None:
    if not target.exists():
        os.rename(building, target)
        return
    try:
        target.rmdir()  # empty: take its place whole
        os.rename(building, target)
        return
    except OSError:
        pass
    moves = []
    for folder, dirs, files in os.walk(building):
        relative = Path(folder).relative_to(building)
        for name in dirs:
            _refuse_conflict(target, relative / name, want_dir=True)
        for name in files:
            _refuse_conflict(target, relative / name, want_dir=False)
            moves.append(relative / name)
    for relative in moves:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        os.replace(building / relative, target / relative)  # replaces a file, never writes through one


def _refuse_conflict(target: Path, relative: Path, want_dir: bool) -> None:
    """BadInputError where `target/relative` exists as a link or as the other kind."""
    try:
        found = os.lstat(target / relative)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(found.st_mode):
        raise BadInputError(
            f"--export-dir {target}: {relative} is a symbolic link; ccache never writes through one "
            "(export into a new or empty folder)"
        )
    if stat.S_ISDIR(found.st_mode) != want_dir:
        kind = "folder" if want_dir else "file"
        raise BadInputError(
            f"--export-dir {target}: {relative} is in the way of a {kind} of the export (export into a new or empty folder)"
        )
