"""Models we did not write: a transformers Llama from a small random config, in bf16,
called with keyword inputs; and CPU entries across thread counts."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from helpers.cli import MODELS, ccache, ccache_json
from helpers.stores import built_once

# Decided without importing transformers: each test worker collects this module.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers"),
]

# Builds the Llama (with `layers` layers), calls it through ccache_cli.compile for the
# sizes given with keyword inputs, and prints whether every output matches eager and
# how many graphs Dynamo traced.
SERVE = textwrap.dedent(
    """
    import json, sys, torch
    import ccache_cli
    from ccache_cli.precompile.outputs import compare_eager
    sys.path.insert(0, sys.argv[1])
    from llama import build, example_inputs
    model = build(int(sys.argv[2]))
    compiled = ccache_cli.compile(model)
    with torch.no_grad():
        mismatches = [compare_eager(torch, compiled(**example_inputs(size)), model(**example_inputs(size)))
                      for size in json.loads(sys.argv[3])]
    frames = 0
    if "torch._dynamo.utils" in sys.modules:
        frames = sys.modules["torch._dynamo.utils"].counters["stats"]["unique_graphs"]
    print(json.dumps({"mismatches": mismatches, "frames": frames}))
    """
)


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> dict:
    def build(folder: Path) -> None:
        shutil.copytree(MODELS, folder / "models")
        (folder / "serve.py").write_text(SERVE)
        # One size: a package per size, and serving several, are the example's tests' subject.
        result = ccache("precompile", "llama.py", "--sizes", "2", store=folder / "store", cwd=folder / "models")
        assert result.returncode == 0, result.stderr
        (folder / "precompile.out").write_text(result.stdout)

    folder = built_once(tmp_path_factory, "llama", build)
    store = folder / "store"
    [entry] = ccache_json("inspect", store=store)["entries"]
    return {
        "store": store,
        "models": folder / "models",
        "serve": folder / "serve.py",
        "entry": entry,
        "stdout": (folder / "precompile.out").read_text(),
    }


def serve(llama: dict, tmp_path: Path, models: Path | None = None, layers: int = 1, sizes: str = "[2]") -> dict:
    result = ccache(
        "run",
        "--",
        sys.executable,
        str(llama["serve"]),
        str(models or llama["models"]),
        str(layers),
        sizes,
        store=llama["store"],
        cwd=models or llama["models"],
        env={"CCACHE_CLI_VIEWS": str(tmp_path / "views")},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_transformers_decoder_gets_a_package(llama: dict) -> None:
    entry = llama["entry"]
    assert entry["aot"]["packages"]["status"] == "stored", entry["aot"]
    assert entry["artifacts"]["aot"] == 1 and entry["artifacts"]["outputs"] == 1
    # aot_compile does not take a transformers decoder (a guard it cannot serialize, or
    # code it cannot capture, depending on the transformers version): the entry says why.
    assert entry["aot"]["status"] == "skipped" and entry["aot"]["reason"].startswith(
        ("aot_compile failed: ", "graph break")
    ), entry["aot"]
    assert "AOTInductor packages stored for every size" in llama["stdout"]


def test_under_ccache_run_the_api_serves_keyword_calls_without_tracing(llama: dict, tmp_path: Path) -> None:
    report = serve(llama, tmp_path)
    assert report == {"mismatches": [None], "frames": 0}


def test_another_layer_count_of_the_same_class_falls_back_and_is_correct(llama: dict, tmp_path: Path) -> None:
    report = serve(llama, tmp_path, layers=2)
    assert report["mismatches"] == [None] and report["frames"] >= 1


def test_an_edited_traced_source_falls_back(llama: dict, tmp_path: Path) -> None:
    edited = tmp_path / "models"
    shutil.copytree(llama["models"], edited)
    (edited / "llama.py").write_text((edited / "llama.py").read_text() + "\n# edited after precompile\n")
    report = serve(llama, tmp_path, models=edited)
    assert report["mismatches"] == [None] and report["frames"] >= 1


def test_a_bf16_entry_passes_verify_run_and_a_wrong_recorded_output_fails_it(llama: dict, tmp_path: Path) -> None:
    verified = ccache("verify", "--run", "--json", store=llama["store"], cwd=llama["models"])
    assert verified.returncode == 0, verified.stdout
    [run] = [check for check in json.loads(verified.stdout)["checks"] if check["check"] == "run"]
    assert "and those recorded at precompile" in run["detail"], run["detail"]
    # The same store with the recorded logits changed by a fifth.
    store = tmp_path / "store"
    shutil.copytree(llama["store"], store)
    [folder] = (store / "entries").iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    ref = manifest["files"]["outputs/size-2.json"]
    blob = store / "objects" / ref["sha256"][:2] / ref["sha256"]
    record = json.loads(blob.read_text())
    record["outputs"][0]["values"] = [value * 1.2 for value in record["outputs"][0]["values"]]
    data = json.dumps(record).encode()
    sha256 = hashlib.sha256(data).hexdigest()
    (store / "objects" / sha256[:2]).mkdir(exist_ok=True)
    (store / "objects" / sha256[:2] / sha256).write_bytes(data)
    manifest["files"]["outputs/size-2.json"] = {"sha256": sha256, "size": len(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    failed = ccache("verify", "--run", "--json", store=store, cwd=llama["models"])
    assert failed.returncode == 1
    [run] = [check for check in json.loads(failed.stdout)["checks"] if check["check"] == "run"]
    assert not run["ok"] and run["detail"].startswith("size 2: output 0 differs from the output precompile recorded")


def test_a_cpu_entry_serves_any_thread_count_or_says_why_it_missed(small_store: dict, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(small_store["store"], store)
    probe = tmp_path / "probe.py"
    probe.write_text(
        textwrap.dedent(
            f"""
        import sys, torch
        sys.path.insert(0, {str(MODELS)!r})
        from small import build, example_inputs
        compiled = torch.compile(build(), dynamic=False)
        with torch.no_grad():
            compiled(*example_inputs(2))
        from torch._dynamo.utils import counters
        print(counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"])
        """
        )
    )
    env = {"CCACHE_CLI_VIEWS": str(tmp_path / "views")}
    one_thread = ccache("run", "--", sys.executable, str(probe), store=store, env={**env, "OMP_NUM_THREADS": "1"})
    assert one_thread.returncode == 0 and one_thread.stdout.split() == ["1", "0"], one_thread.stdout + one_thread.stderr
    assert "missed" not in one_thread.stderr
    # Kernels compiled for a fixed thread count miss; the process says why at exit.
    fixed = ccache(
        "run", "--", sys.executable, str(probe), store=store, env={**env, "TORCHINDUCTOR_CPP_DYNAMIC_THREADS": "0"}
    )
    assert fixed.returncode == 0 and fixed.stdout.split() == ["0", "1"]
    [line] = [line for line in fixed.stderr.splitlines() if "missed the stored cache" in line]
    assert "TORCHINDUCTOR_CPP_DYNAMIC_THREADS: entry compiled with '1', this process has '0'" in line, line
    shown = ccache("inspect", "small:build", store=store, env=env)
    assert "latest miss:" in shown.stdout and "TORCHINDUCTOR_CPP_DYNAMIC_THREADS" in shown.stdout


# The soundness matrix's transformers cases (tests/test_soundness.py has the rest): what
# serving code changes after loading, as a kernel library patches transformers.
LLAMA_CASES = {
    "config value": ("route", "config.output_hidden_states is True; the stored code was built with False"),
    "patched function": ("api", "modeling_llama.apply_rotary_pos_emb is function __main__.sharper_rotary"),
    "patched method": ("route", "modeling_llama.LlamaRMSNorm.forward was replaced"),
}


@pytest.mark.parametrize("case", list(LLAMA_CASES))
def test_a_configured_or_patched_transformers_model_gets_eager_numbers(llama: dict, tmp_path: Path, case: str) -> None:
    way, reason = LLAMA_CASES[case]
    program = Path(__file__).parent / "programs" / "configure_llama.py"
    result = ccache(
        "run",
        "--",
        sys.executable,
        str(program),
        str(llama["models"]),
        way,
        case,
        store=llama["store"],
        cwd=tmp_path,
        env={"CCACHE_CLI_VIEWS": str(tmp_path / "views")},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["mismatch"] is None
    [line] = [line for line in result.stderr.splitlines() if line.startswith("ccache: stored code not used")]
    assert reason in line, line
