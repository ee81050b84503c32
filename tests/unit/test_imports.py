"""Patching a module right after its first import (in_program/imports.py), in a fresh
process each: after the program looked it up first, and with two patches for one
module (the start-up hook's and `ccache_cli.activate()`'s)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROGRAM = """
import importlib.util, sys
sys.path.insert(0, sys.argv[1])
from ccache_cli.in_program.imports import when_imported
when_imported("mymod", lambda module: print("first", module.X))
when_imported("mymod", lambda module: print("second", module.X))
importlib.util.find_spec("mymod")  # as transformers looks torch up before importing it
import mymod
"""


def test_every_patch_runs_once_after_the_import_even_where_the_module_was_looked_up_first(tmp_path: Path) -> None:
    (tmp_path / "mymod.py").write_text("X = 1\n")
    result = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["first 1", "second 1"]
