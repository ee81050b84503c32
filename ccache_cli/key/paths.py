"""Where stored code's assumptions read their values: Dynamo's source expressions
(`L['self']._modules['n1'].eps`, `G['__import_torch'].nn`), evaluated on a program's
model without Dynamo, and shown as a program would write them (`n1.eps`).

Paths are parsed and allowed only as attribute, constant subscript, `type(...)` and
`dict(...)` chains from `L` (the traced forward's locals) and `G` (its module's
globals): a manifest never runs code here, nor imports a package the program has not.

Standard library only.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import re
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any

from ccache_cli.store.manifest import Frame

# Names Dynamo installs into the traced frame's globals; resolved here without it.
_IMPORT_PREFIX = "__import_"
_BUILTINS_PREFIX = "__builtins_dict__"
_ALLOWED_CALLS = {"type": type, "dict": dict}


class PathError(Exception):
    """A path that is not of the allowed form, or that cannot be evaluated."""


def compile_path(path: str) -> types.CodeType:
    """`path` compiled for `evaluate`, after checking that it is only attribute, constant
    subscript, `type(...)` and `dict(...)` steps from `L` or `G` (PathError otherwise)."""
    try:
        tree = ast.parse(path, mode="eval")
    except SyntaxError as exc:
        raise PathError(f"not a path: {path}") from exc

    def allowed(node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in ("L", "G")
        if isinstance(node, ast.Attribute):
            return allowed(node.value)
        if isinstance(node, ast.Subscript):
            return isinstance(node.slice, ast.Constant) and allowed(node.value)
        if isinstance(node, ast.Call):
            return (
                isinstance(node.func, ast.Name)
                and node.func.id in _ALLOWED_CALLS
                and len(node.args) == 1
                and not node.keywords
                and allowed(node.args[0])
            )
        return False

    if not allowed(tree.body):
        raise PathError(f"not a path ccache evaluates: {path}")
    return compile(tree, "<assumption>", "eval")


class Globals(dict):  # type: ignore[type-arg]
    """A traced frame's globals as Dynamo saw them: the module's own names, and the
    names Dynamo installs there (`__import_a_dot_b` for module a.b, `__builtins_dict__`
    for the builtins), which a process without Dynamo has not."""

    def __init__(self, module: str) -> None:
        super().__init__()
        self._names = vars(_module(module))

    def __missing__(self, name: str) -> Any:
        if name in self._names:
            return self._names[name]
        if name.startswith(_IMPORT_PREFIX):
            return _module(name[len(_IMPORT_PREFIX) :].replace("_dot_", "."))
        if name.startswith(_BUILTINS_PREFIX):
            return vars(builtins)
        raise KeyError(name)


def _module(name: str) -> types.ModuleType:
    """The module `name`, imported if the program has not yet (its forward would) and
    its package is one the program imported: a path never imports anything else."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    if name.partition(".")[0] not in sys.modules:
        raise KeyError(f"{name}: the program has not imported its package")
    return importlib.import_module(name)


def evaluate(compiled: types.CodeType, local: Mapping[str, Any], global_: Mapping[str, Any]) -> Any:
    try:
        return eval(compiled, {"__builtins__": {}, **_ALLOWED_CALLS}, {"L": local, "G": global_})
    except Exception as exc:
        raise PathError(f"{type(exc).__name__}: {exc}") from exc


def forward_locals(model: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The traced forward's locals at its start, as a call of `model` binds them: its
    arguments, and its closure's cells (`__class__`, for `super()`)."""
    forward = type(model).forward
    bound = inspect.signature(forward, follow_wrapped=False).bind(model, *args, **kwargs)
    bound.apply_defaults()
    found = dict(bound.arguments)
    code = getattr(forward, "__code__", None)
    for name, cell in zip(getattr(code, "co_freevars", ()), getattr(forward, "__closure__", None) or ()):
        found.setdefault(name, cell.cell_contents)
    return found


def resolve_code_owner(module: str, qualname: str) -> list[Any]:
    """The objects found at `module:qualname` that may hold the code: the attribute
    itself and what it wraps (a property's getter, a method's function, decorators'
    `__wrapped__`)."""
    found: Any = _module(module)
    for part in qualname.split("."):
        found = inspect.getattr_static(found, part)
    candidates, seen = [], set()
    pending = [found]
    while pending and len(candidates) < 16:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        candidates.append(item)
        for attribute in ("__func__", "fget", "__wrapped__"):
            inner = getattr(item, attribute, None)
            if inner is not None:
                pending.append(inner)
    return candidates


def display_path(path: str, frame: Frame, frame_self: str | None) -> str:
    """A path as a program would write it: `L['self']._modules['n1'].eps` -> `n1.eps`,
    `G['SCALE']` -> `mymodel.SCALE`, `G['__import_a_dot_b'].x` -> `a.b.x`."""
    text = path
    if frame_self is not None:
        for root, shown in (
            (f"L[{frame_self!r}]._modules", ""),
            (f"L[{frame_self!r}].", ""),
            (f"L[{frame_self!r}]", "model"),
        ):
            text = text.replace(root, shown)
    text = re.sub(r"G\['__import_(\w+?)'\]", lambda m: m.group(1).replace("_dot_", "."), text)
    text = re.sub(r"G\['(\w+)'\]", lambda m: f"{frame.module}.{m.group(1)}", text)
    text = text.replace("._modules", "")
    text = re.sub(r"\[(['\"])(\w+)\1\]", r".\2", text)
    return text.lstrip(".") or path
