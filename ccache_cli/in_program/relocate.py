"""Autotuning results looked up where the running process keeps its cache.

With each Triton kernel it stores in an FX-graph cache entry (a "statically launched"
kernel), torch pickles the absolute path of that kernel's autotuning result
(`<Inductor cache dir>/xx/<key>.best_config`) as it was when the kernel was compiled.
A process that loads the entry from another folder (a view under `ccache run`, an
unpacked store) looks at the old path, finds nothing, and benchmarks the kernel's
configurations again: work torch's own cache, used where it was filled, does not do.

So in processes under `ccache run` (the start-up hook) and after `activate()`, a
result path under a folder an active entry was compiled in (`compiled_at` in its
manifest) is looked up, and saved, under the process's own Inductor cache instead.
This wraps two methods of torch's `AutotuneCache`; where a torch version lacks them,
nothing is changed.

Standard library only, with no package-relative imports: the start-up hook loads it
by path.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

MODULE = "torch._inductor.runtime.autotune_cache"


def install(compiled_at: list[str], cache_dir: str, when_imported: Callable[..., None]) -> None:
    """Relocate result paths under `compiled_at` to `cache_dir`, now if torch's module
    is imported, else when it is (`when_imported` of in_program/imports.py, passed in)."""
    prefixes = [prefix.rstrip(os.sep) for prefix in compiled_at if prefix and prefix.rstrip(os.sep) != cache_dir]
    if prefixes:
        when_imported(MODULE, lambda module: patch(module, prefixes, cache_dir))


def patch(module: Any, prefixes: list[str], cache_dir: str) -> None:
    cache_class = getattr(module, "AutotuneCache", None)
    read, save = getattr(cache_class, "_read", None), getattr(cache_class, "save", None)
    if read is None or save is None or getattr(read, "_ccache_relocated", False):
        return

    def relocate(cache: Any) -> None:
        local = getattr(cache, "local_cache", None)
        if not (isinstance(local, tuple) and len(local) == 2 and isinstance(local[1], str)):
            return
        for prefix in prefixes:
            if local[1].startswith(prefix + os.sep):
                cache.local_cache = (local[0], cache_dir + local[1][len(prefix) :])
                return

    # functools.wraps keeps the methods' names: torch pickles a kernel's bound `save`
    # between its compile workers and the process, and pickle finds a method by name.
    @functools.wraps(read)
    def relocated_read(self: Any) -> Any:
        relocate(self)
        return read(self)

    @functools.wraps(save)
    def relocated_save(self: Any, *args: Any, **kwargs: Any) -> Any:
        relocate(self)
        return save(self, *args, **kwargs)

    relocated_read._ccache_relocated = True  # type: ignore[attr-defined]
    cache_class._read = relocated_read
    cache_class.save = relocated_save
