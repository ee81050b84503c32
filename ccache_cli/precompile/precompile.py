"""Precompile a model for a list of sizes and store the result as one entry.

The CLI process never imports torch: a worker process (`compile_process.py`) loads the model
and compiles it into a staging folder of the store; this side looks the key up,
collects what the worker wrote into blobs and publishes the entry atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccache_cli.errors import CompileError, DeviceError, ReportedError
from ccache_cli.in_program import fingerprint
from ccache_cli.in_program.fingerprint import DYNAMIC_THREADS_ENV
from ccache_cli.in_program.usage import VIEW_ENV
from ccache_cli.key import interpreter, sources
from ccache_cli.precompile import launch, modelspec
from ccache_cli.store import manifest
from ccache_cli.store.artifacts import INDUCTOR_PREFIX
from ccache_cli.store.hashing import hash_json
from ccache_cli.store.manifest import Manifest
from ccache_cli.store.staging import space_free, stage_artifacts, stage_bytecode_list, staged_blobs
from ccache_cli.store.store import PYCACHE_FOLDER, Store

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class PrecompileRequest:
    model: str
    sizes: tuple[int, ...]
    ranges: tuple[tuple[int, int], ...] = ()  # each served whole by one package with a dynamic batch
    device: str = "cpu"
    devices: tuple[int, ...] = ()  # GPU indices to compile for (`--devices`); the first is the device
    dynamic: bool = False
    mode: str = "default"
    name: str | None = None
    inputs: str | None = None
    force: bool = False
    aot: bool = True
    bytecode: bool = True  # store the compile stack's .pyc (for images without them)
    python: str | None = None  # the interpreter to compile in (`--python`), if not this one
    jobs: int | None = None  # AOTInductor packages built at once (`--jobs`); None: by the cores (package_jobs)


def package_jobs(requested: int | None) -> int:
    """How many packages precompile builds at once: as asked, else one per 8 cores
    (a package build compiles its kernels with every core), at most 4; each build
    holds a copy of the model, on the device too."""
    if requested is not None:
        return requested
    return max(1, min(4, (os.cpu_count() or 1) // 8))


@dataclass(frozen=True)
class Progress:
    """What the worker is doing now, for a progress display."""

    phase: str  # "loading", "compile", "aot", "package" (its "export" within it), "check" or "bytecode"
    label: str | None = None  # a size, or "dynamic"
    done: bool = False
    wall_s: float | None = None


@dataclass(frozen=True)
class SizeReport:
    label: str
    wall_s: float
    compile_s: float
    dynamo_s: float
    aot_autograd_s: float
    inductor_s: float
    kernel_compile_s: float
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PrecompileResult:
    entry: Manifest
    reused: bool  # an entry with this key was already in the store
    reports: tuple[SizeReport, ...]
    new_bytes: int  # bytes this precompile added to the store
    seconds: float


def check_device(device: str) -> str:
    if not _DEVICE.match(device):
        raise DeviceError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    return "cuda:0" if device == "cuda" else device


def lookup_key(planned: dict[str, Any]) -> str:
    """The hash of every key part known before compiling (all but the sources)."""
    return hash_json({part: planned[part] for part in ("fingerprint", "compile", "model", "inputs")})


def precompile(
    store: Store, request: PrecompileRequest, on_progress: Callable[[Progress], None] = lambda _: None
) -> PrecompileResult:
    start = time.perf_counter()
    device = check_device(f"cuda:{request.devices[0]}" if request.devices else request.device)
    modelspec.parse(request.model)  # malformed specs fail before a worker starts
    if request.inputs:
        modelspec.parse(request.inputs, default_attr=None)
    python = None
    if request.python is not None and not interpreter.is_this_interpreter(request.python):
        python = request.python
        probe = interpreter.probe(python).digest  # its environment, not this one, names its fingerprint
    else:
        probe = fingerprint.probe_digest()
    with store.staging() as staging, contextlib.ExitStack() as stack:
        request_file = staging / "request.json"
        request_file.write_text(
            json.dumps(
                {
                    "model": request.model,
                    "inputs": request.inputs,
                    "sizes": list(request.sizes),
                    "ranges": [list(batch_range) for batch_range in request.ranges],
                    "device": device,
                    "devices": list(request.devices),
                    "dynamic": request.dynamic,
                    "mode": request.mode,
                    "aot": request.aot,
                    "bytecode": request.bytecode,
                    "jobs": package_jobs(request.jobs),
                    "pycache": str(store.root / PYCACHE_FOLDER),
                    "machine": _cached_machine(store, probe, device),
                }
            )
        )
        on_progress(Progress("loading"))
        (staging / "artifacts").mkdir()
        compile_dir = stack.enter_context(space_free(staging / "artifacts"))
        worker = _Worker(request_file, staging, compile_dir, python, cpu=not fingerprint.is_gpu_device(device))
        try:
            planned = worker.expect("planned")
            if device in fingerprint.PRIMARY_DEVICES:
                store.save_machine_fingerprint(probe, planned["machine"])
            lookup = lookup_key(planned)
            if not request.force:
                existing = _fresh_entry(store, lookup, planned["sys_path"])
                if existing is not None:
                    worker.send("stop")
                    worker.finish()
                    return PrecompileResult(existing, True, (), 0, time.perf_counter() - start)
            worker.send("compile")
            while True:
                event = worker.next_event()
                if event["event"] == "result":
                    break
                on_progress(
                    Progress(event["phase"], event["label"], event["event"] == "size_done", event.get("wall_s"))
                )
            worker.finish()
        finally:
            worker.kill()
        entry, new_bytes = _store_entry(store, staging, request, planned, lookup, event, compile_dir / "inductor")
    reports = tuple(SizeReport(**{k: v for k, v in r.items() if k != "graphs"}) for r in event["reports"])
    return PrecompileResult(entry, False, reports, new_bytes, time.perf_counter() - start)


def _cached_machine(store: Store, probe: str, device: str) -> dict[str, Any] | None:
    """This machine's fingerprint as an earlier run cached it, where it holds every
    component an entry for `device` is keyed by (a GPU precompile caches none of the
    CPU's); else None, and the compile worker asks torch."""
    cached = store.cached_machine_fingerprint(probe) if device in fingerprint.PRIMARY_DEVICES else None
    return cached if cached is not None and fingerprint.knows(cached, device) else None


def _fresh_entry(store: Store, lookup: str, sys_path: list[str]) -> Manifest | None:
    """A stored entry with this lookup key whose traced sources are unchanged."""
    for entry in store.with_lookup_key(lookup):
        if sources.all_fresh(entry.sources, sys_path):
            return entry
    return None


def _store_entry(
    store: Store,
    staging: Path,
    request: PrecompileRequest,
    planned: dict[str, Any],
    lookup: str,
    result: dict[str, Any],
    compiled_at: Path,
) -> tuple[Manifest, int]:
    files, new_bytes = stage_artifacts(store, staging, staging / "artifacts")
    own, bytecode_summary = stage_bytecode_list(store, staging, files, result.get("bytecode", {}))
    key = {
        "fingerprint": planned["fingerprint"],
        "compile": planned["compile"],
        "model": planned["model"],
        "inputs": planned["inputs"],
        "sources": sorted(result["sources"], key=lambda source: source["path"]),
    }
    entry = manifest.build(
        name=request.name or f"{planned['model']['module']}:{planned['model']['attr']}",
        key=key,
        lookup=lookup,
        timings={
            "sizes": result["reports"],
            "aot": result["functions"].get("seconds"),
            "packages": result["packages"].get("seconds"),
        },
        aot={
            "status": result["functions"]["status"],
            "reason": result["functions"]["reason"],
            "packages": {k: v for k, v in result["packages"].items() if k != "seconds"},
        },
        assumptions=result.get("assumptions"),
        bytecode_summary=bytecode_summary,
        compiled_at=str(compiled_at),
        files=own,
    )
    [(entry, _)] = store.publish([entry], staging, staged_blobs(files) | staged_blobs(own))
    return entry, new_bytes


class _Worker:
    """The compile worker process and its event stream."""

    def __init__(
        self, request_file: Path, staging: Path, artifacts: Path, python: str | None = None, cpu: bool = True
    ) -> None:
        env = dict(os.environ)
        env["TORCHINDUCTOR_CACHE_DIR"] = str(artifacts / INDUCTOR_PREFIX.rstrip("/"))
        env["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
        env["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "1"
        # Triton then caches under the Inductor dir (triton/<device>), inside the entry.
        env.pop("TRITON_CACHE_DIR", None)
        env.pop("TORCHINDUCTOR_FORCE_DISABLE_CACHES", None)
        env.pop(VIEW_ENV, None)  # never under activated entries (a shell after `eval "$(ccache env)"`)
        # C++ kernels that read the thread count when they run, not when compiled: a CPU
        # entry serves processes with any thread count (a Kubernetes CPU limit sets
        # another). Not for GPU entries: the setting enters every graph's cache key, and
        # a plain process given only TORCHINDUCTOR_CACHE_DIR would miss them all.
        if cpu:
            env.setdefault(DYNAMIC_THREADS_ENV, "1")
        self._log = open(staging / "worker.log", "wb")
        self._debug = bool(os.environ.get("CCACHE_CLI_DEBUG"))
        self._process = subprocess.Popen(
            [
                *launch.module_command("ccache_cli.precompile.compile_process", python),
                str(request_file),
                str(artifacts),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if self._debug else self._log,
            env=env,
            text=True,
        )
        self._log_path = staging / "worker.log"

    def next_event(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            code = self._process.wait()
            raise CompileError(f"the compile worker exited with code {code} before it finished{self._log_tail()}")
        event = json.loads(line)
        if event["event"] == "error":
            reported = ReportedError.from_json(event)
            if self._debug:
                sys.stderr.write(reported.traceback)
            raise reported.raised()
        return event

    def expect(self, name: str) -> dict[str, Any]:
        event = self.next_event()
        if event["event"] != name:
            raise CompileError(f"the compile worker sent {event['event']!r} where {name!r} was expected")
        return event

    def send(self, line: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()

    def finish(self) -> None:
        code = self._process.wait()
        if code != 0:
            raise CompileError(f"the compile worker exited with code {code}{self._log_tail()}")

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._log.close()

    def _log_tail(self) -> str:
        try:
            lines = self._log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return f": {lines[-1]}" if lines else ""
