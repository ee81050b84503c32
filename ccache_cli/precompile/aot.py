"""The aot_compile functions precompile builds beside the Inductor cache, one per size
(where Dynamo captures the whole model), and what the AOT builds share (packages.py
builds the AOTInductor packages). Runs in the compile process.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ccache_cli.precompile import plan

Emit = Callable[..., None]


def aot_functions(
    torch: Any, model: Any, inputs: dict[int, plan.CallInputs], options: dict[str, Any], folder: Path, emit: Emit
) -> dict[str, Any]:
    """aot_compile functions, `aot/size-N.pt`: Dynamo's guards with the compiled graph."""
    torch._dynamo.config.enable_aot_compile = True  # needed before torch.compile on torch 2.11
    folder.mkdir(parents=True, exist_ok=True)

    def save_function(size: int, args: plan.CallInputs) -> None:
        # Under no_grad like every other call: the grad mode is part of the guards.
        with torch.no_grad(), _naming_unserializable_guards(torch):
            compiled = torch.compile(
                model.forward, backend="inductor", mode=options["mode"], dynamic=False, fullgraph=True
            ).aot_compile((args.args, args.kwargs))
        compiled.save_compiled_function(str(folder / f"size-{size}.pt"))

    seconds, error = each_size(inputs, "aot", save_function, emit)
    if error is not None:
        for partial in folder.glob("*.pt"):
            partial.unlink()
        return {"status": "skipped", "reason": f"aot_compile failed: {error}"}
    return {"status": "stored", "reason": None, "seconds": seconds}


@contextlib.contextmanager
def inductor_cache_at(folder: Path) -> Iterator[None]:
    """Inductor's cache (and Triton's, inside it) at `folder` meanwhile."""
    previous = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    try:
        yield
    finally:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


@contextlib.contextmanager
def _naming_unserializable_guards(torch: Any) -> Iterator[None]:
    """Make aot_compile's "X guard cannot be serialized" name the guard's source too."""
    guards = torch._dynamo.guards
    manager = getattr(guards, "CheckFunctionManager", None)
    original = getattr(manager, "serialize_guards", None)
    if original is None:
        yield
        return
    unsupported = set(getattr(manager, "UNSUPPORTED_SERIALIZATION_GUARD_TYPES", ()))

    def serialize_guards(self: Any, builder: Any, sorted_guards: list[Any], *rest: Any) -> Any:
        try:
            return original(self, builder, sorted_guards, *rest)
        except torch._dynamo.exc.PackageError as exc:
            for guard in sorted_guards:
                kinds = {guard.create_fn_name(), *(guard.guard_types or ())} & unsupported
                if kinds:
                    raise torch._dynamo.exc.PackageError(
                        f"{min(kinds)} guard on {guard.name} cannot be serialized"
                    ) from exc
            raise

    manager.serialize_guards = serialize_guards
    try:
        yield
    finally:
        manager.serialize_guards = original


def each_size(
    inputs: dict[Any, plan.CallInputs], phase: str, build: Callable[[Any, plan.CallInputs], None], emit: Emit
) -> tuple[dict[str, float], str | None]:
    """Run `build` for each size, timed and reported; the seconds per size, and what
    failed ("Type: message"), stopping there, or None."""
    seconds: dict[str, float] = {}
    for size, args in inputs.items():
        try:
            with reported(emit, phase, str(size)) as took:
                build(size, args)
        except Exception as exc:
            return seconds, f"{type(exc).__name__}: {one_line(str(exc))}"
        seconds[str(size)] = took["wall_s"]
    return seconds, None


@contextlib.contextmanager
def reported(emit: Emit, phase: str, label: str | None) -> Iterator[dict[str, float]]:
    """Report a step's start, and its end with its seconds (`wall_s`, also left in what
    it yields) where it ends without raising."""
    emit("size_start", label=label, phase=phase)
    started = time.perf_counter()
    took: dict[str, float] = {}
    yield took
    took["wall_s"] = round(time.perf_counter() - started, 3)
    emit("size_done", label=label, phase=phase, **took)


def one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "no reason given"
