"""Usage statistics per entry: when it was last used, how often, cache hits and misses.

`ccache run`, `ccache env`, `ccache_cli.activate()` and `verify --run` append one JSON
line per use to `<store>/usage/<entry id>.log`, and every Python process under
`ccache run` a result line with its FX-graph cache hits and misses at exit (the
start-up hook) (appends of one short line are atomic,
so concurrent programs lose nothing). A read-only store records nothing and says
nothing: usage must never stop a program from starting.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass

from .store import Store


@dataclass(frozen=True)
class Usage:
    times_used: int
    last_used: str | None  # UTC, ISO 8601
    hits: int
    misses: int


def record(store: Store, entry_ids: Iterable[str], by: str, hits: int | None = None, misses: int | None = None) -> None:
    line = {"at": now(), "by": by}
    if hits is not None:
        line.update(hits=hits, misses=misses or 0)
    data = (json.dumps(line, sort_keys=True) + "\n").encode()
    try:
        for path in log_paths(store, entry_ids):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
    except OSError:
        return


def log_paths(store: Store, entry_ids: Iterable[str]) -> list[str]:
    """The entries' usage logs, or none for a read-only store: a read-only mount, or
    a folder without write permission (which root would otherwise ignore)."""
    folder = store.root / "usage"
    try:
        if not os.stat(store.root).st_mode & 0o222:
            return []
        folder.mkdir(exist_ok=True)
    except OSError:
        return []
    if not os.access(folder, os.W_OK):
        return []
    return [str(folder / f"{entry_id}.log") for entry_id in entry_ids]


def read(store: Store, entry_id: str) -> Usage:
    times, last, hits, misses = 0, None, 0, 0
    try:
        lines = (store.root / "usage" / f"{entry_id}.log").read_text().splitlines()
    except OSError:
        lines = []
    for text in lines:
        try:
            line = json.loads(text)
        except ValueError:
            continue  # a line cut short by a crash
        if not line.get("result"):  # a result line reports a use's cache counters, not another use
            times += 1
            last = line["at"] if last is None or moment(line["at"]) > moment(last) else last
        hits += int(line.get("hits", 0))
        misses += int(line.get("misses", 0))
    return Usage(times, last, hits, misses)


def forget(store: Store, entry_id: str) -> None:
    try:
        os.unlink(store.root / "usage" / f"{entry_id}.log")
    except OSError:
        return


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def moment(text: str) -> dt.datetime:
    """A stored UTC time (usage lines carry microseconds, `created` whole seconds)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
