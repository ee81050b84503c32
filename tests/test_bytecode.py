"""Stored bytecode of the compile stack: recorded by precompile, served by `ccache run`,
never stale."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from helpers.cli import ccache, ccache_json

from ccache_cli.in_program import bytecode
from ccache_cli.serve import views
from ccache_cli.store import bytecode_list
from ccache_cli.store.store import Store

pytestmark = pytest.mark.slow  # real compiles or kill -9 loops

NO_PYC = {"PYTHONDONTWRITEBYTECODE": "1"}  # with PYTHONPYCACHEPREFIX at an empty folder: as in many images


def _manifest(store: Path, entry_id: str) -> dict:
    return json.loads((store / "entries" / entry_id / "manifest.json").read_text())


def test_precompile_stores_checked_hash_based_bytecode(example_store: Path, example_entry: dict) -> None:
    assert example_entry["artifacts"]["bytecode"] > 500
    store = Store(example_store)
    entry = store.find(example_entry["id"])
    modules = {info["module"] for info in entry.bytecode.values()}
    assert {"torch._dynamo.utils", "torch._inductor.codecache", "ccache_cli.examples.tiny_transformer"} <= modules
    # Listed once, in a blob the manifest names: the manifest repeats none of it.
    manifest = _manifest(example_store, example_entry["id"])
    assert "bytecode" not in manifest and not any(path.endswith(".pyc") for path in manifest["files"])
    assert manifest["bytecode_list"]["modules"] == len(modules) and "torch" in manifest["bytecode_list"]["tops"]
    tag = sys.implementation.cache_tag
    path = f"bytecode/torch/_dynamo/utils.{tag}.pyc"
    data = Path(store.blob_file(entry.all_files[path]["sha256"])).read_bytes()
    assert data[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(data[4:8], "little") == 0b11  # hash-based and checked against the source (PEP 552)


def test_run_serves_stored_bytecode_in_an_environment_without_pyc(example_store: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-prefix"
    empty.mkdir()
    probe = "import os, torch._dynamo.utils as u; print(u.__cached__); print(os.path.realpath(u.__cached__))"
    result = ccache(
        "run",
        "--",
        sys.executable,
        "-c",
        probe,
        store=example_store,
        cwd=tmp_path,
        env={**NO_PYC, "PYTHONPYCACHEPREFIX": str(empty), "CCACHE_CLI_VIEWS": str(tmp_path / "views")},
    )
    assert result.returncode == 0, result.stderr
    cached, real = result.stdout.strip().splitlines()[-2:]
    assert cached.startswith(str(tmp_path / "views")) and Path(cached).is_symlink()
    # The stored .pyc, or where this environment has a valid one of its own (as this
    # test's venv may: earlier tests imported torch), that one.
    import torch._dynamo.utils

    own = bytecode.own_timestamp_pyc(torch._dynamo.utils.__file__)
    assert real.startswith(str((example_store / "objects").resolve())) or real == os.path.realpath(own or "-")
    assert f"PYTHONPYCACHEPREFIX={empty} is replaced" in result.stderr
    assert list(empty.iterdir()) == []
    # CCACHE_CLI_BYTECODE=0 leaves the user's setting alone (a module of the standard
    # library, which the entry stores too: Python compiles it afresh, not all of torch).
    result = ccache(
        "run",
        "--",
        sys.executable,
        "-c",
        probe.replace("torch._dynamo.utils", "json.decoder"),
        store=example_store,
        cwd=tmp_path,
        env={
            **NO_PYC,
            "PYTHONPYCACHEPREFIX": str(empty),
            "CCACHE_CLI_VIEWS": str(tmp_path / "views"),
            "CCACHE_CLI_BYTECODE": "0",
        },
    )
    assert result.stdout.strip().splitlines()[-2].startswith(str(empty))


def test_a_changed_source_is_compiled_afresh_never_served_stale(small_store: dict, tmp_path: Path) -> None:
    store, models = tmp_path / "store", tmp_path / "models"
    shutil.copytree(small_store["store"], store)
    shutil.copytree(small_store["models"], models)
    entry = ccache_json("inspect", store=store)["entries"][0]
    assert "small" in {info["module"] for info in Store(store).find(entry["id"]).bytecode.values()}
    env = {"PYTHONPATH": str(models), "CCACHE_CLI_VIEWS": str(tmp_path / "views")}
    probe = "import small; print(getattr(small, 'MARK', 'original'))"
    before = {p: p.read_bytes() for p in (store / "objects").rglob("*") if p.is_file()}

    (models / "small.py").write_text((models / "small.py").read_text() + "\nMARK = 'edited'\n")
    for extra in (NO_PYC, {}):  # without and with Python writing fresh bytecode into the view
        result = ccache("run", "--", sys.executable, "-c", probe, store=store, cwd=tmp_path, env={**env, **extra})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == "edited"
    assert {p: p.read_bytes() for p in (store / "objects").rglob("*") if p.is_file()} == before

    # verify names it; a changed module of the user's costs start-up time, not correctness.
    report = ccache("verify", "--json", store=store, cwd=tmp_path, env=env)
    check = next(c for c in json.loads(report.stdout)["checks"] if c["check"] == "bytecode")
    assert check["ok"] is True and "would be compiled afresh: small" in check["detail"]


def test_export_dir_writes_a_pycache_prefix_tree(example_store: Path, tmp_path: Path) -> None:
    archive = tmp_path / "cache.tar.zst"
    assert ccache("pack", str(archive), store=example_store).returncode == 0
    exported = tmp_path / "exported"
    unpacked = ccache_json("unpack", str(archive), "--export-dir", str(exported), store=tmp_path / "image-store")
    prefix = Path(unpacked["exported"]["pycache_prefix"])
    assert prefix == exported / "pycache"
    # A CPU entry's C++ kernels read the thread count at run time: the one setting a plain
    # process needs besides the folder, said in the JSON and in the one human line.
    env = unpacked["exported"]["env"]
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(exported) and env["TORCHINDUCTOR_CPP_DYNAMIC_THREADS"] == "1"
    again = ccache("unpack", str(archive), "--export-dir", str(tmp_path / "again"), store=tmp_path / "image-store")
    assert "TORCHINDUCTOR_CPP_DYNAMIC_THREADS=1" in again.stdout, again.stdout
    probe = "import torch._dynamo.utils as u, os; print(os.path.isfile(u.__cached__), u.__cached__)"
    result = _python(probe, {**NO_PYC, "PYTHONPYCACHEPREFIX": str(prefix)}, tmp_path)
    exists, cached = result.split(" ", 1)
    assert exists == "True" and cached.startswith(str(prefix))


def _python(code: str, env: dict[str, str], cwd: Path) -> str:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env={**os.environ, **env}, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_a_capture_with_no_bytecode_stores_none(tmp_path: Path) -> None:
    """`run --capture --no-bytecode`, for images that have .pyc files (precompile's
    `--no-bytecode` is checked where test_size_ranges.py precompiles with it)."""
    captured = ccache(
        "run", "--capture", "c", "--no-bytecode", "--json", "--", sys.executable, "-c", CAPTURED, store=tmp_path / "c"
    )
    assert captured.returncode == 0, captured.stderr
    [entry] = ccache_json("inspect", store=tmp_path / "c")["entries"]
    assert "bytecode" not in entry["artifacts"], entry["artifacts"]


CAPTURED = "import torch; torch.compile(lambda x: x * 2 + 1)(torch.ones(4))"


def test_entries_of_one_environment_share_one_bytecode_list(
    small_store: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compile stack's bytecode is listed once, in a blob each entry's manifest
    names: two sizes of one model share it, no manifest repeats it, an archive carries
    it once, and the unpacked entries read it back; a damaged list is named by verify."""
    store, models = tmp_path / "store", small_store["models"]
    shutil.copytree(small_store["store"], store)
    result = ccache("precompile", "small.py", "--sizes", "3", "--no-aot", store=store, cwd=models)
    assert result.returncode == 0, result.stderr
    entries = [Store(store).find(entry["id"]) for entry in ccache_json("inspect", store=store)["entries"]]
    assert len(entries) == 2 and len({entry.files[bytecode_list.LIST_PATH]["sha256"] for entry in entries}) == 1
    for entry in entries:
        manifest = store / "entries" / entry.id / "manifest.json"
        assert manifest.stat().st_size < 100_000 and len(entry.bytecode) > 500, manifest.stat().st_size
    archive = tmp_path / "both.tar.zst"
    assert ccache("pack", str(archive), store=store).returncode == 0
    target = tmp_path / "target"
    assert ccache("unpack", str(archive), store=target).returncode == 0
    report = ccache_json("verify", store=target, cwd=models)
    checks = {(check["entry"], check["check"]): check for check in report["checks"]}
    for entry in entries:
        assert checks[entry.id, "integrity"]["ok"] and checks[entry.id, "bytecode"]["ok"], report
        assert Store(target).find(entry.id).all_files == entry.all_files
    # One entry's manifest disagreeing with the list they share: a view serves that entry
    # without bytecode and the other with it, whichever comes first.
    manifest = target / "entries" / entries[0].id / "manifest.json"
    original = manifest.read_text()
    document = json.loads(original)
    document["bytecode_list"]["bytes"] += 1
    manifest.chmod(0o644)
    manifest.write_text(json.dumps(document))
    damaged, good = (Store(target).find(entry.id) for entry in entries)
    for number, order in enumerate(([damaged, good], [good, damaged])):
        monkeypatch.setenv(views.VIEWS_ENV, str(tmp_path / f"views-{number}"))
        assert views.ensure_view(Store(target), order)[1], number
    # ... and verify still hashes the list's files for the other entry, and names one damaged.
    pyc_path, pyc_ref = sorted(good.bytecode_files.items())[0]
    pyc = Path(Store(target).blob_file(pyc_ref["sha256"]))
    kept = pyc.read_bytes()
    pyc.chmod(0o644)
    pyc.write_bytes(bytes([kept[0] ^ 1]) + kept[1:])
    result = ccache("verify", "--json", store=target, cwd=models)
    checks = {(check["entry"], check["check"]): check for check in json.loads(result.stdout)["checks"]}
    assert result.returncode == 1 and pyc_path in checks[good.id, "integrity"]["detail"], result.stdout
    pyc.write_bytes(kept)
    manifest.write_text(original)
    # A damaged list: verify names it; gc and rm delete nothing (which blobs it names is
    # not known, and another entry shares it); a program still starts, without it.
    listed = Path(Store(target).blob_file(entries[0].files[bytecode_list.LIST_PATH]["sha256"]))
    listed.chmod(0o644)
    listed.write_bytes(listed.read_bytes().replace(b'"modules"', b'"moduleZ"'))
    report = ccache("verify", "--json", store=target, cwd=models)
    assert report.returncode == 1 and "bytecode/list.json" in report.stdout, report.stdout
    blobs = sorted((target / "objects").rglob("*"))
    for command in (["rm", entries[0].id], ["gc"]):
        result = ccache(*command, store=target)
        assert result.returncode == 1 and "nothing is deleted" in result.stderr, result.stderr
    assert sorted((target / "objects").rglob("*")) == blobs
    started = ccache("run", "--", sys.executable, "-c", "print('up')", store=target, cwd=tmp_path)
    assert started.returncode == 0 and "up" in started.stdout, started.stderr
    listed.unlink()  # a missing list: each entry's checks say so, in one report
    report = ccache("verify", "--json", store=target, cwd=models)
    assert report.returncode == 1 and "unreadable" in report.stdout, (report.stdout, report.stderr)
