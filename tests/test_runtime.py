"""`ccache env`, `ccache run`, `run --capture` and the Python API, on real compiles."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from helpers.cli import ccache, ccache_json
from helpers.serving import serve_counters as _counters
from helpers.serving import write_serve_script
from helpers.stores import store_leftovers

pytestmark = pytest.mark.slow  # real compiles or kill -9 loops


@pytest.fixture
def serve(tmp_path: Path) -> Path:
    return write_serve_script(tmp_path)


def _views(tmp_path: Path) -> dict[str, str]:
    return {"CCACHE_CLI_VIEWS": str(tmp_path / "views")}


def run_python(store: Path, tmp_path: Path, *args: str, options: Sequence[str] = ()) -> CompletedProcess[str]:
    """`ccache run [OPTIONS] -- python ARGS...` from `tmp_path`, its views there."""
    return ccache("run", *options, "--", sys.executable, *args, store=store, cwd=tmp_path, env=_views(tmp_path))


def served(store: Path, tmp_path: Path, serve: Path, way: str, sizes: str, *options: str) -> dict:
    """What the serve script reports, run under `ccache run` (its exit code checked)."""
    return _counters(run_python(store, tmp_path, str(serve), way, sizes, options=options))


def test_run_hits_every_size_with_torch_compile(example_store: Path, serve: Path, tmp_path: Path) -> None:
    # The warm caches themselves: routing would serve the stored packages.
    counters = served(example_store, tmp_path, serve, "torch", "[1, 8]", "--no-route")
    assert counters["same"] is True
    assert counters.get("fxgraph_cache_miss", 0) == 0 and counters.get("autograd_cache_miss", 0) == 0
    assert counters["fxgraph_cache_hit"] == 2


def test_api_serves_stored_aot_functions_without_compiling(example_store: Path, serve: Path, tmp_path: Path) -> None:
    counters = served(example_store, tmp_path, serve, "api", "[1, 8]")
    assert counters["same"] is True
    # No frame was traced at all: every size ran its stored AOTInductor package, which
    # loads without importing Dynamo or Inductor.
    assert counters.get("frames", 0) == 0
    assert counters.get("fxgraph_cache_miss", 0) == 0 and counters.get("fxgraph_cache_hit", 0) == 0
    assert counters["compile_stack"] == []


WEIGHTS_SCRIPT = """
import json, sys, torch
import ccache_cli
from ccache_cli.examples.tiny_transformer import build, example_inputs

model = build()
compiled = ccache_cli.compile(model)
tokens = example_inputs(8)
report = {}
def check(step):
    with torch.no_grad():
        report[step] = [torch.allclose(compiled(*tokens), model(*tokens), atol=1e-4), "torch._dynamo" in sys.modules]
check("stored")
torch.manual_seed(1)
model.load_state_dict(type(model)().state_dict())  # a new checkpoint, copied in place
check("new weights")
model.head.weight = torch.nn.Parameter(torch.randn_like(model.head.weight))  # a tensor the package never saw
check("replaced")
print(json.dumps(report))
"""


def test_api_package_follows_weights_and_falls_back_when_they_are_replaced(example_store: Path, tmp_path: Path) -> None:
    script = tmp_path / "weights.py"
    script.write_text(WEIGHTS_SCRIPT)
    for _ in range(2):
        result = run_python(example_store, tmp_path, str(script))
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        # [output equals eager, Dynamo imported]: in-place weight updates are served by the
        # package; a replaced parameter goes to torch.compile, never to stale weights.
        assert report == {"stored": [True, False], "new weights": [True, False], "replaced": [True, True]}
    # torch unpacks a package per process, inside the view here; torch 2.11 leaves it
    # (the second process removed the first one's), 2.13 removes its own.
    [scratch] = (tmp_path / "views").glob("*/packages/*")
    assert [p.name.startswith("aotinductor_") for p in scratch.iterdir()] in ([True], [])


def test_api_falls_back_to_warm_torch_compile_for_other_sizes(example_store: Path, serve: Path, tmp_path: Path) -> None:
    counters = served(example_store, tmp_path, serve, "api", "[8, 5]")
    assert counters["same"] is True
    assert counters["frames"] == 1  # size 5 was compiled; size 8 came from its AOT function
    assert counters["fxgraph_cache_miss"] == 1


def test_run_from_read_only_store_changes_nothing(example_store: Path, serve: Path, tmp_path: Path) -> None:
    store = tmp_path / "ro-store"
    shutil.copytree(example_store, store, symlinks=True)
    before = _tree_digest(store)
    _make_read_only(store)
    try:
        counters = served(store, tmp_path, serve, "torch", "[1, 8]", "--no-route")
        assert counters.get("fxgraph_cache_miss", 0) == 0 and counters["fxgraph_cache_hit"] == 2
        # A fresh size compiles into the view, never into the store.
        assert served(store, tmp_path, serve, "api", "[3]")["fxgraph_cache_miss"] == 1
    finally:
        _make_writable(store)
    assert _tree_digest(store) == before


def test_env_prints_exports_of_a_view_of_links(example_store: Path, tmp_path: Path) -> None:
    result = ccache("env", store=example_store, env=_views(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "export TORCHINDUCTOR_CACHE_DIR=" in result.stdout and "unset TRITON_CACHE_DIR" in result.stdout
    described = ccache_json("env", store=example_store, env=_views(tmp_path))
    view = Path(described["view"])
    assert described["set"]["TORCHINDUCTOR_CACHE_DIR"] == str(view / "inductor")
    links = [p for p in view.rglob("*") if p.is_symlink()]
    # Into the store; a module's bytecode may link to the environment's own valid .pyc.
    assert links and all(
        str(p.resolve()).startswith(str(example_store.resolve()))
        or (p.is_relative_to(view / "bytecode") and p.resolve().parent.name == "__pycache__")
        for p in links
    )
    # The same entries give the same view: a second call builds nothing new.
    assert ccache_json("env", store=example_store, env=_views(tmp_path))["view"] == str(view)
    assert len(list((tmp_path / "views").iterdir())) == 1


def test_capture_stores_an_entry_that_a_second_run_hits(serve: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    command = ["--", sys.executable, str(serve), "torch", "[2]"]
    result = ccache("run", "--capture", "served", "--json", *command, store=store, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    captured = json.loads(result.stdout)
    assert captured["new"] is True and captured["files"] > 0
    entry = ccache_json("inspect", captured["entry"], store=store)["entries"][0]
    assert entry["name"] == "served" and entry["device"] == "cpu"
    assert "ccache_cli/examples/tiny_transformer.py" in [s["path"] for s in entry["sources"]]
    assert entry["compatible"] is True
    assert entry["artifacts"]["bytecode"] > 500  # the capture hook records bytecode too
    result = ccache("run", "served", *command, store=store, cwd=tmp_path, env=_views(tmp_path))
    counters = _counters(result)
    assert counters.get("fxgraph_cache_miss", 0) == 0 and counters["fxgraph_cache_hit"] == 1
    assert store_leftovers(store) == [f"entries/{captured['entry']}"]


def test_capture_of_a_failing_command_stores_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = ccache("run", "--capture", "x", "--", sys.executable, "-c", "raise SystemExit(3)", store=store)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"ccache: error: {sys.executable} exited with code 3; nothing was stored"
    ]
    assert store_leftovers(store) == []


def test_capture_of_a_command_that_compiles_nothing_fails(tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = ccache("run", "--capture", "x", "--", sys.executable, "-c", "print('hello')", store=store)
    assert result.returncode == 1
    assert "compiled nothing" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert store_leftovers(store) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run"], "nothing to run"),
        (["run", "nosuchentry", "--", "true"], "nosuchentry"),
        (["run", "--", "no-such-command-here"], "command not found: no-such-command-here"),
        (["env", "nosuchentry"], "nosuchentry"),
    ],
)
def test_run_and_env_bad_usage(example_store: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = ccache(*args, store=example_store, env=_views(tmp_path))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_run_in_an_empty_store_says_there_is_nothing_to_activate(tmp_path: Path) -> None:
    result = ccache("run", "--", "true", store=tmp_path / "empty", env=_views(tmp_path))
    assert result.returncode == 2
    assert "nothing to activate" in result.stderr


def test_run_passes_the_exit_code_through(example_store: Path, tmp_path: Path) -> None:
    result = ccache(
        "run",
        "--",
        sys.executable,
        "-c",
        "import os, sys; print(os.environ['TORCHINDUCTOR_CACHE_DIR']); sys.exit(7)",
        store=example_store,
        env=_views(tmp_path),
    )
    assert result.returncode == 7
    assert result.stdout.strip().startswith(str(tmp_path / "views"))


def test_a_process_that_never_imports_torch_loads_no_routing(example_store: Path, tmp_path: Path) -> None:
    """The processes a program starts (torch's compiler probes, tools) pay only for the
    start-up hook; routing loads with torch, also where the program looked torch up
    before importing it."""
    loaded = "import sys; print(sorted(m for m in sys.modules if m.startswith('ccache_cli')))"
    assert run_python(example_store, tmp_path, "-c", loaded).stdout.strip() == "[]"
    routed = "import torch; print(torch.compile._ccache_cli_routed)"
    looked_up_first = "import importlib.util; importlib.util.find_spec('torch'); " + routed  # as transformers does
    for program in (routed, looked_up_first):
        result = run_python(example_store, tmp_path, "-c", program)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "True", program


def _tree_digest(root: Path) -> dict[str, str]:
    digest = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        digest[relative] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return digest


def _make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        os.chmod(path, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        os.chmod(path, path.stat().st_mode | stat.S_IWUSR)


def test_run_records_each_use_with_its_cache_hits_and_misses(example_store: Path, serve: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(example_store, store, symlinks=True)
    shutil.rmtree(store / "usage", ignore_errors=True)
    served(store, tmp_path, serve, "torch", "[1, 8]", "--no-route")
    served(store, tmp_path, serve, "torch", "[5]")
    [entry] = ccache_json("inspect", store=store)["entries"]
    assert entry["usage"]["times_used"] == 2
    assert entry["usage"]["hits"] == 2 and entry["usage"]["misses"] == 1


def test_autotuning_results_are_looked_up_in_the_process_own_cache() -> None:
    """torch pickles the compile-time path of a kernel's autotuning result; under ccache
    a path under the folder an entry was compiled in resolves in the process's cache."""
    import types

    from ccache_cli.in_program import relocate

    class AutotuneCache:  # the two methods of torch's class that read and write the path
        def __init__(self, path: str) -> None:
            self.local_cache = ("local", path)

        def _read(self) -> str:
            return self.local_cache[1]

        def save(self, config: object) -> str:
            return self.local_cache[1]

    relocate.patch(types.SimpleNamespace(AutotuneCache=AutotuneCache), ["/build/stage-1/inductor"], "/views/v/inductor")
    assert AutotuneCache("/build/stage-1/inductor/ab/k.best_config")._read() == "/views/v/inductor/ab/k.best_config"
    assert AutotuneCache("/build/stage-1/inductor/ab/k.best_config").save(None) == "/views/v/inductor/ab/k.best_config"
    assert (
        AutotuneCache("/build/stage-10/inductor/ab/k.best_config")._read()
        == "/build/stage-10/inductor/ab/k.best_config"
    )
    # A kernel's bound `save` crosses from torch's compile workers by pickle, which
    # looks the method up by its name: the wrappers keep the names they replace.
    cache = AutotuneCache("/build/stage-1/inductor/ab/k.best_config")
    assert getattr(cache, cache.save.__name__) == cache.save and cache._read.__name__ == "_read"


def test_under_ccache_run_torch_looks_up_autotuning_results_in_the_view(example_store: Path, tmp_path: Path) -> None:
    probe = (
        "import os, torch._inductor.runtime.autotune_cache as ac; "
        "print(getattr(ac.AutotuneCache._read, '_ccache_relocated', False), os.environ['CCACHE_CLI_COMPILED_AT'])"
    )
    result = ccache("run", "--", sys.executable, "-c", probe, store=example_store, env=_views(tmp_path))
    assert result.returncode == 0, result.stderr
    relocated, compiled_at = result.stdout.split()
    assert relocated == "True" and compiled_at.endswith("/artifacts/inductor")


def test_the_miss_line_names_the_entry_of_the_model_that_missed(
    example_store: Path, small_store: dict, tmp_path: Path
) -> None:
    """With two entries active, a process that runs tests/models/small.py at a size
    neither holds is told about small's entry, not the other one (which sorts first)."""
    store = tmp_path / "store"
    shutil.copytree(example_store, store, symlinks=True)
    for part in ("entries", "objects"):
        shutil.copytree(small_store["store"] / part, store / part, symlinks=True, dirs_exist_ok=True)
    program = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(small_store['models'])!r})\n"
        "import small\n"
        "with torch.no_grad():\n"
        "    torch.compile(small.build())(*small.example_inputs(5))\n"
    )
    result = ccache("run", "--", sys.executable, "-c", program, store=store, cwd=tmp_path, env=_views(tmp_path))
    assert result.returncode == 0, result.stderr
    assert len(ccache_json("inspect", store=store)["entries"]) == 2
    [line] = [line for line in result.stderr.splitlines() if "missed the stored cache" in line]
    assert "small:build" in line and "tiny_transformer" not in line, line
