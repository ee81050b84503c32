"""Bad input ends with one clear line on stderr, the right exit code, and a clean store."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.cli import EXAMPLE, ccache
from helpers.stores import store_leftovers


def assert_clean_failure(result, code: int, needle: str, store: Path) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ccache: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert store_leftovers(store) == []


@pytest.mark.parametrize("sizes", ["0", "-1", "a", "1,,2", ""])
def test_malformed_sizes(sizes: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = ccache("precompile", EXAMPLE, "--sizes", sizes, store=store)
    assert_clean_failure(result, 2, "--sizes", store)


@pytest.mark.parametrize(
    ("spec", "code", "needle"),
    [
        ("no_such_pkg.model", 2, "no module named 'no_such_pkg.model'"),
        ("{models}/missing.py:build", 2, "model file not found"),
        ("{models}/small.py:nothing_here", 2, "has no attribute 'nothing_here'"),
        ("{models}/small.py:NOT_A_MODEL", 2, "neither an nn.Module nor a function"),
        ("{models}/small.py:build_returns_number", 2, "returned a int, not an nn.Module"),
        ("{models}/no_inputs.py", 2, "no example inputs"),
        ("{models}/small.py:build_raises", 1, "raised ValueError: weights not found"),
    ],
)
def test_bad_model_specs(spec: str, code: int, needle: str, models: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = ccache("precompile", spec.format(models=models), "--sizes", "2", "--no-aot", store=store, cwd=tmp_path)
    assert_clean_failure(result, code, needle, store)


def test_cuda_without_gpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    store = tmp_path / "store"
    result = ccache("precompile", EXAMPLE, "--sizes", "1", "--device", "cuda", store=store)
    assert_clean_failure(result, 2, "--device cuda:0: this machine has no CUDA GPU", store)


def test_malformed_device(tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = ccache("precompile", EXAMPLE, "--sizes", "1", "--device", "tpu", store=store)
    assert_clean_failure(result, 2, "expected cpu, cuda or cuda:N", store)


def test_store_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = ccache("precompile", EXAMPLE, "--sizes", "1", store=blocker / "store")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "cannot write to store" in result.stderr
    assert blocker.read_text() == "not a directory"


def test_unknown_entry_prefix(tmp_path: Path) -> None:
    result = ccache("inspect", "deadbeef", store=tmp_path / "store")
    assert_clean_failure(result, 2, "no entry matches 'deadbeef'", tmp_path / "store")


@pytest.mark.parametrize(
    "args,message",
    [
        (["precompile", EXAMPLE, "--sizes", "1", "8", "32"], "--sizes takes one comma-separated list: --sizes 1,8,32"),
        (["inspect", "--store", "/elsewhere"], "--store goes before the command: ccache --store /elsewhere inspect"),
        (["precompile", EXAMPLE, "--store=/x", "--sizes", "1"], "--store goes before the command: ccache --store /x"),
    ],
)
def test_a_newcomer_s_slips_are_told_plainly(args: list[str], message: str, tmp_path: Path) -> None:
    result = ccache(*args, store=tmp_path / "store")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert store_leftovers(tmp_path / "store") == []


def test_version() -> None:
    result = ccache("--version")
    assert result.returncode == 0 and result.stdout.startswith("ccache-cli "), result.stdout
