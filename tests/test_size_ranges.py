"""A range of batch sizes (`--sizes 1-8`): one package with a dynamic batch dimension
serves every size in it, under `ccache run`, with nothing traced; a size outside it,
or a program whose Python state changed, gets torch.compile's (eager's) numbers."""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import pytest
from helpers.cli import MODELS, ccache, ccache_json
from helpers.stores import built_once

pytestmark = pytest.mark.slow

PROGRAM = Path(__file__).parent / "programs" / "serve_sizes.py"


@pytest.fixture(scope="module")
def ranged(tmp_path_factory: pytest.TempPathFactory) -> dict:
    def build(folder: Path) -> None:
        shutil.copytree(MODELS, folder / "models")
        result = ccache(
            "precompile",
            "configurable.py",
            "--sizes",
            "1-8",
            "--no-bytecode",
            store=folder / "store",
            cwd=folder / "models",
        )
        assert result.returncode == 0, result.stderr

    folder = built_once(tmp_path_factory, "ranged", build)
    return {"store": folder / "store", "models": folder / "models"}


def serve(ranged: dict, tmp_path: Path, case: str, sizes: list[int]) -> tuple[dict, str]:
    result = ccache(
        "run",
        "--",
        sys.executable,
        str(PROGRAM),
        str(ranged["models"]),
        case,
        json.dumps(sizes),
        store=ranged["store"],
        cwd=tmp_path,
        env={"CCACHE_CLI_VIEWS": str(tmp_path / "views")},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_the_entry_names_its_range(ranged: dict) -> None:
    [entry] = ccache_json("inspect", store=ranged["store"])["entries"]
    assert entry["sizes"] == [] and entry["ranges"] == [[1, 8]]
    # `--no-bytecode`, for images that have .pyc files: no bytecode, and another key.
    assert "bytecode" not in entry["artifacts"] and entry["compile"]["bytecode"] is False, entry
    assert entry["artifacts"]["aot"] == 1  # the range's package
    assert list(entry["assumptions"]) == ["1-8"]
    listing = ccache("inspect", store=ranged["store"]).stdout
    assert " 1-8 " in listing


def test_every_size_in_the_range_is_served_with_nothing_traced(ranged: dict, tmp_path: Path) -> None:
    sizes = [random.Random(3).randint(1, 8) for _ in range(20)] + [1, 8]
    report, stderr = serve(ranged, tmp_path, "unchanged", sizes)
    assert report == {"mismatches": [], "frames": 0, "served": len(sizes)}, stderr


def test_outside_the_range_or_with_changed_state_torch_compile_serves(ranged: dict, tmp_path: Path) -> None:
    report, _ = serve(ranged, tmp_path, "unchanged", [9, 3])
    assert report["mismatches"] == [] and report["frames"] > 0 and report["served"] == 1  # 3 is in the range
    report, stderr = serve(ranged, tmp_path, "float attribute", [3, 5])
    assert report["mismatches"] == [] and report["served"] == 0
    assert "n1.eps is 0.5; the stored code was built with 1e-06" in stderr


def test_verify_runs_the_range(ranged: dict, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(ranged["store"], store, symlinks=True)
    verified = ccache("verify", "--run", "--json", store=store, cwd=ranged["models"])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    [run] = [check for check in json.loads(verified.stdout)["checks"] if check["check"] == "run"]
    assert run["ok"] and "1-8" in run["detail"], run
