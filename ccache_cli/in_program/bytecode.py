"""The compile stack's bytecode: recorded at precompile, served through PYTHONPYCACHEPREFIX.

Images built with PYTHONDONTWRITEBYTECODE=1 carry no .pyc for torch, so every process
compiles torch's Python source again: seconds, more than a warm compile. Precompile
therefore stores, for every module the process imported from a source file (torch,
triton, sympy, the standard library, the model's code), its bytecode as a checked
hash-based .pyc (PEP 552): Python re-hashes the source on import and compiles it
afresh when it changed, so a changed file never gets stale bytecode.

Stored as `bytecode/<module path>.<cache tag>.pyc` (`bytecode/torch/_dynamo/utils.
cpython-312.pyc`), named by module, never by absolute path. A view lays them out as a
PYTHONPYCACHEPREFIX tree for where those modules live on the machine that runs them.

Standard library only, with no package-relative imports (loaded by path by the
`run --capture` hook).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import marshal
import os
import sys
from typing import Any

PREFIX = "bytecode/"  # where an entry keeps them (artifacts.BYTECODE_PREFIX)
_CHECKED_HASH = (0b11).to_bytes(4, "little")  # PEP 552 flags: hash-based, checked against the source


def record(modules: dict[str, Any], out: str) -> dict[str, dict[str, str]]:
    """Write checked hash-based .pyc files of `modules` (sys.modules) that were
    loaded from source, and from where a view would place their bytecode, under
    `out`; returns {stored path: {module, sha256 of source}}."""
    tag = sys.implementation.cache_tag
    recorded: dict[str, dict[str, str]] = {}
    roots: dict[str, str | None] = {}
    made: set[str] = set()
    for name, module in sorted(modules.items()):
        spec = getattr(module, "__spec__", None)
        if name == "__main__" or spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            continue
        if not is_module_name(name):  # an alias no import could name, which a store would refuse
            continue
        source_path = spec.origin
        if not source_path or not source_path.endswith(".py") or not os.path.isfile(source_path):
            continue
        try:
            with open(source_path, "rb") as handle:
                source = handle.read()
            marshalled = _existing_code(source_path, source)
            if marshalled is None:
                marshalled = marshal.dumps(compile(source, source_path, "exec", dont_inherit=True))
        except (OSError, SyntaxError, ValueError):
            continue
        stem = name.replace(".", "/") + ("/__init__" if os.path.basename(source_path) == "__init__.py" else "")
        relative = f"{stem}.{tag}.pyc"
        if source_file(PREFIX + relative, name, roots) != source_path:
            continue  # where a view would place it (`distutils`, served from setuptools), nothing would read it
        target = os.path.join(out, relative)
        folder = os.path.dirname(target)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        with open(target, "wb") as handle:
            handle.write(importlib.util.MAGIC_NUMBER + _CHECKED_HASH + importlib.util.source_hash(source) + marshalled)
        recorded[PREFIX + relative] = {"module": name, "sha256": hashlib.sha256(source).hexdigest()}
    return recorded


def is_module_name(name: str) -> bool:
    """A dotted module name: identifiers, hyphens allowed (`_sysconfigdata__linux_x86_64-linux-gnu`)."""
    return all(part.replace("-", "_").isidentifier() for part in name.split("."))


def _existing_code(source_path: str, source: bytes) -> bytes | None:
    """The marshalled code of a valid timestamp .pyc beside the source, if any: the
    body of a hash-based .pyc as it is (reading it is much faster than compiling
    again, and than loading and dumping it). Its validity is the import system's: this
    process imported the module from it."""
    try:
        cached = importlib.util.cache_from_source(source_path)
        with open(cached, "rb") as handle:
            data = handle.read()
        stat = os.stat(source_path)
    except (OSError, NotImplementedError, ValueError):
        return None
    flags = int.from_bytes(data[4:8], "little")
    if data[:4] != importlib.util.MAGIC_NUMBER or flags != 0 or len(data) <= 16:
        return None
    if int.from_bytes(data[8:12], "little") != int(stat.st_mtime) & 0xFFFFFFFF:
        return None
    if int.from_bytes(data[12:16], "little") != len(source) & 0xFFFFFFFF:
        return None
    return data[16:]


def source_root(module: str, cache: dict[str, str | None], every_finder: bool = True) -> str | None:
    """The folder holding `module`'s top-level package as `import` finds it in this
    environment (no module code runs), or None.

    `every_finder=False` looks on sys.path first and asks the other finders only where
    that finds nothing: some finders run code when asked (setuptools' hook for
    `distutils` imports all of setuptools, 0.2 s), and a module found elsewhere than
    `import` would find it only loses its stored bytecode.
    """
    top = module.partition(".")[0]
    if top not in cache:
        root = None
        try:
            spec = (
                None if every_finder else importlib.machinery.PathFinder.find_spec(top)
            ) or importlib.util.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.has_location and spec.origin and os.path.isfile(spec.origin):
            folder = os.path.dirname(os.path.abspath(spec.origin))
            root = os.path.dirname(folder) if spec.submodule_search_locations is not None else folder
        cache[top] = root
    return cache[top]


def prefix_path(stored: str, module: str, roots: dict[str, str | None]) -> str | None:
    """Where a stored .pyc goes in a PYTHONPYCACHEPREFIX tree, relative to the tree:
    Python looks up `<prefix>/<absolute source folder>/<name>.<tag>.pyc`."""
    root = source_root(module, roots, every_finder=False)
    if root is None:
        return None
    relative = stored[len(PREFIX) :]
    return os.path.join(root, relative).lstrip(os.sep)


def source_file(stored: str, module: str, roots: dict[str, str | None]) -> str | None:
    """The source file a stored .pyc was compiled from, as it resolves here (found as a
    view places the .pyc: `prefix_path`)."""
    root = source_root(module, roots, every_finder=False)
    if root is None:
        return None
    stem = stored[len(PREFIX) :].rsplit(".", 2)[0]  # drop `.<cache tag>.pyc`
    return os.path.join(root, stem + ".py")


def own_timestamp_pyc(source_path: str) -> str | None:
    """The environment's own .pyc of `source_path` (in its `__pycache__`) where it is a
    timestamp .pyc valid for the source as it is: Python checks one with a stat, where
    a stored checked .pyc costs hashing the whole source at every import. None otherwise."""
    folder, name = os.path.split(source_path)
    cached = os.path.join(folder, "__pycache__", f"{name[:-3]}.{sys.implementation.cache_tag}.pyc")
    try:
        with open(cached, "rb") as handle:
            header = handle.read(16)
        stat = os.stat(source_path)
    except OSError:
        return None
    valid = (
        len(header) == 16
        and header[:4] == importlib.util.MAGIC_NUMBER
        and int.from_bytes(header[4:8], "little") == 0
        and int.from_bytes(header[8:12], "little") == int(stat.st_mtime) & 0xFFFFFFFF
        and int.from_bytes(header[12:16], "little") == stat.st_size & 0xFFFFFFFF
    )
    return cached if valid else None


def changed_sources(stored: dict[str, dict[str, str]]) -> tuple[list[str], int]:
    """The modules whose source here differs from the one their stored bytecode was
    compiled from (Python would compile those afresh), and how many cannot be found
    here by their top-level name (vendored by path tricks, `__main__`): those are
    simply not served."""
    roots: dict[str, str | None] = {}
    changed, absent = [], 0
    for path, info in sorted(stored.items()):
        source = source_file(path, info["module"], roots)
        if source is None or not os.path.isfile(source):
            absent += 1
            continue
        with open(source, "rb") as handle:
            if hashlib.sha256(handle.read()).hexdigest() != info["sha256"]:
                changed.append(info["module"])
    return changed, absent
