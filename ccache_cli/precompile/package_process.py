"""A package worker: builds some of an entry's AOTInductor packages in a process of its
own, so that precompile builds several at once (`precompile --jobs`; packages.py starts
it).

Its one argument is the job, in JSON: the model's and the inputs' specs, the device,
the mode, the labels to build (a size, or a range's `[low, high]`) and the folder. It
builds the model again from its spec, as the compile worker does, and waits for one line
on stdin: `build` to build (the compile worker's first calls are done), anything else
to stop. It writes events,
one JSON object per line, to its original stdout: `size_start` and `size_done` (phases
`package` and `export`) as the compile worker's, then `result` (the weights each package binds, the
seconds each took, the model's structure, and the first build error or null), or
`error` where it could not start building.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from ccache_cli.errors import CcacheError, CompileError, ReportedError
from ccache_cli.precompile import aot, modelspec, packages, plan
from ccache_cli.store import owners


def main(argv: list[str]) -> int:
    job = json.loads(argv[1])
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the model's own prints must not corrupt the event stream

    def emit(event: str, **fields: Any) -> None:
        events.write(json.dumps({"event": event, **fields}) + "\n")

    try:
        emit("result", **build(job, emit))
    except CcacheError as exc:
        emit("error", **ReportedError.of(exc, with_traceback=True).to_json())
        return exc.exit_code
    except Exception as exc:  # inside torch or the model's code (out of memory, say)
        message = f"{type(exc).__name__}: {aot.one_line(str(exc))}"
        emit("error", **ReportedError(CompileError.__name__, message, traceback.format_exc()).to_json())
        return 1
    return 0


def build(job: dict[str, Any], emit: aot.Emit) -> dict[str, Any]:
    spec = modelspec.parse(job["model"])
    module = modelspec.import_target(spec)
    inputs_spec = modelspec.parse(job["inputs"], default_attr=None) if job["inputs"] else None
    inputs_fn = modelspec.load_inputs(module, inputs_spec)

    import torch

    device = job["device"]
    if device != "cpu":
        torch.cuda.set_device(device)
    model = modelspec.load_model(module, spec).to(device)
    ranges = {label: tuple(batch_range) if batch_range else None for label, batch_range in job["labels"].items()}
    inputs = {
        label: plan.to_device(
            torch,
            plan.example_inputs(inputs_fn, int(label) if batch_range is None else plan.range_hint(batch_range)),
            device,
        )
        for label, batch_range in ranges.items()
    }
    _prepare_build()
    if sys.stdin.readline().strip() != "build":  # the compile process stopped it, or ended
        return {"weights": {}, "seconds": {}, "structure": None, "error": "stopped before building"}
    weights: dict[str, list[str]] = {}
    folder = Path(job["folder"])
    seconds, error = aot.each_size(
        inputs,
        "package",
        lambda label, args: weights.update(
            packages.build(torch, model, label, args, ranges[label], job["mode"], folder, emit)
        ),
        emit,
    )
    return {"weights": weights, "seconds": seconds, "structure": plan.model_structure(model), "error": error}


def _prepare_build() -> None:
    """What a package build does first, done while the compile process still runs its
    first calls: AOTInductor picks the CPU's vector ISA even for a GPU package (for the
    C++ wrapper's flags), building and loading a probe for each ISA the CPU lists, and on
    torch 2.11 each probe is loaded in a new Python that imports torch. The pick is
    torch's own, cached for this process."""
    from torch._inductor import cpu_vec_isa

    cpu_vec_isa.pick_vec_isa()


if __name__ == "__main__":
    owners.die_with_parent(os.getppid())  # a killed precompile leaves no build running
    sys.exit(main(sys.argv))
