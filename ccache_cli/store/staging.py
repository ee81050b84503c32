"""What writers put in their staging folder before publishing: the files a compile
wrote, staged as blobs; the blobs the store already holds, hard-linked (an unpack or
a pull writes only what it lacks, and a `gc` meanwhile cannot take them); and a path
a compiler can write through."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ccache_cli.errors import StoreError
from ccache_cli.store import bytecode_list
from ccache_cli.store.artifacts import carried
from ccache_cli.store.store import Store


def stage_artifacts(store: Store, staging: Path, artifacts: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Stage the cache files a compile wrote under `artifacts` as blobs for `publish`;
    returns the entry's file list and the bytes the store lacks."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(artifacts.rglob("*")):
        relative = path.relative_to(artifacts).as_posix()
        if not path.is_file() or path.is_symlink():
            continue
        if not carried(relative):
            continue
        ref = store.stage_blob(staging, path)
        files[relative] = {"sha256": ref.sha256, "size": ref.size}
    sizes = {ref["sha256"]: ref["size"] for ref in files.values()}
    present = store.blobs_present(sizes)
    return files, sum(size for sha256, size in sizes.items() if sha256 not in present)


def staged_blobs(files: Mapping[str, Mapping[str, Any]]) -> set[str]:
    return {ref["sha256"] for ref in files.values()}


def stage_bytecode_list(
    store: Store, staging: Path, files: Mapping[str, Mapping[str, Any]], modules: Mapping[str, Mapping[str, str]]
) -> tuple[dict[str, Mapping[str, Any]], dict[str, Any] | None]:
    """An entry's own file list, its .pyc files listed apart in a bytecode list staged
    as a blob (bytecode_list.py), and the manifest's summary of the list (None where
    the entry holds no bytecode)."""
    own, data, summary = bytecode_list.split(files, modules)
    if data is not None:
        path = staging / "bytecode-list.json"
        path.write_bytes(data)
        ref = store.stage_blob(staging, path)
        own[bytecode_list.LIST_PATH] = {"sha256": ref.sha256, "size": ref.size}
    return own, summary


def staged_reader(objects: Path) -> bytecode_list.ReadBlob:
    """What reads a blob staged (written, downloaded or linked) under `objects`: one
    reader for all the entries of an unpack or a pull, so each list is parsed once."""

    def read(sha256: str) -> bytes:
        return (objects / sha256[:2] / sha256).read_bytes()

    return read


def link_present(
    store: Store, objects: Path, sizes: Mapping[str, int], listings: dict[str, set[str]] | None = None
) -> set[str]:
    """Hard-link into `objects` the blobs of `sizes` (sha256 -> size) the store holds
    (`listings` as `Store.blobs_present` takes it); the ones linked. One that cannot be
    linked (gone meanwhile, another user's file), or whose size is not its blob's (cut
    short by a crash or a full disk), is written instead, and publishing replaces it."""
    linked: set[str] = set()
    folders: set[str] = set()
    for sha256 in store.blobs_present(sizes, listings):
        staged = objects / sha256[:2] / sha256
        try:
            if sha256[:2] not in folders:
                (objects / sha256[:2]).mkdir(parents=True, exist_ok=True)
                folders.add(sha256[:2])
            os.link(store.blob_file(sha256), staged)
            if os.stat(staged).st_size != sizes[sha256]:
                os.unlink(staged)
                continue
        except OSError:
            continue
        linked.add(sha256)
    return linked


@contextlib.contextmanager
def space_free(folder: Path) -> Iterator[Path]:
    """`folder`, or where its path holds a space (which torch's C++ compiler command
    line cannot take), a link to it from a temporary folder whose path holds none:
    the compile writes through the link, into the store."""
    if " " not in str(folder):
        yield folder
        return
    alias_root = Path(tempfile.mkdtemp(prefix="ccache-cli-"))
    try:
        if " " in str(alias_root):
            raise StoreError(
                f"the store path {folder} and the temp folder {alias_root} both hold a space, which torch's "
                "C++ compiler command line cannot take; set TMPDIR or --store to a path without one"
            )
        (alias_root / "artifacts").symlink_to(folder, target_is_directory=True)
        yield alias_root / "artifacts"
    finally:
        shutil.rmtree(alias_root, ignore_errors=True)
