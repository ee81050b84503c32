"""Where one AOTInductor package build spends its time: builds a model as `ccache
precompile` does, compiles it once with torch.compile at the size (as precompile's cold
compile does first), then exports it and builds the package under cProfile, and prints
the seconds of each phase and the functions that took the most, with the subprocesses
(compilers) it ran through subprocess.run.

    python scripts/package_profile.py MODEL SIZE [DEVICE] [MODE]
"""

from __future__ import annotations

import cProfile
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    spec_text, size = sys.argv[1], int(sys.argv[2])
    device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    mode = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] != "default" else None
    import torch

    from ccache_cli.precompile import modelspec, plan

    spec = modelspec.parse(spec_text)
    module = modelspec.import_target(spec)
    model = modelspec.load_model(module, spec).to(device)
    inputs = plan.to_device(torch, plan.example_inputs(modelspec.load_inputs(module, None), size), device)
    started = time.perf_counter()
    with torch.no_grad():
        plan.call(plan.torch_compile(torch, model, mode, 1), inputs)
    print(f"cold torch.compile, first call: {time.perf_counter() - started:.1f} s", flush=True)

    commands: list[tuple[float, str]] = []
    original_run = subprocess.run

    def timed_run(*args, **kwargs):  # type: ignore[no-untyped-def]
        begun = time.perf_counter()
        try:
            return original_run(*args, **kwargs)
        finally:
            command = args[0] if args else kwargs.get("args")
            commands.append((time.perf_counter() - begun, " ".join(map(str, command))[:1200]))

    subprocess.run = timed_run  # type: ignore[assignment]
    profile = cProfile.Profile()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        program = plan.export(torch, model, inputs)
        exported = time.perf_counter()
        profile.enable()
        with torch.no_grad():
            torch._inductor.aoti_compile_and_package(
                program,
                package_path=str(Path(folder) / f"size-{size}.pt2"),
                inductor_configs=plan.package_configs(torch, mode),
            )
        profile.disable()
        built = time.perf_counter()
    subprocess.run = original_run  # type: ignore[assignment]
    print(f"torch.export {exported - started:.2f} s; AOTInductor package {built - exported:.1f} s", flush=True)
    print(f"subprocesses run: {len(commands)}, {sum(s for s, _ in commands):.1f} s; the longest:")
    for seconds, command in sorted(commands, reverse=True)[:8]:
        print(f"  {seconds:6.2f} s  {command}")
    stats = pstats.Stats(profile, stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
