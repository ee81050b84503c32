"""Which of a compile's Dynamo guards name a value by a path ccache cannot parse, and
the chain of torch sources behind each name: what to look at when a process says a
size's stored code "assumes ... which ccache cannot check (not readable)" (torch
versions name some sources differently).

    python scripts/guard_sources.py MODEL SIZE [DEVICE]

MODEL as `ccache precompile` takes it (`path/to/file.py[:attr]` or `pkg.module[:attr]`),
compiled once at SIZE with torch.compile as precompile does, its guards recorded as
precompile records them (precompile/guards.py). Prints one line per guard whose path
is not of a form key/paths.py reads.
"""

from __future__ import annotations

import sys

import torch

from ccache_cli.key import paths
from ccache_cli.precompile import guards, modelspec, plan


def source_chain(source: object) -> str:
    links = []
    while source is not None:
        name = next((getattr(source, a) for a in ("local_name", "member", "source_name") if hasattr(source, a)), "")
        links.append(f"{type(source).__name__}({name})")
        source = getattr(source, "base", None)
    return " <- ".join(links)


def _parses(path: str) -> bool:
    try:
        paths.parse_path(path)
    except paths.PathError:
        return False
    return True


def main() -> None:
    spec = modelspec.parse(sys.argv[1])
    size, device = int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "cpu"
    module = modelspec.import_target(spec)
    model = modelspec.load_model(module, spec).to(device)
    inputs = plan.to_device(torch, plan.example_inputs(modelspec.load_inputs(module, None), size), device)
    recorder = guards.Recorder()
    with recorder.recording(torch), torch.no_grad():
        plan.call(plan.torch_compile(torch, model, None, 1), inputs)
    frames = recorder.take()
    print(f"torch {torch.__version__}: {len(frames)} frame(s) compiled")
    seen = set()
    for frame in frames:
        for entry in frame.guards:
            name = entry.orig_guard.name
            if name and not _parses(name) and name not in seen:
                seen.add(name)
                print(
                    f"{entry.guard_type} {name!r} in {frame.code.co_name}: {source_chain(entry.orig_guard.originating_source)}"
                )
    print(f"{len(seen)} guard path(s) that ccache cannot parse")


if __name__ == "__main__":
    main()
