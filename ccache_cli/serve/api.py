"""`ccache_cli.compile`: a drop-in for `torch.compile` that runs the stored AOT code
of the active entries where it fits the call, else torch.compile on the warm caches.

A size's AOTInductor package is preferred: it loads without importing Dynamo or
Inductor and runs on the model's own parameters and buffers, bound by pointer. As a
package checks nothing of the model itself, it serves a call only where the traced
sources are unchanged, the model has the structure it was built for
(build/plan.model_structure), still holds the very tensors bound at load, in the same
module tree, no submodule is in training mode, and the inputs are those exported
(shapes, dtypes, keyword names; contiguous). Else the size's aot_compile function,
when torch's guards pass.

This module imports torch only inside `compile`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccache_cli.build import plan
from ccache_cli.hooked.usage import VIEW_ENV
from ccache_cli.key.sources import check, search_path
from ccache_cli.serve.views import ended_processes, read_description
from ccache_cli.store.manifest import Source


def compile(model: Any, *, mode: str | None = None, dynamic: bool = False, **torch_compile_kwargs: Any) -> Any:
    """A drop-in for `torch.compile(model)` (see `ccache_cli.compile`)."""
    import torch

    return _CompiledModel(torch, model, mode, dynamic, torch_compile_kwargs, _active_aot_functions())


def router(torch: Any, model: Any, kwargs: dict[str, Any], fallback: Callable[[], Any]) -> Any:
    """A routed `torch.compile(model, **kwargs)` (serve/routing.py): the stored code where
    it serves a call, else `fallback()`, the program's own torch.compile call, made once."""
    from ccache_cli.serve import routing

    routing.count("routed")
    options = {name: value for name, value in kwargs.items() if name not in ("mode", "dynamic")}
    return _CompiledModel(
        torch, model, kwargs.get("mode"), False, options, _active_aot_functions(), fallback, routing.count
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
    functions = _active_aot_functions()
    if any(function.function is not None for function in functions):
        return True
    structure = plan.model_structure(model)
    return any(function.structure == structure for function in functions if function.package is not None)


def active_modes() -> set[str]:
    """The compile modes of the active entries' AOT code."""
    return {function.mode for function in _active_aot_functions()}


@dataclass(frozen=True)
class _AotFunction:
    function: str | None  # an aot_compile function: needs Dynamo to load
    package: str | None  # an AOTInductor package of the same graph: loads without it
    device: str
    mode: str
    inputs: tuple[Any, ...]  # the signature of the calls it was compiled for (`_signature`)
    sources: tuple[Source, ...]
    structure: str | None  # the package's model (build/plan.model_structure)
    view: str
    built_with: tuple[Any, Any]  # the Python and torch versions of its key
    entry: str  # the id of the entry that holds it


def _active_aot_functions() -> list[_AotFunction]:
    view = os.environ.get(VIEW_ENV)
    if not view:
        return []
    return _aot_functions_in(view)


@functools.cache
def _aot_functions_in(view: str) -> list[_AotFunction]:
    try:
        description = read_description(view)
    except (OSError, ValueError, TypeError):
        return []
    functions = []
    for entry in description.entries:
        options = entry.compile
        if options.get("backend") != "inductor" or options.get("grad", True) or options.get("dynamic"):
            continue
        for size, paths in entry.aot.items():
            functions.append(
                _AotFunction(
                    function=str(Path(view) / paths["function"]) if "function" in paths else None,
                    package=str(Path(view) / paths["package"]) if "package" in paths else None,
                    device=options["device"],
                    mode=options.get("mode") or "default",
                    inputs=_signature_of_description(entry.inputs.get(size, [])),
                    sources=tuple(Source(**source) for source in entry.sources),
                    structure=entry.structure,
                    view=view,
                    built_with=(entry.fingerprint.get("python"), entry.fingerprint.get("torch")),
                    entry=entry.id,
                )
            )
    return functions


def _signature_of_description(described: list[dict[str, Any]]) -> tuple[Any, ...]:
    """The signature (`_CompiledModel._signature`) of calls with inputs as the key describes them."""

    def part(arg: dict[str, Any]) -> Any:
        return (tuple(arg["shape"]), arg["dtype"]) if "shape" in arg else ("value", arg["value"])

    positional = tuple(part(arg) for arg in described if "name" not in arg)
    named = tuple(sorted((arg["name"], part(arg)) for arg in described if "name" in arg))
    return positional, named


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
        aot_functions: list[_AotFunction],
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
        self._chosen: dict[Any, _Package | _GuardedFunction | None] = {}
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
    ) -> tuple[_Package | _GuardedFunction | None, str | None]:
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
        if not function.serves(self._model, args, kwargs):
            return None, (
                "model or inputs not as the stored code was built (training mode, hooks, new tensors, strides, guards)"
            )
        return function, None

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
    ) -> _Package | _GuardedFunction | None:
        wanted, devices = signature
        for candidate in self._aot:
            if candidate.inputs != wanted or not _runs_on(candidate, devices):
                continue
            if candidate.sources not in self._fresh_sources:
                statuses = check(candidate.sources, search_path())
                self._fresh_sources[candidate.sources] = all(status.state == "fresh" for status in statuses)
            if not self._fresh_sources[candidate.sources]:
                continue  # compiled from other code: never serve it
            if candidate.package is not None and candidate.structure == self._structure():
                with _unpacking_into(_package_scratch(candidate.view)):
                    package = _Package.load(
                        self._torch, candidate.package, devices[0] if devices else candidate.device, self._model
                    )
                if package is not None:
                    package.entry = candidate.entry
                    return package
            if candidate.function is not None and devices in ((), (candidate.device,)):
                self._torch._dynamo.config.enable_aot_compile = True
                with open(candidate.function, "rb") as handle:
                    function = self._torch.compiler.load_compiled_function(handle)
                return _GuardedFunction(function, candidate.entry)
        return None

    def _structure(self) -> str:
        """The model's structure (build/plan.model_structure), once: a package serves
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
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    stance = getattr(getattr(eval_frame, "_stance", None), "stance", "default")
    if stance != "default" or os.environ.get("TORCH_COMPILE_DISABLE") == "1":
        return f"torch.compile is set to {stance if stance != 'default' else 'disabled'}"
    return None


def _runs_on(candidate: _AotFunction, devices: tuple[str, ...]) -> bool:
    """Whether a stored function can serve a call on `devices`: its own device; for a
    package, any index of the same kind (the loader takes the index), so an entry
    built on cuda:0 serves a process on cuda:3."""
    if devices in ((), (candidate.device,)):
        return True
    return (
        candidate.package is not None
        and len(devices) == 1
        and devices[0].partition(":")[0] == candidate.device.partition(":")[0]
    )


def _package_scratch(view: str) -> str | None:
    """Where AOTInductor's loader unpacks packages for this process, `<view>/packages/<pid>`.

    torch unpacks each package into a new temp folder per process and never removes
    it; here they land in the view, and the folders of ended processes go.
    """
    root = os.path.join(view, "packages")
    try:
        os.makedirs(root, exist_ok=True)
        for name in ended_processes(root):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        mine = os.path.join(root, str(os.getpid()))
        os.makedirs(mine, exist_ok=True)
    except OSError:  # then torch's default temp folder
        return None
    return mine


@contextlib.contextmanager
def _unpacking_into(folder: str | None) -> Iterator[None]:
    """TMPDIR, which AOTInductor's loader unpacks into, set to `folder` meanwhile."""
    previous = os.environ.get("TMPDIR")
    if folder is not None:
        os.environ["TMPDIR"] = folder
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous


class _GuardedFunction:
    """An aot_compile function, serving the calls whose guards pass."""

    def __init__(self, function: Callable[..., Any], entry: str) -> None:
        self._function = function
        self.entry = entry

    def serves(self, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        return bool(self._function.guard_check(model, *args, **kwargs))

    def __call__(self, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._function(model, *args, **kwargs)


class _Package:
    """An AOTInductor package run on the model's own parameters and buffers.

    They are bound by pointer, never copied, so in-place updates (a new checkpoint
    loaded with `load_state_dict`) are seen. A call is served only while the model
    still holds those very tensors, in the same module tree, with no submodule in
    training mode, no forward hooks and contiguous inputs, as the package was built;
    anything else goes to torch.compile.
    """

    def __init__(
        self, torch: Any, loader: Any, model: Any, tensors: dict[str, tuple[dict[str, Any], str, Any]]
    ) -> None:
        self._loader = loader
        self._tensor_type = torch.Tensor
        self._global_hooks = torch.nn.modules.module
        pytree = torch.utils._pytree
        self._flatten, self._unflatten = pytree.tree_flatten, pytree.tree_unflatten
        in_spec, out_spec = loader.get_call_spec()
        self._in_spec = pytree.treespec_loads(in_spec)
        self._out_spec = pytree.treespec_loads(out_spec)
        # The keyword inputs' order the package was exported with.
        keywords = self._in_spec.child(1) if hasattr(self._in_spec, "child") else self._in_spec.children_specs[1]
        self._keywords = list(keywords.context or [])
        # What must stay as it was: every module under its parent, every bound tensor
        # in its module at the same address.
        self._modules = [
            (parent._modules, name, child) for parent in model.modules() for name, child in parent._modules.items()
        ]
        self._all_modules = list(model.modules())
        self._bound = [(slot, name, tensor, tensor.data_ptr()) for slot, name, tensor in tensors.values()]
        self.entry = ""  # the id of the entry that holds it, set by who loads it

    @classmethod
    def load(cls, torch: Any, path: str, device: str, model: Any) -> _Package | None:
        """The package bound to `model`, on `device`; None where it needs a tensor the model lacks."""
        loader = torch._C._aoti.AOTIModelPackageLoader(path, "model", False, 1, plan.package_device_index(device))
        owned: dict[str, tuple[dict[str, Any], str, Any]] = {}
        for prefix, module in model.named_modules(remove_duplicate=False):
            for slot in (module._parameters, module._buffers):
                for name, tensor in slot.items():
                    if tensor is not None:
                        owned[f"{prefix}.{name}" if prefix else name] = (slot, name, tensor)
        names = loader.get_constant_fqns()
        if any(name not in owned for name in names):
            return None
        tensors = {name: owned[name] for name in names}
        # use_inactive=False, check_full_update=True, user_managed=True: shared, never copied
        loader.load_constants({name: tensor for name, (_, _, tensor) in tensors.items()}, False, True, True)
        return cls(torch, loader, model, tensors)

    def serves(self, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        return (
            sorted(kwargs) == sorted(self._keywords)
            and all(
                slot.get(name) is tensor and tensor.data_ptr() == address for slot, name, tensor, address in self._bound
            )
            and all(children.get(name) is child for children, name, child in self._modules)
            and not any(module.training for module in self._all_modules)
            # The package runs the graph, not the modules: hooks would not run.
            and not any(module._forward_hooks or module._forward_pre_hooks for module in self._all_modules)
            and not (self._global_hooks._global_forward_hooks or self._global_hooks._global_forward_pre_hooks)
            and all(
                value.is_contiguous() for value in (*args, *kwargs.values()) if isinstance(value, self._tensor_type)
            )
        )

    def __call__(self, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        ordered = {name: kwargs[name] for name in self._keywords}
        leaves = self._flatten((args, ordered))[0]
        outputs = self._loader.boxed_run([leaf for leaf in leaves if isinstance(leaf, self._tensor_type)])
        return self._unflatten(outputs, self._out_spec)
