"""A size's assumptions, once they have held on a program, as one generated function
that tells on later calls whether everything is as it was.

The full check (`Checker.program_mismatch`) describes each value it reads and compares
descriptions, so that it can say what differs. On every call that costs about a
microsecond an assumption. What `compile_fast` builds instead reads each path once, as
straight-line attribute and subscript steps, and compares each value with the object
the passing full check saw: the same object for a function (and the same code), a
class, a module, a float or a tuple of constants; the same type and value for an int or
a string; the same length, attributes and keys. Anything else (a list's items, a
tensor's shape) is handed to the full check's own comparison. It answers only "all
holds as before" or "look again": any difference, and any exception, sends the call to
the full check, which says why. So it may be stricter than the full check, never looser
about what a call computes. What it pins is checked against the assumptions when it is
made, not taken from the full check's reading some steps earlier. One difference is
allowed: an object is compared by identity, as Dynamo's own guards compare it, so a
class, module or function renamed in place (its `__qualname__`, `__module__` or
`__name__` assigned) still passes here, where the full check would name the new name.

The code is made of the paths' parsed steps (key/paths.py): attribute names that are
plain identifiers, and every other value (a subscript's key, a name, an expected value)
bound as a constant, never written into the source.

Standard library only.
"""

from __future__ import annotations

import builtins
import enum
import inspect
import keyword
import math
import re
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ccache_cli.key.paths import FAILED, UNIMPORTED, code_holders, installed_module
from ccache_cli.store.assumptions import Assumption

FastCheck = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]  # (locals, globals) -> all holds as before
Slow = Callable[[int, Any], "str | None"]  # the full check of one assumption (by index) on a value

_MISSING = object()
# Generated code by its source: a program checked again with other objects (another
# model of the same class) gets new constants, not a new compile.
_compiled: dict[str, types.CodeType] = {}


def compile_fast(
    module: str,
    nodes: Sequence[tuple[int, str, Any]],
    values: Sequence[Any],
    program: Sequence[tuple[Assumption, int | None]],
    slow: Slow,
) -> FastCheck | None:
    """The check that `program` (each assumption with its path's node, None for code)
    still holds as it did where the full check read `values` (each node's value, the
    globals `G` being `module`'s) and found every assumption held; None where some
    assumption cannot be checked so, or no longer holds on what the check would pin."""
    source = _Source()
    frame_module = sys.modules.get(module)
    if frame_module is None:
        return None
    # Globals read straight from the module's dict and sys.modules, not through paths.Globals.
    source.add(f"if MODULES.get({source.constant(module)}) is not {source.constant(frame_module)}: return False")
    frame_globals = vars(frame_module)
    failing: set[int] = set()  # nodes whose value was FAILED or UNIMPORTED, and what follows them
    parents = {parent for parent, _, _ in nodes}
    checks: dict[int, list[tuple[int, Assumption]]] = {}
    code_checks = []
    for index, (assumption, node) in enumerate(program):
        if assumption.check == "unchecked":
            return None
        if node is None:
            code_checks.append(assumption)
        elif node >= 0:  # a path that does not parse reads nothing: its outcome never changes
            checks.setdefault(node, []).append((index, assumption))
    for node, (parent, op, argument) in enumerate(nodes):
        if parent in failing:  # it fails as its parent does
            failing.add(node)
            continue
        name, value = f"v{node}", values[node]
        if op == "global" and frame_globals.get(argument, _MISSING) is value:
            step = f"{source.constant(frame_globals)}[{source.constant(argument)}]"
        elif op == "global" and installed_module(argument) and isinstance(value, types.ModuleType):
            # Globals looks in the module's own names first
            source.add(f"if {source.constant(argument)} in {source.constant(frame_globals)}: return False")
            step = f"MODULES[{source.constant(installed_module(argument))}]"
        else:
            step = source.step(op, argument, f"v{parent}")
        if value is FAILED or value is UNIMPORTED:
            failing.add(node)
            sentinel = "FAILED" if value is FAILED else "UNIMPORTED"
            source.add("try:", f"    {name} = {step}", "except Exception:", f"    {name} = FAILED")
            source.add(f"if {name} is not {sentinel}: return False")
            continue
        lines = []
        for index, assumption in checks.get(node, ()):
            line, pinned = _value_check(source, index, assumption, name, value)
            # What the line compares with holds now (read after the pins, and they are
            # still the value's): not what the full check saw some steps earlier.
            if slow(index, value) is not None or not pinned():
                return None
            lines.append(line)
        if node not in parents and len(lines) == 1 and len(re.findall(rf"\b{name}\b", lines[0])) == 1:
            source.add(re.sub(rf"\b{name}\b", lambda _, read=step: read, lines[0]))  # a leaf read once: no variable
        else:
            source.add(f"{name} = {step}", *lines)
    emitted = set()
    for assumption in code_checks:
        lines = _code_check(source, assumption)
        if lines is None:
            return None
        source.add(*(line for line in lines if line not in emitted))  # owners that code checks share
        emitted.update(lines)
    return source.function(slow)


def _value_check(
    source: _Source, index: int, assumption: Assumption, name: str, value: Any
) -> tuple[str, Callable[[], bool]]:
    """The line that returns False unless the value at `name` passes as `value` does,
    and whether what it pins (a function's code, a type) is still `value`'s."""
    check, expected = assumption.check, assumption.expected
    always = lambda: True  # noqa: E731
    if check == "value" or (check == "identity" and not isinstance(value, (types.FunctionType, types.MethodType))):
        kind = type(value)
        if kind in (int, str) or (kind is float and value != 0 and math.isfinite(value)):
            # equal in type and value is what the full check compares (reprs, for a float)
            return f"if type({name}) is not {kind.__name__} or {name} != {source.constant(value)}: return False", always
        if _immutable(value) or (check == "identity" and _named(value)):
            return f"if {name} is not {source.constant(value)}: return False", always
        return _slow(source, index, name), always
    if check == "identity" and isinstance(value, types.FunctionType):
        code = value.__code__
        line = f"if {name} is not {source.constant(value)} or {source.constant(value)}.__code__ is not {source.constant(code)}: return False"
        return line, lambda: value.__code__ is code
    if check == "identity" and isinstance(value.__func__, types.FunctionType):  # a bound method: made anew each read
        function = value.__func__
        code = function.__code__
        line = f"if type({name}) is not MethodType or {name}.__func__ is not {source.constant(function)} or {source.constant(function)}.__code__ is not {source.constant(code)}: return False"
        return line, lambda: value.__func__ is function and function.__code__ is code
    if check == "type":
        kind = type(value)
        return f"if type({name}) is not {source.constant(kind)}: return False", lambda: type(value) is kind
    if check == "length":
        return f"if len({name}) != {source.constant(expected)}: return False", always
    if check == "attribute":
        line = f"if hasattr({name}, {source.constant(expected[0])}) is not {bool(expected[1])}: return False"
        return line, always
    if check == "own_attribute_absent":
        return f"if {source.constant(expected)} in getattr({name}, '__dict__', ()): return False", always
    if check == "dict_key":
        return f"if ({source.constant(expected[0])} in {name}) is not {bool(expected[1])}: return False", always
    return _slow(source, index, name), always  # keys, tensor: the full check's own comparison


def _slow(source: _Source, index: int, name: str) -> str:
    return f"if S({source.constant(index)}, {name}) is not None: return False"


def _immutable(value: Any) -> bool:
    """Whether the same object is sure to describe as it did (a constant, or a tuple of them)."""
    if value is None or type(value) in (bool, int, float, complex, str, bytes, types.CodeType):
        return True
    if isinstance(value, enum.Enum):
        return True
    if type(value) is tuple:
        return all(_immutable(item) for item in value)
    kind = type(value)
    return kind.__module__ == "torch" and kind.__name__ in ("dtype", "device")


def _named(value: Any) -> bool:
    """A module, a class or a builtin, which the identity check knows by name."""
    return isinstance(
        value,
        (types.ModuleType, type, types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType),
    )


def _code_check(source: _Source, assumption: Assumption) -> list[str] | None:
    """The lines that return False unless `module:qualname` resolves through the same
    objects, of the same types, to the same code as the full check finds now (None
    where the code is found another way than through modules' and classes' own
    attributes)."""
    from ccache_cli.key.assumptions import code_digest  # (here: assumptions.py imports this module)

    module, _, qualname = assumption.path.partition(":")
    owner = sys.modules.get(module)
    if owner is None:
        return None
    lines = [f"if MODULES.get({source.constant(module)}) is not {source.constant(owner)}: return False"]
    for part in qualname.split("."):
        if not isinstance(owner, (types.ModuleType, type)):
            return None
        found = vars(owner).get(part, _MISSING)
        if found is _MISSING or found is not inspect.getattr_static(owner, part, _MISSING):
            return None  # inherited, or read past a descriptor
        lines += [  # (its type: a module's or metaclass's descriptor would be read first)
            f"if type({source.constant(owner)}) is not {source.constant(type(owner))}: return False",
            f"if {source.constant(vars(owner))}.get({source.constant(part)}, MISSING) is not {source.constant(found)}: return False",
        ]
        owner = found
    # The holder with the recorded code, found by the walk the full check makes.
    for item, steps in code_holders(owner):
        code = getattr(item, "__code__", None)
        if isinstance(code, types.CodeType) and code_digest(code) == assumption.expected:
            previous = owner
            for attribute, step in steps:
                lines.append(
                    f"if getattr({source.constant(previous)}, {source.constant(attribute)}, None) is not {source.constant(step)}: return False"
                )
                previous = step
            lines.append(f"if {source.constant(item)}.__code__ is not {source.constant(code)}: return False")
            return lines
    return None


class _Source:
    """The generated function's lines and the constants they name."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self._named: dict[int, str] = {}  # one name per object

    def add(self, *lines: str) -> None:
        self.lines += lines

    def constant(self, value: Any) -> str:
        name = self._named.get(id(value))
        if name is None:  # (constants holds the object, so its id stays its own)
            name = self._named[id(value)] = f"k{len(self.constants)}"
            self.constants[name] = value
        return name

    def step(self, op: str, argument: Any, base: str) -> str:
        """One path step (paths.PathSet's) as an expression."""
        if op == "local":
            return f"L[{self.constant(argument)}]"
        if op == "global":
            return f"G[{self.constant(argument)}]"
        if op == "attr" and argument.isidentifier() and argument.isascii() and not keyword.iskeyword(argument):
            return f"{base}.{argument}"
        if op == "attr":
            return f"getattr({base}, {self.constant(argument)})"
        if op == "item":
            return f"{base}[{self.constant(argument)}]"
        if op == "call":
            return f"type({base})" if argument == "type" else f"dict({base})"
        return f"OG({base}, {self.constant(argument)})"  # generic: object.__getattribute__

    def function(self, slow: Slow) -> FastCheck:
        text = "\n".join(
            ["def check(L, G):", "    try:", *(f"        {line}" for line in self.lines or ["pass"])]
            + ["    except Exception:", "        return False", "    return True"]
        )
        code = _compiled.get(text)
        if code is None:
            namespace: dict[str, Any] = {}
            exec(compile(text, "<ccache-cli assumptions>", "exec"), namespace)
            code = _compiled[text] = namespace["check"].__code__
        names = {
            "__builtins__": builtins,
            "FAILED": FAILED,
            "UNIMPORTED": UNIMPORTED,
            "MISSING": _MISSING,
            "MODULES": sys.modules,
            "MethodType": types.MethodType,
            "OG": object.__getattribute__,
            "S": slow,
            **self.constants,
        }
        return types.FunctionType(code, names)
