"""AOTInductor packages, `aot/size-N.pt2`, from `torch.export` of each size, and
`aot/size-LOW-HIGH.pt2` of each range, its batch dimension dynamic. Runs in the compile
process.

Loading one needs neither Dynamo nor Inductor imported (seconds of imports), so
`ccache_cli.compile` prefers them. They are built with the Inductor options of the
entry's mode (max-autotune's autotuning happens here, once) and hold no weights: the
runtime binds the model's own parameters and buffers to them.

With `jobs` above one, package workers (package_process.py) build them, that many at
once, each on the model built again from its spec: they start before the first calls,
importing torch and building the model while the compile process compiles, and build
while it goes on with the aot_compile functions; else the compile process builds them
one after another.
Either way `build` builds each, in an Inductor cache of their own (what a build writes
there, kernels and autotuning results under torch.compile's names but for the
package's options, stays out of the entry's), seeded with the Triton kernels the cold
compile made, and the packages are stored only where a fresh process loads them all:
one started as the builds begin, which imports torch meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ccache_cli.errors import ReportedError
from ccache_cli.precompile import aot, launch, plan
from ccache_cli.precompile.aot import Emit, one_line
from ccache_cli.store.manifest import range_label

Status = dict[str, Any]
_started: list[_Worker] = []  # this process's package workers (kill_workers)


def start_workers(request: dict[str, Any], options: dict[str, Any], folder: Path, emit: Emit) -> list[_Worker]:
    """Start the package workers, where `jobs` asks for more than one, before the first
    calls: each imports torch and builds the model while the compile process compiles,
    then waits for `start` to let it build (or to kill it). `options`: the compile options
    (device, mode, sizes, ranges); `request`: the compile worker's (the model's and
    inputs' specs, and `jobs`); `folder`: the entry's `aot/`."""
    labels = package_labels(options["sizes"], options.get("ranges", ()))
    if request.get("jobs", 1) <= 1:
        return []
    # One worker for one package too: the compile process builds the aot_compile
    # functions meanwhile (9.5 s of a decoder's precompile on an H100, one after the other).
    jobs = min(request["jobs"], len(labels))
    build_dir = _build_dir(folder)
    build_dir.mkdir(parents=True, exist_ok=True)
    job = {"model": request["model"], "inputs": request["inputs"], "device": options["device"], "mode": options["mode"]}
    return [
        _Worker(job, {label: labels[label] for label in list(labels)[index::jobs]}, folder, build_dir, emit)
        for index in range(jobs)
    ]


def start(
    torch: Any,
    model: Any,
    inputs: dict[int, plan.CallInputs],
    range_inputs: dict[tuple[int, int], plan.CallInputs],
    options: dict[str, Any],
    folder: Path,
    emit: Emit,
    workers: list[_Worker],
) -> Callable[[], Status]:
    """Begin building the packages into `folder` (the entry's `aot/`), in the `workers`
    that `start_workers` started, else here; the function it returns waits for them and gives
    their status for the manifest."""
    mode, device = options["mode"], options["device"]
    skipped = None
    if any(module.training for module in model.modules()):
        skipped = "the model is in training mode"
    every = [*inputs.values(), *range_inputs.values()]
    if not all(tensor.is_contiguous() for args in every for tensor in args.tensors(torch)):
        skipped = skipped or "an example input is not contiguous"
    if skipped is not None:
        for worker in workers:
            worker.kill()
        return _done({"status": "skipped", "reason": skipped})
    folder.mkdir(parents=True, exist_ok=True)
    checker = _FreshLoad(device)
    build_dir = _build_dir(folder)
    _seed_triton_kernels(Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]), build_dir)
    labels = package_labels([*inputs], [*range_inputs])
    structure = plan.model_structure(model)
    if not workers:
        with aot.inductor_cache_at(build_dir):
            weights: dict[str, list[str]] = {}
            seconds, error = aot.each_size(
                labelled(inputs, range_inputs),
                "package",
                lambda label, args: weights.update(build(torch, model, label, args, labels[label], mode, folder, emit)),
                emit,
            )
        return _done(_finish(folder, checker, weights, seconds, error, structure, emit))
    for worker in workers:
        worker.go()

    def wait() -> Status:
        results = [worker.result() for worker in workers]
        error = next((result["error"] for result in results if result["error"]), None)
        if error is None and any(result["structure"] != structure for result in results):
            error = (
                "the model built again in a package worker differs from the one compiled (its module tree or "
                "weights' shapes): precompile it with --jobs 1"
            )
        weights = {label: used for result in results for label, used in result["weights"].items()}
        built = {label: wall for result in results for label, wall in result["seconds"].items()}
        seconds = {label: built[label] for label in labels if label in built}
        return _finish(folder, checker, weights, seconds, error, structure, emit)

    return wait


def package_labels(sizes: Iterable[int], ranges: Iterable[Sequence[int]]) -> dict[str, tuple[int, int] | None]:
    """Each package's label (a size, `8`, or a range, `1-64`) and its range, if one."""
    labels: dict[str, tuple[int, int] | None] = {str(size): None for size in sizes}
    labels.update({range_label((low, high)): (low, high) for low, high in ranges})
    return labels


def _build_dir(folder: Path) -> Path:
    """The packages' own Inductor cache, beside the entry's artifacts."""
    return folder.parent.parent / "package-build"


def labelled(
    inputs: dict[int, plan.CallInputs], range_inputs: dict[tuple[int, int], plan.CallInputs]
) -> dict[str, plan.CallInputs]:
    """Each package's inputs by its label: a size (`8`), or a range (`1-64`)."""
    return {
        **{str(size): args for size, args in inputs.items()},
        **{range_label(batch_range): args for batch_range, args in range_inputs.items()},
    }


def build(
    torch: Any,
    model: Any,
    label: str,
    args: plan.CallInputs,
    batch_range: tuple[int, int] | None,
    mode: str | None,
    folder: Path,
    emit: Emit,
) -> dict[str, list[str]]:
    """Build one package, `folder/size-LABEL.pt2`; the weights it binds, by label. Its
    torch.export is reported as a phase of its own: what of a package's time is not
    AOTInductor's."""
    try:
        with aot.reported(emit, "export", label):
            program = plan.export(torch, model, args, batch_range)
    except Exception as exc:
        raise ExportError(f"torch.export failed: {type(exc).__name__}: {one_line(str(exc))}") from exc
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(
            program,
            package_path=str(folder / f"size-{label}.pt2"),
            inductor_configs=plan.package_configs(torch, mode),
        )
    return {label: plan.used_weights(program)}


class ExportError(Exception):
    """torch.export could not take the model: the entry says why."""


def _done(status: Status) -> Callable[[], Status]:
    return lambda: status


def _finish(
    folder: Path,
    checker: _FreshLoad,
    weights: dict[str, list[str]],
    seconds: dict[str, float],
    error: str | None,
    structure: str,
    emit: Emit,
) -> Status:
    """The packages' status; where they failed to build or to load, none is kept."""
    if error is not None:
        checker.kill()
        reason = error.removeprefix(f"{ExportError.__name__}: ")
        if not reason.startswith(("torch.export", "the model built again")):
            reason = f"AOTInductor failed: {error}"
    else:
        with aot.reported(emit, "check", None):
            failure = checker.load({str(folder / f"size-{label}.pt2"): used for label, used in sorted(weights.items())})
        reason = None if failure is None else f"a fresh process could not load the packages: {failure}"
    if reason is not None:
        for package in folder.glob("*.pt2"):
            package.unlink()
        return {"status": "skipped", "reason": reason}
    return {"status": "stored", "reason": None, "seconds": seconds, "model": structure}


def _seed_triton_kernels(inductor_dir: Path, build_dir: Path) -> None:
    """Give the packages' build the Triton kernels the cold compile built (links, not
    copies): a kernel the same in both is then compiled once."""
    kernels = inductor_dir / "triton"
    if kernels.is_dir():
        shutil.copytree(kernels, build_dir / "triton", copy_function=_link, dirs_exist_ok=True)


def _link(source: str, target: str) -> None:
    """A hard link, unless the workers' build already has that file."""
    with contextlib.suppress(FileExistsError):
        os.link(source, target)


def kill_workers() -> None:
    """End the package workers still running, with what they started: the compile
    process failed before it let them build or stopped them."""
    for worker in _started:
        worker.kill()


class _Worker:
    """A package worker building some of the packages, its events relayed as they come."""

    def __init__(
        self,
        job: dict[str, Any],
        labels: dict[str, tuple[int, int] | None],
        folder: Path,
        build_dir: Path,
        emit: Emit,
    ) -> None:
        job = {
            **job,
            "labels": {label: list(batch_range) if batch_range else None for label, batch_range in labels.items()},
            "folder": str(folder),
        }
        self._process = subprocess.Popen(
            [*launch.worker_command("ccache_cli.precompile.package_process"), json.dumps(job)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the compile worker's log
            env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(build_dir)},
            text=True,
            start_new_session=True,  # a group of its own, with the compilers it runs, that kill() ends
        )
        _started.append(self)
        self._result: Status = {"error": "the package worker exited before it finished"}
        self._thread = threading.Thread(target=self._relay, args=(emit,), daemon=True)
        self._thread.start()

    def go(self) -> None:
        """Let it build (it has its model built by now, or is still building it)."""
        assert self._process.stdin is not None
        with contextlib.suppress(OSError):  # it ended already: its result says why
            self._process.stdin.write("build\n")
            self._process.stdin.close()

    def kill(self) -> None:
        """End it, with what it started (a compiler, a probe), where it still runs."""
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def _relay(self, emit: Emit) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            event = json.loads(line)
            kind = event.pop("event")
            if kind == "result":
                self._result = event
            elif kind == "error":
                reported = ReportedError.from_json(event)
                sys.stderr.write(reported.traceback)
                self._result = {"error": f"{reported.kind}: {reported.message}"}
            else:
                emit(kind, **event)

    def result(self) -> Status:
        self._thread.join()
        code = self._process.wait()
        if code != 0 and self._result.get("error") is None:
            self._result = {"error": f"the package worker exited with code {code}"}
        return {"weights": {}, "seconds": {}, "structure": None, **self._result}


# Loads packages as the runtime does, and checks that each takes every weight its
# program used as a constant bound by name (none compiled into it); run by path, in a
# process of its own, which imports torch first and then reads the packages from stdin.
_LOAD_PACKAGES = """
import json, sys, torch
for path, weights in json.loads(sys.stdin.read() or "{}").items():
    loader = torch._C._aoti.AOTIModelPackageLoader(path, "model", False, 1, int(sys.argv[1]))
    if missing := set(weights) - set(loader.get_constant_fqns()):
        sys.exit(f"{sorted(missing)[0]} is compiled into the package, so new weights would not be seen")
"""


class _FreshLoad:
    """A new Python, started before the packages build (it imports torch meanwhile),
    that loads them once built.

    A package is stored only if it loads and binds every weight its program used:
    some torch builds crash in AOTInductor's loader (a segmentation fault, which no
    `except` catches), and the runtime must never be handed one of those.
    """

    def __init__(self, device: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _LOAD_PACKAGES, str(plan.package_device_index(device))],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def load(self, packages: dict[str, list[str]]) -> str | None:
        """Why loading `packages` (path -> the weights its program used) fails, or None
        when it works."""
        _, stderr = self._process.communicate(json.dumps(packages))
        code = self._process.returncode
        if code == 0:
            return None
        if code < 0:
            return f"it died of signal {-code} in torch's AOTInductor loader{static_cxx_runtime_hint()}"
        return one_line(stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {code}")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        self._process.communicate()


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
