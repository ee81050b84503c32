"""What the first process of `ccache run` says of a captured engine cache at exit
(in_program/engines.py), on real files laid out as a view lays them out."""

from __future__ import annotations

import json
import os
import time
import types
from pathlib import Path

import pytest

from ccache_cli.in_program import engines

CAPTURED = ["torch_compile_cache/torch_aot_compile/aaaa/rank_0_0/model", "modelinfos/llama.json"]


@pytest.fixture
def view(tmp_path: Path) -> Path:
    root = tmp_path / engines.ENGINES_DIR / "VLLM_CACHE_ROOT"
    for path in CAPTURED:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("x")
        os.utime(root / path, (engines.COPIED_MTIME, engines.COPIED_MTIME))
    settings = engines.settings("VLLM_CACHE_ROOT", {"VLLM_CPU_KVCACHE_SPACE": "1", "HOME": "/root"})
    laid_out = {"VLLM_CACHE_ROOT": {"version": "0.32.0", "settings": settings, "files": sorted(CAPTURED)}}
    (tmp_path / engines.LAID_OUT_FILE).write_text(json.dumps(laid_out))
    return tmp_path


def said(view: Path, version: str = "0.32.0", environ: dict[str, str] | None = None, since: float = 0.0) -> list[str]:
    environ = environ if environ is not None else {"VLLM_CACHE_ROOT": str(view / "engines" / "VLLM_CACHE_ROOT")}
    return engines.not_used(str(view), environ, {"vllm": types.SimpleNamespace(__version__=version)}, since)


def test_a_cache_used_as_captured_says_nothing(view: Path) -> None:
    root = view / "engines" / "VLLM_CACHE_ROOT"
    (root / "torch_compile_cache" / "torch_aot_compile" / "aaaa" / "inductor_cache" / "locks").mkdir(parents=True)
    (root / "torch_compile_cache" / "torch_aot_compile" / "aaaa" / "inductor_cache" / "locks" / "x.lock").touch()
    assert said(view) == []


def test_a_new_key_folder_is_named_with_the_captured_one(view: Path) -> None:
    new = view / "engines" / "VLLM_CACHE_ROOT" / "torch_compile_cache" / "torch_aot_compile" / "bbbb" / "rank_0_0"
    new.mkdir(parents=True)
    (new / "model").write_text("y")
    root = str(view / "engines" / "VLLM_CACHE_ROOT")
    [line] = said(view, environ={"VLLM_CACHE_ROOT": root, "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert "vllm computed the cache key bbbb, not the captured aaaa: its arguments, model or sources" in line, line
    # The engine's own settings are compared by digest, and named where they differ.
    [line] = said(view, environ={"VLLM_CACHE_ROOT": root, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_X": "y"})
    assert "VLLM_CPU_KVCACHE_SPACE, VLLM_X differ from the capture's environment" in line, line


def test_other_engine_version_moved_root_and_rewritten_files(view: Path) -> None:
    [line] = said(view, version="0.33.0")
    assert "vllm 0.33.0 runs here; the cache was captured with vllm 0.32.0" in line
    [line] = said(view, environ={"VLLM_CACHE_ROOT": "/elsewhere"})
    assert "the program set VLLM_CACHE_ROOT='/elsewhere'" in line
    (view / "engines" / "VLLM_CACHE_ROOT" / "modelinfos" / "llama.json").write_text("again")
    [line] = said(view)
    assert "wrote 1 of the captured files again (first: modelinfos/llama.json)" in line
    extra = view / "engines" / "VLLM_CACHE_ROOT" / "torch_compile_cache" / "torch_aot_compile" / "aaaa" / "more"
    extra.write_text("z")
    [line] = said(view)
    assert "wrote 1 files its cache lacked (first: torch_compile_cache/torch_aot_compile/aaaa/more)" in line
    # What an earlier program wrote into the shared view is not this one's doing.
    assert said(view, since=time.time() + 60) == []


def test_a_module_s_own_pyc_is_linked_only_while_valid_for_its_source(tmp_path: Path) -> None:
    """Views link the environment's own timestamp .pyc where it is valid (in_program/bytecode.py)."""
    import py_compile

    from ccache_cli.in_program import bytecode

    source = tmp_path / "module.py"
    source.write_text("x = 1\n")
    assert bytecode.own_timestamp_pyc(str(source)) is None
    compiled = py_compile.compile(str(source), cfile=None, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    assert bytecode.own_timestamp_pyc(str(source)) == compiled
    source.write_text("x = 22\n")  # another size: the .pyc no longer describes it
    assert bytecode.own_timestamp_pyc(str(source)) is None
    py_compile.compile(str(source), invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    assert bytecode.own_timestamp_pyc(str(source)) is None  # hash-based: Python would hash the source anyway


def test_a_copied_triton_group_names_the_files_beside_it(tmp_path: Path) -> None:
    """Triton writes a group's files by absolute path; in a view's copy they lie beside
    the group file, and a group that names others is left as it is."""
    folder = tmp_path / ".building" / "engines" / "TRITON_CACHE_DIR" / "KEY"
    folder.mkdir(parents=True)
    final = tmp_path / "view" / "engines" / "TRITON_CACHE_DIR" / "KEY"  # once the view is renamed into place
    group = folder / "__grp__add_one.json"
    captured = "/captured/root/KEY"
    group.write_text(json.dumps({"child_paths": {"add_one.cubin": f"{captured}/add_one.cubin", "x": "/elsewhere/x"}}))
    engines.relocate_triton_group(str(group), str(final))
    assert json.loads(group.read_text()) == {
        "child_paths": {"add_one.cubin": str(final / "add_one.cubin"), "x": "/elsewhere/x"}
    }
    group.write_text("not json")
    engines.relocate_triton_group(str(group), str(final))
    assert group.read_text() == "not json"
