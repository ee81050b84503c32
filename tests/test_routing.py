"""Unchanged programs under `ccache run`: their own torch.compile(module) and
module.compile() run the stored AOT code where an entry fits; anything else goes to
torch.compile untouched."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from helpers.cli import ccache, ccache_json

pytestmark = pytest.mark.slow  # real compiles or kill -9 loops

# The program of a user who never heard of ccache, in the ways it may compile (argv[1]).
PROGRAM = textwrap.dedent(
    """
    import json, sys, torch
    from ccache_cli.examples.tiny_transformer import build, example_inputs
    report = {}
    sizes = json.loads(sys.argv[2]) if len(sys.argv) > 2 else [1, 8]
    for how in sys.argv[1].split(","):
        model = build()
        if how != "training":
            model = model.eval()
        grad = torch.enable_grad() if how == "training" else torch.no_grad()
        with grad:  # before compiling: module.compile() compiles the model itself
            eager = [model(*example_inputs(size)) for size in sizes]
        if how == "method":
            model.compile()
            compiled = model
        elif how == "forward":  # transformers' generation recipe compiles the bound forward
            model.forward = torch.compile(model.forward)
            compiled = model
        elif how == "function":
            compiled = torch.compile(lambda *inputs: model(*inputs))
        elif how == "mode":
            compiled = torch.compile(model, mode="reduce-overhead")
        else:  # module, training
            compiled = torch.compile(model)
        with grad:
            outputs = [compiled(*example_inputs(size)) for size in sizes]
        report[how] = {
            "type": type(compiled).__name__,
            "is_module": isinstance(compiled, torch.nn.Module),
            "close": all(torch.allclose(o, e, atol=1e-4) for o, e in zip(outputs, eager)),
            "outputs": [o.detach().flatten().tolist() for o in outputs],
        }
    graphs = 0
    if "torch._dynamo.utils" in sys.modules:
        graphs = sys.modules["torch._dynamo.utils"].counters["stats"]["unique_graphs"]
    report["graphs"] = graphs
    report["compile_stack"] = [m for m in ("torch._dynamo", "torch._inductor") if m in sys.modules]
    print(json.dumps(report))
    """
)


@pytest.fixture
def program(tmp_path: Path) -> Path:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    return script


def _run(
    store: Path, program: Path, hows: str, tmp_path: Path, *options: str, sizes: str = "[1, 8]", env: dict | None = None
) -> dict:
    result = ccache(
        "run",
        *options,
        "--",
        sys.executable,
        str(program),
        hows,
        sizes,
        store=store,
        cwd=tmp_path,
        env={"CCACHE_CLI_VIEWS": str(tmp_path / "views"), **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_unchanged_programs_run_the_stored_code_and_the_rest_is_torch_compile_untouched(
    example_store: Path, program: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(example_store, store, symlinks=True)
    shutil.rmtree(store / "usage", ignore_errors=True)

    # torch.compile(module), module.compile() and the module's forward compiled in its
    # place: the stored code, nothing traced or imported.
    served = _run(store, program, "module,method,forward", tmp_path)
    assert served["graphs"] == 0 and served["compile_stack"] == [], served
    assert served["module"]["close"] and served["module"]["type"] == "RoutedModule" and served["module"]["is_module"]
    assert served["method"]["close"] and served["method"]["type"] == "TinyTransformer"
    assert served["forward"]["close"] and served["forward"]["outputs"] == served["module"]["outputs"]

    # A function, a mode no entry was compiled with, training with grad: as without
    # ccache's routing (size 1 alone: each is a cold compile, twice).
    unserved = "function,mode,training"
    routed = _run(store, program, unserved, tmp_path, sizes="[1]")
    plain = _run(store, program, unserved, tmp_path, "--no-route", sizes="[1]")
    assert routed["graphs"] > 0
    for how in unserved.split(","):
        assert routed[how]["outputs"] == plain[how]["outputs"], how  # bit for bit
    assert routed["function"]["type"] == plain["function"]["type"] == "function"
    assert routed["mode"]["type"] == plain["mode"]["type"] == "OptimizedModule"

    # inspect counts what was routed and served, and says why the rest was not.
    [entry] = ccache_json("inspect", store=store)["entries"]
    usage = entry["usage"]
    # module, method, forward, training; 2 sizes each of the first three served
    assert usage["routed"] == 4 and usage["served"] == 6, usage
    assert usage["not_routed"] == {
        "declined: no active entry captured this function": 1,
        "declined: mode 'reduce-overhead': the active entries were compiled with default": 1,
        "fallback: grad enabled": 1,
    }, usage
    detail = ccache("inspect", entry["id"][:8], store=store).stdout
    assert "torch.compile calls routed to the stored code: 4" in detail and "grad enabled" in detail


def test_the_environment_switch_leaves_torch_compile_alone(example_store: Path, program: Path, tmp_path: Path) -> None:
    report = _run(example_store, program, "module", tmp_path, sizes="[1]", env={"CCACHE_CLI_ROUTE": "0"})
    assert report["module"]["type"] == "OptimizedModule" and report["graphs"] > 0 and report["module"]["close"]


def test_the_routed_module_behaves_as_torch_compile_s_own() -> None:
    """The wrapper routing returns, without an entry or a compile: the model's training
    flag and attributes, `.eval()` returning it, copies and pickles compiled again."""
    import copy
    import pickle

    import torch

    from ccache_cli.serve import api

    model = torch.nn.Linear(3, 3)
    calls = []
    routed = api._routed_module_class(torch)(model, lambda *a: calls.append(a) or model(*a), {})
    assert routed.eval() is routed and not routed.training and not model.training
    routed.train()
    assert model.training and routed.weight is model.weight
    assert list(routed.state_dict()) == ["_orig_mod.weight", "_orig_mod.bias"]
    x = torch.randn(2, 3)
    assert torch.equal(routed(x), model(x)) and len(calls) == 1
    for again in (copy.deepcopy(routed), pickle.loads(pickle.dumps(routed))):
        assert type(again).__name__ == "OptimizedModule"  # no routing in this process: torch.compile's own


def test_state_under_which_torch_compile_would_run_something_else_is_never_served() -> None:
    import torch

    from ccache_cli.serve import api

    assert api._state_torch_compile_would_see(torch) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert api._state_torch_compile_would_see(torch) == "autocast enabled"
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        assert api._state_torch_compile_would_see(torch) == "a dispatch mode is active"
