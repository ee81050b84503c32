"""Function compiles (`torch.compile(fn)`, a module's bound forward through a
functools.wraps decorator, `@torch.compile`): `run --capture` stores each call's
compiled function, and `ccache run` serves an unchanged program from them with
nothing traced; a changed global or attribute, or a call no captured function was
compiled for, goes to torch.compile, with eager's numbers and the reason. Inside
another compile, the function is traced as the program's own."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from helpers.cli import ccache, ccache_json
from helpers.stores import built_once

pytestmark = pytest.mark.slow

PROGRAM = Path(__file__).parent / "programs" / "function_compiles.py"


def capture(tmp_path_factory: pytest.TempPathFactory, change: str) -> dict:
    def build(folder: Path) -> None:
        shutil.copyfile(PROGRAM, folder / "program.py")
        command = ["--", sys.executable, "program.py", change, "[2, 4]"]
        result = ccache("run", "--capture", "fns", "--json", *command, store=folder / "store", cwd=folder)
        assert result.returncode == 0, result.stderr
        (folder / "capture.json").write_text(result.stdout)

    folder = built_once(tmp_path_factory, f"functions-{change}", build)
    return {"store": folder / "store", "folder": folder, "capture": json.loads((folder / "capture.json").read_text())}


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return capture(tmp_path_factory, "none")


def run(captured: dict, tmp_path: Path, change: str, sizes: list[int]) -> tuple[dict, str]:
    result = ccache(
        "run",
        "fns",
        "--",
        sys.executable,
        "program.py",
        change,
        json.dumps(sizes),
        store=captured["store"],
        cwd=captured["folder"],
        env={"CCACHE_CLI_VIEWS": str(tmp_path / "views")},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_a_capture_stores_each_function_s_compiled_calls(captured: dict) -> None:
    assert captured["capture"]["functions"] == 6 and captured["capture"]["functions_not_stored"] == []
    [entry] = ccache_json("inspect", store=captured["store"])["entries"]
    assert entry["functions"] == {"__main__:Block.forward": 2, "__main__:decorated": 2, "__main__:plain": 2}
    assert entry["artifacts"]["functions"] == 6


def test_an_unchanged_program_runs_the_captured_functions(captured: dict, tmp_path: Path) -> None:
    report, _ = run(captured, tmp_path, "none", [2, 4])
    assert report == {"same": True, "graphs": 0, "misses": 0, "api": True}
    # The call under torch.compiler.set_stance("force_eager") went to torch.compile, as told.
    usage = ccache_json("inspect", store=captured["store"])["entries"][0]["usage"]
    assert usage["not_routed"].get("fallback: torch.compile is set to force_eager") == 1, usage
    # Size 3 was not called at capture: Dynamo's guards of the function compiled at size 4
    # (dynamic, as torch.compile makes a function called at a second size) let it serve.
    report, _ = run(captured, tmp_path, "none", [3])
    assert report == {"same": True, "graphs": 0, "misses": 0, "api": True}


@pytest.mark.parametrize(
    ("change", "reason"),
    [("global", "__main__.SCALE is 3.0; the stored code was built with 2.0"), ("attribute", "L['self'].scale == 0.5")],
)
def test_changed_python_state_goes_to_torch_compile(captured: dict, tmp_path: Path, change: str, reason: str) -> None:
    report, stderr = run(captured, tmp_path, change, [2, 4])
    assert report["same"] and report["graphs"] > 0
    assert "stored code not used" in stderr and reason in stderr, stderr


def test_a_function_inside_another_compile_is_traced_as_the_program_s_own(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The enclosing compile with options (not captured) traces the same graphs under
    the capture and under `ccache run`, so the second finds them all in the cache; the
    forward, reached as a frame from compiles of the module's `__call__` and of the
    module with fullgraph=True, is captured there too (not traced by them) and runs
    from stored code, as a compiled frame for the fullgraph compile. The `__call__` is
    stored only where its saved code loads back (torch 2.13 cannot rebuild its guard on
    the compiled forward; 2.11 can): else the capture says why, and no run fails to
    load stored code."""
    nested = capture(tmp_path_factory, "nested")
    not_stored = nested["capture"]["functions_not_stored"]
    assert all("Module._wrapped_call_impl: " in why and "does not load" in why for why in not_stored), not_stored
    [entry] = ccache_json("inspect", store=nested["store"])["entries"]
    assert entry["functions"]["__main__:Block.forward"] == 2, entry["functions"]
    report, stderr = run(nested, tmp_path, "nested", [2, 4])
    assert report["same"] and report["graphs"] > 0 and report["misses"] == 0, stderr
    usage = ccache_json("inspect", store=nested["store"])["entries"][0]["usage"]
    assert not any("failed to load" in why for why in usage["not_routed"]), usage


def test_state_a_loaded_copy_would_get_wrong_is_never_stored_and_arguments_are_checked_per_call(
    tmp_path: Path,
) -> None:
    """A global written, a global tensor rebound, a tensor in a closure, a nested
    function's closure, a default argument or a global's object changed after the graph:
    no stored code (the capture says why); a
    function argument's identity: checked on every call; a function captured under
    no_grad and under inference_mode: served in both; a constant default changed after
    the compile: the call gets the new one; a keyword named like a positional-only
    parameter: one of **kwargs, as plain Python has it; a shape first called inside
    torch.export: compiled by the program's own compile after it, as without ccache."""
    program = Path(__file__).parent / "programs" / "function_state.py"
    command = ["--", sys.executable, str(program)]
    result = ccache("run", "--capture", "state", "--json", *command, "capture", store=tmp_path / "store", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    captured = json.loads(result.stdout)
    # `applies`, for double; `doubled` in each mode; `scales`; `positional_only`; `marked` before
    # and after the export (not in it)
    assert captured["functions"] == 7, captured
    not_stored = " ".join(captured["functions_not_stored"])
    for why in (
        "writes the global(s) STEP",
        "reads the global(s) B",
        "reads w from its closure",
        "reads inner from its closure",
        "a default argument of it",
        "changes the global(s) TALLY after its graph",
    ):
        assert why in not_stored, not_stored
    served = ccache("run", "state", *command, "run", store=tmp_path / "store", cwd=tmp_path)
    assert served.returncode == 0, served.stderr
    report = json.loads(served.stdout.strip().splitlines()[-1])
    expected = {"same": True, "step": 2, "tally": 3, "compiled_after_export": True, "export_warnings": []}
    assert report == expected, served.stderr
    assert "act is function __main__.triple; the stored code was built with function __main__.double" in served.stderr
    assert "doubled" not in served.stderr, served.stderr  # each mode's function loaded in its mode


def test_no_route_captures_no_function(tmp_path: Path) -> None:
    shutil.copyfile(PROGRAM, tmp_path / "program.py")
    command = ["--", sys.executable, "program.py", "none", "[2]"]
    result = ccache(
        "run", "--capture", "plain", "--no-route", "--json", *command, store=tmp_path / "store", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["functions"] == 0


def test_first_calls_made_at_once_in_threads_are_all_captured(tmp_path: Path) -> None:
    """Four threads make a function's first calls at once: each call is captured (the
    program's own compile in one thread does not fail the capture in another), and
    the run serves them all with the plain function's results."""
    program = Path(__file__).parent / "programs" / "threaded_first_calls.py"
    store, command = tmp_path / "store", ["--", sys.executable, str(program)]
    result = ccache("run", "--capture", "threads", "--json", *command, store=store, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    captured = json.loads(result.stdout)
    assert captured["functions"] >= 1 and captured["functions_not_stored"] == [], captured
    result = ccache("run", "threads", *command, store=store, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {str(at): True for at in range(4)}
    assert ccache_json("inspect", store=store)["entries"][0]["usage"]["served"] == 4, result.stderr
