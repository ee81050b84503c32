"""Activate stored entries for a process: a writable view, its environment, AOT loading.

A view is a folder of real directories whose files are symbolic links to the store's
read-only blobs: `inductor/` (the Inductor, Triton and AOTAutograd caches, used as
TORCHINDUCTOR_CACHE_DIR), `aot/<entry>/size-N.pt` (the AOT-compiled functions) and
`bytecode/` (the stored .pyc files laid out as a PYTHONPYCACHEPREFIX tree for where
their modules live in this environment; see bytecode.py), plus `activation.json`,
which tells `ccache_cli.compile` in the running process what it holds, so that process
never needs the store.

Why links are safe: torch writes every cache file at run time as a new file that it
moves into place (`write_atomic`, Triton's `FileCacheManager.put`, Python's own .pyc
writes), which replaces the
link in the view and never touches the blob it pointed to; the one file torch appends
to in its cache folder (a `.done` marker after a fresh compile) is never a stored file.
Links also work across file systems and when the store is read-only, as in an image
layer. A view is built once per store and set of entries, under a temporary name
that is renamed into place, and shared by the processes that use it; what they add
to it (fresh compiles of shapes the entries lack) stays there for the next process.

This module imports torch only inside `compile`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from ccache_cli.build import plan
from ccache_cli.hooked import bytecode, fingerprint, misses, relocate, usage
from ccache_cli.store import owners
from ccache_cli.store.artifacts import AOT_PREFIX
from ccache_cli.errors import BadInputError, EntryNotFoundError
from ccache_cli.store.hashing import hash_json
from ccache_cli.key.compat import fits, this_machine
from ccache_cli.store.manifest import inside
from ccache_cli.key.sources import check, search_path
from ccache_cli.store.store import Entry, Source, Store

VIEW_ENV = "CCACHE_CLI_VIEW"  # set in an activated process: the view it uses
COMPILED_AT_ENV = "CCACHE_CLI_COMPILED_AT"  # the folders the active entries were compiled in
BYTECODE_ENV = "CCACHE_CLI_BYTECODE"  # 0: do not serve stored bytecode
_STARTUP_HOOK_DIR = Path(__file__).resolve().parent.parent / "startup_hook"
VIEWS_ENV = "CCACHE_CLI_VIEWS"  # where views are made
ACTIVATION_FILE = "activation.json"
INDUCTOR_PREFIX = "inductor/"


@dataclass(frozen=True)
class Activation:
    """Entries made available to a process, and the environment that does it."""

    entries: tuple[Entry, ...]
    view: Path
    set_env: dict[str, str]
    unset_env: tuple[str, ...]
    bytecode_modules: int  # modules whose stored bytecode the view serves
    replaced: dict[str, str]  # a user's own settings this activation replaces: say so

    def apply(self, environ: dict[str, str] | os._Environ[str]) -> None:
        for name in self.unset_env:
            environ.pop(name, None)
        environ.update(self.set_env)

    def shell_exports(self) -> str:
        lines = [f"export {name}={shlex.quote(value)}" for name, value in self.set_env.items()]
        return "\n".join([*lines, *(f"unset {name}" for name in self.unset_env)]) + "\n"


def start(store: Store, refs: Sequence[str]) -> Activation:
    """Make the named entries (default: all that fit) active in this process's
    environment, for a command about to be exec'd in its place (`ccache run`)."""
    active = activation(store, select_entries(store, refs))
    register_user(active, store, "run")  # exec keeps the pid: gc sees the command as the user
    active.apply(os.environ)
    # The start-up hook adds each Python process's cache hits and misses at exit, and
    # says why where it missed.
    os.environ[usage.LOGS_ENV] = os.pathsep.join(usage.log_paths(store, [entry.id for entry in active.entries]))
    os.environ["PYTHONPATH"] = with_startup_hook(os.environ.get("PYTHONPATH"))
    return active


def replaced_warnings(active: Activation) -> list[str]:
    return [f"{name}={previous} is replaced by the stored bytecode tree ({BYTECODE_ENV}=0 keeps yours)"
            for name, previous in active.replaced.items()]


def exec_command(command: Sequence[str]) -> NoReturn:
    """Replace this process with `command`: its exit code, its signals."""
    try:
        os.execvp(command[0], list(command))
    except FileNotFoundError:
        raise BadInputError(f"command not found: {command[0]}") from None


def with_startup_hook(pythonpath: str | None) -> str:
    """PYTHONPATH with ccache-cli's start-up hook (a `sitecustomize`) first: under
    `ccache run` it records usage results, under `--capture` what the key needs."""
    return os.pathsep.join(filter(None, [str(_STARTUP_HOOK_DIR), pythonpath]))


def register_user(active: Activation, store: Store, by: str) -> None:
    """Mark the view as used by this process (gc keeps its entries while it runs) and
    record the use. Neither may stop a program: a read-only place is skipped."""
    users = active.view / "users"
    try:
        users.mkdir(exist_ok=True)
        for name in _ended_processes(users):
            os.unlink(users / name)
        (users / str(os.getpid())).touch()
    except OSError:
        pass
    usage.record(store, [entry.id for entry in active.entries], by)


def _ended_processes(folder: str | Path) -> list[str]:
    """The names in `folder` that are ids of processes that have ended."""
    return [name for name in os.listdir(folder) if name.isdigit() and not owners.is_alive(int(name))]


def select_entries(store: Store, refs: Sequence[str] = ()) -> list[Entry]:
    """The named entries, or every entry that fits this machine."""
    if refs:
        return [store.find(ref) for ref in refs]
    entries = store.scan().entries
    fitting = fits(entries, *this_machine(store))
    if not fitting:
        what = f"none of its {len(entries)} entries fits this machine" if entries else "it holds no entries"
        raise EntryNotFoundError(f"nothing to activate in store {store.root}: {what} (run `ccache inspect`)")
    return fitting


def activation(store: Store, entries: Sequence[Entry]) -> Activation:
    """The environment that makes `entries` active, building their view if needed.

    The stored bytecode is served through PYTHONPYCACHEPREFIX unless
    CCACHE_CLI_BYTECODE=0; a PYTHONPYCACHEPREFIX of the user's is replaced, and
    reported in `replaced` so that the caller says so.
    """
    view, bytecode_modules = ensure_view(store, entries)
    # Triton then keeps its kernels inside the Inductor cache, as at precompile time.
    set_env = {"TORCHINDUCTOR_CACHE_DIR": str(view / "inductor"), VIEW_ENV: str(view)}
    compiled_at = sorted({entry.manifest["compiled_at"] for entry in entries if entry.manifest.get("compiled_at")})
    if compiled_at:  # where autotuning results are looked up (relocate.py)
        set_env[COMPILED_AT_ENV] = os.pathsep.join(compiled_at)
    # Inductor settings the entries were compiled with are part of every graph's cache
    # key: the ones they agree on, and the user has not set, are set as they were.
    for name, value in _agreed_inductor_env(entries).items():
        if name not in os.environ:
            set_env[name] = value
    replaced = {}
    if bytecode_modules and os.environ.get(BYTECODE_ENV, "1") != "0":
        set_env["PYTHONPYCACHEPREFIX"] = str(view / "bytecode")
        if os.environ.get("PYTHONPYCACHEPREFIX") not in (None, "", set_env["PYTHONPYCACHEPREFIX"]):
            replaced["PYTHONPYCACHEPREFIX"] = os.environ["PYTHONPYCACHEPREFIX"]
    return Activation(tuple(entries), view, set_env, ("TRITON_CACHE_DIR",), bytecode_modules, replaced)


def _agreed_inductor_env(entries: Sequence[Entry]) -> dict[str, str]:
    """The TORCHINDUCTOR_* settings every entry that records them was compiled with."""
    recorded = [entry.manifest["key"]["compile"].get("inductor_env") for entry in entries]
    settings = [dict(env) for env in recorded if isinstance(env, dict)]
    if not settings:
        return {}
    return {name: value for name, value in settings[0].items() if all(other.get(name) == value for other in settings[1:])}


# Part of a view's name: a view laid out by another version of this code is not reused.
_VIEW_LAYOUT = 3  # 2: activation.json lists each size's AOT function and package; 3: the model structure


def ensure_view(store: Store, entries: Sequence[Entry]) -> tuple[Path, int]:
    """The shared writable view of `entries`, made if missing (atomically), and the
    number of modules whose bytecode it serves."""
    root = views_root()
    # Where this environment's modules live decides the bytecode tree's layout.
    roots: dict[str, str | None] = {}
    for entry in entries:
        for stored in entry.manifest.get("bytecode", {}).values():
            bytecode.source_root(stored["module"], roots, every_finder=False)  # on every start: fast
    # Keyed on content too: an entry id names a key, not the exact files stored for it.
    contents = sorted((e.id, hash_json(e.manifest["files"])) for e in entries)
    view = root / hash_json({"layout": _VIEW_LAYOUT, "store": str(store.root.resolve()), "entries": contents,
                             "roots": roots})[:24]
    if (view / ACTIVATION_FILE).is_file():
        return view, json.loads((view / ACTIVATION_FILE).read_text())["bytecode_modules"]
    building = root / f".building-{uuid.uuid4().hex}"
    building.mkdir(parents=True)
    try:
        description = _link_files(store, entries, building, roots)
        (building / ACTIVATION_FILE).write_text(json.dumps(description, indent=1, sort_keys=True))
        try:
            os.rename(building, view)
        except OSError:  # another process made it first; use theirs
            if not (view / ACTIVATION_FILE).is_file():
                raise
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return view, description["bytecode_modules"]


def views_root() -> Path:
    """Where views live: $CCACHE_CLI_VIEWS, else a private folder in the temp dir."""
    if env := os.environ.get(VIEWS_ENV):
        return Path(env)
    root = Path(tempfile.gettempdir()) / f"ccache-cli-{os.getuid()}" / "views"
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root.parent, 0o700)
    return root


def _link_files(store: Store, entries: Sequence[Entry], view: Path, roots: dict[str, str | None]) -> dict[str, Any]:
    described = []
    made: set[str] = set()
    bytecode_modules = 0
    for entry in entries:
        aot: dict[str, dict[str, str]] = {}  # size -> {"function": path, "package": path}
        stored_bytecode = entry.manifest.get("bytecode", {})
        for path, ref in entry.files.items():
            if path.startswith(INDUCTOR_PREFIX):
                target = path
            elif path in stored_bytecode:
                placed = bytecode.prefix_path(path, stored_bytecode[path]["module"], roots)
                if placed is None:  # not importable here: nothing would read it
                    continue
                target = f"bytecode/{placed}"
                bytecode_modules += target not in made
            elif path.startswith(AOT_PREFIX):
                target = f"aot/{entry.id}/{path[len(AOT_PREFIX):]}"
                size = Path(path).stem.removeprefix("size-")
                aot.setdefault(size, {})["package" if path.endswith(".pt2") else "function"] = target
            else:
                continue
            if target in made:  # the same cache file from two entries: content-keyed alike
                continue
            link = inside(view, target)
            parent = str(link.parent)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            os.symlink(store.blob_file(ref.sha256), link)
            made.add(target)
        key = entry.manifest["key"]
        described.append({
            "id": entry.id,
            "name": entry.name,
            "compile": key["compile"],
            "inputs": key.get("inputs", {}),
            "model": key.get("model"),
            "sources": key["sources"],
            "fingerprint": key["fingerprint"],
            "aot": aot,
            "structure": (entry.manifest["aot"].get("packages") or {}).get("model"),
        })
    (view / "inductor").mkdir(exist_ok=True)
    return {"store": str(store.root), "entries": described, "bytecode_modules": bytecode_modules}


def export_bytecode(store: Store, entry: Entry, dest: Path) -> int:
    """Copy the entry's bytecode into `dest` as a PYTHONPYCACHEPREFIX tree for this
    environment (as a view lays it out); returns the number of modules."""
    roots: dict[str, str | None] = {}
    count = 0
    for path, info in entry.manifest.get("bytecode", {}).items():
        placed = bytecode.prefix_path(path, info["module"], roots)
        if placed is None or path not in entry.files:
            continue
        target = inside(dest, placed)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store.blob_file(entry.files[path].sha256), target)
        count += 1
    return count


def activate(store: Store | str | os.PathLike[str] | None = None, entry: str | Sequence[str] | None = None) -> Activation:
    """Make stored entries active in this process (see `ccache_cli.activate`)."""
    store = store if isinstance(store, Store) else Store(store)
    refs = [entry] if isinstance(entry, str) else list(entry or ())
    active = activation(store, select_entries(store, refs))
    active.apply(os.environ)
    register_user(active, store, "activate")
    if "PYTHONPYCACHEPREFIX" in active.set_env and sys.pycache_prefix is None:
        sys.pycache_prefix = active.set_env["PYTHONPYCACHEPREFIX"]  # for the modules this process imports next
    for name, previous in active.replaced.items():
        warnings.warn(f"ccache_cli.activate() replaced {name}={previous}", stacklevel=2)
    relocate.install(active.set_env.get(COMPILED_AT_ENV, "").split(os.pathsep), active.set_env["TORCHINDUCTOR_CACHE_DIR"])
    atexit.register(misses.report_at_exit, str(active.view), usage.log_paths(store, [e.id for e in active.entries]),
                    fingerprint, usage, "activate")
    return active


# -- compile: stored AOT functions first, torch.compile on the warm caches after --------


def compile(model: Any, *, mode: str | None = None, dynamic: bool = False, **torch_compile_kwargs: Any) -> Any:
    """A drop-in for `torch.compile(model)` (see `ccache_cli.compile`)."""
    import torch

    return _CompiledModel(torch, model, mode, dynamic, torch_compile_kwargs, _active_aot_functions())


@dataclass(frozen=True)
class _AotFunction:
    function: str | None  # an aot_compile function: needs Dynamo to load
    package: str | None  # an AOTInductor package of the same graph: loads without it
    device: str
    mode: str
    inputs: tuple[Any, ...]  # the signature of the calls it was compiled for (`_signature`)
    sources: tuple[Source, ...]
    structure: str | None  # the package's model (compile_plan.model_structure)
    view: str


def _active_aot_functions() -> list[_AotFunction]:
    view = os.environ.get(VIEW_ENV)
    if not view:
        return []
    try:
        description = json.loads((Path(view) / ACTIVATION_FILE).read_text())
    except (OSError, ValueError):
        return []
    functions = []
    for entry in description["entries"]:
        options = entry["compile"]
        if options.get("backend") != "inductor" or options.get("grad", True) or options.get("dynamic"):
            continue
        for size, paths in entry["aot"].items():
            functions.append(_AotFunction(
                function=str(Path(view) / paths["function"]) if "function" in paths else None,
                package=str(Path(view) / paths["package"]) if "package" in paths else None,
                device=options["device"],
                mode=options.get("mode") or "default",
                inputs=_signature_of_description(entry["inputs"].get(size, [])),
                sources=tuple(Source(**source) for source in entry["sources"]),
                structure=entry.get("structure"),
                view=view,
            ))
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

    def __init__(self, torch: Any, model: Any, mode: str | None, dynamic: bool, kwargs: dict[str, Any],
                 aot_functions: list[_AotFunction]) -> None:
        self._torch = torch
        self._model = model
        self._mode = mode or "default"
        self._dynamic = dynamic
        self._kwargs = kwargs
        # Stored functions are static graphs from Inductor's default options.
        plain = not dynamic and kwargs.get("backend", "inductor") == "inductor" and not kwargs.get("options")
        self._aot = [f for f in aot_functions if f.mode == self._mode] if plain else []
        self._chosen: dict[Any, _Package | _GuardedFunction | None] = {}
        self._fresh_sources: dict[tuple[Source, ...], bool] = {}
        self._compiled: Any = None
        self._model_structure: str | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._aot and not self._torch.is_grad_enabled():
            signature = self._signature(args, kwargs)
            if signature not in self._chosen:
                self._chosen[signature] = self._load_aot(signature, args, kwargs)
            function = self._chosen[signature]
            if function is not None and function.serves(self._model, args, kwargs):
                return function(self._model, args, kwargs)
        return self._torch_compiled()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
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

    def _load_aot(self, signature: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Package | _GuardedFunction | None:
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
                    package = _Package.load(self._torch, candidate.package, devices[0] if devices else candidate.device,
                                            self._model)
                if package is not None and package.serves(self._model, args, kwargs):
                    return package
            if candidate.function is not None and devices in ((), (candidate.device,)):
                self._torch._dynamo.config.enable_aot_compile = True
                with open(candidate.function, "rb") as handle:
                    function = self._torch.compiler.load_compiled_function(handle)
                if function.guard_check(self._model, *args, **kwargs):
                    return _GuardedFunction(function)
        return None

    def _structure(self) -> str:
        """The model's structure (compile_plan.model_structure), once: a package serves
        only the model it was built for, not another layer count or dtype."""
        if self._model_structure is None:
            self._model_structure = plan.model_structure(self._model)
        return self._model_structure

    def _torch_compiled(self) -> Any:
        if self._compiled is None:
            # One static graph per batch size, as precompile stored them.
            self._compiled = plan.torch_compile(self._torch, self._model, self._mode, 64, dynamic=self._dynamic, **self._kwargs)
        return self._compiled


def _runs_on(candidate: _AotFunction, devices: tuple[str, ...]) -> bool:
    """Whether a stored function can serve a call on `devices`: its own device; for a
    package, any index of the same kind (the loader takes the index), so an entry
    built on cuda:0 serves a process on cuda:3."""
    if devices in ((), (candidate.device,)):
        return True
    return candidate.package is not None and len(devices) == 1 and \
        devices[0].partition(":")[0] == candidate.device.partition(":")[0]


def _package_scratch(view: str) -> str | None:
    """Where AOTInductor's loader unpacks packages for this process, `<view>/packages/<pid>`.

    torch unpacks each package into a new temp folder per process and never removes
    it; here they land in the view, and the folders of ended processes go.
    """
    root = os.path.join(view, "packages")
    try:
        os.makedirs(root, exist_ok=True)
        for name in _ended_processes(root):
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
    """An aot_compile function whose guards passed when it was loaded."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self._function = function

    def serves(self, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        return True

    def __call__(self, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._function(model, *args, **kwargs)


class _Package:
    """An AOTInductor package run on the model's own parameters and buffers.

    They are bound by pointer, never copied, so in-place updates (a new checkpoint
    loaded with `load_state_dict`) are seen. A call is served only while the model
    still holds those very tensors, in the same module tree, with no submodule in
    training mode and contiguous inputs, as the package was built; anything else
    goes to torch.compile.
    """

    def __init__(self, torch: Any, loader: Any, model: Any, tensors: dict[str, tuple[dict[str, Any], str, Any]]) -> None:
        self._loader = loader
        self._tensor_type = torch.Tensor
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
        self._modules = [(parent._modules, name, child) for parent in model.modules() for name, child in parent._modules.items()]
        self._all_modules = list(model.modules())
        self._bound = [(slot, name, tensor, tensor.data_ptr()) for slot, name, tensor in tensors.values()]

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
            and all(slot.get(name) is tensor and tensor.data_ptr() == address for slot, name, tensor, address in self._bound)
            and all(children.get(name) is child for children, name, child in self._modules)
            and not any(module.training for module in self._all_modules)
            and all(value.is_contiguous() for value in (*args, *kwargs.values()) if isinstance(value, self._tensor_type))
        )

    def __call__(self, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        ordered = {name: kwargs[name] for name in self._keywords}
        leaves = self._flatten((args, ordered))[0]
        outputs = self._loader.boxed_run([leaf for leaf in leaves if isinstance(leaf, self._tensor_type)])
        return self._unflatten(outputs, self._out_spec)
