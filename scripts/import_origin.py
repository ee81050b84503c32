"""Run a Python script and print the stack that first imports each named module: what
to look at when a process that should serve stored code imports Dynamo or Inductor.

    python scripts/import_origin.py MODULE[,MODULE...] SCRIPT [ARG...]

Under `ccache run`, the script runs after ccache's start-up hook: a module the hook or
the interpreter's start imported is named as imported before the script ran.
"""

from __future__ import annotations

import importlib.abc
import runpy
import sys
import traceback


class FirstImports(importlib.abc.MetaPathFinder):
    def __init__(self, names: set[str]) -> None:
        self.waiting = names

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name in self.waiting:
            self.waiting.discard(name)
            stack = "".join(traceback.format_stack(limit=60)[:-1])
            sys.stderr.write(f"import_origin: first import of {name}:\n{stack}\n")
        return None  # the import goes on as if this finder were not here


def main() -> None:
    names, script, *args = sys.argv[1:]
    wanted = set(names.split(","))
    before = sorted(name for name in wanted if name in sys.modules)
    if before:
        sys.stderr.write(f"import_origin: imported before the script ran: {', '.join(before)}\n")
    sys.meta_path.insert(0, FirstImports(wanted - set(before)))
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
