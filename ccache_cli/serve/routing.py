"""Routing: under `ccache run` (and after `ccache_cli.activate()`), a program's own
`torch.compile(module, ...)` and `module.compile(...)` get what `ccache_cli.compile`
returns, so unchanged programs run the stored AOT code.

Only calls that the active entries can serve exactly are routed: an nn.Module, or its
bound `forward` (`model.forward = torch.compile(model.forward)`), with the inductor
backend, no `options`, `dynamic` not True, and a mode some entry compiled; and a
function, method or decorated function whose compiled calls an active entry captured
(serve/functions.py). Anything else (another backend or mode, a function no entry
captured) goes to torch.compile untouched. Under `ccache run --capture`, function
compiles are captured (serve/function_capture.py) and modules left to torch.compile.
A routed model still falls back to the program's own torch.compile call, made lazily
with its own arguments, for calls the stored code cannot serve (other shapes, grad
enabled, training mode, changed sources).

Counts of routed and declined calls, with the reasons (decisions.py), go to the
entries' usage logs at exit (in_program/misses.py), where `inspect` shows them. `ccache run --no-route` or
CCACHE_CLI_ROUTE=0 turns routing off. Standard library only until torch is imported;
this module never imports torch itself.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import sys
from typing import Any

from ccache_cli.in_program.imports import when_imported
from ccache_cli.serve.decisions import count

ROUTE_ENV = "CCACHE_CLI_ROUTE"  # "0": leave torch.compile alone


def enabled() -> bool:
    return os.environ.get(ROUTE_ENV, "1") != "0"


def install_when_torch_is_imported() -> None:
    """Patch torch.compile now if torch is imported, else right after its import."""
    when_imported("torch", install)


def install(torch: Any) -> None:
    """Route `torch.compile` and `nn.Module.compile` (once per process; never raises)."""
    if getattr(torch.compile, "_ccache_cli_routed", False) or not hasattr(torch.nn.Module, "compile"):
        return
    original = torch.compile
    original_module_compile = torch.nn.Module.compile
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(original).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }

    @functools.wraps(original)
    def compile(model: Any = None, *args: Any, **kwargs: Any) -> Any:
        if model is None and not args:  # the decorator form: decided when it is applied
            return functools.partial(compile, **kwargs)
        from ccache_cli.serve import function_capture, functions

        if function_capture.capture_active():  # under `run --capture`: function compiles get stored code
            if args or isinstance(model, torch.nn.Module):
                return original(model, *args, **kwargs)
            return function_capture.capturing(torch, model, kwargs, original)
        module = _module_of_forward(torch, model)
        why = "positional arguments" if args else _declined(torch, module or model, kwargs, defaults)
        if why is not None and not args and not isinstance(model, torch.nn.Module):
            served, function_why = functions.serving(torch, model, kwargs, original, functions.active_functions())
            if served is not None:
                count("routed")
                return served
            why = function_why if module is None else f"{why}; {function_why}"
        if why is not None:
            count(f"declined: {why}")
            return original(model, *args, **kwargs)
        from ccache_cli.serve import api

        if module is not None:  # a module's bound forward, as transformers' generation recipe compiles
            return api.router(torch, module, kwargs, lambda: original(model, **kwargs))
        return api.routed_module(torch, model, kwargs, lambda: original(model, **kwargs))

    @functools.wraps(original_module_compile)
    def module_compile(self: Any, *args: Any, **kwargs: Any) -> None:
        why = "positional arguments" if args else _declined(torch, self, kwargs, defaults)
        if why is not None:
            count(f"declined: {why}")
            self._compiled_call_impl = original(self._call_impl, *args, **kwargs)  # what torch's own does
            return
        from ccache_cli.serve import api

        self._compiled_call_impl = api.router(torch, self, kwargs, lambda: original(self._call_impl, **kwargs))

    compile._ccache_cli_routed = True  # type: ignore[attr-defined]
    torch.compile = compile
    torch.nn.Module.compile = module_compile
    _no_cached_graphs_across_default_dtypes(torch)


def _no_cached_graphs_across_default_dtypes(torch: Any) -> None:
    """torch before 2.13 keys its FX-graph and AOTAutograd caches without the default
    dtype, so a torch.compile under another default dtype than the entries' would load
    their graphs and compute with them: there, a process that sets another default
    dtype compiles without those caches from then on."""
    if tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2]) >= (2, 13):
        return
    original = torch.set_default_dtype
    compiled_under = torch.get_default_dtype()

    @functools.wraps(original)
    def set_default_dtype(dtype: Any) -> None:
        original(dtype)
        if dtype != compiled_under:
            importlib.import_module("torch._inductor.config").fx_graph_cache = False
            importlib.import_module("torch._functorch.config").enable_autograd_cache = False

    torch.set_default_dtype = set_default_dtype


def _module_of_forward(torch: Any, function: Any) -> Any:
    """The module whose own `forward` `function` is, bound (`model.forward`); else None.
    The stored code of a module is its forward's, called with the module as `self`."""
    owner = getattr(function, "__self__", None)
    if not isinstance(owner, torch.nn.Module):
        return None
    return owner if getattr(function, "__func__", None) is getattr(type(owner), "forward", None) else None


# Arguments that change only how torch.compile compiles what the stored code does not serve.
_FALLBACK_ONLY = {"fullgraph", "name", "recompile_limit", "isolate_recompiles"}


def _declined(torch: Any, model: Any, kwargs: dict[str, Any], defaults: dict[str, Any]) -> str | None:
    """Why the active entries cannot serve this call exactly; None if they may."""
    if not isinstance(model, torch.nn.Module):
        return "not an nn.Module or its forward"
    if kwargs.get("disable"):
        return "disable=True"
    backend = kwargs.get("backend") or _default_backend()
    if backend != "inductor":
        return f"backend {getattr(backend, '__name__', backend)!r}"
    if kwargs.get("options"):
        return "options= given"
    if kwargs.get("dynamic"):
        return "dynamic=True"
    for name, value in kwargs.items():
        if name not in (*_FALLBACK_ONLY, "disable", "backend", "options", "dynamic", "mode") and (
            name not in defaults or value is not defaults[name]
        ):
            return f"argument {name}"
    from ccache_cli.serve import api

    modes = api.active_modes()
    if not modes:
        return "no active entry holds AOT code"
    mode = kwargs.get("mode") or "default"
    if mode not in modes:
        return f"mode {mode!r}: the active entries were compiled with {', '.join(sorted(modes))}"
    if not api.may_serve(model):
        return "no active entry was built for this model"
    return None


def _default_backend() -> Any:
    """torch.compile's backend when none is given (torch.compiler.set_default_backend)."""
    registry = sys.modules.get("torch._dynamo.backends.registry")
    get = getattr(registry, "get_default_backend", None)
    return get() if get is not None else "inductor"
