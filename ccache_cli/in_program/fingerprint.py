"""The environment part of the key: what a compiled artifact is valid for.

`machine_fingerprint()` asks torch (it imports it) and is exact. `static_fingerprint()`
reads what it can from installed files without importing torch, so that `inspect`
stays fast; `probe_digest()` names the machine cheaply so that an exact fingerprint
computed earlier on the same machine can be found again without torch.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import platform
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Components every entry is keyed on: the build of Python and torch.
BUILD_COMPONENTS = ("python", "torch", "cuda", "hip", "machine")
# Components of GPU entries only.
GPU_COMPONENTS = ("triton", "gpu", "capability")
# Components of CPU entries only: Inductor's C++ kernels depend on the vector ISA it
# picks and, unless TORCHINDUCTOR_CPP_DYNAMIC_THREADS=1, on torch's thread count.
CPU_COMPONENTS = ("cpu_isa", "cpu_threads")
DYNAMIC = "dynamic"  # cpu_threads of kernels that read the thread count when they run
DYNAMIC_THREADS_ENV = "TORCHINDUCTOR_CPP_DYNAMIC_THREADS"
# TORCHINDUCTOR_* variables that say where caches live or how many processes compile,
# not what is compiled (torch leaves them out of its own cache keys): not in the key.
INDUCTOR_ENV_IGNORED = frozenset(
    {
        "TORCHINDUCTOR_CACHE_DIR",
        "TORCHINDUCTOR_FX_GRAPH_CACHE",
        "TORCHINDUCTOR_AUTOGRAD_CACHE",
        "TORCHINDUCTOR_COMPILE_THREADS",
        "TORCHINDUCTOR_WORKER_START",
    }
)
COMPONENTS = BUILD_COMPONENTS + GPU_COMPONENTS + CPU_COMPONENTS

# Environment variables that change what torch reports for the components above.
_PROBE_ENV = (
    "ATEN_CPU_CAPABILITY",
    "CUDA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "MKL_NUM_THREADS",
    "OMP_NUM_THREADS",
    "TORCHINDUCTOR_CPP_DYNAMIC_THREADS",
)


@dataclass(frozen=True)
class Mismatch:
    component: str
    entry: Any
    target: Any

    def __str__(self) -> str:
        return f"{self.component}: entry has {self.entry!r}, target has {self.target!r}"


def inductor_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The TORCHINDUCTOR_* settings of `environ` that the key holds, sorted by name."""
    return {
        name: value
        for name, value in sorted(environ.items())
        if name.startswith("TORCHINDUCTOR_") and name not in INDUCTOR_ENV_IGNORED
    }


def is_gpu_device(device: str) -> bool:
    return device.startswith(("cuda", "hip"))


def device_index(device: str) -> int:
    return int(device.partition(":")[2] or 0)


def components_for(device: str) -> tuple[str, ...]:
    extra = GPU_COMPONENTS if is_gpu_device(device) else CPU_COMPONENTS
    return BUILD_COMPONENTS + extra


def knows(machine: Mapping[str, Any], device: str | None = None) -> bool:
    """Whether `machine` holds every component of an entry for `device` (None: of any
    entry). A GPU precompile records none of the CPU's: its key needs none."""
    return set(COMPONENTS if device is None else components_for(device)) <= set(machine)


def entry_fingerprint(machine: dict[str, Any], device: str) -> dict[str, Any]:
    """The components of `machine` that an entry compiled for `device` depends on."""
    return {name: machine.get(name) for name in components_for(device)}


def mismatches(entry: dict[str, Any], device: str, target: dict[str, Any]) -> list[Mismatch]:
    """The components of an entry's fingerprint that differ on `target`.

    A component `target` does not know (a static fingerprint) is not compared.
    """
    return [
        Mismatch(name, entry.get(name), target[name])
        for name in components_for(device)
        # An entry compiled with TORCHINDUCTOR_CPP_DYNAMIC_THREADS=1 runs on any thread count.
        if name in target
        and entry.get(name) != target[name]
        and not (name == "cpu_threads" and entry.get(name) == DYNAMIC)
    ]


def machine_fingerprint(device: str = "cpu", cpu: bool = True) -> dict[str, Any]:
    """Every key component of this machine, as torch reports them (imports torch).

    The GPU components describe `device` when it is a GPU, else GPU 0 when there is one.
    Without `cpu`, the CPU components are left out (Inductor's ISA probe compiles programs).
    """
    import torch

    fingerprint: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "hip": torch.version.hip,
        "machine": platform.machine(),
        "triton": None,
        "gpu": None,
        "capability": None,
    }
    if torch.cuda.is_available():
        index = device_index(device) if is_gpu_device(device) else 0
        major, minor = torch.cuda.get_device_capability(index)
        fingerprint["gpu"] = torch.cuda.get_device_name(index)
        fingerprint["capability"] = f"sm_{major}{minor}"
        fingerprint["triton"] = _distribution_version("triton", "pytorch-triton")
    if not cpu:
        return fingerprint
    from torch._inductor import config as inductor_config
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    fingerprint["cpu_isa"] = str(pick_vec_isa()) or "none"
    fingerprint["cpu_threads"] = DYNAMIC if inductor_config.cpp.dynamic_threads else torch.get_num_threads()
    return fingerprint


def static_fingerprint() -> dict[str, Any]:
    """The build components, read from installed files without importing torch."""
    fingerprint: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    version_file = _torch_version_file()
    if version_file is None:  # torch lives elsewhere (ccache in its own environment): unknown here
        return fingerprint
    text = version_file.read_text()
    fingerprint["torch"] = _assigned(text, "__version__")
    fingerprint["cuda"] = _assigned(text, "cuda")
    fingerprint["hip"] = _assigned(text, "hip")
    return fingerprint


# Cached machine fingerprints (a store's machines/) describe GPU 0; other GPUs are probed
# every time. A cached one spares a compile seconds of probing (Inductor's ISA check
# compiles test programs).
PRIMARY_DEVICES = ("cpu", "cuda:0")


def probe_digest() -> str:
    """A cheap digest of everything `machine_fingerprint()` depends on.

    Two processes with the same digest get the same machine fingerprint, so it can
    name a cached fingerprint.
    """
    parts: list[str] = [sys.executable, platform.python_version(), platform.machine()]
    version_file = _torch_version_file()
    parts.append(version_file.read_text() if version_file else "no torch")
    parts.append(_package_init("triton"))
    parts.append(str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()))
    parts.extend(f"{name}={os.environ.get(name)}" for name in _PROBE_ENV)
    parts.append(_cpu_flags())
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        parts.append(_read_text(info))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _torch_version_file() -> Path | None:
    # find_spec on a top-level package locates it without importing it.
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    return path if path.is_file() else None


def _package_init(name: str) -> str:
    """The text of a top-level package's __init__.py (where triton's version is), found
    without importing the package or reading every distribution's metadata."""
    try:
        spec = importlib.util.find_spec(name)
        return Path(spec.origin).read_text(errors="replace") if spec and spec.origin else f"no {name}"
    except (ValueError, OSError):  # ValueError: a module whose __spec__ is None
        return f"no {name}"


def _assigned(text: str, name: str) -> str | None:
    match = re.search(rf"^{re.escape(name)}\s*(?::[^=]*)?=\s*['\"]([^'\"]*)['\"]", text, re.MULTILINE)
    return match.group(1) if match else None


def _distribution_version(*names: str) -> str | None:
    import importlib.metadata  # imported here: it costs every command's start otherwise

    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _cpu_flags() -> str:
    for line in _read_text("/proc/cpuinfo").splitlines():
        if line.startswith(("flags", "Features")):
            return line
    return platform.processor()


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""
