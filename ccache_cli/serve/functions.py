"""Function compiles' stored code: `torch.compile(fn)` of a function or bound method
(`model.forward = torch.compile(model.forward)`, as transformers' generation recipe
writes it, where no precompiled entry serves the model) and the `@torch.compile`
decorator, captured by `ccache run --capture` and served by `ccache run`.

Capture (function_capture.py): each call that no function captured so far serves is
compiled with aot_compile before it runs, and stored with what it assumes.

Serve: a compile of a function that an active entry captured returns the function with
its innermost code replaced: each call runs the first captured function whose Dynamo
guards (tensors, the locals' values) and ccache's assumptions (globals, identities,
code; key/assumptions.py) hold, else the program's own torch.compile of that code,
counted with the reason for the usage log.

Decorators written with functools.wraps (transformers wraps every forward) stay plain
Python around the compiled code: aot_compile cannot save code that reaches the wrapped
function through a wrapper's closure, and a wrapper computes nothing a graph holds.
Inside another compile (transformers compiles `__call__` with reduce-overhead on a GPU),
the function is what torch.compile's own would be there (`routed`): traced as the
program's own where Dynamo inlines it, run under no compile but its own where the
enclosing compile meets it as a frame.

Modes that record CUDA graphs (reduce-overhead, max-autotune): a saved function holds
Inductor's compiled graph with what torch's CUDA graph trees need of it, and applies them
where it is loaded with `triton.cudagraphs` on, as torch.compile's own cache hits do; a
served call starts a new generation of those trees, as each call of torch.compile's own
function does. Graphs are recorded in the process, by torch, as its own compile would.

Imports torch only through the `torch` its callers hand it.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import io
import logging
import os
import platform
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccache_cli.in_program.usage import VIEW_ENV
from ccache_cli.key import assumptions as a
from ccache_cli.key.sources import all_fresh, search_path
from ccache_cli.precompile.aot import one_line
from ccache_cli.precompile.plan import MODES
from ccache_cli.serve import decisions
from ccache_cli.serve.stored_code import guards_hold
from ccache_cli.serve.unwrapping import Unwrapped, unwrap, with_defaults
from ccache_cli.serve.views import read_description
from ccache_cli.store.assumptions import SizeAssumptions
from ccache_cli.store.manifest import Source


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
    if mode not in MODES:
        return f"mode {mode!r}", mode
    return None, mode


def unsaved_guard_kinds(torch: Any) -> set[str]:
    """The kinds of Dynamo guard a captured function does not save (its guard filter
    drops them: global ones too), which ccache's assumptions check in their place."""
    unsupported = set(getattr(torch._dynamo.guards.CheckFunctionManager, "UNSUPPORTED_SERIALIZATION_GUARD_TYPES", ()))
    return unsupported | {"ID_MATCH", "CLOSURE_MATCH", "WEAKREF_ALIVE", "DICT_VERSION"}


def builtins_as_globals(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """`namespace` with the builtins it does not shadow as names of its own: torch 2.11
    builds a saved function from only the globals it is given, and the code's global
    names include builtins (transformers' forward reads `type`); 2.13 saves those."""
    return {**vars(builtins), **namespace}


def routed(torch: Any, compiled: Any, call: Callable[..., Any], own: ProgramCompile) -> Callable[..., Any]:
    """What a routed `torch.compile(compiled)` returns: a function that calls `call`,
    which an enclosing torch.compile traces as `compiled` itself, as it does
    torch.compile's own result (Dynamo inlines `_torchdynamo_inline`, as an inner
    compile: `_is_torch_compile`). torch.compile's methods on its result
    (`aot_compile`, `get_compiler_config`) are those of `own`, the program's own
    compile of `compiled`.

    Where an enclosing compile reaches it as a frame instead (a compile of a module's
    `__call__` skips nn.Module's own frames, so the module's forward is the first frame
    it would convert), it runs as torch.compile's own function does, under no compile
    but its own: its frame is skipped, and `call` runs with Dynamo's frame hook unset
    (else the enclosing compile would trace ccache's code, and the code a stored function
    calls)."""

    # torch 2.13: an enclosing fullgraph compile counts the compiled frames that run
    # within it and fails where none did; torch.compile's own function counts as one.
    frame_count = getattr(torch._C._dynamo.eval_frame, "set_fullgraph_compiled_frame_count", None)

    @functools.wraps(compiled)
    def compiled_function(*args: Any, **kwargs: Any) -> Any:
        enclosing = torch._C._dynamo.eval_frame.set_eval_frame(None)
        try:
            return call(*args, **kwargs)
        finally:
            torch._C._dynamo.eval_frame.set_eval_frame(enclosing)
            if frame_count is not None and (counted := frame_count(-1)) >= 0:  # -1: no such compile
                frame_count(counted + 1)

    torch._dynamo.eval_frame.skip_code(compiled_function.__code__)
    compiled_function._torchdynamo_inline = compiled  # type: ignore[attr-defined]
    compiled_function._torchdynamo_orig_callable = compiled  # type: ignore[attr-defined]
    # torch unwraps its own compiled functions by this (torch.compiler.disable(fn) disables fn's code).
    compiled_function._torchdynamo_wrapper_id = id(compiled_function)  # type: ignore[attr-defined]
    compiled_function._is_torch_compile = True  # type: ignore[attr-defined]
    compiled_function.get_compiler_config = lambda: own.compiled().get_compiler_config()  # type: ignore[attr-defined]
    compiled_function.aot_compile = lambda example_inputs: own.compiled().aot_compile(example_inputs)  # type: ignore[attr-defined]
    return compiled_function


class ProgramCompile:
    """The program's own `torch.compile(target, **options)` of what a routed compile
    serves, made when first needed: making it imports Dynamo's backends, which a served
    function never needs. Inside torch.export it is `target` itself, as torch.compile
    returns there (with a warning the program did not cause), and is made outside."""

    def __init__(self, torch: Any, compile: Callable[..., Any], target: Any, options: dict[str, Any]) -> None:
        self._torch = torch
        self._compile = compile
        self._target = target
        self._options = options
        self._compiled: Any = None
        self._making = threading.Lock()  # threads falling back at once make one (each would trace again)

    def compiled(self) -> Any:
        if self._compiled is None:
            if self._torch.compiler.is_exporting():
                return self._target
            with self._making:
                if self._compiled is None:
                    self._compiled = self._compile(self._target, **self._options)
        return self._compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.compiled()(*args, **kwargs)


def _failed_guard(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The first of a captured function's Dynamo guards that fails for this call, in
    Dynamo's words."""
    try:
        failed = function._artifacts.guard_manager.check_verbose(function.prepare_f_locals(*args, **kwargs))
        guard = str(failed.verbose_code_parts[0]).partition(" #")[0]
        return f"its guard {one_line(guard)} fails for a call that no captured function serves"
    except Exception:  # torch's private API moved: the reason only
        return "its Dynamo guards fail"


@dataclass(frozen=True)
class StoredFunction:
    """A captured function as a view lays it out (views.ActiveEntry.functions)."""

    path: str  # in the view
    function: str  # `module:qualname` of the code it compiled
    code: str  # that code's digest
    mode: str
    inference_mode: bool  # captured under torch.inference_mode: loaded under it
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
            inference_mode=described.get("inference_mode", False),
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
    program_compile = ProgramCompile(torch, original, unwrapped.inner, kwargs)
    served = _Served(torch, unwrapped, [s for s in mine if s.code == digest], program_compile)
    return routed(torch, compiled, unwrapped.rebuilt(served), ProgramCompile(torch, original, compiled, kwargs)), None


@dataclass(frozen=True)
class _Checks:
    once: a.Checker  # torch's state (every call), and `self`, the code and the globals
    arguments: a.Checker | None  # the call's other arguments: every call


class _Served:
    def __init__(
        self, torch: Any, unwrapped: Unwrapped, stored: list[StoredFunction], program_compile: ProgramCompile
    ) -> None:
        self._torch = torch
        self._unwrapped = unwrapped
        self._stored = stored
        self._program_compile = program_compile  # what a call no stored function serves runs
        self._loaded: list[tuple[StoredFunction, Any, _Checks]] | None = None
        self._held: dict[str, tuple[int, str | None]] = {}  # per path: the `self` checked, and why it failed
        self._every_call = decisions.guard_policy() == "every-call"
        self._told = False  # whether a call no guard let through was counted, with the guard
        self._loading = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = with_defaults(self._unwrapped.inner, args, kwargs)  # as they are now, not as captured
        function, why = self._serving(args, kwargs)
        if function is not None:
            # torch.compile's function does this on each call: its CUDA graph trees may
            # then reuse the memory of the outputs of the previous call.
            self._torch._dynamo.mutation_guard.GenerationTracker.generation += 1
            return function(*args, **kwargs)
        decisions.count(f"fallback: {why}")
        return self._program_compile(*args, **kwargs)

    def _serving(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, str]:
        stance = decisions.compiler_stance()
        if stance is not None:
            return None, stance
        if self._loaded is None:
            with self._loading:  # threads calling at once load the functions once
                if self._loaded is None:
                    self._loaded = self._load()
        why = "no captured function's guards hold for these inputs"
        for stored, function, checks in self._loaded:
            if not guards_hold(function, args, kwargs):
                continue
            refused = (
                checks.once.state_mismatch()
                or self._program_mismatch(stored, checks.once, args, kwargs)
                or self._arguments_mismatch(checks.arguments, args, kwargs)
            )
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

    def _arguments_mismatch(
        self, checker: a.Checker | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> str | None:
        """What the stored code assumes of the call's arguments (other than `self`), which
        the guards torch saved do not check (identities): checked on every call."""
        return None if checker is None else checker.program_mismatch(None, args, kwargs, function=self._unwrapped.inner)

    def _program_mismatch(
        self, stored: StoredFunction, checker: a.Checker, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> str | None:
        """What it assumes of `self`, the code and the globals: checked at a function's
        first call and when `self` changes under the once policy, else on every call."""
        owner = id(args[0]) if args and self._unwrapped.owner is not None else 0
        held = self._held.get(stored.path)
        if self._every_call or held is None or held[0] != owner:
            held = (owner, checker.program_mismatch(None, args, kwargs, function=self._unwrapped.inner))
            self._held[stored.path] = held
        return held[1]

    def _load(self) -> list[tuple[StoredFunction, Any, _Checks]]:
        loaded = []
        fresh: dict[tuple[Source, ...], bool] = {}
        self._torch._dynamo.config.enable_aot_compile = True
        for stored in self._stored:
            if stored.sources not in fresh:
                fresh[stored.sources] = all_fresh(stored.sources, search_path())
            if not fresh[stored.sources]:
                decisions.count("fallback: compiled from other code")
                continue
            try:
                loaded.append((stored, self._load_one(stored), self._checks(stored.assumptions)))
            except Exception as exc:  # a function this torch cannot load: torch.compile serves
                decisions.count(f"fallback: stored code failed to load ({type(exc).__name__}: {one_line(str(exc))})")
        return loaded

    def _checks(self, recorded: SizeAssumptions) -> _Checks:
        """The assumptions about the call's arguments that torch's saved guards do not
        check (identities), apart from the others."""
        code = self._unwrapped.inner.__code__
        own = f"L[{code.co_varnames[0]!r}]" if self._unwrapped.owner is not None and code.co_argcount else None
        unsaved = unsaved_guard_kinds(self._torch)
        arguments, rest = [], []
        for x in recorded.assumptions:
            unsaved_on_argument = (x.guard in unsaved or x.check == "identity") and x.path.startswith("L[")
            (arguments if unsaved_on_argument and not (own and x.path.startswith(own)) else rest).append(x)
        return _Checks(
            a.Checker(self._torch, SizeAssumptions(recorded.frame, tuple(rest), recorded.unserialized)),
            a.Checker(self._torch, SizeAssumptions(recorded.frame, tuple(arguments), 0)) if arguments else None,
        )

    def _load_one(self, stored: StoredFunction) -> Any:
        module_globals = builtins_as_globals(self._unwrapped.inner.__globals__)
        module_globals.update({name: importlib.import_module(module) for name, module in stored.globals.items()})
        with open(stored.path, "rb") as handle:
            data = handle.read()
        return load_function(self._torch, data, module_globals, stored.mode, stored.inference_mode)


def load_function(torch: Any, data: bytes, module_globals: dict[str, Any], mode: str, inference_mode: bool) -> Any:
    """A saved function loaded as `ccache run` serves it (the capture loads each once too,
    storing only what loads)."""
    # Loading a function's C++ kernels picks this CPU's vector ISA once per process,
    # by compiling and loading a probe program per ISA. The entry's key held the ISA
    # this machine picks (activation matched it), so the ISAs the CPU's flags name are
    # trusted instead, for the pick only: the setting enters no cache key from here.
    # The mode's CUDA graphs are applied when the function is loaded (torch keeps them
    # out of the saved function), where the mode's options say so. Its Triton kernels
    # load in this process: with compile threads, the first would start Inductor's pool
    # of compile workers (a process per core, each importing torch) to compile nothing.
    cuda_graphs = {
        name: value for name, value in torch._inductor.list_mode_options(mode).items() if name == "triton.cudagraphs"
    }
    guard_log = logging.getLogger("torch._guards")

    def quiet(record: logging.LogRecord) -> bool:  # a guard torch cannot rebuild fails the load; ccache says why
        return False

    guard_log.addFilter(quiet)  # a filter of its own, removed after: loads in other threads keep theirs
    try:
        with (
            torch._inductor.config.patch({"cpp.vec_isa_ok": True, "compile_threads": 1, **cuda_graphs}),
            torch.inference_mode(inference_mode),  # its tensor guards take this thread's dispatch keys
        ):
            return torch.compiler.load_compiled_function(io.BytesIO(data), f_globals=module_globals)
    finally:
        guard_log.removeFilter(quiet)
