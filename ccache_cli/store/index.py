"""The entries' index: each published manifest's summary and totals (manifest.py), so
that listing and choosing entries reads one file instead of every manifest.

`<store>/index.json` is a cache, never the truth. Every read lists `entries/` and
compares each manifest's inode, size and modification time with what the index
recorded; a manifest that differs, or that the index lacks, is read and checked in
full. So an index that a concurrent writer or a kill -9 left behind is at worst
incomplete, never wrong. A reader that found it stale and can write to the store
writes a new one, atomically, without the store's lock: concurrent writers race only
to replace one valid snapshot by another. It is written with its format and digest
first (durable.write_checked), so that a file damaged or edited by hand is not read at
all (its records were summaries of checked manifests, and are then rebuilt from them),
instead of each record's every value being checked at every read.

Every command reads it, so it is kept small: a value that many entries hold alike (the
machine's fingerprint and the traced sources in their keys, the top-level packages of
a shared bytecode list) is written once, in `shared`, and each record names it by
position. A large object is split one level down, so that the parts entries share are
shared though the whole differs (no two entries have the same key).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ccache_cli.errors import StoreError
from ccache_cli.store import durable, schema

INDEX_FILE = "index.json"
TEMP_PREFIX = f".{INDEX_FILE}."  # durable.atomic_write's temporary files, in the store's tmp/
_FORMAT = 4  # 2: repeated values shared; 3: and the parts of large objects; 4: its digest first
_SHARED_FROM = 64  # characters of JSON from which a record's value is shared

# entry id -> [signature, summary, totals]
Records = dict[str, list[Any]]


def signature(stat: os.stat_result) -> list[int]:
    """What changes whenever a manifest file is replaced or rewritten."""
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns]


def load(root: Path) -> Records:
    """The recorded entries, each [signature, summary, totals]; none where the index is
    missing, unreadable, of another format or not as it was written."""
    body = durable.read_checked(root / INDEX_FILE, _FORMAT)
    if body is None:
        return {}
    try:
        document = json.loads(body)
        shared = document["shared"]
        return {
            name: [found, _joined(summary, shared), _joined(totals, shared)]
            for name, (found, summary, totals) in document["entries"].items()
        }
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        return {}


def _joined(part: list[Any], shared: list[Any]) -> dict[str, Any]:
    """A summary or totals from its own fields and those it names in `shared` (filled
    in where it was just parsed: a record's objects are its own)."""
    fields, named = part
    for field, at in named.items():
        if type(at) is int:
            fields[field] = shared[at]
        else:  # an object split one level down
            fields[field].update({sub: shared[position] for sub, position in at.items()})
    return fields


def _split(document: Mapping[str, Any], shared: dict[str, int], nested: bool = True) -> list[Any]:
    """[its small fields, {field: position in shared}], an object's field mapped to
    {its field: position} where it is split; `shared` maps each shared value's JSON to
    its position, and grows with the values first seen here."""
    fields: dict[str, Any] = {}
    named: dict[str, Any] = {}
    for field, value in document.items():
        text = json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else ""
        if len(text) < _SHARED_FROM:  # and every string: an id or a digest, each an entry's own
            fields[field] = value
        elif nested and isinstance(value, dict):
            fields[field], named[field] = _split(value, shared, nested=False)
            if not named[field]:
                del named[field]
        else:
            named[field] = shared.setdefault(text, len(shared))
    return [fields, named]


def save(root: Path, records: Records, tmp_dir: Path) -> None:
    """Replace the index, where the store can be written to (durable.modes_allow_writes);
    else leave it."""
    if not durable.modes_allow_writes(root):
        return
    with contextlib.suppress(OSError):
        shared: dict[str, int] = {}
        entries = {
            name: [found, _split(summary, shared), _split(totals, shared)]
            for name, (found, summary, totals) in records.items()
        }
        listed = json.dumps(entries, separators=(",", ":"))
        body = f'{{"shared":[{",".join(shared)}],"entries":{listed}}}'.encode()  # shared: JSON texts, in order
        durable.write_checked(root / INDEX_FILE, body, _FORMAT, tmp_dir)


def loader(folder: str, recorded: list[int]) -> Callable[[], Mapping[str, Any]]:
    """What reads an indexed entry's whole manifest, checked, the first time one of its
    heavy fields is asked for: the file the index recorded, or StoreError."""

    def load() -> Mapping[str, Any]:
        name = os.path.basename(folder)
        try:
            with open(f"{folder}/manifest.json", "rb") as handle:
                if signature(os.fstat(handle.fileno())) == recorded:
                    return schema.check(json.loads(handle.read()), folder=name)
        except (OSError, ValueError, RecursionError):
            pass
        raise StoreError(f"entry {name[:12]} was removed or replaced while ccache read it; run the command again")

    return load
