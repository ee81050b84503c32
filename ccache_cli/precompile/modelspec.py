"""MODEL arguments: `pkg.module[:attr]` or `path/to/file.py[:attr]`.

`parse()` only reads the text. `load_model()` and `load_inputs()` import user code
and run in the compile worker, never in the CLI process.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ccache_cli.errors import CompileError, ModelSpecError

DEFAULT_ATTR = "build"
INPUTS_ATTR = "example_inputs"


@dataclass(frozen=True)
class ModelSpec:
    target: str  # a dotted module name, or a path to a .py file
    attr: str

    @property
    def is_file(self) -> bool:
        return self.target.endswith(".py") or os.sep in self.target or "/" in self.target

    def __str__(self) -> str:
        return f"{self.target}:{self.attr}"


def parse(text: str, default_attr: str | None = DEFAULT_ATTR) -> ModelSpec:
    target, sep, attr = text.rpartition(":")
    if not sep:
        target, attr = text, ""
    attr = attr or default_attr or ""
    if not target or not attr:
        needs = "MOD:FN" if default_attr is None else "pkg.module[:attr] or path/to/file.py[:attr]"
        raise ModelSpecError(f"malformed spec {text!r}: expected {needs}")
    spec = ModelSpec(target, attr)
    if not spec.is_file and not all(part.isidentifier() for part in target.split(".")):
        raise ModelSpecError(f"malformed module name {target!r}: expected pkg.module or path/to/file.py")
    return spec


def import_target(spec: ModelSpec) -> ModuleType:
    """Import the module a spec names; a file's package root goes on sys.path."""
    if spec.is_file:
        path = Path(spec.target).resolve()
        if not path.is_file():
            raise ModelSpecError(f"model file not found: {spec.target}")
        root, name = _package_root(path)
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
    else:
        name = spec.target
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # like `python -m`, the working directory is importable
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise ModelSpecError(
                f"no module named {name!r} (from {spec.target!r}); check the name and sys.path"
            ) from exc
        raise CompileError(f"importing {name} failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise CompileError(f"importing {name} failed: {type(exc).__name__}: {exc}") from exc


def module_identity(module: ModuleType, spec: ModelSpec, inputs: Callable[[int], Any]) -> dict[str, str]:
    """How the key names the model and its inputs: by module and attribute, never by a path."""
    return {"module": module.__name__, "attr": spec.attr, "inputs": f"{inputs.__module__}:{inputs.__name__}"}


def model_target(module: ModuleType, spec: ModelSpec) -> Any:
    """What a spec names, checked to be an nn.Module or a function that may return one,
    without calling it: a wrong spec fails before any compile work starts."""
    import torch

    target = _attribute(module, spec)
    if isinstance(target, torch.nn.Module):
        return target
    if not callable(target) or isinstance(target, type) and not issubclass(target, torch.nn.Module):
        raise ModelSpecError(f"{spec} is a {type(target).__name__}, neither an nn.Module nor a function returning one")
    return target


def load_model(module: ModuleType, spec: ModelSpec) -> Any:
    """The nn.Module a spec names, calling it when it is a factory."""
    import torch

    target = model_target(module, spec)
    if isinstance(target, torch.nn.Module):
        return target
    try:
        model = target()
    except Exception as exc:
        raise CompileError(f"{spec} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelSpecError(f"{spec} returned a {type(model).__name__}, not an nn.Module")
    return model


def load_inputs(module: ModuleType, inputs: ModelSpec | None) -> Callable[[int], Any]:
    """The `example_inputs(size)` function: from `--inputs`, else beside the model."""
    if inputs is not None:
        return _attribute(import_target(inputs), inputs)
    function = getattr(module, INPUTS_ATTR, None)
    if function is None:
        raise ModelSpecError(
            f"no example inputs: define {INPUTS_ATTR}(size) in {module.__name__} or pass --inputs MOD:FN"
        )
    if not callable(function):
        raise ModelSpecError(f"{module.__name__}.{INPUTS_ATTR} is not a function")
    return function


def _attribute(module: ModuleType, spec: ModelSpec) -> Any:
    try:
        return getattr(module, spec.attr)
    except AttributeError:
        raise ModelSpecError(f"module {module.__name__} has no attribute {spec.attr!r}") from None


def _package_root(path: Path) -> tuple[Path, str]:
    """The folder to put on sys.path for `path`, and the dotted module name there."""
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file() and folder.parent != folder:
        parts.insert(0, folder.name)
        folder = folder.parent
    return folder, ".".join(parts)
