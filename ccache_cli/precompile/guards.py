"""Recording what a size's stored code assumes (key/assumptions.py) from the guards
Dynamo builds while precompile compiles that size with torch.compile. Runs in the
compile process.

Dynamo's guards name every Python value the trace read, with where it read it: they
are what torch.compile checks on every call, so they are what stored code must be
checked against. Each guard kind maps to one check:

| Dynamo guard | ccache check |
|---|---|
| CONSTANT_MATCH, EQUALS_MATCH, BOOL_MATCH, NONE_MATCH | value |
| TYPE_MATCH, NOT_NONE_MATCH | type |
| ID_MATCH, MODULE_MATCH, BUILTIN_MATCH, CLASS_MATCH, CLOSURE_MATCH, FUNCTION_MATCH | identity |
| DICT_KEYS_MATCH, DICT_KEYS | keys |
| SEQUENCE_LENGTH, LENGTH_CHECK, TUPLE_ITERATOR_LEN, EMPTY_NN_MODULE_HOOKS_DICT | length |
| HASATTR (torch 2.13: the object and the name; 2.11: the attribute's own path) | attribute |
| NOT_PRESENT_IN_GENERIC_DICT | own_attribute_absent |
| DICT_CONTAINS (torch 2.11: `invert` for an absent key), DICT_NOT_CONTAINS | dict_key |
| TENSOR_MATCH on an input; on a parameter or buffer | the call's signature; the package's bound weights |
| TENSOR_MATCH elsewhere | tensor |
| GLOBAL_STATE, GRAD_MODE, DETERMINISTIC_ALGORITHMS, DEFAULT_DEVICE, TORCH_FUNCTION_STATE | torch_state |
| SHAPE_ENV (static shapes), DUPLICATE_INPUT, NO_TENSOR_ALIASING, AUTOGRAD_SAVED_TENSORS_HOOKS | the call's signature, the model's structure, no_grad |
| any other (DICT_VERSION, WEAKREF_ALIVE, ...) | unchecked: the size is never served from stored code |

Besides the guards, every function Dynamo inlined from code outside torch and the
standard library is a `code` assumption: a method replaced on its class changes no
guard Dynamo keeps (its type guard is on the class object), but it changes the code.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import re
import sys
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ccache_cli.in_program.tracing import modules_by_file
from ccache_cli.key import assumptions as a
from ccache_cli.key import paths
from ccache_cli.key.sources import covered_by_versions
from ccache_cli.store.assumptions import Assumption, Frame, SizeAssumptions

_VALUE = {"CONSTANT_MATCH", "EQUALS_MATCH", "BOOL_MATCH", "NONE_MATCH"}
_TYPE = {"TYPE_MATCH", "NOT_NONE_MATCH"}
_IDENTITY = {"ID_MATCH", "MODULE_MATCH", "BUILTIN_MATCH", "CLASS_MATCH", "CLOSURE_MATCH", "FUNCTION_MATCH"}
_KEYS = {"DICT_KEYS_MATCH", "DICT_KEYS"}
_LENGTH = {"SEQUENCE_LENGTH", "LENGTH_CHECK", "TUPLE_ITERATOR_LEN", "EMPTY_NN_MODULE_HOOKS_DICT"}
_STATE = {"GLOBAL_STATE", "GRAD_MODE", "DETERMINISTIC_ALGORITHMS", "DEFAULT_DEVICE", "TORCH_FUNCTION_STATE"}
_COVERED = {"SHAPE_ENV", "DUPLICATE_INPUT", "NO_TENSOR_ALIASING", "AUTOGRAD_SAVED_TENSORS_HOOKS"}


@dataclass
class _TracedFrame:
    code: Any  # the frame's code object
    module: str  # its globals' module
    local_scope: dict[str, Any]
    global_scope: dict[str, Any]
    guards: list[Any] = field(default_factory=list)  # Dynamo's GuardFilterEntry of each guard
    traced_code: list[Any] = field(default_factory=list)


class Recorder:
    """The frames Dynamo compiles while installed (`recording`), taken per size."""

    def __init__(self) -> None:
        self._frames: list[_TracedFrame] = []

    def take(self) -> list[_TracedFrame]:
        frames = list(self._frames)
        self._frames.clear()  # the same list: `recording` appends to it
        return frames

    @contextlib.contextmanager
    def recording(self, torch: Any) -> Iterator[None]:
        """Record each frame's guards (through a guard filter that keeps them all, and
        any filter torch.compile was given) that this thread compiles while in this block."""
        manager = torch._dynamo.guards.CheckFunctionManager
        original = manager.__init__
        signature = inspect.signature(original)
        frames = self._frames
        thread = threading.get_ident()

        @functools.wraps(original)
        def init(*args: Any, **kwargs: Any) -> None:
            if threading.get_ident() != thread:  # another thread's compile: not this record's
                original(*args, **kwargs)
                return
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            output_graph = bound.arguments["output_graph"]
            given = bound.arguments.get("guard_filter_fn")
            frame = _TracedFrame(
                code=bound.arguments["f_code"],
                module=str(output_graph.global_scope.get("__name__", "")),
                local_scope=dict(output_graph.local_scope),
                global_scope=output_graph.global_scope,
                traced_code=list(getattr(getattr(output_graph, "tracing_context", None), "traced_code", ())),
            )

            def keep_all(entries: Any) -> Any:
                frame.guards = list(entries)
                return given(entries) if given is not None else [True] * len(entries)

            bound.arguments["guard_filter_fn"] = keep_all
            frames.append(frame)
            original(*bound.args, **bound.kwargs)

        manager.__init__ = init
        try:
            yield
        finally:
            manager.__init__ = original


def size_assumptions(torch: Any, model: Any, frames: list[_TracedFrame]) -> SizeAssumptions | None:
    """What the stored code of the size whose compile recorded `frames` assumes (where no
    frame of the model's forward was compiled, nothing ccache can check: never served);
    None where Dynamo compiled nothing."""
    return traced_assumptions(torch, getattr(type(model).forward, "__code__", None), frames, bound_self=True)


def traced_assumptions(
    torch: Any, top_code: Any, frames: list[_TracedFrame], bound_self: bool
) -> SizeAssumptions | None:
    """What stored code assumes, from the `frames` its compile recorded, where
    `top_code` is the traced function's code (a model's forward, or a function's),
    whose first argument is an object it is bound to where `bound_self`."""
    if not frames:
        return None
    top = next((frame for frame in frames if frame.code is top_code), None)
    if top is None:
        names = ", ".join(sorted({frame.code.co_name for frame in frames}))
        why = f"Dynamo compiled {names}, not the compiled function itself, so its locals cannot be bound"
        return SizeAssumptions(Frame("", ""), (_unchecked("-", "-", why),), 0)
    recorded: dict[tuple[str, str], Assumption] = {}
    unserialized = 0
    unsupported = set(getattr(torch._dynamo.guards.CheckFunctionManager, "UNSUPPORTED_SERIALIZATION_GUARD_TYPES", ()))
    self_name = top.code.co_varnames[0] if bound_self and top.code.co_argcount else None
    for frame in frames:
        for entry in frame.guards:
            assumption = _assumption(frame, frame is top, self_name, entry)
            if assumption is None:
                continue
            recorded.setdefault((assumption.check, assumption.path), assumption)
            unserialized += entry.is_global or entry.guard_type in unsupported
        for assumption in _code_assumptions(frame.traced_code, os.path.dirname(torch.__file__)):
            recorded.setdefault((assumption.check, assumption.path), assumption)
    if any(entry.guard_type in _STATE for frame in frames for entry in frame.guards):
        for name, value in a.torch_state(torch).items():
            recorded[("torch_state", name)] = Assumption("torch_state", name, value, "")
    frame_of = Frame(top.module, top.code.co_qualname if hasattr(top.code, "co_qualname") else top.code.co_name)
    return SizeAssumptions(frame_of, tuple(recorded.values()), unserialized)


def _assumption(frame: _TracedFrame, is_top: bool, self_name: str | None, entry: Any) -> Assumption | None:
    """The assumption one guard stands for; None for those checked otherwise.
    `is_top`: `frame` is the compiled function's own (not a frame after a graph break);
    `self_name`: its first argument where that is the object it is bound to (the model)."""
    kind, guard = entry.guard_type, entry.orig_guard
    if kind in _COVERED or kind in _STATE:
        return None
    path = guard.name
    if not path:
        return _unchecked(kind, "-", "it names no value")
    if path.startswith("L["):
        if not is_top:
            return _unchecked(kind, path, f"a local of {frame.code.co_name}, after a graph break")
        if kind == "TENSOR_MATCH" and (_is_input(path, self_name) or "._parameters[" in path or "._buffers[" in path):
            return None
    elif path.startswith("G["):
        path, why = _through_installed_global(frame, path)
        if why is not None:
            return _unchecked(kind, guard.name, why)
        if not is_top and not path.startswith("G['__import_"):  # another module's globals: from the forward's
            module = frame.module.replace(".", "_dot_")
            path = path.replace("G[", f"G['__import_{module}'].__dict__[", 1)
    attr = _keyword(guard, "attr")
    if kind == "HASATTR" and attr is None:  # torch 2.11: the guard's path is the attribute itself
        path, _, attr = path.rpartition(".")
        if not path or not attr.isidentifier():
            return _unchecked(kind, guard.name, "an attribute ccache cannot name")
        found = _evaluated(frame, path)  # the attribute's presence is what is checked (a property makes a new value)
        if found is _MISSING or (getattr(found, attr, _MISSING) is not _MISSING) != bool(entry.has_value):
            return _unchecked(kind, guard.name, "not readable")
        return Assumption("attribute", path, [attr, entry.has_value], kind)
    check = _CHECK_OF.get(kind)
    if check is None:
        return _unchecked(kind, path, "a guard kind ccache does not know")
    expected = _expected(kind, entry, attr, _keyword(guard, "key"), _keyword(guard, "invert"))
    if expected is None:
        return _unchecked(kind, path, "a value ccache cannot compare across processes")
    assumption = Assumption(check, path, expected, kind)
    return assumption if _reads_back(frame, assumption, entry.value) else _unchecked(kind, path, "not readable")


_CHECK_OF = {
    **{kind: "value" for kind in _VALUE},
    **{kind: "type" for kind in _TYPE},
    **{kind: "identity" for kind in _IDENTITY},
    **{kind: "keys" for kind in _KEYS},
    **{kind: "length" for kind in _LENGTH},
    "HASATTR": "attribute",
    "NOT_PRESENT_IN_GENERIC_DICT": "own_attribute_absent",
    "DICT_CONTAINS": "dict_key",
    "DICT_NOT_CONTAINS": "dict_key",
    "TENSOR_MATCH": "tensor",
}


def _expected(kind: str, entry: Any, attr: str | None, key: Any, invert: bool | None) -> Any:
    """What the check of `kind` must find, as recorded; None where it cannot be said.
    `invert`: torch 2.11's DICT_CONTAINS for a key that must be absent."""
    if not entry.has_value:
        return None
    value = entry.value
    if kind in _VALUE:
        return a.describe_value(value)
    if kind in _TYPE:
        return a.describe_type(type(value))
    if kind in _IDENTITY:
        return a.describe_identity(value)
    if kind in _KEYS:
        keys = [a.describe_value(k) for k in value]
        return None if None in keys else keys
    if kind in _LENGTH:
        return len(value)
    if kind == "HASATTR" and attr is not None:
        return [attr, hasattr(value, attr)]
    if kind == "NOT_PRESENT_IN_GENERIC_DICT" and attr is not None:
        return attr
    if kind in ("DICT_CONTAINS", "DICT_NOT_CONTAINS") and isinstance(key, str):
        return [key, kind == "DICT_CONTAINS" and not invert]
    if kind == "TENSOR_MATCH":  # a range's batch dimension (marked dynamic) takes any size
        return a.describe_tensor(value, getattr(value, "_dynamo_dynamic_indices", ()))
    return None


_MISSING = object()


def _evaluated(frame: _TracedFrame, path: str) -> Any:
    """What ccache's evaluation of `path` finds in the traced frame (_MISSING: nothing)."""
    try:
        return paths.evaluate_one(path, frame.local_scope, _RecordGlobals(frame))
    except paths.PathError:
        return _MISSING


def _reads_back(frame: _TracedFrame, assumption: Assumption, value: Any) -> bool:
    """Whether ccache's evaluation of the path finds the object Dynamo guarded, here
    where both can look: a path ccache would read otherwise is not checked by it."""
    found = _evaluated(frame, assumption.path)
    if found is _MISSING:
        return False
    if _same_object(found, value) or (assumption.check == "value" and a.describe_value(found) == assumption.expected):
        return True
    try:  # a path through dict(...) reads a copy
        return type(found) is dict and type(value) is dict and bool(found == value)
    except Exception:
        return False


def _same_object(found: Any, value: Any) -> bool:
    """`found is value`, where each read of a method makes a new bound method."""
    if isinstance(found, types.MethodType) and isinstance(value, types.MethodType):
        return found.__self__ is value.__self__ and found.__func__ is value.__func__
    return found is value


class _RecordGlobals(paths.Globals):
    """The frame's globals as Dynamo left them (with the names it installed), falling back
    as the runtime resolves them."""

    def __init__(self, frame: _TracedFrame) -> None:
        dict.__init__(self)
        self._names = frame.global_scope


def _code_assumptions(traced_code: list[Any], torch_dir: str) -> list[Assumption]:
    """A `code` assumption for each function Dynamo inlined from code outside torch and
    the standard library that can be found again by module and qualified name (nested
    functions and comprehensions are part of their enclosing function's digest)."""
    modules = modules_by_file({code.co_filename for code in traced_code}, dict(sys.modules))
    found = []
    for code in traced_code:
        qualname = getattr(code, "co_qualname", code.co_name)
        real = os.path.realpath(code.co_filename)
        module = modules.get(real)
        if module is None or "<" in qualname or qualname.startswith("torch_dynamo_resume_in_"):
            continue
        if covered_by_versions(real, torch_dir):
            continue
        found.append(Assumption("code", f"{module}:{qualname}", a.code_digest(code), ""))
    return found


def _is_input(path: str, self_name: str | None) -> bool:
    """An input of the forward (not the model): `L['x']` whole."""
    return path.startswith("L[") and path.endswith("]") and path.count("[") == 1 and path != f"L[{self_name!r}]"


# A global Dynamo installed in the traced frame's module, named by its value's id
# (`_140475869140272_c0`, torch 2.11): no other process has it.
_INSTALLED_BY_ID = re.compile(r"G\['(_\d+_c\d+)'\]")


def _through_installed_global(frame: _TracedFrame, path: str) -> tuple[str, str | None]:
    """`path` with a global Dynamo installed by id replaced by where any process finds
    its value (a module, by its import path); and why it cannot be, else None."""
    match = _INSTALLED_BY_ID.match(path)
    if match is None:
        return path, None
    value = frame.global_scope.get(match.group(1))
    if not isinstance(value, types.ModuleType):
        return path, "a global Dynamo installed by its id, which no other process has"
    return paths.module_global(value.__name__) + path[match.end() :], None


def _keyword(guard: Any, name: str) -> Any:
    create = guard.create_fn
    return create.keywords.get(name) if isinstance(create, functools.partial) else None


def _unchecked(kind: str, path: str, why: str) -> Assumption:
    return Assumption("unchecked", path, why, kind)
