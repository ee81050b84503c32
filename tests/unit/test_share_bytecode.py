"""precompile's processes in an environment without .pyc (compile_process.share_bytecode):
the compile worker writes the bytecode of what it imports under the store's pycache/
and the processes it starts read it there; an environment with .pyc, or a user's own
PYTHONPYCACHEPREFIX, is left as it is. Each case in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROGRAM = """
import subprocess, sys
sys.path.insert(0, sys.argv[1])
from ccache_cli.precompile.compile_process import share_bytecode
share_bytecode(sys.argv[2], probe="stack")
import stack
child = "import sys; print(sys.pycache_prefix, sys.flags.dont_write_bytecode)"
print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout.strip())
"""


def _run(tmp_path: Path, **env: str) -> tuple[str, Path]:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "stack.py").write_text("X = 1\n")
    cache = tmp_path / "store" / "pycache"
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONPYCACHEPREFIX"}
    environment.update(PYTHONDONTWRITEBYTECODE="1", **env)
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path / "src"), str(cache)],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip(), cache


def test_without_bytecode_the_worker_writes_it_to_the_store_and_its_children_read_it(tmp_path: Path) -> None:
    child, cache = _run(tmp_path)
    assert child == f"{cache} 0"
    assert list(cache.rglob("stack.*.pyc")), "the worker's import left no .pyc in the store's pycache/"
    assert not (tmp_path / "src" / "__pycache__").exists()


def test_an_environment_with_bytecode_is_left_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "stack.py").write_text("X = 1\n")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tmp_path / "src")], check=True)
    child, cache = _run(tmp_path)
    assert child == "None 1"
    assert not cache.exists()


def test_a_users_pycache_prefix_is_kept(tmp_path: Path) -> None:
    own = tmp_path / "own"
    child, cache = _run(tmp_path, PYTHONPYCACHEPREFIX=str(own))
    assert child == f"{own} 1"
    assert not cache.exists()
