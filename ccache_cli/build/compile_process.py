"""The compile worker: one fresh process per precompile.

The parent (`precompile.py`) starts it with TORCHINDUCTOR_CACHE_DIR pointing into a
staging folder of the store, so everything torch writes lands there and nothing else
is touched. A fresh process also means fresh Dynamo state, user code that can crash
or exit without taking the CLI along, and no torch import in the CLI process.

Protocol: the worker writes JSON events, one per line, to its original stdout (user
code's prints go to stderr). After the `planned` event, which carries the key parts
known before compiling, it reads one line from stdin: `compile` to go on, anything
else to stop (the parent found a matching entry).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from ccache_cli.store import owners
from ccache_cli.build import modelspec, outputs
from ccache_cli.hooked import bytecode, fingerprint
from ccache_cli.key import sources
from ccache_cli.build import plan as plan
from ccache_cli.store.artifacts import AOT_PREFIX, MEGACACHE_FILE, OUTPUTS_PREFIX
from ccache_cli.errors import CcacheError, CompileError, DeviceError
from ccache_cli.hooked.tracing import modules_by_file, record_traced_files

Emit = Callable[..., None]



def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[1]).read_text())
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the model's own prints must not corrupt the event stream

    def emit(event: str, **fields: Any) -> None:
        events.write(json.dumps({"event": event, **fields}) + "\n")

    try:
        run(request, Path(argv[2]), emit, sys.stdin)
    except CcacheError as exc:
        emit("error", kind=type(exc).__name__, exit_code=exc.exit_code, message=str(exc), traceback=traceback.format_exc())
        return exc.exit_code
    except Exception as exc:  # a failure inside torch: report it, the parent cleans up
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        emit(
            "error",
            kind="CompileError",
            exit_code=1,
            message=f"compilation failed: {type(exc).__name__}: {first_line}",
            traceback=traceback.format_exc(),
        )
        return 1
    return 0


def run(request: dict[str, Any], out: Path, emit: Emit, replies: TextIO) -> None:
    spec = modelspec.parse(request["model"])
    inputs_spec = modelspec.parse(request["inputs"], default_attr=None) if request["inputs"] else None
    module = modelspec.import_target(spec)
    inputs_fn = modelspec.load_inputs(module, inputs_spec)

    import torch

    device = _check_device(torch, request["device"])
    others = [_check_device(torch, f"cuda:{index}") for index in request.get("devices", [])[1:]]
    _check_same_gpus(torch, [device, *others])
    machine = request["machine"] or fingerprint.machine_fingerprint(device)
    sizes: list[int] = request["sizes"]
    inputs = {size: plan.to_device(torch, plan.example_inputs(inputs_fn, size), device) for size in sizes}
    dynamic_hint = max(sizes) + 1 if request["dynamic"] else None
    compile_options = {
        "backend": "inductor",
        "mode": request["mode"],
        "dynamic": request["dynamic"],
        "dynamic_hint": dynamic_hint,
        "sizes": sizes,
        "device": device,
        **({"devices": request["devices"]} if others else {}),
        "grad": False,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "inductor_env": {
            name: value
            for name, value in sorted(os.environ.items())
            if name.startswith("TORCHINDUCTOR_") and name not in fingerprint.INDUCTOR_ENV_IGNORED
        },
    }
    emit(
        "planned",
        machine=machine,
        fingerprint=fingerprint.entry_fingerprint(machine, device),
        compile=compile_options,
        model=modelspec.module_identity(module, spec, inputs_fn),
        inputs={str(size): plan.describe(inputs[size]) for size in sizes},
        sys_path=sys.path,
    )
    if replies.readline().strip() != "compile":
        return

    model = modelspec.load_model(module, spec).to(device)
    with _recording_traced_files() as traced:
        reports, results = _compile_sizes(torch, model, inputs, compile_options, inputs_fn, emit)
        _record_outputs(torch, model, inputs, results, out)
        for other in others:  # the graphs' cache keys hold the device index: each index its own
            moved = {size: plan.to_device(torch, args, other) for size, args in inputs.items()}
            more, _ = _compile_sizes(torch, model.to(other), moved, {**compile_options, "device": other}, inputs_fn,
                                     emit, suffix=f"@{other}")
            reports += more
        model.to(device)
        artifacts = torch.compiler.save_cache_artifacts()  # what torch.compile made, before the AOT builds
        if artifacts is not None:
            (out / MEGACACHE_FILE).parent.mkdir(parents=True, exist_ok=True)
            (out / MEGACACHE_FILE).write_bytes(artifacts[0])
        graph_break = next(iter(torch._dynamo.utils.counters["graph_break"]), None)
        if not request["aot"]:
            functions = packages = {"status": "disabled", "reason": "--no-aot"}
        else:
            # A package holds all it needs; what building it writes to an Inductor cache
            # (its kernels, and autotuning results under the same names as torch.compile's
            # but for its own options) stays out of the entry's.
            with _inductor_cache_at(out.parent / "package-build"):
                packages = _aoti_packages(torch, model, inputs, compile_options, out / AOT_PREFIX, emit)
            if graph_break is not None:
                functions = {"status": "skipped", "reason": f"graph break, so no fullgraph capture: {_one_line(graph_break)}"}
            else:
                functions = _aot_compile(torch, model, inputs, compile_options, out / AOT_PREFIX, emit)
    traced_sources = sources.collect(traced, sys.path, os.path.dirname(torch.__file__), modules_by_file(traced, sys.modules))
    emit("size_start", label="bytecode", phase="bytecode")
    started = time.perf_counter()
    recorded = bytecode.record(dict(sys.modules), str(out / bytecode.PREFIX))
    emit("size_done", label="bytecode", phase="bytecode", wall_s=round(time.perf_counter() - started, 3))
    emit(
        "result",
        reports=reports,
        functions=functions,
        packages=packages,
        sources=[source.__dict__ for source in traced_sources],
        bytecode=recorded,
    )


def _compile_sizes(
    torch: Any,
    model: Any,
    inputs: dict[int, plan.CallInputs],
    options: dict[str, Any],
    inputs_fn: Callable[[int], Any],
    emit: Emit,
    suffix: str = "",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each size's first call through torch.compile: the reports, and the outputs (by
    size, or "dynamic"); labels end with `suffix` (the device index beyond the first)."""
    runs: list[tuple[str, plan.CallInputs]] = [(str(size), args) for size, args in inputs.items()]
    if options["dynamic"]:  # a dynamic graph on top of the static ones, when asked for
        hint = options["dynamic_hint"]
        args = plan.to_device(torch, plan.example_inputs(inputs_fn, hint), options["device"])
        plan.mark_batch_dynamic(torch, args, hint)
        runs.append(("dynamic", args))
    compiled = plan.torch_compile(torch, model, options["mode"], len(runs))
    reports, results = [], {}
    for label, args in runs:
        emit("size_start", label=label + suffix, phase="compile")
        report, results[label] = _measure(torch, options["device"], lambda: plan.call(compiled, args))
        report["label"] = label + suffix
        reports.append(report)
        emit("size_done", phase="compile", **report)
    return reports, results


def _record_outputs(torch: Any, model: Any, inputs: dict[int, plan.CallInputs], results: dict[str, Any], out: Path) -> None:
    """A record of each size's compiled call (`outputs/size-N.json`), which `verify
    --run` compares a warm start's outputs with."""
    folder = out / OUTPUTS_PREFIX
    folder.mkdir(parents=True, exist_ok=True)
    for size, args in inputs.items():
        record = outputs.record(torch, model, args, results[str(size)])
        (folder / f"size-{size}.json").write_text(json.dumps(record))


def _aot_compile(
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
def _inductor_cache_at(folder: Path) -> Iterator[None]:
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
                    raise torch._dynamo.exc.PackageError(f"{min(kinds)} guard on {guard.name} cannot be serialized") from exc
            raise

    manager.serialize_guards = serialize_guards
    try:
        yield
    finally:
        manager.serialize_guards = original


def _aoti_packages(
    torch: Any, model: Any, inputs: dict[int, plan.CallInputs], options: dict[str, Any], folder: Path, emit: Emit
) -> dict[str, Any]:
    """AOTInductor packages, `aot/size-N.pt2`, from `torch.export` of each size.

    Loading one needs neither Dynamo nor Inductor imported (seconds of imports), so
    `ccache_cli.compile` prefers them. They are built with the Inductor options of the
    entry's mode (max-autotune's autotuning happens here, once) and hold no weights:
    the runtime binds the model's own parameters and buffers to them.
    """
    if (unsupported := plan.packages_unsupported(options["mode"])) is not None:
        return {"status": "skipped", "reason": unsupported}
    if any(module.training for module in model.modules()):
        return {"status": "skipped", "reason": "the model is in training mode"}
    if not all(tensor.is_contiguous() for args in inputs.values() for tensor in args.tensors(torch)):
        return {"status": "skipped", "reason": "an example input is not contiguous"}
    folder.mkdir(parents=True, exist_ok=True)
    configs = plan.package_configs(torch, options["mode"])

    weights: list[str] = []

    def save_package(size: int, args: plan.CallInputs) -> None:
        try:
            program = plan.export(torch, model, args)
        except Exception as exc:
            raise _ExportError(f"torch.export failed: {type(exc).__name__}: {_one_line(str(exc))}") from exc
        weights[:] = plan.used_weights(program)
        with torch.no_grad():
            torch._inductor.aoti_compile_and_package(program, package_path=str(folder / f"size-{size}.pt2"),
                                                     inductor_configs=configs)

    seconds, error = _each_size(inputs, "package", save_package, emit)
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
    inputs: dict[int, plan.CallInputs], phase: str, build: Callable[[int, plan.CallInputs], None], emit: Emit
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
            return seconds, f"{type(exc).__name__}: {_one_line(str(exc))}"
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
        [sys.executable, "-c", _LOAD_PACKAGES, str(plan.package_device_index(device)), json.dumps(weights),
         *map(str, packages)],
        capture_output=True, text=True,
    )
    if result.returncode == 0:
        return None
    if result.returncode < 0:
        return f"it died of signal {-result.returncode} in torch's AOTInductor loader{_static_cxx_runtime_hint()}"
    return _one_line(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}")


def _static_cxx_runtime_hint() -> str:
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


def _measure(torch: Any, device: str, call: Callable[[], Any]) -> tuple[dict[str, Any], Any]:
    """Run one first call; its wall time, torch's compile-time split and cache counters,
    and its output."""
    from torch._dynamo.utils import clear_compilation_metrics, counters, get_compilation_metrics

    before = cache_counters(counters)
    clear_compilation_metrics()
    start = time.perf_counter()
    with torch.no_grad():
        output = call()
    if fingerprint.is_gpu_device(device):
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    metrics = get_compilation_metrics()

    def total(name: str, scale: float = 1.0) -> float:
        return sum((getattr(m, name, None) or 0) * scale for m in metrics)

    frame, backend = total("entire_frame_compile_time_s"), total("backend_compile_time_s")
    inductor, kernels = total("inductor_compile_time_s"), total("triton_compile_time_us", 1e-6)
    after = cache_counters(counters)
    report = {
        "wall_s": round(wall, 3),
        "compile_s": round(frame, 3),
        "dynamo_s": round(max(frame - backend, 0.0), 3),
        "aot_autograd_s": round(max(backend - inductor, 0.0), 3),
        "inductor_s": round(max(inductor - kernels, 0.0), 3),
        "kernel_compile_s": round(kernels, 3),
        "graphs": len(metrics),
        "counters": {name: after[name] - before.get(name, 0) for name in after},
    }
    return report, output


def cache_counters(counters: Any) -> dict[str, int]:
    return {
        "fxgraph_cache_hit": counters["inductor"]["fxgraph_cache_hit"],
        "fxgraph_cache_miss": counters["inductor"]["fxgraph_cache_miss"],
        "fxgraph_cache_bypass": counters["inductor"]["fxgraph_cache_bypass"],
        "autograd_cache_hit": counters["aot_autograd"]["autograd_cache_hit"],
        "autograd_cache_miss": counters["aot_autograd"]["autograd_cache_miss"],
        "autograd_cache_bypass": counters["aot_autograd"]["autograd_cache_bypass"],
    }


@contextlib.contextmanager
def _recording_traced_files() -> Iterator[set[str]]:
    """The files of every code object Dynamo traces while in this block."""
    from torch._guards import TracingContext

    filenames: set[str] = set()
    original_init = record_traced_files(TracingContext, filenames)
    try:
        yield filenames
    finally:
        TracingContext.__init__ = original_init  # type: ignore[method-assign]


def _check_same_gpus(torch: Any, devices: list[str]) -> None:
    """One entry is keyed on one GPU model: every --devices index must be one."""
    names = {device: torch.cuda.get_device_name(fingerprint.device_index(device)) for device in devices
             if fingerprint.is_gpu_device(device)}
    if len(set(names.values())) > 1:
        found = ", ".join(f"{device} is {name}" for device, name in names.items())
        raise DeviceError(f"--devices: the GPUs differ ({found}); precompile each GPU model apart")


def _check_device(torch: Any, device: str) -> str:
    if device == "cpu":
        return device
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: this machine has no CUDA GPU that torch {torch.__version__} can use")
    index = fingerprint.device_index(device)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    return f"cuda:{index}"


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "no reason given"


if __name__ == "__main__":
    owners.die_with_parent(os.getppid())  # a killed ccache leaves no compile running
    sys.exit(main(sys.argv))
