"""Stored code runs only where torch.compile would compute the same thing: a program
that changes Python state its model's forward reads (an attribute, a config value, a
global, a function, a method, torch's global state) gets eager's numbers through the
fallback, and the reason on stderr; an unchanged program is still served with nothing
traced. Each case is a real program (tests/programs/) under `ccache run`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from helpers.cli import MODELS, ccache, ccache_json
from helpers.stores import built_once

pytestmark = pytest.mark.slow

PROGRAMS = Path(__file__).parent / "programs"

# case -> what the reason on stderr says (the path and both values, or the state).
CASES = {
    "float attribute": "n1.eps is 0.5; the stored code was built with 1e-06",
    "int attribute": "attn.heads is 2; the stored code was built with 4",
    "bool attribute": "n1.centered is False; the stored code was built with True",
    "string attribute": "n1.kind is 'plain'; the stored code was built with 'rms'",
    "config value": "config.residual is 0.5; the stored code was built with 1.0",
    "module constant": "configurable.SCALE is 3.0; the stored code was built with 2.0",
    "global function": "configurable.activation is builtin",
    "method on the class": "configurable.Norm.forward was replaced",
    "forward on the instance": "its forward is set on the model itself",
    "matmul precision": "float32 matmul precision is medium; the stored code was built with highest",
    "backends flag": "float32 matmul precision is high; the stored code was built with highest",
    "deterministic algorithms": "torch deterministic_algorithms is true; the stored code was built with false",
    "default dtype": "default dtype is torch.float64; the stored code was built with torch.float32",
}


@pytest.fixture(scope="session")
def configurable(tmp_path_factory: pytest.TempPathFactory) -> dict:
    def build(folder: Path) -> None:
        shutil.copytree(MODELS, folder / "models")
        result = ccache("precompile", "configurable.py", "--sizes", "2", store=folder / "store", cwd=folder / "models")
        assert result.returncode == 0, result.stderr

    folder = built_once(tmp_path_factory, "configurable", build)
    return {"store": folder / "store", "models": folder / "models"}


def serve(configurable: dict, tmp_path: Path, way: str, case: str, *options: str, store: Path | None = None):
    result = ccache(
        "run",
        *options,
        "--",
        sys.executable,
        str(PROGRAMS / "configure_and_serve.py"),
        str(configurable["models"]),
        way,
        case,
        store=store or configurable["store"],
        cwd=tmp_path,
        env={"CCACHE_CLI_VIEWS": str(tmp_path / "views")},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


@pytest.mark.parametrize("way", ["route", "api"])
def test_an_unchanged_program_is_served_with_nothing_traced(configurable: dict, tmp_path: Path, way: str) -> None:
    report, stderr = serve(configurable, tmp_path, way, "unchanged")
    assert report == {"mismatch": None, "frames": 0}, stderr
    assert "ccache:" not in stderr


# Each case through one of the two ways (both are the same check; the matrix stays cheap).
# Every run checks one case of each kind of state; the others of a kind are extended.
EXTENDED = {"int attribute", "bool attribute", "string attribute", "backends flag", "deterministic algorithms"}


@pytest.mark.parametrize(
    "case,way",
    [
        pytest.param(case, ("route", "api")[number % 2], marks=[pytest.mark.extended] if case in EXTENDED else [])
        for number, case in enumerate(CASES)
    ],
    ids=list(CASES),
)
def test_changed_python_state_gets_eager_numbers_and_the_reason(
    configurable: dict, tmp_path: Path, case: str, way: str
) -> None:
    report, stderr = serve(configurable, tmp_path, way, case)
    assert report["mismatch"] is None, report
    [line] = [line for line in stderr.splitlines() if line.startswith("ccache: stored code not used")]
    assert "entry configurable:build: " in line and CASES[case] in line, line


def test_the_reason_reaches_inspect_and_verify_checks_the_assumptions(configurable: dict, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(configurable["store"], store)
    serve(configurable, tmp_path, "route", "float attribute", store=store)
    [entry] = ccache_json("inspect", store=store)["entries"]
    assert "n1.eps is 0.5" in entry["usage"]["miss_reason"], entry["usage"]
    checks = entry["assumptions"]["2"]["checks"]
    assert checks["value"] >= 5 and checks["code"] >= 3 and checks["torch_state"] >= 4, checks
    assert "unchecked" not in checks
    verified = ccache("verify", "--run", "--json", store=store, cwd=configurable["models"])
    assert verified.returncode == 0, verified.stdout
    [assumed] = [check for check in json.loads(verified.stdout)["checks"] if check["check"] == "assumptions"]
    assert assumed["ok"] and "read the program" in assumed["detail"]


def serve_twice(configurable: dict, tmp_path: Path, change: str, *options: str) -> tuple[list, str]:
    """A program calling the model compiled with torch.compile (routed) a few times,
    then twice more with `change` between those two (`doubled` is the model's forward,
    doubled): those two calls' mismatch with eager, and stderr."""
    program = tmp_path / "two_calls.py"
    program.write_text(
        "import json, sys, types, torch\n"
        f"sys.path.insert(0, {str(configurable['models'])!r})\n"
        "import configurable\n"
        "from ccache_cli.precompile.outputs import compare_eager\n"
        "model = configurable.build()\n"
        "original = configurable.Configurable.forward\n"
        "def doubled(self, x):\n"
        "    return original(self, x) * 2\n"
        "compiled = torch.compile(model)\n"
        "(x,) = configurable.example_inputs(2)\n"
        "with torch.no_grad():\n"
        "    for _ in range(3):  # checks that passed twice are repeated by a generated one\n"
        "        compiled(x)\n"
        "    first = compare_eager(torch, compiled(x), model(x))\n"
        f"    {change}\n"
        "    second = compare_eager(torch, compiled(x), model(x))\n"
        "print(json.dumps([first, second]))\n"
    )
    result = ccache(
        "run",
        *options,
        "--",
        sys.executable,
        str(program),
        store=configurable["store"],
        cwd=tmp_path,
        env={"CCACHE_CLI_VIEWS": str(tmp_path / "views")},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("model.n1.eps = 0.5", "n1.eps is 0.5"),
        ("configurable.SCALE = 3.0", "configurable.SCALE is 3.0"),
        ("configurable.activation = torch.sigmoid", "configurable.activation is builtin"),
        ("configurable.Norm.forward = lambda self, x: x * 2", "configurable.Norm.forward was replaced"),
        ("torch.use_deterministic_algorithms(True)", "torch deterministic_algorithms is true"),
    ],
)
def test_a_change_between_calls_is_seen(configurable: dict, tmp_path: Path, change: str, reason: str) -> None:
    """By default every assumption is checked on every call: a change after the stored
    code served (and after the check was generated that repeats the full one) sends
    the next call to torch.compile, with the reason."""
    mismatches, stderr = serve_twice(configurable, tmp_path, change)
    assert mismatches == [None, None]
    assert reason in stderr, stderr


def test_the_once_policy_checks_the_model_at_its_first_call_only(configurable: dict, tmp_path: Path) -> None:
    """`--guards once` is what a program that changes nothing between calls may ask for;
    torch's state is still checked on every call."""
    _, stderr = serve_twice(configurable, tmp_path, "model.n1.eps = 0.5", "--guards", "once")
    assert "n1.eps" not in stderr
    _, stderr = serve_twice(configurable, tmp_path, "torch.use_deterministic_algorithms(True)", "--guards", "once")
    assert "torch deterministic_algorithms is true" in stderr, stderr
    refused = ccache("run", "--guards", "sometimes", "--", sys.executable, "-c", "pass", store=configurable["store"])
    assert refused.returncode == 2 and "--guards 'sometimes'" in refused.stderr


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ("configurable.Configurable.forward = doubled", "configurable.Configurable.forward was replaced"),
        ("model.forward = types.MethodType(doubled, model)", "its forward is set on the model itself"),
    ],
)
def test_a_forward_patched_between_calls_is_checked_again(
    configurable: dict, tmp_path: Path, patch: str, reason: str
) -> None:
    """Under the once policy (the model's assumptions checked at a size's first call),
    the forward itself is compared on every call: patched after the first call, on its
    class or on the model, the stored code no longer serves it."""
    mismatches, stderr = serve_twice(configurable, tmp_path, patch, "--guards", "once")
    assert mismatches == [None, None]
    assert reason in stderr, stderr


def test_an_entry_without_recorded_assumptions_is_never_served(configurable: dict, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(configurable["store"], store)
    [manifest] = (store / "entries").glob("*/manifest.json")
    document = json.loads(manifest.read_text())
    del document["assumptions"]  # as precompiled before they were recorded
    manifest.chmod(0o644)
    manifest.write_text(json.dumps(document))
    report, stderr = serve(configurable, tmp_path, "api", "unchanged", store=store)
    assert report["mismatch"] is None and report["frames"] >= 1
    assert "records no assumptions" in stderr and "precompile it again" in stderr
    verified = ccache("verify", "--json", store=store)
    assert verified.returncode == 1
    [assumed] = [check for check in json.loads(verified.stdout)["checks"] if check["check"] == "assumptions"]
    assert not assumed["ok"] and "precompile again" in assumed["detail"]


def test_the_bundled_example_with_a_norm_configured_after_building(example_store: Path, tmp_path: Path) -> None:
    program = tmp_path / "configured.py"
    program.write_text(
        "import json, torch, ccache_cli\n"
        "from ccache_cli.precompile.outputs import compare_eager\n"
        "from ccache_cli.examples.tiny_transformer import build, example_inputs\n"
        "model = build()\n"
        "model.blocks[0].norm.eps = 0.5  # nn.LayerNorm reads it in its forward\n"
        "compiled = ccache_cli.compile(model)\n"
        "with torch.no_grad():\n"
        "    print(json.dumps(compare_eager(torch, compiled(*example_inputs(1)), model(*example_inputs(1)))))\n"
    )
    result = ccache(
        "run",
        "--",
        sys.executable,
        str(program),
        store=example_store,
        cwd=tmp_path,
        env={"CCACHE_CLI_VIEWS": str(tmp_path / "views")},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) is None
    assert "blocks.0.norm.eps is 0.5; the stored code was built with 1e-05" in result.stderr, result.stderr
