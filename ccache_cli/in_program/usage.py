"""Usage statistics per entry: when it was last used, how often, cache hits and misses.

`ccache run`, `ccache env`, `ccache_cli.activate()` and `verify --run` append one JSON
line per use to `<store>/usage/<entry id>.log`; every Python process under `ccache
run` appends a result line with its FX-graph cache hits and misses at exit (the
start-up hook, through `append`). Appends of one short line are atomic, so concurrent
programs lose nothing. A read-only store (a read-only mount, or a folder without
write permission, which root would otherwise ignore) records nothing and says
nothing: usage must never stop a program from starting.

No package-relative imports at run time: the start-up hook loads this file by path.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ccache_cli.store.store import Store

LOGS_ENV = "CCACHE_CLI_USAGE_LOGS"  # for the start-up hook: the logs of the active entries
VIEW_ENV = "CCACHE_CLI_VIEW"  # set in an activated process: the view it uses


@dataclass(frozen=True)
class Usage:
    times_used: int
    last_used: str | None  # UTC, ISO 8601
    hits: int
    misses: int
    miss_reason: str | None = None  # why the latest process that missed did (misses.py)
    routed: int = 0  # torch.compile calls of programs routed to the stored code (serve/routing.py)
    served: int = 0  # model calls the stored code ran
    not_routed: dict[str, int] = field(default_factory=dict)  # "declined: why" / "fallback: why" -> count


def record(store: Store, entry_ids: Iterable[str], by: str, hits: int | None = None, misses: int | None = None) -> None:
    line: dict[str, Any] = {"at": now(), "by": by}
    if hits is not None:
        line.update(hits=hits, misses=misses or 0)
    append(log_paths(store, entry_ids), line)


def append(paths: Iterable[str], line: dict[str, Any]) -> None:
    """Append one JSON line to each log; a log that cannot be written is skipped."""
    data = (json.dumps(line, sort_keys=True) + "\n").encode()
    for path in paths:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            continue
        try:
            os.write(fd, data)
        except OSError:
            pass
        finally:
            os.close(fd)


def log_paths(store: Store, entry_ids: Iterable[str]) -> list[str]:
    """The entries' usage logs, or none for a read-only store."""
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


EMPTY = Usage(0, None, 0, 0)


def read(store: Store, entry_id: str) -> Usage:
    try:
        with open(f"{store.root}/usage/{entry_id}.log", "rb") as log:
            data = log.read()
    except OSError:
        return EMPTY
    return added(EMPTY, data[: whole_lines(data)])


def whole_lines(data: bytes) -> int:
    """How many bytes of a log's `data` its whole lines take: a line without its newline
    is still being appended, or was cut short by a crash."""
    return data.rfind(b"\n") + 1


def added(usage: Usage, data: bytes) -> Usage:
    """`usage` with the uses that `data`, whole lines of its log, record added to it."""
    times, last, hits, misses, reason = usage.times_used, usage.last_used, usage.hits, usage.misses, usage.miss_reason
    routed, served, not_routed = usage.routed, usage.served, Counter(usage.not_routed)
    last_moment = None if last is None else moment(last)
    lines = data.decode("utf-8", "replace").splitlines()
    try:  # one parse for the whole log; line by line where a line is not one JSON object
        parsed: list[Any] = json.loads(f"[{','.join(lines)}]")
        if len(parsed) != len(lines):
            raise ValueError("a line of other than one value")
    except ValueError:
        parsed = [_parsed(text) for text in lines]
    for line in parsed:
        try:
            if not line.get("result"):  # a result line reports a use's cache counters, not another use
                at = line["at"]
                when = moment(at)
                if last_moment is None or when > last_moment:
                    last, last_moment = at, when
                times += 1
            hits += int(line.get("hits", 0))
            misses += int(line.get("misses", 0))
            reason = line.get("reason", reason)
            routing = line.get("routing")
            if isinstance(routing, dict):
                routed += int(routing.get("routed", 0))
                served += int(routing.get("served", 0))
                not_routed.update({str(why): int(n) for why, n in dict(routing.get("not_routed") or {}).items()})
                refused = dict(routing.get("refused") or {})
                not_routed.update({f"stored code not used: {why}": int(n) for why, n in refused.items()})
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            continue  # not a line this tool wrote
    return Usage(times, last, hits, misses, reason, routed, served, dict(not_routed))


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None  # a line cut short by a crash


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
