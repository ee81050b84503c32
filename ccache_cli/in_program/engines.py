"""Serving engines' own compile caches: the cache root an engine keeps under an
environment variable (vLLM's VLLM_CACHE_ROOT, or the VAR of `run --capture --cache-env
VAR`). vLLM points TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR inside its root, so
its root is what holds its compiled code.

Under `ccache run --capture`, each engine gets an empty cache root of its own; under
`ccache run`, VAR points at a writable copy of the captured root in the view, and the
view's `engines.json` lists what was laid out there. At the exit of the program's
first process, `not_used` says where a captured cache was not used: the program moved
VAR elsewhere, another version of the engine ran, or the engine wrote files its cache
lacked (it compiled again; a new folder beside a captured one is a changed key).

Standard library only: the start-up hook loads it by path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

# VAR -> the module whose version keys the cache root VAR names. SGLang keeps its
# torch.compile cache (`torch_compile/<hash>/`) and DeepGEMM's kernels under one root
# (its docs' "unified cache root"; TORCHINDUCTOR_CACHE_DIR, which ccache sets, wins for
# Inductor's own cache).
KNOWN_ENGINES = {"VLLM_CACHE_ROOT": "vllm", "SGLANG_JIT_CACHE_ROOT": "sglang"}
# VAR -> the prefix of the engine's own settings, which its cache key hashes (vLLM's
# `compile_factors`): a digest of each is kept, never a value, and none of a credential.
SETTINGS_PREFIXES = {"VLLM_CACHE_ROOT": "VLLM_", "SGLANG_JIT_CACHE_ROOT": "SGLANG_"}
_CREDENTIAL = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")
# VAR -> the folders whose sub-folders are named by the engine's cache key (vLLM hashes
# its configuration, environment variables and model into them): a new one is a new key.
KEY_FOLDERS = {
    "VLLM_CACHE_ROOT": ("torch_compile_cache/torch_aot_compile/", "torch_compile_cache/"),
    "SGLANG_JIT_CACHE_ROOT": ("torch_compile/",),
}
# An engine's cache root is named by a variable that says it is one (VLLM_CACHE_ROOT,
# TRITON_CACHE_DIR, NUMBA_CACHE_DIR, TORCH_EXTENSIONS_DIR, DG_JIT_CACHE_DIR,
# FLASHINFER_WORKSPACE_BASE): `run` points it at an entry's files, and an entry may come
# from an archive, so a variable that changes how other programs start or are
# configured (PATH, XDG_*, HOME, a compiler cache's CCACHE_DIR) is never one.
_ENV_VAR = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
_CACHE_ROOT = re.compile(r"[A-Z][A-Z0-9_]*_(?:CACHE_DIR|CACHE_ROOT|CACHE_PATH|EXTENSIONS_DIR|WORKSPACE_BASE)")
_NOT_CACHE_ROOTS = re.compile(r"XDG_.*|CCACHE_.*|SCCACHE_.*|TORCHINDUCTOR_CACHE_DIR")
LAID_OUT_FILE = "engines.json"  # in a view: VAR -> {"version": str | None, "files": [relative paths]}
ENGINES_DIR = "engines"  # in a view and in a capture's staging folder: one folder per VAR
IGNORED_DIRS = frozenset({"locks"})  # lock files: nothing to carry or compare
# The time a copied engine file carries: older than anything built from it, so that a
# build tool comparing times (ninja, make) finds its outputs up to date (1980-01-01,
# the reproducible-builds epoch: not 0, which ninja reads as a missing file). A file
# with another time, the engine wrote again.
COPIED_MTIME = 315532800


TRITON_GROUP_PREFIX = "__grp__"  # Triton's group files: {"child_paths": {file name: absolute path}}


def relocate_triton_group(copy: str, folder: str) -> None:
    """Point a copied Triton group file at the files beside it, in `folder`: where the
    copy's folder is found once in place (a view is built under a temporary name).
    Triton names a kernel's files by the absolute paths of the cache it compiled into,
    and takes a group whose files are not there for missing: it would compile again."""
    try:
        with open(copy) as handle:
            group = json.load(handle)
        children = group["child_paths"]
        relocated = {
            name: os.path.join(folder, os.path.basename(path))
            if os.path.basename(os.path.dirname(path)) == os.path.basename(folder)
            else path
            for name, path in children.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # not a group file as Triton writes them: left as it is
    with open(copy, "w") as handle:
        json.dump({**group, "child_paths": relocated}, handle)


def versions(modules: Mapping[str, Any]) -> dict[str, str]:
    """VAR -> the version of each known engine this process imported."""
    found = {}
    for var, name in KNOWN_ENGINES.items():
        version = getattr(modules.get(name), "__version__", None)
        if isinstance(version, str):
            found[var] = version
    return found


def settings(var: str, environ: Mapping[str, str]) -> dict[str, str]:
    """A digest of each of the engine's settings in `environ` (the cache root's own left out)."""
    prefix = SETTINGS_PREFIXES.get(var)
    if prefix is None:
        return {}
    return {
        name: hashlib.sha256(value.encode()).hexdigest()[:16]
        for name, value in sorted(environ.items())
        if name.startswith(prefix) and name != var and not any(word in name for word in _CREDENTIAL)
    }


def installed_version(module: str) -> str | None:
    """The version of the distribution that installs `module` here, without importing it."""
    import importlib.metadata

    for distribution in importlib.metadata.packages_distributions().get(module, []):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def files_under(root: str) -> list[str]:
    """The files under `root`, as sorted '/'-separated relative paths, lock folders left out."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIRS)
        relative = os.path.relpath(folder, root)
        for name in files:
            found.append(name if relative == "." else f"{relative}/{name}".replace(os.sep, "/"))
    return sorted(found)


def not_used(view: str, environ: Mapping[str, str], modules: Mapping[str, Any], since: float = 0.0) -> list[str]:
    """Why each of the view's engine caches was not (wholly) used by this program, which
    started at `since` (what earlier programs wrote into the shared view is theirs):
    one line per cache root, none where it was used as captured."""
    try:
        with open(os.path.join(view, LAID_OUT_FILE)) as handle:
            laid_out: dict[str, dict[str, Any]] = json.load(handle)
    except OSError:
        return []
    lines = []
    for var, captured in sorted(laid_out.items()):
        root = os.path.join(view, ENGINES_DIR, var)
        why = _why_not_used(var, root, captured, environ, modules, since)
        if why is not None:
            lines.append(f"engine cache {var}: {why}")
    return lines


def _why_not_used(
    var: str,
    root: str,
    captured: Mapping[str, Any],
    environ: Mapping[str, str],
    modules: Mapping[str, Any],
    since: float,
) -> str | None:
    where = environ.get(var)
    if where is None or os.path.realpath(where) != os.path.realpath(root):
        what = f"set {var}={where!r}" if where is not None else f"unset {var}"
        return f"not used: the program {what}, so the engine did not read the captured cache at {root}"
    name = KNOWN_ENGINES.get(var)
    version = getattr(modules.get(name or ""), "__version__", None)
    if name and captured.get("version") and isinstance(version, str) and version != captured["version"]:
        return f"not used: {name} {version} runs here; the cache was captured with {name} {captured['version']}"
    written = _written_since(root, since)
    captured_files = set(captured["files"])
    new = sorted(written - captured_files)
    if not new:
        rewritten = sorted(written & captured_files)
        if rewritten:
            return (
                f"the engine wrote {len(rewritten)} of the captured files again (first: {rewritten[0]}): "
                "it did not take them as they were (a path, version or setting it compares differs)"
            )
        return None
    key, captured_key = _new_key(KEY_FOLDERS.get(var, ()), new, captured["files"])
    if key is not None:
        recorded, here = captured.get("settings", {}), settings(var, environ)
        differ = sorted(n for n in set(recorded) | set(here) if recorded.get(n) != here.get(n))
        why = (
            f"{', '.join(differ)} differ{'s' if len(differ) == 1 else ''} from the capture's environment"
            if differ
            else "its arguments, model or sources differ from the capture's (its settings are the same)"
        )
        return f"not used: {name or 'the engine'} computed the cache key {key}, not the captured {captured_key}: {why}"
    return f"the engine wrote {len(new)} files its cache lacked (first: {new[0]}): it compiled what was not captured"


def _new_key(folders: tuple[str, ...], new: list[str], captured: list[str]) -> tuple[str | None, str | None]:
    """The key folder a new file lies in that no captured file does, and a captured one."""
    for folder in folders:
        keys = {path[len(folder) :].partition("/")[0] for path in captured if path.startswith(folder)}
        for path in new:
            key, slash, _ = path[len(folder) :].partition("/")
            if path.startswith(folder) and slash and key not in keys and keys:
                return key, sorted(keys)[0]
    return None, None


def _written_since(root: str, since: float) -> set[str]:
    """The files under `root` written at `since` or later (a laid-out copy keeps COPIED_MTIME)."""
    written = set()
    for path in files_under(root):
        mtime = _mtime(os.path.join(root, path))
        if mtime != COPIED_MTIME and mtime >= since:
            written.add(path)
    return written


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0


def var_problem(var: str) -> str | None:
    """Why `var` cannot name an engine's cache root (`run --capture --cache-env`), or None."""
    if not _ENV_VAR.fullmatch(var):
        return "not an environment variable's name (capitals, digits and _)"
    if not _CACHE_ROOT.fullmatch(var) or _NOT_CACHE_ROOTS.fullmatch(var):
        return (
            "not a name for an engine's cache folder (one ending in _CACHE_DIR, _CACHE_ROOT, _CACHE_PATH, "
            "_EXTENSIONS_DIR or _WORKSPACE_BASE, not a compiler cache's or ccache's own)"
        )
    return None
