"""Patching a module of the program's right after its first import, without importing
it first (the start-up hook must not make every program import torch).

Standard library only, with no package-relative imports: the start-up hook loads it
by path.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any


def when_imported(name: str, patch: Callable[[ModuleType], None]) -> None:
    """Call `patch(module)` now if module `name` is imported, else right after its first
    import; once per name and patch."""
    module = sys.modules.get(name)
    if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False):
        patch(module)
    elif not any(isinstance(f, _AfterImport) and (f.name, f.patch) == (name, patch) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, patch))


class _AfterImport:
    """A meta path finder that has module `name` patched right after it is executed.
    It stays first on the path until then: a program may look the module up first
    without importing it (transformers calls `importlib.util.find_spec("torch")`)."""

    def __init__(self, name: str, patch: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.patch = patch
        self._asking = threading.local()  # this finder is asking the others (another of its kind asks back)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self.name or getattr(self._asking, "now", False):
            return None
        self._asking.now = True
        try:
            spec = self._others_spec(name, path, target)
        finally:
            self._asking.now = False
        if spec is None:
            return None
        if spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            exec_module(module)
            self.patch(module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec

    def _others_spec(self, name: str, path: Any, target: Any) -> Any:
        """The spec the other finders give, as import would find it."""
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    return spec
        return None
