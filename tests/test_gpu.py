"""GPU paths: run on a machine with CUDA; skipped elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers.cli import EXAMPLE, MODELS, ccache, ccache_json
from helpers.serving import run_on_cache_dir, serve_counters, write_serve_script

from ccache_cli.store.store import Store

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _cuda_devices() -> int:
    """CUDA devices here; 0 without importing torch where no NVIDIA driver is loaded
    (each test worker collects this module)."""
    if not Path("/proc/driver/nvidia").exists() and not shutil.which("nvidia-smi"):
        return 0
    import torch

    return torch.cuda.device_count()


CUDA_DEVICES = _cuda_devices()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(CUDA_DEVICES == 0, reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def cuda_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example precompiled on the GPU for 1, 8, 32 (a store the tests only read)."""
    store = tmp_path_factory.mktemp("cuda") / "store"
    result = ccache("precompile", EXAMPLE, "--sizes", "1,8,32", "--device", "cuda", store=store)
    assert result.returncode == 0, result.stderr
    return store


def test_cuda_precompile_stores_triton_kernels(cuda_store: Path, tmp_path: Path) -> None:
    import torch

    store = cuda_store
    entry = ccache_json("inspect", store=store)["entries"][0]
    assert entry["device"] == "cuda:0"
    assert entry["fingerprint"]["gpu"] == torch.cuda.get_device_name(0)
    major, minor = torch.cuda.get_device_capability(0)
    assert entry["fingerprint"]["capability"] == f"sm_{major}{minor}"
    assert entry["fingerprint"]["triton"]
    assert entry["artifacts"].get("triton", 0) > 0, entry["artifacts"]
    assert entry["compatible"] is True
    # A fresh process on a copy of the entry's Inductor dir, elsewhere, compiles nothing.
    inductor_dir = tmp_path / "moved" / "inductor"
    Store(store).materialize(Store(store).find(entry["id"]), inductor_dir, "inductor/")
    counters = run_on_cache_dir(inductor_dir, "cuda", [1, 8, 32], cwd=tmp_path)
    assert counters.get("fxgraph_cache_hit") == 3 and counters.get("fxgraph_cache_miss", 0) == 0

    # Packed, unpacked elsewhere and exported as a plain TORCHINDUCTOR_CACHE_DIR: still only hits.
    archive = tmp_path / "cache.tar.zst"
    assert ccache("pack", str(archive), store=store).returncode == 0
    exported = tmp_path / "exported"
    unpacked = ccache_json("unpack", str(archive), "--export-dir", str(exported), store=tmp_path / "image-store")
    assert unpacked["exported"]["entry"] == entry["id"]
    # A plain variable is all it takes: no CPU kernel setting; the bytecode tree, and
    # any Inductor setting this process had at precompile (the tests set some), besides.
    env = set(unpacked["exported"]["env"])
    assert "TORCHINDUCTOR_CACHE_DIR" in env and "TORCHINDUCTOR_CPP_DYNAMIC_THREADS" not in env, env
    assert env - {"TORCHINDUCTOR_CACHE_DIR", "PYTHONPYCACHEPREFIX"} <= set(os.environ), env
    counters = run_on_cache_dir(exported, "cuda", [1, 8, 32], cwd=tmp_path)
    assert counters.get("fxgraph_cache_hit") == 3 and counters.get("fxgraph_cache_miss", 0) == 0

    # verify --run: a fresh process on the entry, zero misses, outputs equal to eager.
    result = ccache("verify", "--run", "--json", store=store)
    assert result.returncode == 0, result.stdout
    print(result.stdout)


def test_cuda_run_capture_and_api(cuda_store: Path, tmp_path: Path) -> None:
    """`ccache run` of an unchanged program and of ccache_cli.compile on a CUDA entry,
    and `run --capture` of a CUDA program, all with zero misses the second time."""
    store = cuda_store
    views = {"CCACHE_CLI_VIEWS": str(tmp_path / "views")}
    # Packages are stored only where a fresh process can load them. Where CXX links a
    # static C++ runtime into them, torch's loader crashes, and the reason says so.
    packages = ccache_json("inspect", store=store)["entries"][0]["aot"]["packages"]
    assert packages["status"] == "stored" or "has no libstdc++.so" in packages["reason"], packages
    serve = write_serve_script(tmp_path)
    command = ["--", sys.executable, str(serve), "torch", "[1, 8, 32]", "cuda"]
    counters = serve_counters(ccache("run", "--no-route", *command, store=store, cwd=tmp_path, env=views))
    assert counters["same"] and counters["fxgraph_cache_hit"] == 3 and counters.get("fxgraph_cache_miss", 0) == 0
    # Routed, the unchanged program's torch.compile runs the stored code.
    counters = serve_counters(ccache("run", *command, store=store, cwd=tmp_path, env=views))
    assert counters["same"] and counters.get("fxgraph_cache_miss", 0) == 0
    assert counters["frames"] == 0 or packages["status"] != "stored"
    served = ccache(
        "run", "--", sys.executable, str(serve), "api", "[1, 8, 32]", "cuda", store=store, cwd=tmp_path, env=views
    )
    counters = serve_counters(served)
    # Every size from a stored function: its AOTInductor package where there is one, with
    # neither Dynamo nor Inductor imported, else its aot_compile function.
    assert counters["same"] and counters.get("frames", 0) == 0
    usage = ccache_json("inspect", store=store)["entries"][0]["usage"]
    said = f"{served.stderr} not routed: {usage['not_routed']} refused: {usage.get('refused')}"
    assert counters["compile_stack"] == [] or packages["status"] != "stored", said

    captured_store = tmp_path / "captured"
    command = ["--", sys.executable, str(serve), "torch", "[2, 4]", "cuda"]
    result = ccache("run", "--capture", "served", "--json", *command, store=captured_store, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    entry = ccache_json("inspect", json.loads(result.stdout)["entry"], store=captured_store)["entries"][0]
    assert entry["device"] == "cuda:0" and entry["artifacts"].get("triton", 0) > 0
    counters = serve_counters(ccache("run", "served", *command, store=captured_store, cwd=tmp_path, env=views))
    assert counters["fxgraph_cache_hit"] == 2 and counters.get("fxgraph_cache_miss", 0) == 0


# Calls models/small.py's model on cuda:N (argv[1]) through ccache_cli.compile or
# torch.compile (argv[2]) with the given mode (argv[3]) for sizes 1 and 8, and prints
# torch's counters (FX-graph misses, graphs traced) and the benchmark calls it made
# (benchmarks/benchmark_calls.py: torch's own counters replay those of each cached
# graph's cold compile).
PROBE = textwrap.dedent(
    f"""
    import json, sys
    sys.path[:0] = [{str(MODELS)!r}, {str(BENCHMARKS)!r}]
    import benchmark_calls
    benchmark_calls.install()
    import torch
    import ccache_cli
    from small import build_served, example_inputs
    device, way, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.cuda.set_device(device)
    model = build_served().to(device)
    mode = None if mode == "default" else mode
    compiled = ccache_cli.compile(model, mode=mode) if way == "api" else torch.compile(model, mode=mode, dynamic=False)
    inputs = {{size: tuple(t.to(device) for t in example_inputs(size)) for size in (1, 8)}}
    with torch.no_grad():
        same = all(torch.allclose(compiled(*inputs[size]), model(*inputs[size]), atol=1e-3) for size in (1, 8))
    report = {{"same": same, "misses": 0, "graphs": 0, "benchmarks": 0}}
    if "torch._dynamo.utils" in sys.modules:
        counters = sys.modules["torch._dynamo.utils"].counters
        report.update(misses=counters["inductor"]["fxgraph_cache_miss"], graphs=counters["stats"]["unique_graphs"])
    report["benchmarks"] = benchmark_calls.count()
    print(json.dumps(report))
    """
)


def probe(
    store: Path | None, tmp_path: Path, device: str, way: str, mode: str = "default", cache_dir: Path | None = None
) -> tuple[dict, str]:
    """PROBE under `ccache run` on `store`, or, without one, plainly on `cache_dir`.
    The torch way is not routed: it checks the caches torch.compile finds."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    command = [sys.executable, str(script), device, way, mode]
    if store is not None:
        route = ["--no-route"] if way == "torch" else []
        result = ccache(
            "run", *route, "--", *command, store=store, cwd=tmp_path, env={"CCACHE_CLI_VIEWS": str(tmp_path / "views")}
        )
    else:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir)},
        )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


@pytest.mark.skipif(CUDA_DEVICES < 2, reason="needs two GPUs")
def test_an_entry_serves_every_gpu_index(tmp_path: Path) -> None:
    """Tensor-parallel servers run a process per GPU index: packages serve any index;
    the Inductor cache serves the indices precompile --devices compiled for, and a
    process on another index says why it missed."""
    one = tmp_path / "one"
    assert (
        ccache(
            "precompile", "small.py:build_served", "--sizes", "1,8", "--device", "cuda:0", store=one, cwd=MODELS
        ).returncode
        == 0
    )
    report, _ = probe(one, tmp_path, "cuda:1", "api")
    assert report == {"same": True, "misses": 0, "graphs": 0, "benchmarks": 0}, report
    report, stderr = probe(one, tmp_path, "cuda:1", "torch")
    assert report["same"] and report["misses"] == 2
    assert "device: entry compiled for cuda:0, this process runs on cuda:1" in stderr, stderr
    both = tmp_path / "both"
    result = ccache("precompile", "small.py:build_served", "--sizes", "1,8", "--devices", "0,1", store=both, cwd=MODELS)
    assert result.returncode == 0, result.stderr
    for device in ("cuda:0", "cuda:1"):
        report, stderr = probe(both, tmp_path, device, "torch")
        assert report["same"] and report["misses"] == 0 and "missed" not in stderr, (device, report, stderr)


def test_a_max_autotune_warm_start_makes_no_benchmark_calls(tmp_path: Path) -> None:
    """Served by its packages, a max-autotune entry benchmarks nothing; through
    torch.compile under `ccache run`, every graph hits. On a warm cache torch.compile
    in max-autotune runs coordinate-descent tuning again for some kernels at their
    first launch, on its own cache directory as on a view, a number that varies from
    run to run (0 to 27 calls), so the counts are printed, not compared."""
    store = tmp_path / "store"
    mode = "max-autotune-no-cudagraphs"
    result = ccache(
        "precompile",
        "small.py:build_served",
        "--sizes",
        "1,8",
        "--device",
        "cuda",
        "--mode",
        mode,
        store=store,
        cwd=MODELS,
    )
    assert result.returncode == 0, result.stderr
    entry = ccache_json("inspect", store=store)["entries"][0]
    assert entry["aot"]["packages"]["status"] == "stored", entry["aot"]
    report, stderr = probe(store, tmp_path, "cuda:0", "api", mode)
    assert report == {"same": True, "misses": 0, "graphs": 0, "benchmarks": 0}, (report, stderr)
    probe(None, tmp_path, "cuda:0", "torch", mode, cache_dir=tmp_path / "own")  # torch's own cold compile
    own, _ = probe(None, tmp_path, "cuda:0", "torch", mode, cache_dir=tmp_path / "own")
    report, stderr = probe(store, tmp_path, "cuda:0", "torch", mode)
    print("torch's own warm cache", own, "ccache run", report)
    assert report["same"] and report["misses"] == 0 and report["graphs"] == own["graphs"], (report, own, stderr)


@pytest.fixture(scope="module")
def cuda_configurable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/models/configurable.py precompiled on the GPU for size 2, with its models folder."""
    folder = tmp_path_factory.mktemp("cuda-configurable")
    shutil.copytree(MODELS, folder / "models")
    result = ccache(
        "precompile",
        "configurable.py",
        "--sizes",
        "2",
        "--device",
        "cuda",
        store=folder / "store",
        cwd=folder / "models",
    )
    assert result.returncode == 0, result.stderr
    return folder


@pytest.mark.parametrize("case", ["unchanged", "float attribute", "method on the class", "backends flag"])
def test_cuda_stored_code_is_not_used_where_python_state_changed(
    cuda_configurable: Path, tmp_path: Path, case: str
) -> None:
    """The soundness checks on a CUDA entry: an unchanged program is served with
    nothing traced; a changed one gets eager's numbers and the reason."""
    program = Path(__file__).parent / "programs" / "configure_and_serve.py"
    command = [sys.executable, str(program), str(cuda_configurable / "models"), "route", case, "cuda"]
    result = ccache(
        "run",
        "--",
        *command,
        store=cuda_configurable / "store",
        cwd=tmp_path,
        env={"CCACHE_CLI_VIEWS": str(tmp_path / "views")},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["mismatch"] is None, report
    if case == "unchanged":
        assert report["frames"] == 0 and "ccache:" not in result.stderr, result.stderr
    else:
        [line] = [line for line in result.stderr.splitlines() if line.startswith("ccache: stored code not used")]
        print(case, "->", line)


def test_cache_env_carries_triton_s_own_cache(tmp_path: Path) -> None:
    """A Triton kernel launched outside torch.compile keeps its compiled kernel in
    TRITON_CACHE_DIR: captured with --cache-env, a fresh process under `ccache run`
    compiles nothing (writes nothing new to the cache) and says nothing."""
    store, views = tmp_path / "store", {"CCACHE_CLI_VIEWS": str(tmp_path / "views")}
    program = [sys.executable, str(Path(__file__).parent / "programs" / "triton_kernel.py")]
    result = ccache(
        "run", "--capture", "kernel", "--cache-env", "TRITON_CACHE_DIR", "--json", "--", *program, store=store
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["engines"]["TRITON_CACHE_DIR"] > 0, result.stdout
    [entry] = ccache_json("inspect", store=store)["entries"]
    assert entry["device"].startswith("cuda") and entry["engines"][0]["var"] == "TRITON_CACHE_DIR"
    result = ccache("run", "--", *program, store=store, cwd=tmp_path, env=views)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["right"]
    assert "engine cache" not in result.stderr, result.stderr
    print(result.stdout.strip().splitlines()[-1])


# Calls models/small.py's served model through ccache_cli.compile in `mode` (argv[1]),
# four times at each of sizes 1 and 8 with new inputs, keeping every output; then
# compares each with eager's (an output overwritten by a later replay would differ).
GRAPHED = textwrap.dedent(
    f"""
    import json, sys
    sys.path[:0] = [{str(MODELS)!r}]
    import torch
    import ccache_cli
    from small import build_served
    torch.manual_seed(0)
    model = build_served().to("cuda")
    compiled = ccache_cli.compile(model, mode=sys.argv[1])
    calls = [torch.randn(size, 8, device="cuda") for size in (1, 8) for _ in range(4)]
    with torch.no_grad():
        outputs = [compiled(x) for x in calls]
        same = all(torch.allclose(out, model(x), atol=1e-4) for out, x in zip(outputs, calls))
    print(json.dumps({{"same": same, "dynamo": "torch._dynamo" in sys.modules}}))
    """
)


@pytest.mark.parametrize("mode", ["reduce-overhead", "default"])
def test_packages_of_cuda_graph_modes_replay_graphs(tmp_path: Path, mode: str) -> None:
    """A reduce-overhead entry gets packages, and the process that loads them records
    one CUDA graph per size and replays it: every output equals eager's, none
    overwritten by a later call, with neither Dynamo imported nor a graph recorded for
    a mode that records none."""
    store = tmp_path / "store"
    result = ccache(
        "precompile", "small.py:build_served", "--sizes", "1,8", "--device", "cuda", "--mode", mode,
        store=store, cwd=MODELS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert ccache_json("inspect", store=store)["entries"][0]["aot"]["packages"]["status"] == "stored"
    script = tmp_path / "graphed.py"
    script.write_text(GRAPHED)
    result = ccache("run", "--", sys.executable, str(script), mode, store=store, cwd=tmp_path,
                    env={"CCACHE_CLI_VIEWS": str(tmp_path / "views")})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"same": True, "dynamo": False}, result.stderr
    usage = ccache_json("inspect", store=store)["entries"][0]["usage"]
    graphs = {reason: n for reason, n in usage["not_routed"].items() if reason.startswith("CUDA graphs")}
    assert usage["served"] == 8 and graphs == ({"CUDA graphs: recorded": 2} if mode != "default" else {}), usage


def test_a_captured_reduce_overhead_function_replays_torch_s_cuda_graphs(tmp_path: Path) -> None:
    """A function compiled with mode reduce-overhead (a decode step writing a static
    cache) is captured, and the unchanged program runs the stored function with no graph
    traced, through CUDA graphs torch records in the process, as its own compile does:
    every output and the cache equal eager's; loading it started no compile workers."""
    shutil.copyfile(Path(__file__).parent / "programs" / "graphed_step.py", tmp_path / "step.py")
    command = ["--", sys.executable, "step.py", "6"]
    store, views = tmp_path / "store", {"CCACHE_CLI_VIEWS": str(tmp_path / "views")}
    result = ccache("run", "--capture", "step", "--json", *command, store=store, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["functions"] == 1, result.stdout
    result = ccache("run", "step", *command, store=store, cwd=tmp_path, env=views)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["same"] and report["graphs"] == 0 and report["recorded"] > 0, (report, result.stderr)
    assert report["pools"] == 0, report  # its Triton kernels loaded in the process, with no compile workers
    assert ccache_json("inspect", store=store)["entries"][0]["usage"]["served"] == 6
