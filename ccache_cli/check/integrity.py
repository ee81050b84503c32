"""Integrity: every blob an entry names is present, of its size, and hashes to its
name. An entry's files include its bytecode list's (store/bytecode_list.py), read once
however many entries name the list; where a list cannot be read, the manifest's own
files are checked and the list is named among them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ccache_cli.store import bytecode_list
from ccache_cli.store.hashing import sha256_file
from ccache_cli.store.manifest import Manifest
from ccache_cli.store.schema import ManifestError
from ccache_cli.store.store import Store


def readable_files(entry: Manifest, own: bool = True) -> Mapping[str, Mapping[str, Any]]:
    """Every file of the entry where its bytecode list can be read (without `own`, the
    list's alone); else its manifest's own (an archive's entry, whose list is a blob in
    it; a damaged list, named then), or none."""
    try:
        return entry.all_files if own else entry.bytecode_files
    except ManifestError:
        return entry.files if own else {}


def problems(entry: Manifest, broken: Mapping[str, str]) -> list[str]:
    """What is wrong with the entry's blobs, each named with its path."""
    if not broken:
        return []
    return [
        f"blob {ref['sha256'][:12]} ({path}): {broken[ref['sha256']]}"
        for path, ref in sorted(readable_files(entry).items())
        if ref["sha256"] in broken
    ]


def file_count(entry: Manifest) -> int:
    """How many files the entry has, as read here (its own less none: a manifest with a
    bytecode list names no .pyc file itself)."""
    return len(entry.files) + len(readable_files(entry, own=False))


def unnamed_broken_blobs(entries: Sequence[Manifest], broken: Mapping[str, str]) -> list[tuple[str, str]]:
    """Broken blobs no entry's files name as read here: an archive's bytecode lists'."""
    if not broken:
        return []
    named = {ref["sha256"] for entry in entries for ref in readable_files(entry).values()}
    return [(sha256, why) for sha256, why in sorted(broken.items()) if sha256 not in named]


def broken_store_blobs(store: Store, entries: Iterable[Manifest]) -> dict[str, str]:
    """Re-hash every blob the entries name; what is wrong with each bad one."""
    broken: dict[str, str] = {}
    sizes: dict[str, int] = {}
    lists: set[str] = set()  # each bytecode list once (by its sha256), however many entries name it
    for entry in entries:
        sizes.update((ref["sha256"], ref["size"]) for ref in entry.files.values())
        list_ref = entry.files.get(bytecode_list.LIST_PATH)
        if list_ref is not None and list_ref["sha256"] not in lists:
            listed = readable_files(entry, own=False)
            if listed:  # read: another entry naming it need not read it again
                lists.add(list_ref["sha256"])
            sizes.update((ref["sha256"], ref["size"]) for ref in listed.values())
    for sha256, size in sizes.items():
        path = store.blob_path(sha256)
        try:
            actual_size = path.stat().st_size
        except FileNotFoundError:
            broken[sha256] = "missing from the store"
            continue
        if actual_size != size:
            broken[sha256] = f"{actual_size} bytes, manifest says {size}"
        elif sha256_file(path) != sha256:
            # unpack and pull reuse a stored blob of the right size as it is: remove it first
            broken[sha256] = f"content does not match its hash (remove {path}, then unpack or pull the entry again)"
    return broken
