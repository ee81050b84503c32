"""The stored AOT code of the active entries, as `ccache_cli.compile` (serve/api.py)
runs it: what each view's description lists per size (an aot_compile function, an
AOTInductor package), and the two loaded: a function serving the calls its guards
pass, a package bound to the model's own tensors serving the calls it was built for.

Imports torch only through the `torch` its callers hand it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccache_cli.in_program.usage import VIEW_ENV
from ccache_cli.key.assumptions import Checker
from ccache_cli.precompile import plan
from ccache_cli.serve.cuda_graphs import CudaGraphs
from ccache_cli.serve.views import ended_processes, read_description
from ccache_cli.store.assumptions import SizeAssumptions
from ccache_cli.store.manifest import Source, range_bounds


@dataclass(frozen=True)
class AotFunction:
    function: str | None  # an aot_compile function: needs Dynamo to load
    package: str | None  # an AOTInductor package of the same graph: loads without it
    device: str
    mode: str
    inputs: tuple[Any, ...]  # the signature of the calls it was compiled for (`_signature`)
    sources: tuple[Source, ...]
    structure: str | None  # the package's model (precompile/plan.model_structure)
    view: str
    built_with: tuple[Any, Any]  # the Python and torch versions of its key
    entry: str  # the id of the entry that holds it
    name: str  # that entry's name
    assumptions: SizeAssumptions | None  # what it assumes of the program (None: not recorded, never served)


def active_aot_functions() -> list[AotFunction]:
    view = os.environ.get(VIEW_ENV)
    if not view:
        return []
    return aot_functions_in(view)


@functools.cache
def aot_functions_in(view: str) -> list[AotFunction]:
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
                AotFunction(
                    function=str(Path(view) / paths["function"]) if "function" in paths else None,
                    package=str(Path(view) / paths["package"]) if "package" in paths else None,
                    device=options["device"],
                    mode=options.get("mode") or "default",
                    inputs=signature_of_description(entry.inputs.get(size, [])),
                    sources=tuple(Source(**source) for source in entry.sources),
                    structure=entry.structure,
                    view=view,
                    built_with=(entry.fingerprint.get("python"), entry.fingerprint.get("torch")),
                    entry=entry.id,
                    name=entry.name,
                    assumptions=(
                        SizeAssumptions.from_json(entry.assumptions[size]) if size in entry.assumptions else None
                    ),
                )
            )
    return functions


def signature_of_description(described: list[dict[str, Any]]) -> tuple[Any, ...]:
    """The signature (`api._CompiledModel._signature`) of calls with inputs as the key describes them."""

    def part(arg: dict[str, Any]) -> Any:
        return (tuple(arg["shape"]), arg["dtype"]) if "shape" in arg else ("value", arg["value"])

    positional = tuple(part(arg) for arg in described if "name" not in arg)
    named = tuple(sorted((arg["name"], part(arg)) for arg in described if "name" in arg))
    return positional, named


def serves_signature(stored: tuple[Any, ...], wanted: tuple[Any, ...]) -> bool:
    """Whether calls of signature `wanted` are the ones stored code was built for: the
    same, or for a range's package the same but for one batch size, within the range,
    wherever the description reads `low-high`."""
    if stored == wanted:
        return True
    batch: set[int] = set()

    def fits(stored_part: Any, wanted_part: Any) -> bool:
        (shape, dtype), (wanted_shape, wanted_dtype) = stored_part, wanted_part
        if shape == "value" or dtype != wanted_dtype or len(shape) != len(wanted_shape):
            return stored_part == wanted_part
        for dim, wanted_dim in zip(shape, wanted_shape):
            if isinstance(dim, str):
                low, high = range_bounds(dim)
                if not low <= wanted_dim <= high:
                    return False
                batch.add(wanted_dim)
            elif dim != wanted_dim:
                return False
        return True

    (positional, named), (wanted_positional, wanted_named) = stored, wanted
    return (
        len(positional) == len(wanted_positional)
        and [name for name, _ in named] == [name for name, _ in wanted_named]
        and all(map(fits, positional, wanted_positional))
        and all(fits(part, wanted_part) for (_, part), (_, wanted_part) in zip(named, wanted_named))
        and len(batch) <= 1  # one batch size throughout the call
    )


def runs_on(candidate: AotFunction, devices: tuple[str, ...]) -> bool:
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


def package_scratch(view: str) -> str | None:
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
def unpacking_into(folder: str | None) -> Iterator[None]:
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


class _ForEntry:
    """What stored code knows of the entry that holds it: its id and name, and the
    check of what it assumes of the program (None: nothing recorded, never served)."""

    entry = ""
    name = ""
    checker: Checker | None = None

    def for_entry(self, candidate: AotFunction, checker: Checker | None) -> Any:
        self.entry, self.name, self.checker = candidate.entry, candidate.name, checker
        return self


def guards_hold(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a saved function's Dynamo guards hold for the call (a function's, served or
    captured, or a module's forward); not where its saved signature cannot bind the
    arguments (Python 3.11's binds no keyword named like a positional-only parameter into
    `**kwargs`), which torch.compile's own call takes."""
    try:
        return function.guard_check(*args, **kwargs)
    except TypeError:
        return False


class GuardedFunction(_ForEntry):
    """An aot_compile function, serving the calls whose guards pass (its own guards
    drop every global one: the entry's assumptions check those)."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self._function = function

    def serves(self, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        return bool(guards_hold(self._function, (model, *args), kwargs))

    def __call__(self, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._function(model, *args, **kwargs)


class PackageUnbound(Exception):
    """A package needs a tensor the model does not hold: it cannot serve that model."""


class Package(_ForEntry):
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
        self._run: Callable[[list[Any]], list[Any]] = loader.boxed_run
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

    @classmethod
    def load(
        cls, torch: Any, path: str, device: str, model: Any, cuda_graphs: Callable[[str], None] | None = None
    ) -> Package:
        """The package bound to `model`, on `device` (PackageUnbound where it needs a
        tensor the model lacks). With `cuda_graphs`, its runs are replayed from CUDA
        graphs (serve/cuda_graphs.py), and `cuda_graphs` is told what became of them."""
        # Single-threaded: no synchronisation between runs, which a recording cannot hold
        # (the graphs' lock orders the calls).
        single_threaded = cuda_graphs is not None
        index = plan.package_device_index(device)
        loader = torch._C._aoti.AOTIModelPackageLoader(path, "model", single_threaded, 1, index)
        owned: dict[str, tuple[dict[str, Any], str, Any]] = {}
        for prefix, module in model.named_modules(remove_duplicate=False):
            for slot in (module._parameters, module._buffers):
                for name, tensor in slot.items():
                    if tensor is not None:
                        owned[f"{prefix}.{name}" if prefix else name] = (slot, name, tensor)
        names = loader.get_constant_fqns()
        missing = [name for name in names if name not in owned]
        if missing:
            raise PackageUnbound(
                f"its package binds {len(missing)} tensor(s) the model does not hold ({', '.join(missing[:3])})"
            )
        tensors = {name: owned[name] for name in names}
        # use_inactive=False, check_full_update=True, user_managed=True: shared, never copied
        loader.load_constants({name: tensor for name, (_, _, tensor) in tensors.items()}, False, True, True)
        package = cls(torch, loader, model, tensors)
        if cuda_graphs is not None:
            package._run = CudaGraphs(torch, loader.boxed_run, cuda_graphs)
        return package

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
        outputs = self._run([leaf for leaf in leaves if isinstance(leaf, self._tensor_type)])
        return self._unflatten(outputs, self._out_spec)
