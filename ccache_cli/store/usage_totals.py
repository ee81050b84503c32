"""What the entries' usage logs (in_program/usage.py) add up to, kept in
`<store>/usage/totals.json`, so that listing many used entries reads only what each
log gained since it was last added up, not every use ever recorded.

A cache, never the truth, as the entries' index is (index.py). A log is only ever
appended to, so a record [[inode, bytes added up, mtime], head, usage] holds while
the log has that inode and still begins with `head` (its first bytes, in hex: the
first use's line, with its time to the microsecond): the lines appended after those
bytes are read and added. A log with other first bytes (removed with its entry, then
made anew) is read whole, and one whose inode, size and mtime are as recorded (its
lines all added up) is not opened. Only whole lines count, as `usage.read` counts
them. A reader that added something up writes the file anew, atomically and without
the store's lock: each record is right on its own, so concurrent readers race only
to replace one valid snapshot by another. It is written with its format and digest
first (durable.write_checked): a file damaged or edited by hand is not read, and every
log is then read whole.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ccache_cli.in_program import usage
from ccache_cli.in_program.usage import Usage
from ccache_cli.store import durable

if TYPE_CHECKING:
    from ccache_cli.store.store import Store

TOTALS_FILE = "totals.json"
TEMP_PREFIX = f".{TOTALS_FILE}."  # durable.atomic_write's temporary files, in the store's tmp/
_FORMAT = 2  # 2: written with its digest (durable.write_checked)
_HEAD = 64  # bytes of a log's start that tell it from a log made anew


def read_all(store: Store, entry_ids: Iterable[str]) -> dict[str, Usage]:
    """Each entry's usage, as `usage.read` adds it up; records of the entries asked for
    replace the file's where anything was added (ask for every entry of the store)."""
    folder = f"{store.root}/usage"
    recorded = _load(f"{folder}/{TOTALS_FILE}")
    records: dict[str, list[Any]] = {}
    found: dict[str, Usage] = {}
    for entry_id in entry_ids:
        path = f"{folder}/{entry_id}.log"
        record = recorded.get(entry_id)
        try:
            stat = os.stat(path)
            if record is None or record[0] != [stat.st_ino, stat.st_size, stat.st_mtime_ns]:
                record = _added_up(path, record)
            found[entry_id], records[entry_id] = record[2], record
        except OSError:  # no log (never used), or unreadable: nothing recorded
            found[entry_id] = usage.EMPTY
    if records != recorded:
        _save(store, folder, records)
    return found


def _added_up(path: str, record: list[Any] | None) -> list[Any]:
    """The log's record: `record`'s usage with the log's new lines added, or the whole
    log's where it is not the log `record` added up."""
    with open(path, "rb") as log:
        stat = os.fstat(log.fileno())
        head = log.read(_HEAD)
        start, total = 0, usage.EMPTY
        if record is not None:
            (inode, added_bytes, _), recorded_head, recorded_usage = record
            known = bytes.fromhex(recorded_head)
            if inode == stat.st_ino and added_bytes <= stat.st_size and head[: len(known)] == known:
                start, total = added_bytes, recorded_usage
        log.seek(start)
        data = log.read()
    whole = usage.whole_lines(data)  # a line still being appended is added up next time
    return [[stat.st_ino, start + whole, stat.st_mtime_ns], head.hex(), usage.added(total, data[:whole])]


def _load(path: str) -> dict[str, list[Any]]:
    """The file's records, their usage as Usage; none where it is missing, unreadable, of
    another format or not as it was written (durable.read_checked)."""
    data = durable.read_checked(path, _FORMAT)
    if data is None:
        return {}
    try:
        logs = json.loads(data)["logs"]
        return {entry_id: [signature, head, Usage(**fields)] for entry_id, (signature, head, fields) in logs.items()}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return {}


def _save(store: Store, folder: str, records: dict[str, list[Any]]) -> None:
    """Write the records where the store can be written to (durable.modes_allow_writes)."""
    logs = {entry_id: [signature, head, vars(found)] for entry_id, (signature, head, found) in records.items()}
    with contextlib.suppress(OSError):
        if durable.modes_allow_writes(store.root) and os.path.isdir(folder):
            data = json.dumps({"logs": logs}, separators=(",", ":")).encode()
            durable.write_checked(f"{folder}/{TOTALS_FILE}", data, _FORMAT, store.tmp_dir)
