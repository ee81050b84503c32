"""The example model served in fresh processes (tests/programs/hit_probe.py and
serve_example.py), and what they report: torch's cache counters, whether every output
equals eager's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PROGRAMS = Path(__file__).resolve().parent.parent / "programs"


def run_on_cache_dir(inductor_dir: Path, device: str, sizes: list[int], cwd: Path) -> dict[str, int]:
    """Compile the example in a fresh process on `inductor_dir`, with what `unpack
    --export-dir` says to set: on a GPU, that variable alone; on the CPU, the thread
    setting precompile compiles C++ kernels with too. Torch's cache counters."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_dir)}
    env.pop("TRITON_CACHE_DIR", None)
    env.pop("TORCHINDUCTOR_CPP_DYNAMIC_THREADS", None)
    if device == "cpu":
        env["TORCHINDUCTOR_CPP_DYNAMIC_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, str(PROGRAMS / "hit_probe.py"), device, json.dumps(sizes)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_serve_script(folder: Path) -> Path:
    """A copy of tests/programs/serve_example.py in `folder`, as a user's own script."""
    script = folder / "serve.py"
    shutil.copyfile(PROGRAMS / "serve_example.py", script)
    return script


def serve_counters(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])
