"""The compile stack's bytecode, listed once: an entry's `.pyc` files and the module
each holds, in one blob that the entry's file list names (`bytecode/list.json`)
rather than in every manifest. Entries compiled in one environment store the same
bytecode, so they name the same list, stored once and read once per process.

The list, canonical JSON:

    {"files": {stored .pyc: {"sha256", "size"}},
     "modules": {stored .pyc: {"module", "sha256" (of its source)}}}

and the manifest keeps what listing entries needs of it (`bytecode_list`: modules,
bytes, top-level packages). Manifests written before the list name their `.pyc` files
and modules inline ("files" and "bytecode"); both are read.

Standard library only.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ccache_cli.errors import ArchiveError
from ccache_cli.store import schema

if TYPE_CHECKING:
    from ccache_cli.store.manifest import Manifest

LIST_PATH = schema.BYTECODE_LIST
_LIMIT = 256 << 20  # a list past this is not one this tool wrote

ReadBlob = Callable[[str], bytes]


@dataclass(frozen=True)
class BytecodeList:
    files: Mapping[str, Mapping[str, Any]]  # stored .pyc -> {"sha256", "size"}
    modules: Mapping[str, Mapping[str, str]]  # stored .pyc -> {"module", "sha256"}
    summary: Mapping[str, Any]  # what a manifest keeps of it


def split(
    files: Mapping[str, Mapping[str, Any]], modules: Mapping[str, Mapping[str, str]]
) -> tuple[dict[str, Mapping[str, Any]], bytes | None, dict[str, Any] | None]:
    """An entry's file list less its `.pyc` files, the list's bytes (None where it
    stores no bytecode) and the manifest's summary of it."""
    if not modules:
        return dict(files), None, None
    listed = {path: files[path] for path in sorted(modules)}
    own = {path: ref for path, ref in files.items() if path not in modules}
    data = json.dumps({"files": listed, "modules": dict(modules)}, sort_keys=True, separators=(",", ":")).encode()
    return own, data, _summary(listed, modules)


def read(ref: Mapping[str, Any], read_blob: ReadBlob, summary: Mapping[str, Any] | None = None) -> BytecodeList:
    """The list a manifest names, checked (schema.ManifestError where it is not one, is
    unreadable, or differs from the manifest's `summary` of it); parsed once per process
    however many entries name it."""
    listed = _parsed(ref["sha256"], ref["size"], read_blob)
    if summary is not None and summary != listed.summary:
        raise schema.ManifestError(f"bytecode list {ref['sha256'][:12]} is not the one the manifest summarises")
    return listed


def _summary(files: Mapping[str, Mapping[str, Any]], modules: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    return {"modules": len(modules), "bytes": sum(ref["size"] for ref in files.values()), "tops": tops(modules)}


def tops(modules: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The top-level packages of stored bytecode's modules, sorted."""
    return sorted({stored["module"].partition(".")[0] for stored in modules.values()})


@functools.lru_cache(maxsize=16)
def _parsed(sha256: str, size: int, read_blob: ReadBlob) -> BytecodeList:
    try:
        data = read_blob(sha256)
    except OSError as exc:
        raise schema.ManifestError(f"bytecode list {sha256[:12]} is unreadable ({exc.strerror or exc})") from None
    if len(data) != size or size > _LIMIT or hashlib.sha256(data).hexdigest() != sha256:
        raise schema.ManifestError(f"bytecode list {sha256[:12]} is damaged: `ccache verify` names its entry")
    try:
        document = json.loads(data)
        files, modules = document["files"], document["modules"]
        if not isinstance(files, dict) or not isinstance(modules, dict) or files.keys() != modules.keys():
            raise ValueError("its files and modules differ")
        if not all(path.startswith(schema.BYTECODE_FOLDER) for path in files):
            raise ValueError("it names a file outside bytecode/")
        schema.check_files(files)
        schema.check_bytecode(modules, files)
    except (ValueError, KeyError, TypeError, schema.ManifestError) as exc:
        raise schema.ManifestError(f"bytecode list {sha256[:12]} is malformed ({exc})") from None
    return BytecodeList(files, modules, _summary(files, modules))


def carried_blobs(entries: Iterable[Manifest], sizes: Mapping[str, int], carrier: str) -> set[str]:
    """Every blob of `entries` as an archive or artifact carries them (`sizes`: what it
    holds, by sha256), their bytecode lists' too, read where their blobs were staged;
    ArchiveError where an entry names a blob the `carrier` lacks, or its list is damaged."""
    wanted: set[str] = set()
    for entry in entries:
        try:
            files = entry.all_files
        except schema.ManifestError as exc:
            raise ArchiveError(f"{carrier}: {exc}") from None
        for path, ref in files.items():
            if sizes.get(ref["sha256"]) != ref["size"]:
                raise ArchiveError(f"{carrier}: entry {entry.short_id} names a blob ({path}) it does not hold")
            wanted.add(ref["sha256"])
    return wanted
