"""Hostile or broken surroundings refused in one line, before anything is used or
written: folders another user could plant code in, references that would pull
something else than asked."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import ccache, make_entry

from ccache_cli.store.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    make_entry(Store(root), "synthetic", {"inductor/fxgraph/ab/entry": b"graph"})
    return root


def _run(store: Path, env: dict[str, str]) -> tuple[int, str]:
    result = ccache("run", "--", sys.executable, "-c", "pass", store=store, env=env)
    return result.returncode, result.stderr


def test_a_views_folder_others_can_write_is_refused(store: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    code, stderr = _run(store, {"CCACHE_CLI_VIEWS": str(shared)})
    assert code == 1 and f"{shared} is writable by other users" in stderr and "folder of your own" in stderr
    assert list(shared.iterdir()) == []  # nothing was laid out there


def test_a_views_folder_that_is_a_link_is_refused(store: Path, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    code, stderr = _run(store, {"CCACHE_CLI_VIEWS": str(tmp_path / "link")})
    assert code == 1 and "is a symbolic link" in stderr
    assert list((tmp_path / "real").iterdir()) == []


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder to another user")
def test_a_default_views_folder_another_user_made_first_is_refused(store: Path, tmp_path: Path) -> None:
    planted = tmp_path / "tmp" / f"ccache-cli-{os.getuid()}"
    planted.mkdir(parents=True)
    os.chown(planted, 4321, 4321)
    env = {"TMPDIR": str(tmp_path / "tmp"), "CCACHE_CLI_VIEWS": ""}
    code, stderr = _run(store, env)
    assert code == 1 and "belongs to another user (uid 4321)" in stderr and "CCACHE_CLI_VIEWS" in stderr
    assert list(planted.iterdir()) == []
    # A private folder of one's own works.
    code, stderr = _run(store, {"CCACHE_CLI_VIEWS": str(tmp_path / "mine")})
    assert code == 0, stderr


@pytest.mark.parametrize(
    ("reference", "why"),
    [("localhost:5000/cache@", "empty digest after '@'"), ("localhost:99999/cache", "port 99999")],
)
def test_a_reference_that_would_pull_something_else_is_refused(tmp_path: Path, reference: str, why: str) -> None:
    for command in (["pull", reference], ["inspect", reference], ["verify", reference]):
        result = ccache(*command, store=tmp_path / "store")
        assert result.returncode == 2 and why in result.stderr, (command, result.stderr)
