"""Taking a compiled function apart: the functools.wraps decorators around its innermost
code that can stay plain Python around stored code, and the function rebuilt around
another innermost code (serve/functions.py serves it, function_capture.py captures it).

Standard library only.
"""

from __future__ import annotations

import dis
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Unwrapped:
    """A compiled function taken apart: the functools.wraps decorators around its
    innermost code, each with the closure cell that holds the next."""

    owner: Any  # the bound method's `self`, or None for a function
    layers: tuple[tuple[types.FunctionType, int], ...]
    inner: types.FunctionType

    @property
    def name(self) -> str:
        """`module:qualname` of the innermost code: how a capture names it."""
        return f"{self.inner.__module__}:{self.inner.__qualname__}"

    def rebuilt(self, replacement: Callable[..., Any]) -> Callable[..., Any]:
        """The compiled function with its innermost code replaced by `replacement`
        (called as the innermost code is: `self` first for a method)."""
        current: Any = replacement
        for wrapper, cell in reversed(self.layers):
            closure = list(wrapper.__closure__ or ())
            closure[cell] = types.CellType(current)
            current = copied(wrapper, closure=tuple(closure))
        return types.MethodType(current, self.owner) if self.owner is not None else current


def copied(
    function: types.FunctionType, globals_: dict[str, Any] | None = None, closure: tuple[Any, ...] | None = None
) -> types.FunctionType:
    """`function` again, over other globals or another closure, with its defaults, name
    and attributes."""
    copy = types.FunctionType(
        function.__code__,
        function.__globals__ if globals_ is None else globals_,
        function.__name__,
        function.__defaults__,
        function.__closure__ if closure is None else closure,
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__ = function.__qualname__
    copy.__dict__.update(function.__dict__)
    return copy


def unwrap(compiled: Any) -> Unwrapped | None:
    """`compiled` taken apart; None where it is not a Python function or method."""
    # compiled again: what was compiled first (not through torch.compiler.disable, which
    # functools.wraps copies onto a wrapper too)
    while hasattr(compiled, "_torchdynamo_orig_callable") and not getattr(compiled, "_torchdynamo_disable", False):
        compiled = compiled._torchdynamo_orig_callable
    owner = compiled.__self__ if isinstance(compiled, types.MethodType) else None
    function = compiled.__func__ if owner is not None else compiled
    if not isinstance(function, types.FunctionType):
        return None
    layers = []
    while isinstance(wrapped := getattr(function, "__wrapped__", None), types.FunctionType):
        cells = [n for n, cell in enumerate(function.__closure__ or ()) if _holds(cell, wrapped)]
        if len(cells) != 1 or not _calls_only(function, cells[0]) or getattr(function, "_torchdynamo_disable", False):
            break  # compiled whole from here, as torch.compile would
        layers.append((function, cells[0]))
        function = wrapped
    return Unwrapped(owner, tuple(layers), function)


_ASKS_IF_COMPILING = {
    "is_compiling",
    "is_dynamo_compiling",
    "is_exporting",
    "is_torchdynamo_compiling",  # transformers' helpers
    "is_torchdynamo_exporting",
}


def _calls_only(wrapper: types.FunctionType, cell: int) -> bool:
    """Whether `wrapper` uses the function in its closure cell `cell` only by calling it,
    outside any try or with block: only then can that function be replaced by compiled
    code without the wrapper computing something else (one that reads the function's
    attributes, passes it on, rebinds it, catches what torch.compile raises, or asks
    whether it is being compiled would). Read from the bytecode of Python 3.11 and 3.12,
    which load a callee right after PUSH_NULL; on other versions no layer is kept."""
    if sys.version_info[:2] not in ((3, 11), (3, 12)):
        return False
    code = wrapper.__code__
    if _ASKS_IF_COMPILING & set(code.co_names):  # torch.compile traces it with True, plain Python gets False
        return False
    name = code.co_freevars[cell]  # a closure holds the free variables, in this order
    bytecode = dis.Bytecode(code)
    protected = [(entry.start, entry.end) for entry in bytecode.exception_entries]
    instructions = list(bytecode)
    uses = [
        at
        for at, i in enumerate(instructions)
        if i.argval == name and ("DEREF" in i.opname or i.opname == "LOAD_CLOSURE")  # loaded, stored, deleted
    ]
    return bool(uses) and all(
        instructions[at].opname == "LOAD_DEREF"
        and instructions[at - 1].opname == "PUSH_NULL"  # loaded to be called ...
        and instructions[at + 1].opname not in _USES_THE_CALLEE  # ... itself, not something of it
        and not any(start <= instructions[at].offset < end for start, end in protected)
        for at in uses
    )


_USES_THE_CALLEE = {"LOAD_ATTR", "LOAD_METHOD", "BINARY_SUBSCR", "STORE_ATTR", "DELETE_ATTR"}


def _holds(cell: Any, value: Any) -> bool:
    try:
        return cell.cell_contents is value
    except ValueError:  # an empty cell
        return False


def with_defaults(
    function: types.FunctionType, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A call of `function`'s code with the arguments it leaves out given as the
    function's defaults hold them now: a stored copy of its compiled code keeps the
    defaults it was captured with, and would otherwise fill them in from those."""
    defaults, keyword_defaults = function.__defaults__, function.__kwdefaults__
    if not defaults and not keyword_defaults:
        return args, kwargs
    code = function.__code__
    names = code.co_varnames[: code.co_argcount]
    args, added = list(args), {}
    first_default = code.co_argcount - len(defaults or ())
    for at in range(max(len(args), first_default), code.co_argcount):
        if at >= code.co_posonlyargcount and names[at] in kwargs:  # else a keyword of its **kwargs
            continue
        if at == len(args) and not added:  # positional while no gap (every positional-only one)
            args.append(defaults[at - first_default])  # type: ignore[index]
        else:
            added[names[at]] = defaults[at - first_default]  # type: ignore[index]
    added.update((name, value) for name, value in (keyword_defaults or {}).items() if name not in kwargs)
    return tuple(args), {**kwargs, **added} if added else kwargs
