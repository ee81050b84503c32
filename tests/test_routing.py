"""Unchanged programs under `ccache run`: their own torch.compile(module) and
module.compile() run the stored AOT code where an entry fits; anything else goes to
torch.compile untouched."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ccache, ccache_json

# The program of a user who never heard of ccache, in the ways it may compile.
PROGRAM = textwrap.dedent(
    """
    import json, sys, torch
    from ccache_cli.examples.tiny_transformer import build, example_inputs
    how = sys.argv[1]
    model = build()
    if how != "training":
        model = model.eval()
    if how == "module":
        compiled = torch.compile(model)
    elif how == "method":
        model.compile()
        compiled = model
    elif how == "function":
        compiled = torch.compile(model.forward)
    elif how == "mode":
        compiled = torch.compile(model, mode="reduce-overhead")
    elif how == "training":
        compiled = torch.compile(model)
    traced_before_calls = "torch._dynamo" in sys.modules
    grad = torch.enable_grad() if how == "training" else torch.no_grad()
    with grad:
        outputs = [compiled(*example_inputs(size)) for size in (1, 8)]
        eager = [model(*example_inputs(size)) for size in (1, 8)]
    graphs = 0
    if "torch._dynamo.utils" in sys.modules:
        graphs = sys.modules["torch._dynamo.utils"].counters["stats"]["unique_graphs"]
    print(json.dumps({
        "type": type(compiled).__name__,
        "is_module": isinstance(compiled, torch.nn.Module),
        "close": all(torch.allclose(o, e, atol=1e-4) for o, e in zip(outputs, eager)),
        "outputs": [o.detach().flatten().tolist() for o in outputs],
        "compile_stack": [m for m in ("torch._dynamo", "torch._inductor") if m in sys.modules],
        "graphs": graphs,
        "traced_before_calls": traced_before_calls,
    }))
    """
)


@pytest.fixture
def program(tmp_path: Path) -> Path:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    return script


def _run(store: Path, program: Path, how: str, tmp_path: Path, *options: str, env: dict | None = None) -> dict:
    result = ccache(
        "run",
        *options,
        "--",
        sys.executable,
        str(program),
        how,
        store=store,
        cwd=tmp_path,
        env={"CCACHE_CLI_VIEWS": str(tmp_path / "views"), **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("how", ["module", "method"])
def test_an_unchanged_program_runs_the_stored_code_tracing_nothing(
    example_store: Path, program: Path, tmp_path: Path, how: str
) -> None:
    report = _run(example_store, program, how, tmp_path)
    assert report["close"] and report["is_module"]
    assert report["graphs"] == 0 and report["compile_stack"] == [], report  # neither Dynamo nor Inductor imported
    if how == "module":
        assert report["type"] == "RoutedModule"


@pytest.mark.parametrize("how", ["function", "mode", "training"])
def test_calls_it_cannot_serve_are_torch_compile_untouched(
    example_store: Path, program: Path, tmp_path: Path, how: str
) -> None:
    routed = _run(example_store, program, how, tmp_path)
    plain = _run(example_store, program, how, tmp_path, "--no-route")
    assert routed["graphs"] > 0 and routed["outputs"] == plain["outputs"]  # bit for bit
    if how != "training":  # a module is routed; training mode sends each call to torch.compile
        assert routed["type"] == plain["type"]


def test_no_route_and_the_environment_switch_leave_torch_compile_alone(
    example_store: Path, program: Path, tmp_path: Path
) -> None:
    for options, env in ((("--no-route",), {}), ((), {"CCACHE_CLI_ROUTE": "0"})):
        report = _run(example_store, program, "module", tmp_path, *options, env=env)
        assert report["type"] == "OptimizedModule" and report["graphs"] > 0 and report["close"]


def test_usage_counts_routed_calls_and_why_others_were_not(example_store: Path, program: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    import shutil

    shutil.copytree(example_store, store, symlinks=True)
    shutil.rmtree(store / "usage", ignore_errors=True)
    for how in ("module", "function", "training"):
        _run(store, program, how, tmp_path)
    [entry] = ccache_json("inspect", store=store)["entries"]
    usage = entry["usage"]
    assert usage["routed"] == 2 and usage["served"] == 2  # module: 2 sizes served; training: routed, none served
    assert usage["not_routed"] == {"declined: not an nn.Module": 1, "fallback: grad enabled": 2}
    detail = ccache("inspect", entry["id"][:8], store=store).stdout
    assert "torch.compile calls routed to the stored code: 2" in detail and "grad enabled" in detail
