"""`ccache gc` and `ccache rm`, and the usage statistics that order them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import ccache, ccache_json
from helpers.stores import make_entry

from ccache_cli.store.store import Store

SHARED = b"shared kernel " * 700  # ~10 KB that every entry names


@pytest.fixture
def world(tmp_path: Path) -> dict:
    """Three synthetic entries of ~100 KB each, plus one shared blob, and private views."""
    store = Store(tmp_path / "store")
    ids = {}
    for name in ("alpha", "beta", "gamma"):
        ids[name] = make_entry(
            store,
            name,
            {
                f"inductor/{name[:2]}/{name}.py": name.encode() * (100_000 // len(name)),
                "inductor/sh/shared.py": SHARED,
            },
        )
    return {"store": store.root, "ids": ids, "env": {"CCACHE_CLI_VIEWS": str(tmp_path / "views")}}


def use(world: dict, name: str) -> None:
    result = ccache("run", name, "--", sys.executable, "-c", "pass", store=world["store"], env=world["env"])
    assert result.returncode == 0, result.stderr


def remaining(world: dict) -> set[str]:
    return {e["name"] for e in ccache_json("inspect", store=world["store"], env=world["env"])["entries"]}


def blob_count(world: dict) -> int:
    return sum(1 for p in (world["store"] / "objects").rglob("*") if p.is_file())


def test_run_records_usage_that_inspect_shows(world: dict) -> None:
    use(world, "alpha")
    use(world, "alpha")
    entries = {e["name"]: e for e in ccache_json("inspect", store=world["store"], env=world["env"])["entries"]}
    assert entries["alpha"]["usage"]["times_used"] == 2 and entries["alpha"]["usage"]["last_used"]
    assert entries["beta"]["usage"]["times_used"] == 0


def test_gc_under_a_size_limit_keeps_the_most_recently_used(world: dict) -> None:
    for name in ("alpha", "gamma", "beta"):  # alpha least recently used, beta most
        use(world, name)
    assert blob_count(world) == 4
    dry = ccache_json("gc", "--max-size", "250K", "--dry-run", store=world["store"], env=world["env"])
    assert dry["removed"] == [world["ids"]["alpha"]] and blob_count(world) == 4
    done = ccache_json("gc", "--max-size", "250K", store=world["store"], env=world["env"])
    assert done["removed"] == [world["ids"]["alpha"]] and done["blobs"] == 1
    assert done["store_bytes"] <= 250 * 1024
    assert remaining(world) == {"beta", "gamma"} and blob_count(world) == 3  # the shared blob stays
    result = ccache("verify", "--json", store=world["store"], env=world["env"])
    assert result.returncode == 0, result.stdout
    # A tighter limit takes gamma next, then beta.
    assert ccache_json("gc", "--max-size", "150K", store=world["store"], env=world["env"])["removed"] == [
        world["ids"]["gamma"]
    ]
    assert remaining(world) == {"beta"}


def test_gc_never_removes_an_entry_a_running_program_uses(world: dict) -> None:
    command = [
        sys.executable,
        "-m",
        "ccache_cli",
        "--store",
        str(world["store"]),
        "run",
        "beta",
        "--",
        sys.executable,
        "-c",
        "import sys; print('ready', flush=True); sys.stdin.read()",
    ]
    program = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **world["env"]}
    )
    try:
        assert program.stdout is not None and program.stdout.readline().strip() == "ready"
        done = ccache_json("gc", "--max-size", "0", store=world["store"], env=world["env"])
        assert done["kept_in_use"] == [world["ids"]["beta"]]
        assert sorted(done["removed"]) == sorted([world["ids"]["alpha"], world["ids"]["gamma"]])
        assert remaining(world) == {"beta"}
        refused = ccache("rm", "beta", store=world["store"], env=world["env"])
        assert refused.returncode == 1 and "in use by running process" in refused.stderr
    finally:
        program.communicate("")
    assert ccache_json("gc", "--max-size", "0", store=world["store"], env=world["env"])["removed"] == [
        world["ids"]["beta"]
    ]
    assert remaining(world) == set() and blob_count(world) == 0


def test_gc_older_than_removes_entries_unused_for_that_long(world: dict) -> None:
    use(world, "gamma")  # the others were created (synthetically) long ago and never used
    done = ccache_json("gc", "--older-than", "1h", store=world["store"], env=world["env"])
    assert sorted(done["removed"]) == sorted([world["ids"]["alpha"], world["ids"]["beta"]])
    assert remaining(world) == {"gamma"}


def test_rm_removes_entries_and_only_their_own_blobs(world: dict) -> None:
    dry = ccache("rm", "alpha", "--dry-run", store=world["store"], env=world["env"])
    assert dry.returncode == 0 and "would remove entry" in dry.stdout and remaining(world) == {"alpha", "beta", "gamma"}
    done = ccache_json("rm", "alpha", "gamma", store=world["store"], env=world["env"])
    assert done["blobs"] == 2
    assert remaining(world) == {"beta"} and blob_count(world) == 2
    assert ccache("verify", store=world["store"], env=world["env"]).returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gc", "--max-size", "lots"], "--max-size 'lots'"),
        (["gc", "--older-than", "yesterday"], "--older-than 'yesterday'"),
        (["rm", "nosuchentry"], "nosuchentry"),
    ],
)
def test_housekeeping_bad_input(world: dict, args: list[str], message: str) -> None:
    before = sorted(p.name for p in (world["store"] / "objects").rglob("*"))
    result = ccache(*args, store=world["store"], env=world["env"])
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in (world["store"] / "objects").rglob("*")) == before


def test_usage_log_lines_are_plain_json(world: dict) -> None:
    use(world, "beta")
    lines = (world["store"] / "usage" / f"{world['ids']['beta']}.log").read_text().splitlines()
    assert json.loads(lines[0])["by"] == "run"


def test_gc_removes_what_a_killed_writer_left_in_staging(world: dict) -> None:
    tmp = world["store"] / "tmp"
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed, working = tmp / "stage-killed", tmp / "stage-working"
    for folder, pid in ((killed, ended.stdout.strip()), (working, str(os.getpid()))):
        (folder / "artifacts").mkdir(parents=True)
        (folder / ".owner").write_text(f"{socket.gethostname()} {pid}\n")
        (folder / "artifacts" / "kernel.so").write_bytes(b"x" * 5000)
    dry = ccache_json("gc", "--dry-run", store=world["store"], env=world["env"])
    assert dry["abandoned_staging"] == [str(killed)] and killed.exists()
    done = ccache_json("gc", store=world["store"], env=world["env"])
    assert done["abandoned_staging"] == [str(killed)] and done["freed_bytes"] >= 5000 and done["removed"] == []
    assert not killed.exists() and working.exists()
    assert remaining(world) == {"alpha", "beta", "gamma"}


def test_gc_clears_precompiles_bytecode_cache_and_counts_it(world: dict, tmp_path: Path) -> None:
    """`<store>/pycache/`: the .pyc precompile's processes write where the environment
    has none (written here by Python itself, as they do); gc counts it and removes it."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "stack.py").write_text("X = 1\n" * 500)
    pycache = world["store"] / "pycache"
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(pycache), "PYTHONPATH": str(tmp_path / "src")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-c", "import stack"], env=env, check=True)
    written = sum(path.stat().st_size for path in pycache.rglob("*.pyc"))
    assert written > 0
    dry = ccache_json("gc", "--dry-run", store=world["store"], env=world["env"])
    assert dry["pycache_bytes"] == written and dry["freed_bytes"] >= written and pycache.is_dir()
    assert "would remove pycache/" in ccache("gc", "--dry-run", store=world["store"], env=world["env"]).stdout
    done = ccache_json("gc", store=world["store"], env=world["env"])
    assert done["pycache_bytes"] == written and not pycache.exists()
    assert remaining(world) == {"alpha", "beta", "gamma"}
