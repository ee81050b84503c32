"""`ccache_cli.compile`: a drop-in for `torch.compile` that runs the stored AOT code
of the active entries where it fits the call, else torch.compile on the warm caches.

A size's AOTInductor package is preferred: it loads without importing Dynamo or
Inductor and runs on the model's own parameters and buffers, bound by pointer. As a
package checks nothing of the model itself, it serves a call only where the traced
sources are unchanged, the model has the structure it was built for
(precompile/plan.model_structure), still holds the very tensors bound at load, in the same
module tree, no submodule is in training mode, and the inputs are those exported
(shapes, dtypes, keyword names; contiguous; for a range's package, one batch size
within its range). Else the size's aot_compile function, when torch's guards pass.

This module imports torch only inside `compile`.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable
from typing import Any

from ccache_cli.key.assumptions import Checker
from ccache_cli.key.sources import all_fresh, search_path
from ccache_cli.precompile import plan
from ccache_cli.serve import decisions, stored_code
from ccache_cli.store.manifest import Source


def compile(model: Any, *, mode: str | None = None, dynamic: bool = False, **torch_compile_kwargs: Any) -> Any:
    """A drop-in for `torch.compile(model)` (see `ccache_cli.compile`)."""
    import torch

    return _CompiledModel(
        torch, model, mode, dynamic, torch_compile_kwargs, stored_code.active_aot_functions(), count=decisions.count
    )


def router(torch: Any, model: Any, kwargs: dict[str, Any], fallback: Callable[[], Any]) -> Any:
    """A routed `torch.compile(model, **kwargs)` (serve/routing.py): the stored code where
    it serves a call, else `fallback()`, the program's own torch.compile call, made once."""
    decisions.count("routed")
    options = {name: value for name, value in kwargs.items() if name not in ("mode", "dynamic")}
    return _CompiledModel(
        torch, model, kwargs.get("mode"), False, options, stored_code.active_aot_functions(), fallback, decisions.count
    )


def routed_module(torch: Any, model: Any, kwargs: dict[str, Any], fallback: Callable[[], Any]) -> Any:
    """`router` as an nn.Module that wraps `model` as torch's OptimizedModule does
    (`_orig_mod`, its attributes and training flag, `.eval()` returning the wrapper,
    copied and pickled as the model compiled again), so that code written for what
    torch.compile returns works unchanged."""
    return _routed_module_class(torch)(model, router(torch, model, kwargs, fallback), kwargs)


def _compiled_again(model: Any, kwargs: dict[str, Any]) -> Any:
    """What a copied or unpickled routed module becomes: `torch.compile(model, **kwargs)`."""
    import torch

    return torch.compile(model, **kwargs)


@functools.cache
def _routed_module_class(torch: Any) -> type:
    class RoutedModule(torch.nn.Module):
        def __init__(self, model: Any, call: Any, kwargs: dict[str, Any]) -> None:
            super().__init__()
            self._orig_mod = model
            self._ccache_cli_call = call
            self._ccache_cli_kwargs = kwargs

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self._ccache_cli_call(*args, **kwargs)

        @property  # type: ignore[override]
        def training(self) -> bool:
            return self._orig_mod.training

        @training.setter
        def training(self, value: bool) -> None:
            if "_orig_mod" in self.__dict__.get("_modules", {}):  # nn.Module.__init__ sets it first
                self._orig_mod.training = value

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                if name in ("_orig_mod", "_modules") or name.startswith("__"):
                    raise
                return getattr(self._orig_mod, name)

        def __reduce__(self) -> Any:
            return _compiled_again, (self._orig_mod, self._ccache_cli_kwargs)

    RoutedModule.__module__ = __name__
    return RoutedModule


def may_serve(model: Any) -> bool:
    """Whether some active entry's stored code may serve `model`: a package built for a
    model of its structure, or a function whose guards will tell."""
    functions = stored_code.active_aot_functions()
    if any(function.function is not None for function in functions):
        return True
    structure = plan.model_structure(model)
    return any(function.structure == structure for function in functions if function.package is not None)


def active_modes() -> set[str]:
    """The compile modes of the active entries' AOT code."""
    return {function.mode for function in stored_code.active_aot_functions()}


class _CompiledModel:
    """Calls `model` through a stored AOT function when one was compiled for these
    inputs (and its traced sources are unchanged), else through torch.compile, which
    hits the warm caches. The choice is made once per input signature."""

    def __init__(
        self,
        torch: Any,
        model: Any,
        mode: str | None,
        dynamic: bool,
        kwargs: dict[str, Any],
        aot_functions: list[stored_code.AotFunction],
        fallback: Callable[[], Any] | None = None,
        count: Callable[..., None] = lambda *_: None,
    ) -> None:
        self._torch = torch
        self._model = model
        self._mode = mode or "default"
        self._dynamic = dynamic
        self._kwargs = kwargs
        # Stored functions are static graphs from Inductor's default options.
        plain = not dynamic and kwargs.get("backend", "inductor") == "inductor" and not kwargs.get("options")
        # Code of the running Python and torch only: activation chose entries from
        # what it could read without them, and this process may run another.
        running = (platform.python_version(), torch.__version__)
        self._aot = [f for f in aot_functions if f.mode == self._mode and f.built_with == running] if plain else []
        self._chosen: dict[Any, stored_code.Package | stored_code.GuardedFunction | None] = {}
        self._packages: dict[tuple[str, str], stored_code.Package | None] = {}  # loaded, by path and device
        # Under the once policy, per signature, whether the stored code's assumptions
        # held (None) or why not, checked at its first call and whenever the forward
        # changes (_forward), with the forward as the check saw it. (The default policy
        # checks them on every call.)
        self._assumed: dict[Any, str | None] = {}
        self._checked_forward: dict[Any, tuple[Any, ...]] = {}
        self._every_call = decisions.guard_policy() == "every-call"
        self._fresh_sources: dict[tuple[Source, ...], bool] = {}
        self._compiled: Any = None
        self._model_structure: str | None = None
        self._fallback = fallback
        self._count = count

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        chosen, why = self._serving(args, kwargs)
        if chosen is not None:
            self._count("served", chosen.entry)
            return chosen(self._model, args, kwargs)
        self._count(f"fallback: {why}")
        return self._torch_compiled()(*args, **kwargs)

    def _serving(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[stored_code.Package | stored_code.GuardedFunction | None, str | None]:
        """The stored code that serves this call, or why none does."""
        torch = self._torch
        if not self._aot:
            return None, "no stored code for its compile options"
        if torch.is_grad_enabled():
            return None, "grad enabled"
        state = _state_torch_compile_would_see(torch)
        if state is not None:
            return None, state
        try:
            signature = self._signature(args, kwargs)
            hash(signature)
        except TypeError:
            return None, "inputs that are not tensors or plain values"
        if signature not in self._chosen:
            try:
                self._chosen[signature] = self._load_aot(signature, args, kwargs)
            except Exception as exc:  # a package or function this torch cannot load: torch.compile serves
                self._chosen[signature] = None
                self._count(f"fallback: stored code failed to load ({type(exc).__name__})")
        function = self._chosen[signature]
        if function is None:
            return None, "no stored code for these inputs"
        why = None if self._every_call else self._assumed.get(signature)  # refused once: for good, at no cost
        # A forward set on the model itself (a library's hook or wrapper) is what a call
        # runs, and the stored code is its class's (a routed bound forward is this object).
        own_forward = getattr(self._model, "__dict__", {}).get("forward")
        if why is None and own_forward is not None and own_forward is not self:
            why = "its forward is set on the model itself (a hook or wrapper); the stored code is its class's"
        if why is None:
            if not function.serves(self._model, args, kwargs):
                return None, (
                    "model or inputs not as the stored code was built (training mode, hooks, new tensors, strides, guards)"
                )
            why = self._assumption_mismatch(signature, function, args, kwargs)
        if why is not None:
            decisions.refuse(function.entry, f"entry {function.name}: {why}")
            return None, "an assumption of the stored code does not hold"
        return function, None

    def _assumption_mismatch(
        self, signature: Any, function: stored_code.Package | stored_code.GuardedFunction, args: Any, kwargs: Any
    ) -> str | None:
        """Why the stored code would not compute what torch.compile would for this call:
        torch's global state and the forward's identity on every call; the model, its
        code and its module's globals on every call too, or under the once policy at a
        size's first call and when the forward changed (key/assumptions.py)."""
        checker = function.checker
        if checker is None:
            return (
                "it records no assumptions of this size's stored code (precompiled by an older ccache-cli): "
                "precompile it again"
            )
        why = checker.state_mismatch()
        if why is not None:
            return why
        if self._every_call:
            return checker.program_mismatch(self._model, args, kwargs)
        forward, checked = self._forward(), self._checked_forward.get(signature, ())
        if not checked or any(now is not then for now, then in zip(forward, checked)):
            self._assumed[signature] = checker.program_mismatch(self._model, args, kwargs)
            self._checked_forward[signature] = forward
        return self._assumed[signature]

    def _forward(self) -> tuple[Any, ...]:
        """The traced forward as it is now: its class's function, and that function's code
        and defaults (a program that patches one between calls gets the model's
        assumptions checked again)."""
        function = type(self._model).forward
        return (
            function,
            getattr(function, "__code__", None),
            getattr(function, "__defaults__", None),
            getattr(function, "__kwdefaults__", None),
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_model":  # copy and pickle probe before __init__ ran
            raise AttributeError(name)
        return getattr(self._model, name)

    def _signature(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """What a stored function must have been compiled for to serve this call: each
        input's shape and dtype (tensors) or value, keyword inputs by name; and the
        devices of the tensors."""
        tensor = self._torch.Tensor

        def part(value: Any) -> Any:
            return (tuple(value.shape), str(value.dtype)) if isinstance(value, tensor) else ("value", value)

        devices = tuple(sorted({str(value.device) for value in (*args, *kwargs.values()) if isinstance(value, tensor)}))
        return (tuple(map(part, args)), tuple(sorted((name, part(value)) for name, value in kwargs.items()))), devices

    def _load_aot(
        self, signature: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> stored_code.Package | stored_code.GuardedFunction | None:
        wanted, devices = signature
        # A size's own stored code first, then a range's package that serves it too.
        for candidate in sorted(self._aot, key=lambda candidate: candidate.inputs != wanted):
            if not stored_code.serves_signature(candidate.inputs, wanted) or not stored_code.runs_on(
                candidate, devices
            ):
                continue
            if candidate.sources not in self._fresh_sources:
                self._fresh_sources[candidate.sources] = all_fresh(candidate.sources, search_path())
            if not self._fresh_sources[candidate.sources]:
                continue  # compiled from other code: never serve it
            if candidate.package is not None and candidate.structure != self._structure():
                self._count("package not used: it was built for a model of another structure")
            elif candidate.package is not None:
                device = devices[0] if devices else candidate.device
                if (candidate.package, device) not in self._packages:  # a range's serves many signatures
                    try:
                        with stored_code.unpacking_into(stored_code.package_scratch(candidate.view)):
                            loaded = stored_code.Package.load(
                                self._torch,
                                candidate.package,
                                device,
                                self._model,
                                self._cuda_graphs(candidate, device),
                            )
                        self._packages[candidate.package, device] = loaded.for_entry(
                            candidate, self._checker(candidate)
                        )
                    except stored_code.PackageUnbound as exc:  # said: else a function serves, or torch.compile
                        self._packages[candidate.package, device] = None
                        self._count(f"package not used: {exc}")
                if (package := self._packages[candidate.package, device]) is not None:
                    return package
            if candidate.function is not None and devices in ((), (candidate.device,)):
                self._torch._dynamo.config.enable_aot_compile = True
                with open(candidate.function, "rb") as handle:
                    function = self._torch.compiler.load_compiled_function(handle)
                return stored_code.GuardedFunction(function).for_entry(candidate, self._checker(candidate))
        return None

    def _cuda_graphs(self, candidate: stored_code.AotFunction, device: str) -> Callable[[str], None] | None:
        """Where a package of a mode that records CUDA graphs runs on a GPU, what records
        them is told of them through this (the usage log's counts); else None."""
        return self._count if candidate.mode in plan.CUDA_GRAPH_MODES and device.startswith("cuda") else None

    def _checker(self, candidate: stored_code.AotFunction) -> Checker | None:
        return None if candidate.assumptions is None else Checker(self._torch, candidate.assumptions)

    def _structure(self) -> str:
        """The model's structure (precompile/plan.model_structure), once: a package serves
        only the model it was built for, not another layer count or dtype."""
        if self._model_structure is None:
            self._model_structure = plan.model_structure(self._model)
        return self._model_structure

    def _torch_compiled(self) -> Any:
        if self._compiled is None and self._fallback is not None:
            self._compiled = self._fallback()
        if self._compiled is None:
            # One static graph per batch size, as precompile stored them.
            self._compiled = plan.torch_compile(
                self._torch, self._model, self._mode, 64, dynamic=self._dynamic, **self._kwargs
            )
        return self._compiled


def _state_torch_compile_would_see(torch: Any) -> str | None:
    """Process state under which torch.compile would run something else than the stored
    graph: autocast, an active dispatch mode (fake tensors, export), a disabled compiler."""
    if any(torch.is_autocast_enabled(kind) for kind in ("cpu", "cuda")):
        return "autocast enabled"
    if torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None or (
        torch._C._len_torch_dispatch_stack() > 0
    ):
        return "a dispatch mode is active"
    return decisions.compiler_stance()
