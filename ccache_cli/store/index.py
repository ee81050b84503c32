"""The entries' index: each published manifest's summary and totals (manifest.py), so
that listing and choosing entries reads one file instead of every manifest.

`<store>/index.json` is a cache, never the truth. Every read lists `entries/` and
compares each manifest's inode, size and modification time with what the index
recorded; a manifest that differs, or that the index lacks, is read and checked in
full. So an index that a concurrent writer or a kill -9 left behind is at worst
incomplete, never wrong. A reader that found it stale and can write to the store
writes a new one, atomically, without the store's lock: concurrent writers race only
to replace one valid snapshot by another.
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
_FORMAT = 1

# entry id -> [signature, summary, totals]
Records = dict[str, list[Any]]


def signature(stat: os.stat_result) -> list[int]:
    """What changes whenever a manifest file is replaced or rewritten."""
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns]


def load(root: Path) -> Records:
    """The recorded entries, each [signature, summary, totals]; none where the index is
    missing, unreadable or of another format, and no record that is not of that shape."""
    try:
        document = json.loads((root / INDEX_FILE).read_bytes())
        if isinstance(document, dict) and document.get("format") == _FORMAT and isinstance(document["entries"], dict):
            return {name: record for name, record in document["entries"].items() if _well_formed(record)}
    except (OSError, ValueError, KeyError):
        pass
    return {}


def _well_formed(record: Any) -> bool:
    return (
        isinstance(record, list)
        and len(record) == 3
        and isinstance(record[0], list)
        and isinstance(record[1], dict)
        and isinstance(record[2], dict)
    )


def save(root: Path, records: Records, tmp_dir: Path) -> None:
    """Replace the index, where the store can be written to; else leave it. A store
    made read-only by its modes is left too, even where they do not stop this user
    (root), as the usage logs are."""
    document = {"format": _FORMAT, "entries": records}
    with contextlib.suppress(OSError):
        if not os.stat(root).st_mode & 0o222:
            return
        durable.atomic_write(root / INDEX_FILE, json.dumps(document, separators=(",", ":")).encode(), tmp_dir)


def loader(folder: str, recorded: list[int]) -> Callable[[], Mapping[str, Any]]:
    """What reads an indexed entry's whole manifest, checked, the first time one of its
    heavy fields is asked for: the file the index recorded, or StoreError."""

    def load() -> Mapping[str, Any]:
        name = os.path.basename(folder)
        try:
            with open(f"{folder}/manifest.json", "rb") as handle:
                if signature(os.fstat(handle.fileno())) == recorded:
                    return schema.check(json.loads(handle.read()), folder=name)
        except (OSError, ValueError):
            pass
        raise StoreError(f"entry {name[:12]} was removed or replaced while ccache read it; run the command again")

    return load
