"""Unit tests of what routing records: process-wide decisions, served calls per entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ccache_cli.in_program import fingerprint, misses, usage
from ccache_cli.serve import decisions


def test_each_entry_log_gets_its_own_served_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decisions, "_counts", decisions.Counter())
    monkeypatch.setattr(decisions, "_served", decisions.Counter())
    assert decisions.summary("a" * 64) is None  # torch.compile never called: nothing to say
    decisions.count("routed")
    decisions.count("served", "a" * 64)
    decisions.count("served", "a" * 64)
    decisions.count("declined: not an nn.Module or its forward")
    logs = [str(tmp_path / f"{'a' * 64}.log"), str(tmp_path / f"{'b' * 64}.log")]
    misses.report_at_exit(str(tmp_path), logs, fingerprint, usage, "run", decisions.summary)
    lines = [json.loads(Path(log).read_text()) for log in logs]
    assert [line["routing"]["served"] for line in lines] == [2, 0]
    assert all(line["routing"]["routed"] == 1 for line in lines)
    assert all(line["routing"]["not_routed"] == {"declined: not an nn.Module or its forward": 1} for line in lines)


def test_unreadable_usage_lines_are_skipped(tmp_path: Path) -> None:
    from ccache_cli.store.store import Store

    store = Store(tmp_path / "store")
    (store.root / "usage").mkdir(parents=True)
    good = {"at": "2026-11-30T10:00:00.000000Z", "by": "run"}
    (store.root / "usage" / f"{'c' * 64}.log").write_text(
        "\n".join(
            [json.dumps(good), "{cut short", json.dumps({"by": "run"}), json.dumps({"result": True, "hits": None})]
        )
        + "\n"
    )
    read = usage.read(store, "c" * 64)
    assert read.times_used == 1 and read.last_used == good["at"]
