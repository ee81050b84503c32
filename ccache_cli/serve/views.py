"""Views: a writable folder per store and set of entries, through which programs use
the entries without ever changing the store.

A view is a folder of real directories whose files are symbolic links to the store's
read-only blobs: `inductor/` (the Inductor, Triton and AOTAutograd caches, used as
TORCHINDUCTOR_CACHE_DIR), `aot/<entry>/size-N.pt` and `.pt2` (AOT functions and
packages) and `bytecode/` (the stored .pyc files laid out as a PYTHONPYCACHEPREFIX tree
for where their modules live in this environment; see in_program/bytecode.py; where the
environment has a valid .pyc of its own for a module, the link is to that one, which
Python checks with a stat rather than by hashing the source), plus
`activation.json`, which tells the running program what the view holds, so that it
never needs the store. Captured engine cache roots (`engines/<VAR>/`) are copies, not
links: an engine may write into its files, and `engines.json` lists what was laid out
(in_program/engines.py).

Why links are safe: torch writes every cache file at run time as a new file that it
moves into place (`write_atomic`, Triton's `FileCacheManager.put`, Python's own .pyc
writes), which replaces the link in the view and never touches the blob it pointed
to; the one file torch appends to in its cache folder (a `.done` marker after a fresh
compile) is never a stored file. Links also work across file systems and when the
store is read-only, as in an image layer. A view is built once per store and set of
entries, under a temporary name that is renamed into place, and shared by the
processes that use it; what they add to it (fresh compiles of shapes the entries
lack) stays there for the next process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccache_cli.errors import UnsafeFolderError
from ccache_cli.in_program import bytecode, engines
from ccache_cli.store import bytecode_list, owners
from ccache_cli.store.artifacts import AOT_PREFIX, FUNCTIONS_PREFIX, engine_var_of
from ccache_cli.store.hashing import hash_json
from ccache_cli.store.manifest import Manifest
from ccache_cli.store.schema import ManifestError, inside
from ccache_cli.store.store import Store

VIEWS_ENV = "CCACHE_CLI_VIEWS"  # where views are made
ACTIVATION_FILE = "activation.json"
INDUCTOR_PREFIX = "inductor/"


# Part of a view's name: a view laid out by another version of this code is not reused.
_VIEW_LAYOUT = 7  # 2: AOT functions and packages listed; 3: the model structure; 4: engines; 5: own .pyc linked; 6: Triton groups relocated; 7: captured functions


def ensure_view(
    store: Store, entries: Sequence[Manifest], roots: Mapping[str, str | None] | None = None
) -> tuple[Path, bool]:
    """The shared writable view of `entries`, made if missing (atomically), and whether
    it serves stored bytecode (its bytecode/ tree is made only where some module's is
    laid out). `roots`: where the interpreter that will use it finds each top-level
    module, if not this one."""
    root = views_root()
    # Where the environment's modules live decides the bytecode tree's layout.
    roots = dict(roots) if roots is not None else {}
    for top in sorted({top for entry in entries for top in entry.totals.bytecode_tops}):
        bytecode.source_root(top, roots, every_finder=False)  # on every start: fast
    # Keyed on content too: an entry id names a key, not the exact files stored for it.
    contents = sorted((e.id, e.totals.files_digest) for e in entries)
    view = (
        root
        / hash_json({"layout": _VIEW_LAYOUT, "store": str(store.root.resolve()), "entries": contents, "roots": roots})[
            :24
        ]
    )
    if (view / ACTIVATION_FILE).is_file():
        return view, (view / "bytecode").is_dir()
    building = root / f".building-{uuid.uuid4().hex}"
    building.mkdir(parents=True)
    try:
        description = _link_files(store, entries, building, view, roots)
        (building / ACTIVATION_FILE).write_text(json.dumps(dataclasses.asdict(description), indent=1, sort_keys=True))
        try:
            os.rename(building, view)
        except OSError:  # another process made it first; use theirs
            if not (view / ACTIVATION_FILE).is_file():
                raise
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return view, description.bytecode_modules > 0


def views_root() -> Path:
    """Where views live: $CCACHE_CLI_VIEWS, else a private folder in the temp dir; made
    if missing, and refused (UnsafeFolderError) where another user could write to it:
    programs load kernels and bytecode from views."""
    if env := os.environ.get(VIEWS_ENV):
        root = Path(env)
        root.parent.mkdir(parents=True, exist_ok=True)
        return _own_folder(root, f"{VIEWS_ENV}={env}", "point it at a folder of your own that others cannot write")
    base = _own_folder(
        Path(tempfile.gettempdir()) / f"ccache-cli-{os.getuid()}",
        "the views folder",
        f"remove it, or set {VIEWS_ENV} to a folder of your own",
    )
    return _own_folder(base / "views", "the views folder", f"remove {base}, or set {VIEWS_ENV}")


def _own_folder(path: Path, what: str, fix: str) -> Path:
    """`path`, made private if missing; UnsafeFolderError where it is a link, not a
    folder, someone else's or writable by others."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    found = os.lstat(path)
    problem = None
    if stat.S_ISLNK(found.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(found.st_mode):
        problem = "is not a folder"
    elif found.st_uid != os.getuid():
        problem = f"belongs to another user (uid {found.st_uid})"
    elif found.st_mode & 0o022:
        problem = "is writable by other users"
    if problem is not None:
        raise UnsafeFolderError(
            f"{what}: {path} {problem}, so code that programs started by ccache load could be planted there: {fix}"
        )
    return path


@dataclass(frozen=True)
class ActiveEntry:
    """An entry as a view's activation.json describes it to the programs that use the
    view (`ccache_cli.compile`, and in_program/misses.py, which reads the same JSON)."""

    id: str
    name: str
    compile: Mapping[str, Any]  # the compile options, as the key holds them
    inputs: Mapping[str, list[dict[str, Any]]]  # per size, as the key describes them
    sources: list[dict[str, str]]
    fingerprint: Mapping[str, Any]
    aot: Mapping[str, Mapping[str, str]]  # per size: {"function", "package"} paths in the view
    structure: str | None  # the model the packages were built for
    assumptions: Mapping[str, Any] = field(
        default_factory=dict
    )  # per size, what its stored code assumes (as the manifest)
    functions: Mapping[str, Any] = field(
        default_factory=dict
    )  # captured functions, by path in the view (as the manifest)


@dataclass(frozen=True)
class ViewDescription:
    """A view's activation.json."""

    store: str
    entries: tuple[ActiveEntry, ...]
    bytecode_modules: int  # modules whose stored bytecode the view serves


def read_description(view: Path | str) -> ViewDescription:
    """A view's activation.json (OSError, ValueError or TypeError where it is not one)."""
    document = json.loads((Path(view) / ACTIVATION_FILE).read_text())
    return ViewDescription(
        document["store"], tuple(ActiveEntry(**entry) for entry in document["entries"]), document["bytecode_modules"]
    )


def _link_files(
    store: Store, entries: Sequence[Manifest], view: Path, final: Path, roots: dict[str, str | None]
) -> ViewDescription:
    """Lay the entries out in `view`, which is renamed to `final` once whole."""
    described = []
    made: set[str] = set()
    bytecode_modules = 0
    laid_out: dict[str, dict[str, Any]] = {}  # engines.json
    listed: set[str] = set()  # bytecode lists laid out: entries of one environment share theirs
    for entry in entries:
        aot: dict[str, dict[str, str]] = {}  # size -> {"function": path, "package": path}
        for var, version in entry.compile.engines.items():
            settings = entry.compile.document.get("engine_settings", {}).get(var, {})
            laid_out.setdefault(var, {"version": version, "settings": settings, "files": []})
        files, stored_bytecode = entry.files, {}
        list_ref = files.get(bytecode_list.LIST_PATH)
        if list_ref is None or list_ref["sha256"] not in listed:
            try:
                files, stored_bytecode = entry.all_files, entry.bytecode
                if list_ref is not None:
                    listed.add(list_ref["sha256"])
            except ManifestError:  # a damaged bytecode list (`verify` names it): served without its bytecode
                pass
        for path, ref in files.items():
            if (var := engine_var_of(path)) is not None:
                if path not in made:
                    copy = inside(view, path)
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(store.blob_file(ref["sha256"]), copy)
                    if copy.name.startswith(engines.TRITON_GROUP_PREFIX):
                        engines.relocate_triton_group(str(copy), str(inside(final, path).parent))
                    os.utime(copy, (engines.COPIED_MTIME, engines.COPIED_MTIME))
                    laid_out[var]["files"].append(path[len(f"{engines.ENGINES_DIR}/{var}/") :])
                    made.add(path)
                continue
            own = None  # a file of the environment's own to link instead of the blob
            if path.startswith(INDUCTOR_PREFIX):
                target = path
            elif path in stored_bytecode:
                placed = bytecode.prefix_path(path, stored_bytecode[path]["module"], roots)
                if placed is None:  # not importable here: nothing would read it
                    continue
                target = f"bytecode/{placed}"
                bytecode_modules += target not in made
                source = bytecode.source_file(path, stored_bytecode[path]["module"], roots)
                own = bytecode.own_timestamp_pyc(source) if source else None
            elif path.startswith(FUNCTIONS_PREFIX):
                target = f"{FUNCTIONS_PREFIX}{entry.id}/{path[len(FUNCTIONS_PREFIX) :]}"
            elif path.startswith(AOT_PREFIX):
                target = f"aot/{entry.id}/{path[len(AOT_PREFIX) :]}"
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
            os.symlink(own or store.blob_file(ref["sha256"]), link)
            made.add(target)
        described.append(
            ActiveEntry(
                id=entry.id,
                name=entry.name,
                compile=entry.compile.document,
                inputs=entry.inputs,
                sources=[dataclasses.asdict(source) for source in entry.sources],
                fingerprint=entry.fingerprint,
                aot=aot,
                structure=None if entry.aot.packages is None else entry.aot.packages.structure,
                assumptions={size: recorded.to_json() for size, recorded in entry.assumptions.items()},
                functions={
                    f"{FUNCTIONS_PREFIX}{entry.id}/{path[len(FUNCTIONS_PREFIX) :]}": described
                    for path, described in entry.functions.items()
                },
            )
        )
    (view / "inductor").mkdir(exist_ok=True)
    if laid_out:
        (view / engines.LAID_OUT_FILE).write_text(json.dumps(laid_out, sort_keys=True))
    return ViewDescription(str(store.root), tuple(described), bytecode_modules)


def export_bytecode(store: Store, entry: Manifest, dest: Path) -> int:
    """Copy the entry's bytecode into `dest` as a PYTHONPYCACHEPREFIX tree for this
    environment (as a view lays it out); returns the number of modules."""
    roots: dict[str, str | None] = {}
    count = 0
    files = entry.all_files
    for path, info in entry.bytecode.items():
        placed = bytecode.prefix_path(path, info["module"], roots)
        if placed is None or path not in files:
            continue
        target = inside(dest, placed)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store.blob_file(files[path]["sha256"]), target)
        count += 1
    return count


def ended_processes(folder: str | Path) -> list[str]:
    """The names in `folder` that are ids of processes that have ended."""
    return [name for name in os.listdir(folder) if name.isdigit() and not owners.is_alive(int(name))]
