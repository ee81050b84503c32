"""How precompile starts a worker module (`python -m MODULE ARGS`) in this interpreter
or in another (`--python`), where ccache-cli need not be installed: there its package
is loaded by path, and nothing of this environment is put on that interpreter's path."""

from __future__ import annotations

import sys
from pathlib import Path

_BY_PATH = """
import importlib.util, runpy, sys
folder = sys.argv.pop(1)
spec = importlib.util.spec_from_file_location("ccache_cli", folder + "/__init__.py", submodule_search_locations=[folder])
package = importlib.util.module_from_spec(spec)
sys.modules["ccache_cli"] = package
spec.loader.exec_module(package)
runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
"""


def module_command(module: str, python: str | None = None) -> list[str]:
    """The command line that runs `module` as a script in `python` (None: this one)."""
    if python is None:
        return [sys.executable, "-m", module]
    return [python, "-c", _BY_PATH, str(Path(__file__).resolve().parent.parent), module]


def worker_command(module: str) -> list[str]:
    """The command line that runs `module` in the interpreter running now, with the
    ccache-cli package loaded now (a compile worker's own workers, which may run in
    another Python than the CLI's)."""
    return module_command(module, sys.executable)
