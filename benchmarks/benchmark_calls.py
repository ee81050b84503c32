"""Count the benchmark calls (autotuning) a process really makes.

Inductor's `benchmarking.*` counters are no measure of a warm start's work: on every
FX-graph cache hit torch adds to its counters the deltas recorded when that graph was
compiled, so a process that benchmarks nothing reports the calls its cache's cold compile
made. This counts calls as they happen instead, by wrapping the benchmarkers' entry points
when Inductor's benchmarking module is first imported (ccache's `when_imported`; not
before: importing it imports Dynamo, which a process running stored packages never does).

    import benchmark_calls
    benchmark_calls.install()   # before torch compiles or loads anything
    ...
    benchmark_calls.count()     # 0 where the module was never imported

Calls made in autotuning subprocesses (TORCHINDUCTOR_AUTOTUNE_IN_SUBPROC=1) are not counted.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ccache_cli.in_program.imports import when_imported

MODULE = "torch._inductor.runtime.benchmarking"
_ENTRY_POINTS = ("benchmark", "benchmark_gpu", "benchmark_cpu")
_calls = 0
_counting = threading.Lock()
_inside = threading.local()  # benchmark() calls benchmark_gpu(): count the outer call only


def count() -> int:
    return _calls


def install() -> None:
    when_imported(MODULE, _wrap)


def _counted(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _calls
        if getattr(_inside, "depth", 0) == 0:
            with _counting:
                _calls += 1
        _inside.depth = getattr(_inside, "depth", 0) + 1
        try:
            return function(*args, **kwargs)
        finally:
            _inside.depth -= 1

    return wrapper


def _wrap(module: ModuleType) -> None:
    for cls in vars(module).values():
        if isinstance(cls, type) and issubclass(cls, module.Benchmarker):
            for name in _ENTRY_POINTS:
                if name in vars(cls):
                    setattr(cls, name, _counted(vars(cls)[name]))
