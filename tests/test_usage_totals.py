"""The usage logs' totals (store/usage_totals.py): listing reads only what each log
gained since it was added up. Whatever happens to the logs (lines appended, a line
still being written, a log removed and made anew, the totals file damaged), the
totals are what reading every log whole gives."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from helpers.cli import ccache, ccache_json
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ccache_cli.in_program import usage
from ccache_cli.store import durable, usage_totals
from ccache_cli.store.store import Store

IDS = ("a" * 64, "b" * 64)


def use_line(number: int) -> bytes:
    """A use of an entry, or (odd numbers) a process's result with its cache counters;
    each number's at another time, as no two uses are to the microsecond."""
    at = f"2026-12-{1 + number % 28:02d}T10:{number % 60:02d}:00.{number:06d}Z"
    line = {"at": at, "by": "run"} if number % 2 == 0 else {"at": at, "result": True, "hits": number, "misses": 1}
    return (json.dumps(line) + "\n").encode()


GARBAGE = (
    b'{"at": "2026-12-01T00:00:00.000001Z", "by": "run"},{"at": "2026-12-01T00:00:00.000002Z", "by": "run"}\n',
    b'{"at": "2026-12-01T00:00:00.000003Z", "result": true, "hits": 1e400}\n',
    b"\xff\xfe not JSON\n",
)

# What happens to one entry's log between two listings.
steps = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 500)),
    st.tuples(st.just("cut"), st.integers(0, 500)),  # a line of which only a part is written yet
    st.tuples(st.just("made anew"), st.integers(0, 500)),  # removed with its entry, a new one used
    st.tuples(st.just("garbage"), st.integers(0, 2)),  # lines this tool never writes
    st.tuples(st.just("damage totals"), st.integers(0, 1)),  # cut short, or a record of other types
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=st.lists(st.tuples(st.sampled_from(IDS), steps), max_size=12))
@example(history=[(IDS[0], ("garbage", 0)), (IDS[0], ("garbage", 2))])  # a line of two, then one of none
def test_totals_are_the_whole_logs_added_up(tmp_path: Path, history: list) -> None:
    store = Store(tmp_path / f"store{time.monotonic_ns()}")
    (store.root / "usage").mkdir(parents=True)
    store.tmp_dir.mkdir()
    pending: dict[str, bytes] = {}  # the rest of a cut line, written at the next step
    for serial, (entry_id, (what, number)) in enumerate(history):
        log = store.root / "usage" / f"{entry_id}.log"
        if what == "damage totals":  # the file as written, a record edited in it (or cut short)
            path = store.root / "usage" / usage_totals.TOTALS_FILE
            line, _, data = path.read_bytes().partition(b"\n") if path.exists() else (b"{}", b"", b"")
            document = json.loads(data) if data.startswith(b'{"logs"') and data.endswith(b"}") else {"logs": {}}
            document["logs"][entry_id] = [["1", "2", 3], "", vars(usage.EMPTY)]
            damaged = line + b"\n" + json.dumps(document).encode()
            path.write_bytes(damaged if number % 2 else damaged[:40])
            continue
        if what == "made anew":  # in place: the same inode, as a file system may give a new file
            log.write_bytes(b"")
            pending.pop(entry_id, None)
        with open(log, "ab") as handle:
            handle.write(pending.pop(entry_id, b""))
            line = GARBAGE[number] if what == "garbage" else use_line(serial * 1000 + number)
            if what == "cut":
                cut = 1 + number % (len(line) - 1)  # up to the newline alone left out
                handle.write(line[:cut])
                pending[entry_id] = line[cut:]
            else:
                handle.write(line)
        totals = usage_totals.read_all(store, IDS)
        # A line without its newline yet counts in neither.
        assert totals == {entry_id: usage.read(store, entry_id) for entry_id in IDS}


def test_inspect_and_gc_read_the_totals_and_a_killed_write_is_reclaimed(tmp_path: Path) -> None:
    from helpers.stores import make_entry

    root = tmp_path / "store"
    entry_id = make_entry(Store(root), "used", {"inductor/a": b"a"})
    (root / "usage").mkdir(exist_ok=True)
    (root / "usage" / f"{entry_id}.log").write_bytes(use_line(0) + use_line(1) + use_line(2))
    [listed] = ccache_json("inspect", store=root)["entries"]
    assert (listed["usage"]["times_used"], listed["usage"]["hits"]) == (2, 1)
    written = durable.read_checked(root / "usage" / usage_totals.TOTALS_FILE, usage_totals._FORMAT)
    recorded = json.loads(written)["logs"][entry_id]
    assert recorded[0][1] == (root / "usage" / f"{entry_id}.log").stat().st_size
    with open(root / "usage" / f"{entry_id}.log", "ab") as log:
        log.write(use_line(4))
    [listed] = ccache_json("inspect", store=root)["entries"]
    assert listed["usage"]["times_used"] == 3 and listed["usage"]["last_used"] == json.loads(use_line(4))["at"]
    # A write of the totals that was killed leaves a temporary file that gc reclaims.
    stray = root / "tmp" / f"{usage_totals.TEMP_PREFIX}killed"
    stray.write_text("{")
    os.utime(stray, (time.time() - 3600, time.time() - 3600))
    assert str(stray) in ccache_json("gc", "--dry-run", store=root)["abandoned_staging"]
    assert ccache("gc", store=root).returncode == 0
    assert not stray.exists()
