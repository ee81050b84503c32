"""Where stored code's assumptions read their values: Dynamo's source expressions
(`L['self']._modules['n1'].eps`, `G['__import_torch'].nn`), evaluated on a program's
model without Dynamo, and shown as a program would write them (`n1.eps`).

Paths are parsed, never evaluated as Python, and allowed only as attribute, constant
subscript, `type(...)` and `dict(...)` chains from `L` (the traced forward's locals)
and `G` (its module's globals): a manifest runs no code here, nor imports a package
the program has not.

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
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from ccache_cli.store.assumptions import Frame

# Names Dynamo installs into the traced frame's globals; resolved here without it.
_IMPORT_PREFIX = "__import_"
_BUILTINS_PREFIX = "__builtins_dict__"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SUBSCRIPT = re.compile(r"""\[(-?[0-9]+|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\]""")
_GENERIC = "object.__getattribute__("
_NAME_ARGUMENT = re.compile(r"""\s*,\s*('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\)""")  # `, 'name')`

# A step of a path: ("local" | "global", name) first, then ("attr", name),
# ("item", key), ("call", "type" | "dict") or ("generic", name) applied to what came
# before; "generic" is `object.__getattribute__(..., name)`, which Dynamo reads past a
# class's own `__getattribute__` (transformers' configs have one).
Step = tuple[str, Any]


class PathError(Exception):
    """A path that is not of the allowed form."""


def parse_path(path: str) -> tuple[Step, ...]:
    """`path` as steps, where it is only attribute, constant subscript, `type(...)`,
    `dict(...)` and `object.__getattribute__(..., 'name')` steps from `L[...]` or `G[...]`
    (PathError otherwise). Nothing in it is ever evaluated as Python."""
    steps, at = _chain(path, 0)
    if at != len(path):
        raise PathError(f"not a path ccache evaluates: {path}")
    return tuple(steps)


def _chain(text: str, at: int) -> tuple[list[Step], int]:
    if text.startswith(_GENERIC, at):
        steps, at = _chain(text, at + len(_GENERIC))
        found = _NAME_ARGUMENT.match(text, at)
        if found is None:
            raise PathError(f"not a path ccache evaluates: {text}")
        steps.append(("generic", _string(found.group(1))))
        at = found.end()
    elif text.startswith(("type(", "dict("), at):
        call = text[at : at + 4]
        steps, at = _chain(text, at + 5)
        if not text.startswith(")", at):
            raise PathError(f"not a path ccache evaluates: {text}")
        steps.append(("call", call))
        at += 1
    elif text.startswith(("L[", "G["), at):
        root = "local" if text[at] == "L" else "global"
        name, at = _subscript(text, at + 1)
        if not isinstance(name, str):
            raise PathError(f"not a path ccache evaluates: {text}")
        steps = [(root, name)]
    else:
        raise PathError(f"not a path ccache evaluates: {text}")
    while at < len(text):
        if text[at] == ".":
            found = _NAME.match(text, at + 1)
            if found is None:
                raise PathError(f"not a path ccache evaluates: {text}")
            steps.append(("attr", found.group()))
            at = found.end()
        elif text[at] == "[":
            key, at = _subscript(text, at)
            steps.append(("item", key))
        else:
            break
    return steps, at


def _subscript(text: str, at: int) -> tuple[Any, int]:
    """The constant of the subscript at `at` (`[0]`, `['name']`), and where it ends."""
    found = _SUBSCRIPT.match(text, at)
    if found is None:
        raise PathError(f"not a path ccache evaluates: {text}")
    token = found.group(1)
    return (int(token) if token[0] not in "'\"" else _string(token)), found.end()


def _string(token: str) -> str:
    try:
        return token[1:-1] if "\\" not in token else ast.literal_eval(token)
    except (SyntaxError, ValueError) as exc:
        raise PathError(f"not a string ccache reads: {token}") from exc


FAILED = object()  # a step that raised: what follows it fails too
# A module of torch's compile stack that this process has not imported, and what
# follows it (Globals with `lazy`): importing it to look costs the Dynamo import that
# serving stored code exists to spare. What such a value satisfies unread is the
# checker's to say (assumptions.py); else it reads again, importing.
UNIMPORTED = object()
_COMPILE_STACK = ("torch._dynamo", "torch._inductor")


class PathSet:
    """Paths parsed once into a tree of their shared prefixes (a model's paths share
    most of theirs: `L['self']._modules['model']._modules['layers']...`), so that one
    pass evaluates each prefix once."""

    def __init__(self) -> None:
        self._nodes: list[tuple[int, str, Any]] = []  # (parent node or -1, op, argument)
        self._index: dict[tuple[int, Step], int] = {}

    def add(self, path: str) -> int:
        """The node whose value is `path`'s (PathError where it is not a path)."""
        node = -1
        for step in parse_path(path):
            key = (node, step)
            found = self._index.get(key)
            if found is None:
                found = len(self._nodes)
                self._nodes.append((node, *step))
                self._index[key] = found
            node = found
        return node

    @property
    def nodes(self) -> list[tuple[int, str, Any]]:
        """Each node as (its parent node or -1, the step's op, its argument), parents first."""
        return self._nodes

    def evaluate(self, local: Mapping[str, Any], global_: Mapping[str, Any]) -> list[Any]:
        """Every node's value (FAILED where a step raised)."""
        values: list[Any] = []
        append = values.append
        for parent, op, argument in self._nodes:
            base = values[parent] if parent >= 0 else None
            if base is FAILED or base is UNIMPORTED:
                append(base)
                continue
            try:
                if op == "attr":
                    append(getattr(base, argument))
                elif op == "item":
                    append(base[argument])
                elif op == "call":
                    append(type(base) if argument == "type" else dict(base))
                elif op == "generic":  # as Dynamo's guard reads it: through descriptors (a config's properties)
                    append(object.__getattribute__(base, argument))
                else:
                    append((local if op == "local" else global_)[argument])
            except Exception:
                append(FAILED)
        return values


def evaluate_one(path: str, local: Mapping[str, Any], global_: Mapping[str, Any]) -> Any:
    """`path`'s value (PathError where it is not a path or cannot be read)."""
    paths = PathSet()
    node = paths.add(path)
    value = paths.evaluate(local, global_)[node]
    if value is FAILED or value is UNIMPORTED:
        raise PathError(f"{path} cannot be read")
    return value


def module_global(module: str) -> str:
    """The path of a module as Dynamo names it among a frame's globals, which `Globals`
    resolves in any frame: `G['__import_a_dot_b']`."""
    return f"G[{_IMPORT_PREFIX + module.replace('.', '_dot_')!r}]"


class Globals(dict):  # type: ignore[type-arg]
    """A traced frame's globals as Dynamo saw them: the module's own names, and the
    names Dynamo installs there (`__import_a_dot_b` for module a.b, `__builtins_dict__`
    for the builtins), which a process without Dynamo has not."""

    def __init__(self, module: str, lazy: bool = False) -> None:
        super().__init__()
        self._names = vars(_module(module))
        self._lazy = lazy  # a compile-stack module the program has not imported: UNIMPORTED

    def __missing__(self, name: str) -> Any:
        if name in self._names:
            return self._names[name]
        module = installed_module(name)
        if module is not None:
            if self._lazy and module not in sys.modules and in_compile_stack(module):
                return UNIMPORTED
            return _module(module)
        if name.startswith(_BUILTINS_PREFIX):
            return vars(builtins)
        if name in vars(builtins):  # read as a global: the code ran over globals holding them (torch 2.11)
            return vars(builtins)[name]
        raise KeyError(name)


def in_compile_stack(module: str) -> bool:
    return any(module == top or module.startswith(f"{top}.") for top in _COMPILE_STACK)


def installed_module(name: str) -> str | None:
    """The module a global name Dynamo installs stands for (`__import_a_dot_b`: a.b), or None."""
    return name[len(_IMPORT_PREFIX) :].replace("_dot_", ".") if name.startswith(_IMPORT_PREFIX) else None


def imported_module(path: str) -> str | None:
    """The module a path starts from where it is one Dynamo installed (`G['__import_a_dot_b']`)."""
    root, name = parse_path(path)[0]
    return installed_module(name) if root == "global" else None


def _module(name: str) -> types.ModuleType:
    """The module `name`, imported if the program has not yet (its forward would) and
    its package is one the program imported: a path never imports anything else."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    if name.partition(".")[0] not in sys.modules:
        raise KeyError(f"{name}: the program has not imported its package")
    return importlib.import_module(name)


def forward_locals(model: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The traced forward's locals at its start, as a call of `model` binds them."""
    return call_locals(type(model).forward, (model, *args), kwargs)


def call_locals(function: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A traced function's locals at its start, as a call binds them: its arguments,
    and its closure's cells (`__class__`, for `super()`)."""
    bound = _signature(function).bind(*args, **kwargs)
    bound.apply_defaults()
    found = dict(bound.arguments)
    code = getattr(function, "__code__", None)
    for name, cell in zip(getattr(code, "co_freevars", ()), getattr(function, "__closure__", None) or ()):
        found.setdefault(name, cell.cell_contents)
    return found


_signatures: weakref.WeakKeyDictionary[Any, tuple[Any, ...]] = weakref.WeakKeyDictionary()


def _signature(function: Any) -> inspect.Signature:
    """`function`'s signature, made again only where what it is made of changed (it
    costs more than the rest of a call's check)."""
    kwdefaults = getattr(function, "__kwdefaults__", None) or {}
    parts = (
        getattr(function, "__code__", None),
        getattr(function, "__defaults__", None),
        getattr(function, "__signature__", None),
        *kwdefaults.keys(),  # (a dict, changed in place too)
        *kwdefaults.values(),
    )
    cached = _signatures.get(function) if isinstance(function, types.FunctionType) else None
    if cached is not None and len(cached) == len(parts) + 1 and all(now is then for now, then in zip(parts, cached)):
        return cached[-1]
    signature = inspect.signature(function, follow_wrapped=False)
    if isinstance(function, types.FunctionType):
        _signatures[function] = (*parts, signature)
    return signature


def resolve_code_owner(module: str, qualname: str) -> list[Any]:
    """The objects found at `module:qualname` that may hold the code: the attribute
    itself and what it wraps (code_holders)."""
    found: Any = _module(module)
    for part in qualname.split("."):
        found = inspect.getattr_static(found, part)
    return [item for item, _ in code_holders(found)]


def code_holders(found: Any) -> list[tuple[Any, tuple[tuple[str, Any], ...]]]:
    """`found` and what it wraps (a property's getter, a method's function, decorators'
    `__wrapped__`), the first 16, each with the (attribute, object) steps to it."""
    holders, seen = [], set()
    pending: list[tuple[Any, tuple[tuple[str, Any], ...]]] = [(found, ())]
    while pending and len(holders) < 16:
        item, steps = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        holders.append((item, steps))
        for attribute in ("__func__", "fget", "__wrapped__"):
            inner = getattr(item, attribute, None)
            if inner is not None:
                pending.append((inner, (*steps, (attribute, inner))))
    return holders


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
    text = re.sub(r"L\[(['\"])(\w+)\1\]", r"\2", text)  # any other local: an argument, by its name
    text = re.sub(r"G\['__import_(\w+?)'\]", lambda m: m.group(1).replace("_dot_", "."), text)
    text = re.sub(r"G\['(\w+)'\]", lambda m: f"{frame.module}.{m.group(1)}", text)
    text = text.replace("._modules", "")
    text = re.sub(r"\[(['\"])(\w+)\1\]", r".\2", text)
    generic = re.compile(r"object\.__getattribute__\(([^()]*),\s*(['\"])(\w+)\2\)")  # torch 2.11's reads
    while generic.search(text):
        text = generic.sub(r"\1.\3", text)
    return text.lstrip(".") or path
