"""precompile on the CPU: real torch.compile, real files, real subprocesses."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import EXAMPLE, ccache, ccache_json
from helpers.serving import run_on_cache_dir
from helpers.stores import store_leftovers

import ccache_cli.examples.tiny_transformer as example_module
from ccache_cli.store.store import Store

pytestmark = pytest.mark.slow  # real compiles or kill -9 loops


def test_manifest_lists_sources_fingerprint_and_artifacts(example_store: Path, example_entry: dict) -> None:
    assert example_entry["sizes"] == [1, 8]
    assert example_entry["device"] == "cpu"
    expected_sha = hashlib.sha256(Path(example_module.__file__).read_bytes()).hexdigest()
    assert example_entry["sources"] == [
        {"path": "ccache_cli/examples/tiny_transformer.py", "module": EXAMPLE, "sha256": expected_sha}
    ]
    fp = example_entry["fingerprint"]
    import platform

    import torch

    assert fp["python"] == platform.python_version()
    assert fp["torch"] == torch.__version__
    assert fp["cpu_isa"] and fp["cpu_threads"]
    artifacts = example_entry["artifacts"]
    assert artifacts["fxgraph"] >= 2 and artifacts["aotautograd"] >= 2 and artifacts["kernels"] > 0
    assert artifacts["megacache"] == 1
    assert artifacts["aot"] == 4, example_entry["aot"]  # an aot_compile function and an AOTInductor package per size
    assert example_entry["aot"]["status"] == "stored" and example_entry["aot"]["packages"]["status"] == "stored"
    assert example_entry["compatible"] is True
    # Every file the manifest names is a blob with exactly those bytes.
    entry = Store(example_store).find(example_entry["id"])
    for path, ref in entry.refs.items():
        blob = Store(example_store).blob_path(ref.sha256)
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == ref.sha256, path
        assert blob.stat().st_size == ref.size
    assert store_leftovers(example_store) == [f"entries/{example_entry['id']}"]


def test_fresh_process_on_materialized_inductor_dir_only_hits(
    example_store: Path, example_entry: dict, tmp_path: Path
) -> None:
    store = Store(example_store)
    inductor_dir = tmp_path / "elsewhere" / "inductor"
    assert store.materialize(store.find(example_entry["id"]), inductor_dir, "inductor/") > 0
    counters = run_on_cache_dir(inductor_dir, "cpu", [1, 8], cwd=tmp_path)
    assert counters.get("fxgraph_cache_hit") == 2
    assert counters.get("fxgraph_cache_miss", 0) == 0
    assert counters.get("autograd_cache_miss", 0) == 0


def test_second_precompile_finds_the_entry(example_store: Path, example_entry: dict) -> None:
    result = ccache_json("precompile", EXAMPLE, "--sizes", "1,8", store=example_store)
    assert result["reused"] is True
    assert result["entry"]["id"] == example_entry["id"]
    assert result["reports"] == []


def test_file_model_records_both_user_files_and_no_torch_file(two_files_stores: Path) -> None:
    [entry] = ccache_json("inspect", store=two_files_stores / "one")["entries"]
    paths = {source["path"]: source for source in entry["sources"]}
    assert set(paths) == {"model.py", "helpers.py"}
    assert paths["helpers.py"]["module"] == "helpers"
    helpers = two_files_stores / "code" / "helpers.py"
    assert paths["helpers.py"]["sha256"] == hashlib.sha256(helpers.read_bytes()).hexdigest()
    assert not any("torch" in path for path in paths)
    assert entry["aot"]["status"] == "disabled"


def test_graph_break_skips_aot_functions_but_not_packages(models: Path, tmp_path: Path) -> None:
    """A graph break stops Dynamo's fullgraph capture, not torch.export's non-strict one."""
    store = tmp_path / "store"
    result = ccache("precompile", str(models / "small.py:build_graph_break"), "--sizes", "2", store=store, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "AOT-compiled functions skipped: graph break" in result.stdout, result.stdout
    # Not at a terminal (a CI log): each step as it starts and ends, at the seconds since the start.
    steps = [line.split(" s  ", 1)[1] for line in result.stdout.splitlines() if " s  " in line]
    assert steps[:2] == ["loading model and torch", "compile size 2"], result.stdout
    assert steps[2].startswith("compile size 2 done ("), result.stdout
    assert any(step.startswith("AOTInductor package size 2 done (") for step in steps), result.stdout
    assert "AOTInductor packages stored" in result.stdout
    entry = ccache_json("inspect", store=store)["entries"][0]
    assert entry["aot"]["status"] == "skipped" and entry["aot"]["packages"]["status"] == "stored"
    assert entry["artifacts"]["aot"] == 1  # the package
    assert entry["artifacts"]["fxgraph"] >= 2  # one graph each side of the break


def test_package_workers_started_early_are_stopped_where_no_package_is_built(models: Path, tmp_path: Path) -> None:
    """`--jobs 2` starts the package workers before the first calls; a model in training
    mode gets no package, so they are stopped, and precompile still stores the entry.
    Where the model fails to build, they end with the compile worker and nothing is left."""
    store = tmp_path / "store"
    result = ccache("precompile", str(models / "small.py:build"), "--sizes", "2", "--jobs", "2", store=store)
    assert result.returncode == 0, result.stderr
    packages = ccache_json("inspect", store=store)["entries"][0]["aot"]["packages"]
    assert (packages["status"], packages["reason"]) == ("skipped", "the model is in training mode")
    failed = ccache("precompile", str(models / "small.py:build_raises"), "--sizes", "2,4", "--jobs", "2", store=store)
    assert failed.returncode == 1 and "weights not found" in failed.stderr, failed.stderr
    assert store_leftovers(store) == [f"entries/{ccache_json('inspect', store=store)['entries'][0]['id']}"]


@pytest.mark.extended
def test_concurrent_precompiles_of_two_models_both_complete_and_force_compiles_again(
    models: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    wide = [str(models / "small.py:build_wide"), "--inputs", str(models / "small.py:wide_inputs"), "--name", "wide"]
    commands = [[str(models / "small.py:build"), "--sizes", "2"], [*wide, "--sizes", "3"]]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "ccache_cli", "--store", str(store), "precompile", *c, "--no-aot"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for c in commands
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
    entries = ccache_json("inspect", store=store)["entries"]
    assert sorted(e["model"]["attr"] for e in entries) == ["build", "build_wide"]
    scanned = Store(store)
    for entry in scanned.scan().entries:
        assert all(scanned.blob_path(ref.sha256).is_file() for ref in entry.refs.values())
    assert sorted(store_leftovers(store)) == sorted(f"entries/{e['id']}" for e in entries)
    # --force compiles again; the same key gives the same entry, adding nothing new.
    [first] = [e for e in entries if e["name"] == "wide"]
    forced = ccache_json("precompile", *wide, "--sizes", "3", "--no-aot", "--force", store=store, cwd=tmp_path)
    assert not forced["reused"] and forced["reports"][0]["label"] == "3"
    assert forced["entry"]["id"] == first["id"]


def test_loader_crash_hint_names_a_compiler_that_links_the_cxx_runtime_statically(tmp_path: Path) -> None:
    """Some images point CXX at a toolchain with no libstdc++.so; the packages it builds
    crash torch's AOTInductor loader, and precompile's reason must say so and what to do."""
    static_only = tmp_path / "static-g++"
    # A compiler driver that finds no libstdc++.so, as `g++ -print-file-name` answers then.
    static_only.write_text('#!/bin/sh\ncase "$1" in -print-file-name=*) echo "${1#*=}";; *) exec g++ "$@";; esac\n')
    static_only.chmod(0o755)
    code = "from ccache_cli.precompile.packages import static_cxx_runtime_hint as h; print(h())"
    hints = {}
    for name, compiler in (("static", str(static_only)), ("system", "g++")):
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "CXX": compiler}
        )
        assert result.returncode == 0, result.stderr
        hints[name] = result.stdout.strip()
    assert str(static_only) in hints["static"] and "set CXX to a compiler that links it dynamically" in hints["static"]
    assert hints["system"] == ""


def test_the_fresh_process_that_checks_packages_says_why_one_does_not_load(tmp_path: Path) -> None:
    """The load check's process starts before the packages build and loads them once
    told which: a file that is no package fails with torch's reason, and one stopped
    before it is told ends without loading anything."""
    from ccache_cli.precompile.packages import _FreshLoad

    broken = tmp_path / "size-2.pt2"
    broken.write_bytes(b"not a zip archive")
    reason = _FreshLoad("cpu").load({str(broken): []})
    assert reason is not None and reason != "exit 1", reason
    stopped = _FreshLoad("cpu")
    stopped.kill()
    assert stopped._process.returncode is not None
    assert _FreshLoad("cpu").load({}) is None
