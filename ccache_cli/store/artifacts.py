"""What kind of artifact a stored file is, from its path in an entry.

An entry's files live under a few top-level folders: `inductor/` is the Inductor
cache directory as torch wrote it (TORCHINDUCTOR_CACHE_DIR), `megacache/` holds
torch's portable Mega-Cache bytes, `aot/` the AOT-compiled functions and packages,
`bytecode/` the .pyc files of the modules the compiling process imported,
`outputs/` a sample of each size's outputs (precompile/outputs.py), `functions/` the
functions a capture compiled (serve/functions.py) and `engines/<VAR>/` the
cache root a captured engine kept under the environment variable VAR (vLLM's
VLLM_CACHE_ROOT, or any `run --capture --cache-env VAR`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ccache_cli.in_program import bytecode, engines

INDUCTOR_PREFIX = "inductor/"
MEGACACHE_FILE = "megacache/cache_artifacts.bin"
AOT_PREFIX = "aot/"
FUNCTIONS_PREFIX = "functions/"
OUTPUTS_PREFIX = "outputs/"
ENGINES_PREFIX = f"{engines.ENGINES_DIR}/"
BYTECODE_PREFIX = bytecode.PREFIX  # checked hash-based .pyc of the compile stack

# Folders of lock files, in the Inductor cache directory and anywhere in an engine's
# cache root (which holds Inductor caches of its own): nothing worth carrying.
IGNORED_DIRS = engines.IGNORED_DIRS


def carried(path: str) -> bool:
    """Whether an entry keeps the cache file at `path` (lock files it does not)."""
    if path.startswith(INDUCTOR_PREFIX):
        return path[len(INDUCTOR_PREFIX) :].partition("/")[0] not in IGNORED_DIRS
    if path.startswith(ENGINES_PREFIX):
        return not IGNORED_DIRS.intersection(path.split("/")[:-1])
    return True


def engine_var_of(path: str) -> str | None:
    """The environment variable whose cache root an entry file belongs to, or None."""
    return path[len(ENGINES_PREFIX) :].partition("/")[0] if path.startswith(ENGINES_PREFIX) else None


_INDUCTOR_DIR_KINDS = {
    "fxgraph": "fxgraph",
    "aotautograd": "aotautograd",
    "triton": "triton",
    "cache": "autotune",  # Inductor's local autotune (benchmark) results
    "dynamo": "pgo",  # Dynamo's profile-guided dynamic-shape decisions
}


@dataclass(frozen=True)
class KindSummary:
    kind: str
    count: int
    bytes: int


def kind_of(path: str) -> str:
    """The artifact kind of an entry file, e.g. `fxgraph`, `triton`, `kernels`."""
    if not path.startswith(INDUCTOR_PREFIX):  # most files are Inductor's: asked first
        if path == MEGACACHE_FILE:
            return "megacache"
        if path.startswith(AOT_PREFIX):
            return "aot"
        if path.startswith(FUNCTIONS_PREFIX):
            return "functions"
        if path.startswith(BYTECODE_PREFIX):
            return "bytecode"
        if path.startswith(OUTPUTS_PREFIX):
            return "outputs"
        if path.startswith(ENGINES_PREFIX):
            return "engine"
        return "other"
    top, _, rest = path[len(INDUCTOR_PREFIX) :].partition("/")
    if top in _INDUCTOR_DIR_KINDS:
        return _INDUCTOR_DIR_KINDS[top]
    if rest.endswith(".best_config"):
        return "autotune"
    # Inductor's code cache: two-letter folders of generated Python, C++ and .so files.
    if len(top) == 2 and rest:
        return "kernels"
    return "other"


def summarize(files: Mapping[str, int] | Iterable[tuple[str, int]]) -> list[KindSummary]:
    """Count and bytes per kind of (path, size) pairs, largest kinds first."""
    pairs = files.items() if isinstance(files, Mapping) else files
    counts: dict[str, list[int]] = {}
    for path, size in pairs:
        total = counts.setdefault(kind_of(path), [0, 0])
        total[0] += 1
        total[1] += size
    return sorted(
        (KindSummary(kind, count, size) for kind, (count, size) in counts.items()),
        key=lambda summary: (-summary.bytes, summary.kind),
    )


def kinds_of(files: Mapping[str, Mapping[str, Any]]) -> tuple[KindSummary, ...]:
    """Count and bytes per kind of an entry's files (path -> {"sha256", "size"})."""
    return tuple(summarize({path: ref["size"] for path, ref in files.items()}))
