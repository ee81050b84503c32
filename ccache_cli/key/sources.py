"""Traced Python sources: which files count, and how they are named.

A source is named by its path relative to the sys.path root it was imported from
(`mypkg/layers.py`, module `mypkg.layers`), never by an absolute path, so that moving
the code or the store does not change the key. Files of torch itself are covered by
the torch version, and the standard library by the Python version.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ccache_cli.in_program import bytecode
from ccache_cli.store.hashing import sha256_file
from ccache_cli.store.manifest import Source


@dataclass(frozen=True)
class SourceStatus:
    source: Source
    state: str  # "fresh", "changed" or "missing"
    found_at: str | None


def collect(
    filenames: Iterable[str], sys_path: Sequence[str], torch_dir: str | None, modules: Mapping[str, str] | None = None
) -> list[Source]:
    """The traced files that the key must hash, sorted by path. A file imported as a
    module (`modules`: real path -> module name) is named after the module, which also
    covers packages found by import hooks rather than a sys.path folder (editable
    installs); any other file after its sys.path root."""
    roots = sorted({os.path.realpath(p or os.getcwd()) for p in sys_path}, key=len, reverse=True)
    sources: dict[str, Source] = {}
    for filename in filenames:
        if not filename.endswith(".py") or not os.path.isfile(filename):
            continue  # <string>, <eval_with_key>, frozen modules
        real = os.path.realpath(filename)
        if covered_by_versions(real, torch_dir):
            continue
        module = (modules or {}).get(real)
        relative = _module_path(module, real) if module else _relative_to_root(real, roots)
        sources[relative] = Source(module=_module_name(relative), path=relative, sha256=sha256_file(Path(real)))
    return [sources[path] for path in sorted(sources)]


def covered_by_versions(real_path: str, torch_dir: str | None) -> bool:
    """Whether a file is torch's own or the standard library's, which the torch and
    Python versions in the key cover."""
    paths = sysconfig.get_paths()
    if torch_dir and real_path.startswith(os.path.realpath(torch_dir) + os.sep):
        return True
    stdlib = tuple(os.path.realpath(paths[name]) + os.sep for name in ("stdlib", "platstdlib"))
    site = tuple(os.path.realpath(paths[name]) + os.sep for name in ("purelib", "platlib"))
    # site-packages often lies inside the stdlib folder; only the stdlib proper is covered.
    return real_path.startswith(stdlib) and not real_path.startswith(site)


@dataclass
class Lookups:
    """What checking sources found, kept for the next entries of one check (entries of
    one store trace the same files): where each top-level package lives, and each
    file's hash."""

    package_roots: dict[str, str | None] = field(default_factory=dict)
    hashes: dict[Path, str] = field(default_factory=dict)
    found: dict[tuple[str, str], Path | None] = field(default_factory=dict)  # (module, path) -> its file


def check(sources: Iterable[Source], sys_path: Sequence[str], lookups: Lookups | None = None) -> list[SourceStatus]:
    """Look each source up as it resolves now and re-hash it: where the import system
    finds its top-level package (import hooks such as editable installs included),
    else on `sys_path`."""
    roots = [p or os.getcwd() for p in sys_path]
    lookups = lookups or Lookups()
    statuses = []
    for source in sources:
        if (source.module, source.path) not in lookups.found:
            found_by_import = bytecode.source_root(source.module, lookups.package_roots)
            lookups.found[source.module, source.path] = next(
                (
                    Path(root) / source.path
                    for root in [*filter(None, [found_by_import]), *roots]
                    if (Path(root) / source.path).is_file()
                ),
                None,
            )
        found = lookups.found[source.module, source.path]
        if found is None:
            statuses.append(SourceStatus(source, "missing", None))
        else:
            if found not in lookups.hashes:
                lookups.hashes[found] = sha256_file(found)
            state = "fresh" if lookups.hashes[found] == source.sha256 else "changed"
            statuses.append(SourceStatus(source, state, str(found)))
    return statuses


def all_fresh(sources: Iterable[Source], sys_path: Sequence[str]) -> bool:
    """Whether every source resolves now to the very file it was traced from."""
    return all(status.state == "fresh" for status in check(sources, sys_path))


def search_path() -> list[str]:
    """Where traced sources are looked up: this process's sys.path and the working dir."""
    return [*sys.path, os.getcwd()]


def _relative_to_root(real: str, roots: Sequence[str]) -> str:
    for root in roots:  # longest first: the most specific root names the module
        if real.startswith(root.rstrip(os.sep) + os.sep):
            return os.path.relpath(real, root).replace(os.sep, "/")
    return os.path.basename(real)


def _module_path(module: str, real: str) -> str:
    parts = module.split(".")
    if os.path.basename(real) == "__init__.py":
        parts.append("__init__")
    return "/".join(parts) + ".py"


def _module_name(relative: str) -> str:
    parts = relative[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)
