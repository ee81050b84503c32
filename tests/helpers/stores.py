"""Stores without compiling: synthetic entries (real blobs, real manifests), folders
built once per test run and shared by pytest-xdist's workers, snapshots, and small
file systems to fill."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from ccache_cli.store.hashing import hash_json
from ccache_cli.store.manifest import parse as parse_manifest
from ccache_cli.store.store import Store
from helpers.cli import cpu_fingerprint

SMALL_PRECOMPILE = ("precompile", "small.py", "--sizes", "2", "--no-aot")


def store_leftovers(store: Path) -> list[str]:
    """Entries and staging files a failed command must not leave behind."""
    found = []
    for folder in ("entries", "tmp"):
        if (store / folder).is_dir():
            found += [f"{folder}/{p.name}" for p in (store / folder).iterdir()]
    return found


def make_entry(
    store: Store, name: str, files: dict[str, bytes], fingerprint: dict | None = None, device: str = "cpu"
) -> str:
    """Publish a synthetic entry (no compile): real blobs, a real manifest."""
    with store.staging() as staging:
        refs = {}
        for path, data in files.items():
            staged = staging / hashlib.sha256(path.encode()).hexdigest()
            staged.write_bytes(data)
            ref = store.stage_blob(staging, staged)
            refs[path] = {"sha256": ref.sha256, "size": ref.size}
        manifest = synthetic_manifest(name, refs, fingerprint or cpu_fingerprint(), device)
        store.publish([parse_manifest(manifest)], staging, {ref["sha256"] for ref in refs.values()})
    return manifest["id"]


def synthetic_manifest(name: str, files: dict[str, dict], fingerprint: dict | None = None, device: str = "cpu") -> dict:
    """A manifest that follows the schema, for entries made without compiling."""
    key = {
        "fingerprint": dict(fingerprint or cpu_fingerprint()),
        "compile": {"device": device, "sizes": [1], "dynamic": False, "mode": "default"},
        "model": {"module": name, "attr": "build", "inputs": f"{name}:example_inputs"},
        "inputs": {},
        "sources": [],
    }
    return {
        "format": 1,
        "id": hash_json(key),
        "name": name,
        "created": "2026-11-22T00:00:00Z",
        "lookup": "0" * 64,
        "key": key,
        "timings": {"sizes": [], "aot": None},
        "aot": {"status": "disabled", "reason": None},
        "files": files,
    }


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder that `build` fills, built once per test run: under pytest-xdist the first
    worker to ask builds it in a folder the run's workers share, and each worker gets its
    own copy (tests write to what fixtures give them)."""
    mine = tmp_path_factory.mktemp(name)
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        build(mine)
        return mine
    shared_root = tmp_path_factory.getbasetemp().parent  # this run's folder, above each worker's
    shared = shared_root / f"shared-{name}"
    with FileLock(str(shared_root / f"shared-{name}.lock")):
        if not (shared_root / f"shared-{name}.done").exists():
            shutil.rmtree(shared, ignore_errors=True)
            shared.mkdir()
            build(shared)
            (shared_root / f"shared-{name}.done").touch()
    shutil.copytree(shared, mine, symlinks=True, dirs_exist_ok=True)
    return mine


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (the store lock aside) and its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"
    }


@contextlib.contextmanager
def small_tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `folder` with `options` (its size, its inodes) for as long as the
    block runs; the test is skipped where none can be mounted (not root, no tmpfs)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
