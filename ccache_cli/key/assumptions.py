"""What stored code assumes of the program that runs it, and the check of it.

Stored AOT code (an AOTInductor package, an aot_compile function) is a forward with
every Python value its trace read baked in. torch.compile re-checks those values with
Dynamo's guards on every call; stored code checks nothing of them (aot_compile keeps
some of its guards and drops every global one). So precompile turns each guard Dynamo
built for a size's graph into an `Assumption` (precompile/guards.py): a path, Dynamo's own
expression for where the value was read (rooted at the traced forward's locals `L` and
its module's globals `G`), and what must hold there. Before stored code serves a
model, `Checker` evaluates every path on that model and names the first that differs
(`layers.0.n1.eps is 0.5; the stored code was built with 1e-06`), and the call goes to
torch.compile. An assumption that ccache cannot check is a mismatch too: stored code
runs only where torch.compile would compute the same thing.

Checks (the guard kinds of torch 2.11 to 2.13 that map to each are in precompile/guards.py):
- value: a plain constant (bool, int, float, str, None, an enum member, a torch dtype
  or device, tuples of them), equal in type and value;
- type: the class of the value, by module and qualified name;
- identity: a module by name, a class by module and qualified name, a Python function
  by module, qualified name and a digest of its code (so a monkeypatch is seen where
  no file changed), a builtin by its name;
- code: a function Dynamo inlined, found again by module and qualified name (through
  decorators' `__wrapped__`), with the same code digest: a method replaced on its class
  is seen this way, which Dynamo's type guard does not;
- keys, length, attribute (present or absent), own_attribute_absent, dict_key;
- tensor: dtype, shape and device of a tensor that is neither an input nor a parameter
  or buffer (those are the call's signature and the package's bound weights);
- torch_state: the default dtype, float32 matmul precision, default device, and the
  global state torch's own GlobalStateGuard holds (deterministic algorithms, TF32 and
  reduced-precision flags, autocast, torch function modes), all but the thread count;
- unchecked: what ccache cannot check (a graph break's locals, an object's identity
  across processes); never served.

Paths, and how they are evaluated and shown, are key/paths.py's.

Standard library only; torch is handed in where needed.
"""

from __future__ import annotations

import enum
import hashlib
import json
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any

from ccache_cli.key.fast_check import FastCheck, compile_fast
from ccache_cli.key.paths import (
    FAILED,
    UNIMPORTED,
    Globals,
    PathError,
    PathSet,
    call_locals,
    display_path,
    forward_locals,
    imported_module,
    parse_path,
    resolve_code_owner,
)
from ccache_cli.store.assumptions import Assumption, SizeAssumptions

# --- describing values, so that two processes can compare them ---------------------


def describe_value(value: Any) -> str | None:
    """A plain constant as a string that is equal exactly where type and value are; None
    for anything else."""
    kind = type(value)
    if value is None or kind in (bool, int, float, complex, str, bytes):
        return f"{kind.__name__}:{value!r}"
    if isinstance(value, enum.Enum):
        return f"enum:{kind.__module__}.{kind.__qualname__}.{value.name}"
    if kind in (tuple, list):
        parts = [describe_value(item) for item in value]
        return None if None in parts else f"{kind.__name__}:(" + ",".join(parts) + ")"  # type: ignore[arg-type]
    if kind.__module__ == "torch" and kind.__name__ in ("dtype", "device"):
        return f"torch.{kind.__name__}:{value}"
    if kind is types.CodeType:  # a function's __code__, which Dynamo compares
        return f"code:{code_digest(value)}"
    return None


def describe_type(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def describe_identity(value: Any) -> str | None:
    """What makes `value` the same object in another process: a module's name, a class's
    name, a function's name and code; None where nothing does."""
    if isinstance(value, types.ModuleType):
        return f"module:{value.__name__}"
    if isinstance(value, type):
        return f"class:{describe_type(value)}"
    if isinstance(value, types.FunctionType):
        return f"function:{value.__module__}.{value.__qualname__}:{code_digest(value.__code__)}"
    if isinstance(value, types.MethodType):
        inner = describe_identity(value.__func__)
        return None if inner is None else f"method:{inner}"
    if isinstance(value, (types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType)):
        owner = getattr(value, "__self__", None)
        owner_name = owner.__name__ if isinstance(owner, (type, types.ModuleType)) else type(owner).__name__
        return f"builtin:{getattr(value, '__module__', None)}.{value.__qualname__}@{owner_name}"
    return describe_value(value)


_digests: dict[int, tuple[types.CodeType, str]] = {}


def code_digest(code: types.CodeType) -> str:
    """A digest of what a code object does, not where it lies: its bytecode, names and
    constants (nested code objects too), without its file name or line numbers."""
    cached = _digests.get(id(code))
    if cached is not None and cached[0] is code:
        return cached[1]
    digest = hashlib.sha256()

    def feed(item: Any) -> None:
        if isinstance(item, types.CodeType):
            digest.update(b"code")
            digest.update(item.co_code)
            for part in (item.co_names, item.co_varnames, item.co_freevars, item.co_cellvars):
                digest.update(repr(part).encode())
            digest.update(getattr(item, "co_qualname", item.co_name).encode())
            digest.update(b"%d %d %d" % (item.co_argcount, item.co_kwonlyargcount, item.co_flags))
            for const in item.co_consts:
                feed(const)
        elif isinstance(item, (tuple, list)):
            digest.update(b"(")
            for part in item:
                feed(part)
            digest.update(b")")
        elif isinstance(item, frozenset):  # its order follows string hashing, which differs per process
            digest.update(b"{" + ",".join(sorted(map(repr, item))).encode() + b"}")
        else:
            digest.update(repr(item).encode() + b";")

    feed(code)
    _digests[id(code)] = (code, digest.hexdigest()[:32])
    return _digests[id(code)][1]


# --- torch's global state ------------------------------------------------------------

# The global state the stored code was traced under, readable without Dynamo.
_IGNORED_STATE = ("num_threads", "grad_mode")  # results do not depend on them; grad is checked per call


def torch_state(torch: Any, read: tuple[str, tuple[Any, ...]] | None = None) -> dict[str, Any]:
    """The torch state that Dynamo's global guards check, by readable name (from
    `read`, what read_torch_state returned, where given)."""
    guard_state, (dtype, precision, device, modes) = read or read_torch_state(torch)
    state = {
        "default dtype": str(dtype),
        "float32 matmul precision": precision,
        "default device": str(device),
        "torch function modes": modes,
    }
    for name, value in json.loads(guard_state).items():
        if name not in _IGNORED_STATE and name != "default_dtype":
            state[f"torch {name}"] = value
    return state


def read_torch_state(torch: Any) -> tuple[str, tuple[Any, ...]]:
    """Torch's global state as read: what Dynamo's GlobalStateGuard holds, as its
    JSON, and the rest as torch has it (cheap to compare with an earlier reading)."""
    from torch._C._dynamo.guards import GlobalStateGuard

    try:
        precision = torch.get_float32_matmul_precision()
    except RuntimeError as exc:  # backends set to precisions it has no name for
        precision = f"unreadable ({exc})"
    device = getattr(sys.modules.get("torch.utils._device"), "CURRENT_DEVICE", None)
    beside = (torch.get_default_dtype(), precision, device, torch._C._len_torch_function_stack())
    return GlobalStateGuard().__getstate__(), beside


# --- the check -----------------------------------------------------------------------


def _render(value: Any) -> str:
    """A described value as a reader knows it: `float:1e-06` -> `1e-06`, a function
    by its name (`function m.helper`, `other code of function m.helper` where only
    the code differs is told by the caller)."""
    if not isinstance(value, str):
        return json.dumps(value)
    kind, _, rest = value.partition(":")
    if kind in ("bool", "int", "float", "str", "NoneType", "bytes", "complex"):
        return rest
    if kind in ("function", "method"):
        return f"{kind} {rest.rsplit(':', 1)[0].removeprefix('function:')}"
    if kind == "builtin":
        return f"builtin {rest.split('@')[0].removeprefix('None.')}"
    if kind in ("module", "class", "enum"):
        return f"{kind} {rest}"
    return value


_HELD = 4  # generated checks a Checker keeps


class Checker:
    """The assumptions of one size's stored code, compiled once, checked on a model."""

    def __init__(self, torch: Any, recorded: SizeAssumptions) -> None:
        self._torch = torch
        self._frame = recorded.frame
        self._state = [a for a in recorded.assumptions if a.check == "torch_state"]
        self._program = [a for a in recorded.assumptions if a.check != "torch_state"]
        # Each path's node in one tree of shared prefixes, parsed here once (None: code
        # and unchecked assumptions, which read no path; -2: not a path).
        self._paths = PathSet()
        self._nodes = [self._node(a) for a in self._program]
        self._self_name: str | None = None
        # Where full checks repeat (every call), what held, as generated functions
        # (fast_check.py) made from the second full check that passes on: the latest
        # few, for a program that calls with several models in turn.
        self._held: list[FastCheck] = []
        self._passed = 0
        self._unproven = 0  # generated checks made since one last passed
        self._state_held: tuple[str, tuple[Any, ...]] | None = None  # read_torch_state's, where all held

    def _node(self, assumption: Assumption) -> int | None:
        if assumption.check in ("code", "unchecked"):
            return None
        try:
            return self._paths.add(assumption.path)
        except PathError:
            return -2

    def state_mismatch(self) -> str | None:
        """The first torch state that differs from the traced one (cheap: every call)."""
        if not self._state:
            return None
        read = read_torch_state(self._torch)
        if read == self._state_held:  # as it was where every assumption last held
            return None
        current = torch_state(self._torch, read)
        for assumption in self._state:
            if current.get(assumption.path) != assumption.expected:
                return (
                    f"{assumption.path} is {_render(current.get(assumption.path))}; "
                    f"the stored code was built with {_render(assumption.expected)}"
                )
        self._state_held = read
        return None

    def program_mismatch(
        self, model: Any, args: Sequence[Any], kwargs: Mapping[str, Any], function: Any = None
    ) -> str | None:
        """The first assumption about the model, its code and its module's globals that
        does not hold for this call, in words; None where all hold. `function`: the
        traced function where it is not the model's forward (a function compile's, called
        with `args`, `self` first for a method; `model` is then not used)."""
        try:
            local = forward_locals(model, args, kwargs) if function is None else call_locals(function, args, kwargs)
            global_ = Globals(self._frame.module, lazy=True)
        except Exception as exc:
            return f"the forward's locals or globals could not be read ({type(exc).__name__}: {exc})"
        first = next(iter(local), None)
        self._self_name = first if function is None or first == "self" else None
        if any(held(local, global_) for held in self._held):
            self._unproven = 0
            return None
        values = self._paths.evaluate(local, global_)
        read_again: list[Any] | None = None  # importing the compile stack, where needed
        for assumption, node in zip(self._program, self._nodes):
            value = FAILED if node is None or node < 0 else values[node]
            if value is UNIMPORTED and not _as_torch_ships_it(assumption):
                if read_again is None:
                    read_again = self._paths.evaluate(local, Globals(self._frame.module))
                value = read_again[node]
            why = self._mismatch(assumption, value)
            if why is not None:
                return why
        self._passed += 1
        # (Not where what they pin is made anew for each call: none of the last few passed.)
        if self._passed >= 2 and read_again is None and self._unproven < _HELD:
            held = compile_fast(
                self._frame.module,
                self._paths.nodes,
                values,
                list(zip(self._program, self._nodes)),
                lambda index, value: self._mismatch(self._program[index], value),
            )
            self._held = ([held] if held is not None else []) + self._held[: _HELD - 1]
            self._unproven += 1
        return None

    def _mismatch(self, assumption: Assumption, value: Any) -> str | None:
        """Why `assumption` does not hold where its path reads `value`, or None."""
        check, path, expected = assumption.check, assumption.path, assumption.expected
        if check == "unchecked":
            shown = display_path(path, self._frame, self._self_name)
            return f"the stored code assumes {assumption.guard} on {shown}, which ccache cannot check ({expected})"
        if check == "code":
            module, _, qualname = path.partition(":")
            try:
                candidates = resolve_code_owner(module, qualname)
            except Exception:
                return f"{module}.{qualname} is gone; the stored code was traced through it"
            if any(code_digest(c.__code__) == expected for c in candidates if hasattr(c, "__code__")):
                return None
            return f"{module}.{qualname} was replaced: it is not the code the stored code was traced through"
        if value is UNIMPORTED:
            return None
        if value is FAILED:
            if check == "attribute" and not expected[1]:
                return None  # absent as traced
            return (
                f"{display_path(path, self._frame, self._self_name)} cannot be read; the stored code was built with it"
            )
        found = _observe(check, value, expected)
        if found == expected:
            return None
        shown = display_path(path, self._frame, self._self_name)
        if check == "identity" and found is not None and _render(found) == _render(expected):
            return f"{shown} is {_render(found)} with other code than the stored code was built with"
        if check == "attribute":
            return f"{shown} {'has' if found[1] else 'has no'} attribute {expected[0]!r}; the stored code was built {'with' if expected[1] else 'without'} it"
        if check == "own_attribute_absent":
            return f"{shown}.{expected} is set on the instance; the stored code was built calling its class's"
        if check == "dict_key":
            return f"{shown} {'holds' if found[1] else 'lacks'} the key {expected[0]!r}; the stored code was built {'with' if expected[1] else 'without'} it"
        return f"{shown} is {_render(found)}; the stored code was built with {_render(expected)}"


def _as_torch_ships_it(assumption: Assumption) -> bool:
    """Whether an assumption on a module of torch's compile stack that the program has
    not imported holds unread: the module's identity, that of a function or class
    defined in it, or that a name of it is a bare `object()` (a sentinel, which Dynamo
    checks the type of on torch 2.11), each read straight from it. Nothing in the
    process can have changed those (that takes importing it), no setting or environment
    variable makes a bare object, and torch's files are the entry's (its key names
    torch's version; `verify` checks them). Values, other types and anything read
    further on (a standard-library module it imported, a config an environment variable
    sets) are read, importing it."""
    module = imported_module(assumption.path)
    if module is None or not isinstance(assumption.expected, str):
        return False
    steps = parse_path(assumption.path)
    if len(steps) == 1:
        return assumption.check == "identity" and assumption.expected == f"module:{module}"
    if len(steps) != 2 or steps[1][0] != "attr":
        return False
    if assumption.check == "type":
        return assumption.expected == "builtins.object"
    name = steps[1][1]
    own = (f"function:{module}.{name}:", f"class:{module}.{name}")
    return assumption.check == "identity" and assumption.expected.startswith(own)


def _observe(check: str, value: Any, expected: Any) -> Any:
    """What `check` sees of `value`, in the form `expected` was recorded in."""
    if check == "value":
        return describe_value(value)
    if check == "type":
        return describe_type(type(value))
    if check == "identity":
        return describe_identity(value)
    if check == "keys":
        return [describe_value(key) for key in value]
    if check == "length":
        return len(value)
    if check == "attribute":
        return [expected[0], hasattr(value, expected[0])]
    if check == "own_attribute_absent":
        return expected if expected not in getattr(value, "__dict__", {}) else None
    if check == "dict_key":
        return [expected[0], expected[0] in value]
    if check == "tensor":
        return describe_tensor(value, {at for at, size in enumerate(expected[1]) if size is None})
    return f"an unknown check {check!r}"


def describe_tensor(value: Any, dynamic: Any = ()) -> list[Any]:
    """dtype, shape and device; `dynamic`: the dimensions any size may take (None),
    those of a range's batch."""
    shape = [None if at in dynamic else size for at, size in enumerate(getattr(value, "shape", ()))]
    return [str(getattr(value, "dtype", None)), shape, str(getattr(value, "device", None))]
