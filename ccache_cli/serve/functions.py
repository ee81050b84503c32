"""Function compiles' stored code: `torch.compile(fn)` of a function or bound method
(`model.forward = torch.compile(model.forward)`, as transformers' generation recipe
writes it, where no precompiled entry serves the model) and the `@torch.compile`
decorator, captured by `ccache run --capture` and served by `ccache run`.

Capture: at each call that no function captured so far in the process serves (their
Dynamo guards decide), Dynamo's aot_compile traces the function on that call's inputs
before the call runs (so a static KV cache is traced as the call finds it, not as it
leaves it) and the compiled function goes to the capture's folder, with what it
assumes (precompile/guards.py) and the modules Dynamo installed among its globals; the
program's own compile then runs the call, as it would have.

Serve: a compile of a function that an active entry captured returns the function with
its innermost code replaced: each call runs the first captured function whose Dynamo
guards (tensors, the locals' values) and ccache's assumptions (globals, identities,
code; key/assumptions.py) hold, else the program's own torch.compile of that code,
counted with the reason for the usage log.

Decorators written with functools.wraps (transformers wraps every forward) stay plain
Python around the compiled code: aot_compile cannot save code that reaches the wrapped
function through a wrapper's closure, and a wrapper computes nothing a graph holds.

Imports torch only through the `torch` its callers hand it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import io
import json
import os
import platform
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccache_cli.in_program.usage import VIEW_ENV
from ccache_cli.key import assumptions as a
from ccache_cli.key.sources import check, search_path
from ccache_cli.precompile import guards
from ccache_cli.serve import decisions
from ccache_cli.serve.views import read_description
from ccache_cli.store.assumptions import SizeAssumptions
from ccache_cli.store.manifest import Source

CAPTURE_FUNCTIONS_ENV = "CCACHE_CLI_CAPTURE_FUNCTIONS"  # where a capture's processes write compiled functions
CAPTURE_RECORDS_ENV = "CCACHE_CLI_CAPTURE_DIR"  # where they write what each assumes (serve/capture.py)
FUNCTION_RECORDS = "functions"  # the folder of those records, in the capture's records
MAX_PER_FUNCTION = 8  # Dynamo's own recompile limit
# Modes whose compiled code a saved function holds whole (CUDA graphs it does not).
CAPTURED_MODES = ("default", "max-autotune-no-cudagraphs")

# A global Dynamo installs in the traced function's module for a module it imports,
# named by the module's id: `___module_collections_140047088158176_c0`.
_INSTALLED_MODULE = re.compile(r"___module_\w+_\d+_c\d+")
_INSTALLED_BY_ID = re.compile(r"\w*_\d+_c\d+")


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
            rebuilt = types.FunctionType(
                wrapper.__code__, wrapper.__globals__, wrapper.__name__, wrapper.__defaults__, tuple(closure)
            )
            rebuilt.__kwdefaults__ = wrapper.__kwdefaults__
            rebuilt.__dict__.update(wrapper.__dict__)
            rebuilt.__qualname__ = wrapper.__qualname__
            current = rebuilt
        return types.MethodType(current, self.owner) if self.owner is not None else current


def unwrap(compiled: Any) -> Unwrapped | None:
    """`compiled` taken apart; None where it is not a Python function or method."""
    owner = compiled.__self__ if isinstance(compiled, types.MethodType) else None
    function = compiled.__func__ if owner is not None else compiled
    if not isinstance(function, types.FunctionType):
        return None
    layers = []
    while isinstance(wrapped := getattr(function, "__wrapped__", None), types.FunctionType):
        cells = [n for n, cell in enumerate(function.__closure__ or ()) if _holds(cell, wrapped)]
        if len(cells) != 1:
            break
        layers.append((function, cells[0]))
        function = wrapped
    return Unwrapped(owner, tuple(layers), function)


def _holds(cell: Any, value: Any) -> bool:
    try:
        return cell.cell_contents is value
    except ValueError:  # an empty cell
        return False


def compile_options(torch: Any, kwargs: Mapping[str, Any]) -> tuple[str | None, str]:
    """Why a function compile with `kwargs` cannot have stored code (else None), and
    its mode."""
    mode = kwargs.get("mode") or "default"
    if kwargs.get("disable"):
        return "disable=True", mode
    backend = kwargs.get("backend") or "inductor"
    if backend != "inductor":
        return f"backend {getattr(backend, '__name__', backend)!r}", mode
    if kwargs.get("options"):
        return "options= given", mode
    if kwargs.get("dynamic"):
        return "dynamic=True", mode
    if mode not in CAPTURED_MODES:
        return f"mode {mode!r}: a captured function cannot hold CUDA graphs", mode
    return None, mode


# --- capture --------------------------------------------------------------------------


def capturing(torch: Any, compiled: Any, kwargs: dict[str, Any], original: Callable[..., Any]) -> Any:
    """`torch.compile(compiled, **kwargs)` under a capture: the program's own compile,
    with each call its captured functions do not serve captured first."""
    why, mode = compile_options(torch, kwargs)
    unwrapped = unwrap(compiled)
    if why is not None or unwrapped is None:
        return original(compiled, **kwargs)
    capture = _Capture(torch, unwrapped, mode, lambda: original(unwrapped.inner, **kwargs))
    return unwrapped.rebuilt(capture)


class _Capture:
    def __init__(self, torch: Any, unwrapped: Unwrapped, mode: str, compile_inner: Callable[[], Any]) -> None:
        self._torch = torch
        self._unwrapped = unwrapped
        self._mode = mode
        self._compile_inner = compile_inner
        self._compiled: Any = None
        self._captured: list[Any] = []
        self._stopped = False  # a capture failed: the function is left to the program's compile

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self._stopped and not any(function.guard_check(*args, **kwargs) for function in self._captured):
            try:
                self._captured.append(self._capture(args, kwargs))
            except Exception as exc:
                self._stopped = True
                _write_record(self._unwrapped, {"error": f"{type(exc).__name__}: {_one_line(str(exc))}"})
            self._stopped = self._stopped or len(self._captured) >= MAX_PER_FUNCTION
        if self._compiled is None:
            self._compiled = self._compile_inner()
        return self._compiled(*args, **kwargs)

    def _capture(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        torch, inner = self._torch, self._unwrapped.inner
        recorder = guards.Recorder()
        options = {**torch._inductor.list_mode_options(self._mode), "guard_filter_fn": _serializable(torch)}
        torch._dynamo.config.enable_aot_compile = True
        with recorder.recording(torch):
            function = torch.compile(inner, fullgraph=True, options=options).aot_compile((args, kwargs))
        recorded = guards.traced_assumptions(
            torch, inner.__code__, recorder.take(), bound_self=self._unwrapped.owner is not None
        )
        if recorded is None:
            raise RuntimeError("Dynamo recorded no guards")
        folder = os.environ[CAPTURE_FUNCTIONS_ENV]
        file = f"{_owner_key(self._unwrapped.name)}/{os.getpid()}-{len(self._captured)}.pt"
        os.makedirs(os.path.join(folder, os.path.dirname(file)), exist_ok=True)
        function.save_compiled_function(os.path.join(folder, file))
        _write_record(
            self._unwrapped,
            {
                "file": file,
                "mode": self._mode,
                "globals": _installed_modules(function, inner.__globals__),
                "assumptions": recorded.to_json(),
            },
        )
        return function


def _serializable(torch: Any) -> Callable[[Any], list[bool]]:
    """aot_compile's guard filter: the guards it can save (the others, global ones and
    identities, are ccache's assumptions, recorded from the same guards)."""
    unsupported = set(getattr(torch._dynamo.guards.CheckFunctionManager, "UNSUPPORTED_SERIALIZATION_GUARD_TYPES", ()))
    unsupported |= {"ID_MATCH", "CLOSURE_MATCH", "WEAKREF_ALIVE", "DICT_VERSION"}

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
    path = os.path.join(folder, f"{os.getpid()}-{len(os.listdir(folder))}.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(document, handle)
    os.replace(path + ".tmp", path)


def _failed_guard(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The first of a captured function's Dynamo guards that fails for this call, in
    Dynamo's words."""
    try:
        failed = function._artifacts.guard_manager.check_verbose(function.prepare_f_locals(*args, **kwargs))
        guard = str(failed.verbose_code_parts[0]).partition(" #")[0]
        return f"its guard {_one_line(guard)} fails for a call that no captured function serves"
    except Exception:  # torch's private API moved: the reason only
        return "its Dynamo guards fail"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


def _owner_key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def capture_active() -> bool:
    return bool(os.environ.get(CAPTURE_FUNCTIONS_ENV)) and bool(os.environ.get(CAPTURE_RECORDS_ENV))


# --- serve ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredFunction:
    """A captured function as a view lays it out (views.ActiveEntry.functions)."""

    path: str  # in the view
    function: str  # `module:qualname` of the code it compiled
    code: str  # that code's digest
    mode: str
    globals: Mapping[str, str]  # installed global -> module it names
    assumptions: SizeAssumptions
    built_with: tuple[Any, Any]  # the Python and torch versions of its entry's key
    sources: tuple[Source, ...]
    entry: str  # the id of the entry that holds it


def active_functions() -> list[StoredFunction]:
    view = os.environ.get(VIEW_ENV)
    return functions_in(view) if view else []


@functools.cache
def functions_in(view: str) -> list[StoredFunction]:
    """The captured functions of a view's entries."""
    try:
        description = read_description(view)
    except (OSError, ValueError, TypeError):
        return []
    return [
        StoredFunction(
            path=str(Path(view) / path),
            function=described["function"],
            code=described["code"],
            mode=described["mode"],
            globals=described["globals"],
            assumptions=SizeAssumptions.from_json(described["assumptions"]),
            built_with=(entry.fingerprint.get("python"), entry.fingerprint.get("torch")),
            sources=tuple(Source(**source) for source in entry.sources),
            entry=entry.id,
        )
        for entry in description.entries
        for path, described in entry.functions.items()
    ]


def serving(
    torch: Any, compiled: Any, kwargs: dict[str, Any], original: Callable[..., Any], stored: list[StoredFunction]
) -> tuple[Any, str | None]:
    """A routed `torch.compile(compiled, **kwargs)`: the function with its innermost
    code served by the `stored` functions captured from it; else None and why not."""
    why, mode = compile_options(torch, kwargs)
    unwrapped = unwrap(compiled)
    if why is not None:
        return None, why
    if unwrapped is None:
        return None, "not a Python function or method"
    running = (platform.python_version(), torch.__version__)
    mine = [s for s in stored if s.function == unwrapped.name and s.mode == mode and s.built_with == running]
    if not mine:
        return None, "no active entry captured this function"
    digest = a.code_digest(unwrapped.inner.__code__)
    if all(s.code != digest for s in mine):
        return None, f"{unwrapped.name} is not the code the active entries captured"
    served = _Served(
        torch, unwrapped, [s for s in mine if s.code == digest], lambda: original(unwrapped.inner, **kwargs)
    )
    return unwrapped.rebuilt(served), None


class _Served:
    def __init__(
        self, torch: Any, unwrapped: Unwrapped, stored: list[StoredFunction], compile_inner: Callable[[], Any]
    ) -> None:
        self._torch = torch
        self._unwrapped = unwrapped
        self._stored = stored
        self._compile_inner = compile_inner
        self._compiled: Any = None
        self._loaded: list[tuple[StoredFunction, Any, a.Checker]] | None = None
        self._held: dict[str, tuple[int, str | None]] = {}  # per path: the `self` checked, and why it failed
        self._every_call = decisions.guard_policy() == "every-call"
        self._told = False  # whether a call no guard let through was counted, with the guard

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        function, why = self._serving(args, kwargs)
        if function is not None:
            return function(*args, **kwargs)
        decisions.count(f"fallback: {why}")
        if self._compiled is None:
            self._compiled = self._compile_inner()
        return self._compiled(*args, **kwargs)

    def _serving(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, str]:
        if self._loaded is None:
            self._loaded = self._load()
        why = "no captured function's guards hold for these inputs"
        for stored, function, checker in self._loaded:
            if not function.guard_check(*args, **kwargs):
                continue
            refused = checker.state_mismatch() or self._program_mismatch(stored, checker, args, kwargs)
            if refused is None:
                decisions.count("served", stored.entry)
                return function, ""
            decisions.refuse(stored.entry, f"function {stored.function}: {refused}")
            why = "an assumption of the stored code does not hold"
        if self._loaded and not self._told and why.startswith("no captured"):  # once: the exit line says which guard
            self._told = True
            stored, function, _ = self._loaded[-1]
            decisions.refuse(stored.entry, f"function {stored.function}: {_failed_guard(function, args, kwargs)}")
        return None, why

    def _program_mismatch(
        self, stored: StoredFunction, checker: a.Checker, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> str | None:
        """Checked at a function's first call and when `self` changes (every call under
        the every-call policy)."""
        owner = id(args[0]) if args and self._unwrapped.owner is not None else 0
        held = self._held.get(stored.path)
        if self._every_call or held is None or held[0] != owner:
            held = (owner, checker.program_mismatch(None, args, kwargs, function=self._unwrapped.inner))
            self._held[stored.path] = held
        return held[1]

    def _load(self) -> list[tuple[StoredFunction, Any, a.Checker]]:
        loaded = []
        fresh: dict[tuple[Source, ...], bool] = {}
        self._torch._dynamo.config.enable_aot_compile = True
        for stored in self._stored:
            if stored.sources not in fresh:
                fresh[stored.sources] = all(s.state == "fresh" for s in check(stored.sources, search_path()))
            if not fresh[stored.sources]:
                decisions.count("fallback: compiled from other code")
                continue
            try:
                loaded.append((stored, self._load_one(stored), a.Checker(self._torch, stored.assumptions)))
            except Exception as exc:  # a function this torch cannot load: torch.compile serves
                decisions.count(f"fallback: stored code failed to load ({type(exc).__name__})")
        return loaded

    def _load_one(self, stored: StoredFunction) -> Any:
        module_globals = dict(self._unwrapped.inner.__globals__)
        module_globals.update({name: importlib.import_module(module) for name, module in stored.globals.items()})
        with open(stored.path, "rb") as handle:
            data = handle.read()
        return self._torch.compiler.load_compiled_function(io.BytesIO(data), f_globals=module_globals)
