from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

MODELS = Path(__file__).parent / "models"
EXAMPLE = "ccache_cli.examples.tiny_transformer"


def ccache(*args: str, store: Path | None = None, cwd: Path | None = None, env: dict[str, str] | None = None,
           python_flags: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a user would."""
    command = [sys.executable, *python_flags, "-m", "ccache_cli"]
    if store is not None:
        command += ["--store", str(store)]
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env.pop("CCACHE_CLI_DEBUG", None)
    return subprocess.run(command + list(args), capture_output=True, text=True, cwd=cwd, env=full_env, timeout=900)


def imported_modules(result: subprocess.CompletedProcess[str]) -> set[str]:
    """Top-level module names from `python -X importtime` output."""
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def ccache_json(*args: str, **kwargs: object) -> dict:
    result = ccache(*args, "--json", **kwargs)  # type: ignore[arg-type]
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


HIT_PROBE = textwrap.dedent(
    """
    import json, sys, torch
    from torch._dynamo.utils import counters
    from ccache_cli.examples.tiny_transformer import build, example_inputs
    device = sys.argv[1]
    compiled = torch.compile(build().to(device), backend="inductor", dynamic=False)
    torch._dynamo.config.recompile_limit = 16
    with torch.no_grad():
        for size in json.loads(sys.argv[2]):
            compiled(*(t.to(device) for t in example_inputs(size)))
    print(json.dumps({**counters["inductor"], **counters["aot_autograd"]}))
    """
)


def run_on_cache_dir(inductor_dir: Path, device: str, sizes: list[int], cwd: Path) -> dict[str, int]:
    """Compile the example in a fresh process on `inductor_dir`; torch's cache counters."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_dir)}
    env.pop("TRITON_CACHE_DIR", None)
    result = subprocess.run([sys.executable, "-c", HIT_PROBE, device, json.dumps(sizes)],
                            capture_output=True, text=True, env=env, cwd=cwd, timeout=900)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def store_leftovers(store: Path) -> list[str]:
    """Entries and staging files a failed command must not leave behind."""
    found = []
    for folder in ("entries", "tmp"):
        if (store / folder).is_dir():
            found += [f"{folder}/{p.name}" for p in (store / folder).iterdir()]
    return found


@pytest.fixture(scope="session")
def example_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding the bundled example compiled for 1, 8, 32, AOT included."""
    store = tmp_path_factory.mktemp("example") / "store"
    result = ccache("precompile", EXAMPLE, "--sizes", "1,8,32", store=store)
    assert result.returncode == 0, result.stderr
    return store


@pytest.fixture(scope="session")
def example_entry(example_store: Path) -> dict:
    entries = ccache_json("inspect", store=example_store)["entries"]
    assert len(entries) == 1
    return entries[0]


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A private copy of the test models, so a test may move or edit them."""
    target = tmp_path / "models"
    shutil.copytree(MODELS, target)
    return target
