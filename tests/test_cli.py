"""inspect, fingerprint and the import-time promise: --help and inspect never import torch."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import ccache, ccache_json, cpu_fingerprint, imported_modules, machine_fingerprint_json
from helpers.stores import make_entry

from ccache_cli.store.store import Store


def test_help_does_not_import_torch() -> None:
    result = ccache("--help", python_flags=["-X", "importtime"])
    assert result.returncode == 0
    assert "precompile" in result.stdout
    modules = imported_modules(result)
    assert "ccache_cli" in modules and "torch" not in modules


def test_inspect_does_not_import_torch(example_store: Path, example_entry: dict) -> None:
    for args in (("inspect",), ("inspect", example_entry["id"][:8]), ("inspect", "--json")):
        result = ccache(*args, store=example_store, python_flags=["-X", "importtime"])
        assert result.returncode == 0, result.stderr
        modules = imported_modules(result)
        assert "rich" in modules and "torch" not in modules


def test_inspect_table_and_detail(example_store: Path, example_entry: dict) -> None:
    table = ccache("inspect", store=example_store)
    assert example_entry["id"][:12] in table.stdout
    assert "1,8" in table.stdout and "yes" in table.stdout
    detail = ccache("inspect", example_entry["id"][:6], store=example_store)
    assert detail.returncode == 0
    for text in (
        "Traced sources",
        "ccache_cli/examples/tiny_transformer.py",
        "fxgraph",
        "megacache",
        "cpu_isa",
        "Recorded compile timings",
        "AOT: stored",
    ):
        assert text in detail.stdout, text


def test_inspect_json_shape(example_entry: dict) -> None:
    for key in (
        "id",
        "name",
        "sizes",
        "device",
        "fingerprint",
        "sources",
        "artifacts",
        "bytes",
        "created",
        "compatible",
    ):
        assert key in example_entry
    assert {"python", "torch", "cuda"} <= set(example_entry["fingerprint"])
    assert example_entry["bytes"] == sum(example_entry["artifact_bytes"].values())


def test_inspect_reports_a_corrupt_manifest_as_a_warning(example_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(example_store, store)
    broken = store / "entries" / ("f" * 64)
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    result = ccache("inspect", "--json", store=store)
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert len(data["entries"]) == 1
    assert "warning: entry ffffffffffff is skipped: unreadable manifest" in result.stderr


def test_inspect_empty_store(tmp_path: Path) -> None:
    result = ccache("inspect", store=tmp_path / "none")
    assert result.returncode == 0 and "No entries" in result.stdout
    assert ccache_json("inspect", store=tmp_path / "none") == {"entries": [], "warnings": []}


def test_fingerprint_json(tmp_path: Path) -> None:
    data = ccache_json("fingerprint", store=tmp_path / "store")
    import torch

    assert data["python"] == platform.python_version()
    assert data["torch"] == torch.__version__
    assert data["machine"] == platform.machine()
    assert data["cpu_threads"] == torch.get_num_threads()


def test_quiet_prints_only_errors_and_requested_data(example_store: Path) -> None:
    quiet = ccache("--quiet", "inspect", store=example_store)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    assert json.loads(ccache("-q", "inspect", "--json", store=example_store).stdout)["entries"]
    failed = ccache("-q", "inspect", "nosuchentry", store=example_store)
    assert failed.returncode == 2 and failed.stderr.startswith("ccache: error: no entry matches 'nosuchentry'")


def test_no_color_is_respected(example_store: Path) -> None:
    colored = ccache("inspect", example_entry_ref(example_store), store=example_store, env={"FORCE_COLOR": "1"})
    assert "\x1b[" in colored.stdout
    plain = ccache(
        "inspect", example_entry_ref(example_store), store=example_store, env={"FORCE_COLOR": "1", "NO_COLOR": "1"}
    )
    assert plain.returncode == 0 and not any(
        f"\x1b[{code}" in plain.stdout for code in ("31", "32", "33", "91", "92", "93")
    )


def example_entry_ref(store: Path) -> str:
    return next((store / "entries").iterdir()).name[:12]


def test_env_gc_and_rm_dry_run_do_not_import_torch(example_store: Path, tmp_path: Path) -> None:
    views = {"CCACHE_CLI_VIEWS": str(tmp_path / "views")}
    for args in (
        ("env",),
        ("gc", "--max-size", "0", "--dry-run"),
        ("rm", example_entry_ref(example_store), "--dry-run"),
    ):
        result = ccache(*args, store=example_store, env=views, python_flags=["-X", "importtime"])
        assert result.returncode == 0, result.stderr
        assert "torch" not in imported_modules(result), args


def test_plain_forms_are_parsed_without_the_app_and_anything_else_goes_to_it() -> None:
    from ccache_cli.cli.main import Plain, plain_command

    assert plain_command(["--store", "s", "-q", "run", "a", "b", "--", "python", "-c", "x"]) == Plain(
        "run", "s", True, ["a", "b"], program=["python", "-c", "x"]
    )
    assert plain_command(["--store=s", "run", "--", "python", "--", "x"]) == Plain(
        "run", "s", False, [], program=["python", "--", "x"]
    )
    assert plain_command(["run", "--capture", "n", "--", "python"]) is None  # an option: Typer parses it
    assert plain_command(["run", "--help"]) is None
    assert plain_command(["run", "--"]) is None  # no command: the app says so
    assert plain_command(["inspect", "--", "x"]) is None
    assert plain_command(["pack", "-", "alpha", "beta"]) == Plain("pack", None, False, ["-", "alpha", "beta"])
    assert plain_command(["-q", "unpack", "a.tar.zst", "--json"]) == Plain(
        "unpack", None, True, ["a.tar.zst"], json_output=True
    )
    assert plain_command(["pack", "a.tar.zst", "--level", "9"]) is None
    assert plain_command(["unpack", "a.tar.zst", "--export-dir", "d"]) is None
    assert plain_command(["unpack", "a.tar.zst", "b.tar.zst"]) is None  # Typer's usage error
    assert plain_command(["unpack"]) is None


def test_env_and_the_listing_start_without_typer_and_print_what_the_app_prints(
    example_store: Path, tmp_path: Path
) -> None:
    """`env` runs in every container's start and `inspect` lists stores of thousands of
    entries: their plain forms skip Typer's import, and print as the app's commands do
    (an option the plain form does not take sends the same command to the app)."""
    views = {"CCACHE_CLI_VIEWS": str(tmp_path / "views")}
    for plain, through_app in (
        (("env",), ("env", "--")),
        (("inspect", "--json"), ("inspect", "--json", "--insecure")),
        (("inspect",), ("inspect", "--insecure")),
    ):
        fast = ccache(*plain, store=example_store, env=views, python_flags=["-X", "importtime"])
        assert fast.returncode == 0, fast.stderr
        assert "typer" not in imported_modules(fast), plain
        app = ccache(*through_app, store=example_store, env=views, python_flags=["-X", "importtime"])
        assert app.returncode == 0, app.stderr
        assert "typer" in imported_modules(app), through_app
        if plain == ("inspect",):  # ages may tick between the two: the columns and the ids
            rows = [(line.split()[0], len(line.split())) for line in fast.stdout.splitlines()]
            assert rows == [(line.split()[0], len(line.split())) for line in app.stdout.splitlines()]
        else:
            assert fast.stdout == app.stdout and fast.stdout, plain


def test_a_reader_that_goes_away_ends_the_output_quietly(example_store: Path, tmp_path: Path) -> None:
    """`ccache inspect | head`: exit 1 with nothing on stderr, on the plain start and the app's."""
    env = {**os.environ, "CCACHE_CLI_VIEWS": str(tmp_path / "views")}
    env.pop("CCACHE_CLI_DEBUG", None)
    for args in (("inspect",), ("inspect", "--json"), ("env",), ("inspect", "--insecure")):
        process = subprocess.Popen(
            [sys.executable, "-m", "ccache_cli", "--store", str(example_store), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        process.stdout.close()  # before the program writes: it starts in a tenth of a second at best
        _, stderr = process.communicate(timeout=120)
        assert (process.returncode, stderr) == (1, b""), args


def test_inspect_lists_names_as_they_are_in_aligned_columns(tmp_path: Path) -> None:
    """Names holding rich markup or ending in a backslash are printed as given, each
    column aligned (the list is printed as columns, not a rich Table)."""
    store = Store(tmp_path / "store")
    names = ["back\\", "[red]x[/red]", "plain"]
    ids = {name: make_entry(store, name, {f"inductor/{index}.py": name.encode()}) for index, name in enumerate(names)}
    listed = ccache("inspect", store=store.root)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["id", "name", "sizes", "device", "torch", "size", "age", "used", "compatible"]
    start = header.index("sizes")
    for name in names:
        [row] = [row for row in rows if row.startswith(ids[name][:12])]
        assert row.split()[1] == name and row[start:].startswith("1 "), listed.stdout


def test_a_machine_fingerprint_without_the_cpu_components_tells_nothing_of_cpu_entries(tmp_path: Path) -> None:
    """A GPU precompile records this machine's fingerprint without the CPU's components
    (its key needs none, and their probes take seconds): a CPU entry is then of unknown
    fit to `inspect`, never a fit, and `verify` learns the whole fingerprint."""
    from ccache_cli.in_program.fingerprint import CPU_COMPONENTS, probe_digest

    store = Store(tmp_path / "store")
    make_entry(store, "cpu-entry", {"inductor/a.py": b"a"}, cpu_fingerprint())
    whole = json.loads(machine_fingerprint_json())
    store.save_machine_fingerprint(probe_digest(), {k: v for k, v in whole.items() if k not in CPU_COMPONENTS})
    assert ccache_json("inspect", store=store.root)["entries"][0]["compatible"] is None
    verified = ccache_json("verify", store=store.root)
    assert [c["ok"] for c in verified["checks"] if c["check"] == "compatibility"] == [True], verified
    assert ccache_json("inspect", store=store.root)["entries"][0]["compatible"] is True


def test_the_traceback_log_keeps_arguments_that_are_not_utf8(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug's traceback is written whatever the command line held (a file name in
    another encoding reaches argv as surrogates)."""
    from ccache_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["ccache", "inspect", "caf\udce9.tar.zst"])
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log = Path(main._write_traceback())
    text = log.read_text()
    log.unlink()
    assert "caf\\udce9.tar.zst" in text and "RuntimeError: boom" in text


def test_data_asked_for_with_stdout_closed_is_one_line_of_error(example_store: Path, tmp_path: Path) -> None:
    """`ccache env >&-`: the exports would be lost, and the command says so."""
    env = {**os.environ, "CCACHE_CLI_VIEWS": str(tmp_path / "views")}
    for args in ("env", "inspect --json", "env --json"):
        command = f"{sys.executable} -m ccache_cli --store {example_store} {args} >&-"
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=120)
        assert (result.returncode, result.stderr) == (1, "ccache: error: standard output is closed\n"), args
