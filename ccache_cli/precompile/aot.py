"""The AOT artifacts precompile builds beside the Inductor cache: one AOTInductor
package per size (from torch.export) and one aot_compile function per size (where
Dynamo captures the whole model). Runs in the compile process.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ccache_cli.precompile import plan
from ccache_cli.store.manifest import range_label

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

    seconds, error = _each_size(inputs, "aot", save_function, emit)
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


def packages(
    torch: Any,
    model: Any,
    inputs: dict[int, plan.CallInputs],
    range_inputs: dict[tuple[int, int], plan.CallInputs],
    options: dict[str, Any],
    folder: Path,
    emit: Emit,
) -> dict[str, Any]:
    """AOTInductor packages, `aot/size-N.pt2`, from `torch.export` of each size, and
    `aot/size-LOW-HIGH.pt2` of each range, its batch dimension dynamic.

    Loading one needs neither Dynamo nor Inductor imported (seconds of imports), so
    `ccache_cli.compile` prefers them. They are built with the Inductor options of the
    entry's mode (max-autotune's autotuning happens here, once) and hold no weights:
    the runtime binds the model's own parameters and buffers to them.
    """
    if (unsupported := plan.packages_unsupported(options["mode"])) is not None:
        return {"status": "skipped", "reason": unsupported}
    if any(module.training for module in model.modules()):
        return {"status": "skipped", "reason": "the model is in training mode"}
    every = [*inputs.values(), *range_inputs.values()]
    if not all(tensor.is_contiguous() for args in every for tensor in args.tensors(torch)):
        return {"status": "skipped", "reason": "an example input is not contiguous"}
    folder.mkdir(parents=True, exist_ok=True)
    configs = plan.package_configs(torch, options["mode"])

    weights: list[str] = []

    ranges = {range_label(batch_range): batch_range for batch_range in range_inputs}

    def save_package(label: str, args: plan.CallInputs) -> None:
        try:
            program = plan.export(torch, model, args, ranges.get(label))
        except Exception as exc:
            raise _ExportError(f"torch.export failed: {type(exc).__name__}: {one_line(str(exc))}") from exc
        weights[:] = plan.used_weights(program)
        with torch.no_grad():
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(folder / f"size-{label}.pt2"), inductor_configs=configs
            )

    labelled = {**{str(size): args for size, args in inputs.items()}, **dict(zip(ranges, range_inputs.values()))}
    seconds, error = _each_size(labelled, "package", save_package, emit)
    if error is not None:
        reason: str | None = error.removeprefix(f"{_ExportError.__name__}: ")
        reason = reason if reason.startswith("torch.export") else f"AOTInductor failed: {error}"
    else:
        failure = _load_in_fresh_process(sorted(folder.glob("*.pt2")), options["device"], weights)
        reason = None if failure is None else f"a fresh process could not load the packages: {failure}"
    if reason is not None:
        for package in folder.glob("*.pt2"):
            package.unlink()
        return {"status": "skipped", "reason": reason}
    return {"status": "stored", "reason": None, "seconds": seconds, "model": plan.model_structure(model)}


class _ExportError(Exception):
    """torch.export could not take the model: the entry says why."""


def _each_size(
    inputs: dict[Any, plan.CallInputs], phase: str, build: Callable[[Any, plan.CallInputs], None], emit: Emit
) -> tuple[dict[str, float], str | None]:
    """Run `build` for each size, timed and reported; the seconds per size, and what
    failed ("Type: message"), stopping there, or None."""
    seconds: dict[str, float] = {}
    for size, args in inputs.items():
        emit("size_start", label=str(size), phase=phase)
        start = time.perf_counter()
        try:
            build(size, args)
        except Exception as exc:
            return seconds, f"{type(exc).__name__}: {one_line(str(exc))}"
        seconds[str(size)] = round(time.perf_counter() - start, 3)
        emit("size_done", label=str(size), phase=phase, wall_s=seconds[str(size)])
    return seconds, None


# Loads packages as the runtime does; run by path, in a process of its own.
# Loads packages as the runtime does, and checks that each takes every weight as a
# constant bound by name (none compiled into it); run by path, in a process of its own.
_LOAD_PACKAGES = """
import json, sys, torch
weights = set(json.loads(sys.argv[2]))
for path in sys.argv[3:]:
    loader = torch._C._aoti.AOTIModelPackageLoader(path, "model", False, 1, int(sys.argv[1]))
    if missing := weights - set(loader.get_constant_fqns()):
        sys.exit(f"{sorted(missing)[0]} is compiled into the package, so new weights would not be seen")
"""


def _load_in_fresh_process(packages: list[Path], device: str, weights: list[str]) -> str | None:
    """Why loading `packages` fails in a new process, or None when it works.

    A package is stored only if it loads and binds every one of `weights`: some torch
    builds crash in AOTInductor's loader (a segmentation fault, which no `except`
    catches), and the runtime must never be handed one of those.
    """
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOAD_PACKAGES,
            str(plan.package_device_index(device)),
            json.dumps(weights),
            *map(str, packages),
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode == 0:
        return None
    if result.returncode < 0:
        return f"it died of signal {-result.returncode} in torch's AOTInductor loader{static_cxx_runtime_hint()}"
    return one_line(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}")


def static_cxx_runtime_hint() -> str:
    """Why the loader may have crashed, where the C++ compiler explains it, else "".

    A compiler with no libstdc++.so beside it (some images install such a toolchain
    and point CXX at it) links a static copy of the C++ runtime into each package;
    that copy and the one torch loaded clash, and the loader crashes in std::regex.
    """
    from torch._inductor.cpp_builder import get_cpp_compiler

    compiler = get_cpp_compiler()
    try:
        found = subprocess.run(
            [compiler, "-print-file-name=libstdc++.so"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if os.path.isabs(found):
        return ""
    return (
        f": the C++ compiler {compiler} has no libstdc++.so, so it linked a static copy of the C++ runtime"
        " into the packages, and that copy clashes with torch's; set CXX to a compiler that links it"
        " dynamically (such as /usr/bin/g++) and precompile again"
    )


def one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "no reason given"
