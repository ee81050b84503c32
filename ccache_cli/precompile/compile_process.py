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
import importlib.util
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from ccache_cli.errors import CcacheError, CompileError, DeviceError, ReportedError
from ccache_cli.in_program import bytecode, fingerprint
from ccache_cli.in_program.tracing import modules_by_file, record_traced_files
from ccache_cli.key import sources
from ccache_cli.precompile import aot, guards, modelspec, outputs, packages, plan
from ccache_cli.store import owners
from ccache_cli.store.artifacts import AOT_PREFIX, MEGACACHE_FILE, OUTPUTS_PREFIX
from ccache_cli.store.manifest import range_label

Emit = Callable[..., None]


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[1]).read_text())
    share_bytecode(request.get("pycache"))
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the model's own prints must not corrupt the event stream

    lock = threading.Lock()  # package workers' events are relayed from threads

    def emit(event: str, **fields: Any) -> None:
        with lock:
            events.write(json.dumps({"event": event, **fields}) + "\n")

    try:
        try:
            run(request, Path(argv[2]), emit, sys.stdin)
        finally:  # before the parent hears of a failure: it ends this process then
            packages.kill_workers()
    except CcacheError as exc:
        emit("error", **ReportedError.of(exc, with_traceback=True).to_json())
        return exc.exit_code
    except Exception as exc:  # a failure inside torch: report it, the parent cleans up
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        message = f"compilation failed: {type(exc).__name__}: {first_line}"
        emit("error", **ReportedError(CompileError.__name__, message, traceback.format_exc()).to_json())
        return 1
    return 0


def share_bytecode(folder: str | None, probe: str = "torch") -> None:
    """Where the environment has no .pyc for `probe` (an image built with
    PYTHONDONTWRITEBYTECODE=1), every process precompile starts would compile the
    compile stack's source again, seconds each: this process then writes its bytecode
    under `folder` (the store's pycache/), where the processes it starts (package
    workers, the packages' load check, Inductor's compile workers) and later
    precompiles read it. A PYTHONPYCACHEPREFIX of the user's is kept as it is."""
    if folder is None or sys.pycache_prefix is not None:
        return
    spec = importlib.util.find_spec(probe)
    try:
        if spec is None or spec.origin is None or os.path.exists(importlib.util.cache_from_source(spec.origin)):
            return
    except (NotImplementedError, ValueError):
        return
    sys.pycache_prefix, sys.dont_write_bytecode = folder, False
    os.environ["PYTHONPYCACHEPREFIX"] = folder
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def run(request: dict[str, Any], out: Path, emit: Emit, replies: TextIO) -> None:
    spec = modelspec.parse(request["model"])
    inputs_spec = modelspec.parse(request["inputs"], default_attr=None) if request["inputs"] else None
    module = modelspec.import_target(spec)
    modelspec.model_target(module, spec)
    inputs_fn = modelspec.load_inputs(module, inputs_spec)

    import torch

    device = _check_device(torch, request["device"])
    others = [_check_device(torch, f"cuda:{index}") for index in request.get("devices", [])[1:]]
    _check_same_gpus(torch, [device, *others])
    # A GPU entry's key holds no CPU component, whose ISA probes take seconds each (compile
    # programs, and on torch 2.11 load each in a new Python that imports torch).
    machine = request["machine"] or fingerprint.machine_fingerprint(device, cpu=not fingerprint.is_gpu_device(device))
    sizes: list[int] = request["sizes"]
    ranges = [(low, high) for low, high in request.get("ranges", [])]
    inputs = {size: plan.to_device(torch, plan.example_inputs(inputs_fn, size), device) for size in sizes}
    range_inputs = {
        batch_range: plan.to_device(torch, plan.example_inputs(inputs_fn, plan.range_hint(batch_range)), device)
        for batch_range in ranges
    }
    dynamic_hint = max([*sizes, *(high for _, high in ranges)]) + 1 if request["dynamic"] else None
    compile_options = {
        "backend": "inductor",
        "mode": request["mode"],
        "dynamic": request["dynamic"],
        "dynamic_hint": dynamic_hint,
        "sizes": sizes,
        **({"ranges": [list(batch_range) for batch_range in ranges]} if ranges else {}),
        "device": device,
        **({"devices": request["devices"]} if others else {}),
        "grad": False,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "inductor_env": fingerprint.inductor_env(os.environ),
        # Stored without the compile stack's bytecode: another entry than one with it.
        **({} if request.get("bytecode", True) else {"bytecode": False}),
    }
    emit(
        "planned",
        machine=machine,
        fingerprint=fingerprint.entry_fingerprint(machine, device),
        compile=compile_options,
        model=modelspec.module_identity(module, spec, inputs_fn),
        inputs={
            **{str(size): plan.describe(inputs[size]) for size in sizes},
            **{range_label(r): plan.describe(args, r) for r, args in range_inputs.items()},
        },
        sys_path=sys.path,
    )
    if replies.readline().strip() != "compile":
        return

    package_workers = packages.start_workers(request, compile_options, out / AOT_PREFIX, emit) if request["aot"] else []
    model = modelspec.load_model(module, spec).to(device)
    recorder = guards.Recorder()
    with _recording_traced_files() as traced:
        with recorder.recording(torch):
            reports, results, assumptions = _compile_sizes(
                torch, model, inputs, compile_options, inputs_fn, emit, recorder=recorder, range_inputs=range_inputs
            )
        _record_outputs(torch, model, inputs, results, out)
        for other in others:  # the graphs' cache keys hold the device index: each index its own
            moved = {size: plan.to_device(torch, args, other) for size, args in inputs.items()}
            more, _, _ = _compile_sizes(
                torch, model.to(other), moved, {**compile_options, "device": other}, inputs_fn, emit, suffix=f"@{other}"
            )
            reports += more
        model.to(device)
        artifacts = torch.compiler.save_cache_artifacts()  # what torch.compile made, before the AOT builds
        if artifacts is not None:
            (out / MEGACACHE_FILE).parent.mkdir(parents=True, exist_ok=True)
            (out / MEGACACHE_FILE).write_bytes(artifacts[0])
        graph_break = next(iter(torch._dynamo.utils.counters["graph_break"]), None)
        if not request["aot"]:
            functions = package_status = {"status": "disabled", "reason": "--no-aot"}
            recorded = _record_bytecode(request, out, emit)
        else:
            built_packages = packages.start(
                torch, model, inputs, range_inputs, compile_options, out / AOT_PREFIX, emit, package_workers
            )
            if graph_break is not None:
                functions = {
                    "status": "skipped",
                    "reason": f"graph break, so no fullgraph capture: {aot.one_line(graph_break)}",
                }
            else:
                functions = aot.aot_functions(torch, model, inputs, compile_options, out / AOT_PREFIX, emit)
            # While package workers build: this process imports nothing more.
            recorded = _record_bytecode(request, out, emit)
            package_status = built_packages()
    traced_sources = sources.collect(
        traced, sys.path, os.path.dirname(torch.__file__), modules_by_file(traced, sys.modules)
    )
    emit(
        "result",
        reports=reports,
        functions=functions,
        packages=package_status,
        sources=[source.__dict__ for source in traced_sources],
        assumptions={size: taken.to_json() for size, taken in assumptions.items()},
        bytecode=recorded,
    )


def _record_bytecode(request: dict[str, Any], out: Path, emit: Emit) -> dict[str, dict[str, str]]:
    """The bytecode of the modules this process imported (in_program/bytecode.py), where
    the entry keeps it."""
    if not request.get("bytecode", True):
        return {}
    emit("size_start", label="bytecode", phase="bytecode")
    started = time.perf_counter()
    recorded = bytecode.record(dict(sys.modules), str(out / bytecode.PREFIX))
    emit("size_done", label="bytecode", phase="bytecode", wall_s=round(time.perf_counter() - started, 3))
    return recorded


def _compile_sizes(
    torch: Any,
    model: Any,
    inputs: dict[int, plan.CallInputs],
    options: dict[str, Any],
    inputs_fn: Callable[[int], Any],
    emit: Emit,
    suffix: str = "",
    recorder: guards.Recorder | None = None,
    range_inputs: dict[tuple[int, int], plan.CallInputs] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Each size's and range's first call through torch.compile: the reports, the
    outputs (by size, range or "dynamic"), and with a `recorder` what each size's or
    range's graph assumes (precompile/guards.py); labels end with `suffix` (the device
    index beyond the first)."""
    runs: list[tuple[str, plan.CallInputs]] = [(str(size), args) for size, args in inputs.items()]
    for batch_range, args in (range_inputs or {}).items():
        plan.mark_batch_dynamic(torch, args, plan.range_hint(batch_range))
        runs.append((range_label(batch_range), args))
    if options["dynamic"]:  # a dynamic graph on top of the static ones, when asked for
        hint = options["dynamic_hint"]
        args = plan.to_device(torch, plan.example_inputs(inputs_fn, hint), options["device"])
        plan.mark_batch_dynamic(torch, args, hint)
        runs.append(("dynamic", args))
    compiled = plan.torch_compile(torch, model, options["mode"], len(runs))
    reports, results, assumptions = [], {}, {}
    for label, args in runs:
        emit("size_start", label=label + suffix, phase="compile")
        report, results[label] = _measure(torch, options["device"], lambda args=args: plan.call(compiled, args))
        report["label"] = label + suffix
        reports.append(report)
        if recorder is not None:
            recorded = guards.size_assumptions(torch, model, recorder.take())
            if recorded is not None and label != "dynamic":
                assumptions[label] = recorded
        emit("size_done", phase="compile", **report)
    return reports, results, assumptions


def _record_outputs(
    torch: Any, model: Any, inputs: dict[int, plan.CallInputs], results: dict[str, Any], out: Path
) -> None:
    """A record of each size's compiled call (`outputs/size-N.json`), which `verify
    --run` compares a warm start's outputs with."""
    folder = out / OUTPUTS_PREFIX
    folder.mkdir(parents=True, exist_ok=True)
    for size, args in inputs.items():
        record = outputs.record(torch, model, args, results[str(size)])
        (folder / f"size-{size}.json").write_text(json.dumps(record))


def _measure(torch: Any, device: str, call: Callable[[], Any]) -> tuple[dict[str, Any], Any]:
    """Run one first call; its wall time, torch's compile-time split and cache counters,
    and its output."""
    from torch._dynamo.utils import clear_compilation_metrics, counters, get_compilation_metrics

    before = cache_counters(counters)
    clear_compilation_metrics()
    start = time.perf_counter()
    with torch.no_grad():
        # A copy: under a mode that records CUDA graphs, the next call overwrites the output.
        output = torch.utils._pytree.tree_map_only(torch.Tensor, torch.Tensor.clone, call())
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
    names = {
        device: torch.cuda.get_device_name(fingerprint.device_index(device))
        for device in devices
        if fingerprint.is_gpu_device(device)
    }
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


if __name__ == "__main__":
    owners.die_with_parent(os.getppid())  # a killed ccache leaves no compile running
    sys.exit(main(sys.argv))
