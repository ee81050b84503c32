"""Under `ccache run --capture`: each function compile of the program (serve/functions.py
says which) gets stored code. At each call that no function captured so far in the
process serves (their Dynamo guards decide), Dynamo's aot_compile traces the function
on that call's inputs before the call runs (so a static KV cache is traced as the call
finds it, not as it leaves it), and the compiled function goes to the capture's folder
($CCACHE_CLI_CAPTURE_FUNCTIONS), with what it assumes (precompile/guards.py) and the
modules Dynamo installed among its globals ($CCACHE_CLI_CAPTURE_DIR/functions/, which
serve/capture.py reads into the entry's manifest); the program's own compile then runs
the call, as it would have.

Imports torch only through the `torch` its callers hand it.
"""

from __future__ import annotations

import contextlib
import dis
import hashlib
import itertools
import json
import os
import re
import threading
import types
from collections.abc import Callable, Mapping
from typing import Any

from ccache_cli.key import assumptions as a
from ccache_cli.precompile import guards
from ccache_cli.precompile.aot import one_line
from ccache_cli.serve.functions import (
    ProgramCompile,
    builtins_as_globals,
    compile_options,
    load_function,
    routed,
    unsaved_guard_kinds,
)
from ccache_cli.serve.stored_code import guards_hold
from ccache_cli.serve.unwrapping import Unwrapped, copied, unwrap

CAPTURE_FUNCTIONS_ENV = "CCACHE_CLI_CAPTURE_FUNCTIONS"  # where a capture's processes write compiled functions
CAPTURE_RECORDS_ENV = "CCACHE_CLI_CAPTURE_DIR"  # where they write what each assumes (serve/capture.py)
FUNCTION_RECORDS = "functions"  # the folder of those records, in the capture's records
MAX_PER_FUNCTION = 8  # Dynamo's own recompile limit

# A global Dynamo installs in the traced function's module for a module it imports,
# named by the module's id: `___module_collections_140047088158176_c0`.
_INSTALLED_MODULE = re.compile(r"___module_\w+_\d+_c\d+")
_INSTALLED_BY_ID = re.compile(r"\w*_\d+_c\d+")


def capturing(torch: Any, compiled: Any, kwargs: dict[str, Any], original: Callable[..., Any]) -> Any:
    """`torch.compile(compiled, **kwargs)` under a capture: the program's own compile,
    with each call its captured functions do not serve captured first."""
    why, mode = compile_options(torch, kwargs)
    unwrapped = unwrap(compiled)
    if why is not None or unwrapped is None:
        return original(compiled, **kwargs)
    capture = _Capture(torch, unwrapped, mode, ProgramCompile(torch, original, unwrapped.inner, kwargs))
    return routed(torch, compiled, unwrapped.rebuilt(capture), ProgramCompile(torch, original, compiled, kwargs))


class _Capture:
    def __init__(self, torch: Any, unwrapped: Unwrapped, mode: str, program_compile: ProgramCompile) -> None:
        self._torch = torch
        self._unwrapped = unwrapped
        self._mode = mode
        self._program_compile = program_compile
        self._captured: list[Any] = []
        self._stopped = False  # a capture failed: the function is left to the program's compile

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with _CAPTURING:  # one capture at a time in the process: Dynamo's recording is process-wide
            if (
                not self._stopped
                and not self._torch.compiler.is_exporting()  # torch.compile compiles nothing there
                and not any(guards_hold(function, args, kwargs) for function in self._captured)
            ):
                try:
                    self._captured.append(self._capture(args, kwargs))
                except Exception as exc:
                    self._stopped = True
                    _write_record(self._unwrapped, {"error": f"{type(exc).__name__}: {one_line(str(exc))}"})
                self._stopped = self._stopped or len(self._captured) >= MAX_PER_FUNCTION
        # Not the call: it may wait on a thread that calls another captured function.
        return self._program_compile(*args, **kwargs)

    def _capture(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        torch, inner = self._torch, self._unwrapped.inner
        recorder = guards.Recorder()
        torch._dynamo.config.enable_aot_compile = True
        with recorder.recording(torch):
            try:
                function = self._aot_compile(inner, args, kwargs)
            except RuntimeError as exc:  # torch 2.11: the code's builtins are not among its module's globals
                if "Missing required external references" not in str(exc):
                    raise
                recorder.take()
                function = self._aot_compile(_reading_builtins_as_globals(inner), args, kwargs)
        recorded = guards.traced_assumptions(
            torch, inner.__code__, recorder.take(), bound_self=self._unwrapped.owner is not None
        )
        if recorded is None:
            raise RuntimeError("Dynamo recorded no guards")
        _check_no_snapshot(function, inner)
        inference = torch.is_inference_mode_enabled()
        folder = os.environ[CAPTURE_FUNCTIONS_ENV]
        file = f"{_owner_key(self._unwrapped.name)}/{_next_name()}.pt"
        os.makedirs(os.path.join(folder, os.path.dirname(file)), exist_ok=True)
        path = os.path.join(folder, file)
        function.save_compiled_function(path)
        try:  # stored only where `ccache run` can load it (torch rebuilds its guards on loading)
            with open(path, "rb") as saved:
                load_function(torch, saved.read(), builtins_as_globals(inner.__globals__), self._mode, inference)
        except Exception as exc:
            os.unlink(path)
            raise RuntimeError(f"its saved code does not load: {type(exc).__name__}: {one_line(str(exc))}") from exc
        _write_record(
            self._unwrapped,
            {
                "file": file,
                "mode": self._mode,
                # A loaded function's tensor guards take the dispatch keys of the thread
                # that loads it: it is loaded in the mode it was captured in.
                "inference_mode": inference,
                "globals": _installed_modules(function, inner.__globals__),
                "assumptions": recorded.to_json(),
            },
        )
        return function

    def _aot_compile(self, function: types.FunctionType, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        torch = self._torch
        # torch.compile takes the guard filter out of the options: a dict of their own each time
        options = {**torch._inductor.list_mode_options(self._mode), "guard_filter_fn": _serializable(torch)}
        # Under the lock each Dynamo compile holds (aot_compile takes none): a program's
        # compile in another thread meanwhile fails the capture.
        with getattr(torch._dynamo.convert_frame, "compile_lock", contextlib.nullcontext()):
            return torch.compile(function, fullgraph=True, options=options).aot_compile((args, kwargs))


def _reading_builtins_as_globals(inner: types.FunctionType) -> types.FunctionType:
    """`inner` over a copy of its module's globals with the builtins in it
    (functions.builtins_as_globals): what it reads is what it would read now; stored code
    runs on such a copy anyway (see _check_no_snapshot)."""
    return copied(inner, globals_=builtins_as_globals(inner.__globals__))


def _globals_written(instructions: list[dis.Instruction]) -> list[str]:
    """The program's globals whose objects the bytecode Dynamo runs after a graph
    changes (an attribute or an item set, or Dynamo's own setattr of a side effect),
    by the global each written object is read from: `G.a.b = ...`, `G[k] = ...`,
    `object_setattr_ignore_descriptor(G.a, ...)`. Dynamo installs its own names with `__`."""

    def root(at: int) -> str | None:  # the global an object loaded by the instructions up to `at` comes from
        while at >= 0 and instructions[at].opname in ("LOAD_ATTR", "LOAD_METHOD"):
            at -= 1
        found = instructions[at] if at >= 0 else None
        if found is not None and found.opname == "LOAD_GLOBAL" and not found.argval.startswith("__"):
            return str(found.argval)
        return None

    written = set()
    for at, instruction in enumerate(instructions):
        if instruction.opname in ("STORE_ATTR", "DELETE_ATTR"):  # the object is on top
            name = root(at - 1)
        elif instruction.opname in ("STORE_SUBSCR", "DELETE_SUBSCR"):  # the container is under the key
            name = root(at - 2)
        elif instruction.argval == "object_setattr_ignore_descriptor":  # its first argument, after any copy
            after = at + 1
            while after < len(instructions) and instructions[after].opname in ("COPY", "STORE_FAST", "PUSH_NULL"):
                after += 1
            following = instructions[after:]
            ends = next((n for n, i in enumerate(following) if i.opname not in ("LOAD_GLOBAL", "LOAD_ATTR")), 0)
            name = root(after + ends - 1) if ends else None
        else:
            continue
        if name is not None:
            written.add(name)
    return sorted(written)


def _check_no_snapshot(function: Any, inner: types.FunctionType) -> None:
    """Refuse what a loaded function would read or write in a copy: torch's loader runs
    the compiled code on a copy of its module's globals, and on its closure and default
    arguments as pickled (a nested function with its own closure too), so a global it
    writes, a global its graph reads, a closure cell or a default argument other than a
    plain constant or what the loader finds again by name would not be the program's own."""
    environment = function._artifacts.runtime_env
    writes = sorted(
        {i.argval for i in dis.get_instructions(environment.bytecode) if i.opname in ("STORE_GLOBAL", "DELETE_GLOBAL")}
    )
    if writes:
        raise RuntimeError(f"its code writes the global(s) {', '.join(writes)}, which a loaded copy would not")
    written = _globals_written(list(dis.get_instructions(environment.bytecode)))
    if written:
        raise RuntimeError(
            f"its code changes the global(s) {', '.join(written)} after its graph, with the values it traced "
            "(ccache checks them once, not at each call)"
        )
    snapshot = sorted(
        name
        for name, value in environment.used_globals.items()
        if not (_by_reference(value) or name.startswith("__builtins_dict__"))  # builtins do not change
    )
    if snapshot:
        raise RuntimeError(
            f"its graph reads the global(s) {', '.join(snapshot)}, which a loaded copy would hold as captured"
        )
    cells = [
        name
        for name, cell in zip(inner.__code__.co_freevars, inner.__closure__ or ())
        if not _by_reference(cell.cell_contents)
    ]
    if cells:
        raise RuntimeError(f"it reads {', '.join(cells)} from its closure, which a loaded copy would hold as captured")
    defaults = [*(inner.__defaults__ or ()), *(inner.__kwdefaults__ or {}).values()]
    if not all(_constant(value) or _by_reference(value) for value in defaults):
        raise RuntimeError("a default argument of it is an object a loaded copy would hold as captured")


def _by_reference(value: Any) -> bool:
    """A value the loader finds again by name (not a copy of the capture's): a class, a
    module, a builtin, a function defined at a module's top level."""
    if isinstance(value, types.FunctionType):
        return "<locals>" not in value.__qualname__  # else pickled with its closure
    return isinstance(value, (type, types.ModuleType, types.BuiltinFunctionType))


def _constant(value: Any) -> bool:
    """A value no program can change in place."""
    if isinstance(value, tuple):
        return all(map(_constant, value))
    return value is None or isinstance(value, (bool, int, float, complex, str, bytes))


def _next_name() -> str:
    """A name for the process's next captured function or record, unique in the capture."""
    with _NAMING:
        return f"{os.getpid()}-{next(_NUMBERS):04d}"


_CAPTURING = threading.RLock()
_NAMING = threading.Lock()
_NUMBERS = itertools.count()


def _serializable(torch: Any) -> Callable[[Any], list[bool]]:
    """aot_compile's guard filter: the guards it can save (the others, global ones and
    identities, are ccache's assumptions, recorded from the same guards)."""
    unsupported = unsaved_guard_kinds(torch)

    def keep(entries: Any) -> list[bool]:
        return [
            not (
                entry.is_global
                or entry.guard_type in unsupported
                or unsupported.intersection(getattr(entry, "derived_guard_types", ()))
            )
            for entry in entries
        ]

    return keep


def _installed_modules(function: Any, module_globals: Mapping[str, Any]) -> dict[str, str]:
    """The globals Dynamo installed for the compiled code that name a module by its id,
    with that module's name (a loading process imports it under the same global)."""
    environment = function._artifacts.runtime_env
    provided = {*environment.import_sources, *environment.used_globals}
    found = {}
    for ref in sorted(environment.external_refs - provided):
        value = module_globals.get(ref)
        if isinstance(value, types.ModuleType) and _INSTALLED_MODULE.fullmatch(ref):
            found[ref] = value.__name__
        elif _INSTALLED_BY_ID.fullmatch(ref):
            raise RuntimeError(f"its code reads {ref}, a global Dynamo installed by id, which no other process has")
    return found


def _write_record(unwrapped: Unwrapped, record: dict[str, Any]) -> None:
    folder = os.path.join(os.environ[CAPTURE_RECORDS_ENV], FUNCTION_RECORDS)
    os.makedirs(folder, exist_ok=True)
    document = {"function": unwrapped.name, "code": a.code_digest(unwrapped.inner.__code__), **record}
    path = os.path.join(folder, f"{_next_name()}.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(document, handle)
    os.replace(path + ".tmp", path)


def _owner_key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def capture_active() -> bool:
    return bool(os.environ.get(CAPTURE_FUNCTIONS_ENV)) and bool(os.environ.get(CAPTURE_RECORDS_ENV))
