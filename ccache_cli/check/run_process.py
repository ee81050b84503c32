"""`verify --run`, the child side: a fresh process on an entry's Inductor cache.

It builds the model, compiles it as `precompile` did and runs every stored size (and
range, at the size its example inputs were made for) once
(the warm start, timed from this process's start), counting FX-graph and AOTAutograd
cache misses per size and comparing each output with eager. Then, under
`torch.compiler.set_stance("fail_on_recompile")`, it runs every size again, and for
a dynamic entry sizes that were never compiled, which must not compile anything.

Started as `python -m ccache_cli.check.run_process REQUEST RESULT`, with
TORCHINDUCTOR_CACHE_DIR set by the parent; the result is a JSON file.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from ccache_cli.errors import CompileError, ReportedError  # noqa: E402


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[1]).read_text())
    try:
        result = run(request)
    except Exception as exc:  # reported by the parent as a failed check
        message = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        result = {"error": ReportedError(CompileError.__name__, message, traceback.format_exc()).to_json()}
    Path(argv[2]).write_text(json.dumps(result))
    return 0


def run(request: dict[str, Any]) -> dict[str, Any]:
    import torch
    from torch._dynamo.utils import counters

    from ccache_cli.precompile import outputs, plan
    from ccache_cli.precompile.compile_process import cache_counters
    from ccache_cli.store.manifest import range_label

    options = request["compile"]
    device = options["device"]
    model = _load_model(torch, request["model"]).to(device)
    inputs_module, _, inputs_name = request["model"]["inputs"].partition(":")
    inputs_fn = getattr(importlib.import_module(inputs_module), inputs_name)

    def inputs(size: int, dynamic: bool = False) -> plan.CallInputs:
        args = plan.to_device(torch, plan.example_inputs(inputs_fn, size), device)
        if dynamic:
            plan.mark_batch_dynamic(torch, args, size)
        return args

    # The same calls, in the same order, as precompile made.
    runs = [(str(size), size, False) for size in options["sizes"]]
    runs += [(range_label(r), plan.range_hint(r), True) for r in map(tuple, options.get("ranges", []))]
    if options["dynamic"]:
        runs.append(("dynamic", options["dynamic_hint"], True))
    built_s = time.perf_counter() - _STARTED
    sizes = {label: size for label, size, _ in runs}
    held = _assumptions_held(torch, model, request.get("assumptions", {}), lambda label: inputs(sizes[label]))
    compiled = plan.torch_compile(torch, model, options["mode"], len(runs))
    per_run: dict[str, dict[str, Any]] = {}
    results, used = {}, {}
    with torch.no_grad():
        for label, size, dynamic in runs:
            before = cache_counters(counters)
            used[label] = inputs(size, dynamic)
            results[label] = plan.call(compiled, used[label])
            after = cache_counters(counters)
            per_run[label] = {
                "fxgraph_miss": after["fxgraph_cache_miss"] - before["fxgraph_cache_miss"],
                "autograd_miss": after["autograd_cache_miss"] - before["autograd_cache_miss"],
                "assumption": held.get(label),
            }
        if device != "cpu":
            torch.cuda.synchronize(device)
        warm_s = time.perf_counter() - _STARTED
        for label, _, _ in runs:
            recorded = request["recorded"].get(label)
            same = recorded is not None and outputs.same_call(torch, model, used[label], recorded)
            per_run[label]["recorded"] = same
            per_run[label]["mismatch"] = (
                outputs.compare_recorded(torch, results[label], recorded) if same else None
            ) or outputs.compare_eager(torch, results[label], plan.call(model, used[label]))
        recompile = None
        unlisted = _unlisted_sizes(options) if options["dynamic"] else []
        try:
            with torch.compiler.set_stance("fail_on_recompile"):
                for label, size in [(label, size) for label, size, _ in runs] + [(str(s), s) for s in unlisted]:
                    recompile = label
                    plan.call(compiled, inputs(size))
            recompile = None
        except Exception as exc:  # torch raises its own error type for a recompile
            recompile = f"size {recompile}: {str(exc).strip().splitlines()[0][:200]}"
    return {"built_s": built_s, "warm_s": warm_s, "runs": per_run, "recompile": recompile, "unlisted": unlisted}


def _assumptions_held(torch: Any, model: Any, recorded: dict[str, Any], inputs: Any) -> dict[str, str | None]:
    """Per size or range (`inputs(label)`: its example inputs): the first assumption of its stored code that the freshly built model
    breaks (key/assumptions.py), or None; before anything is compiled here."""
    from ccache_cli.key.assumptions import Checker
    from ccache_cli.store.assumptions import SizeAssumptions

    held = {}
    for label, found in recorded.items():
        checker = Checker(torch, SizeAssumptions.from_json(found))
        args = inputs(label)
        held[label] = checker.state_mismatch() or checker.program_mismatch(model, args.args, args.kwargs)
    return held


def _load_model(torch: Any, model: dict[str, str]) -> Any:
    target = getattr(importlib.import_module(model["module"]), model["attr"])
    return target if isinstance(target, torch.nn.Module) else target()


def _unlisted_sizes(options: dict[str, Any]) -> list[int]:
    """Sizes a dynamic entry must serve without compiling: between and past the listed ones."""
    listed = set(options["sizes"]) | {options["dynamic_hint"]}
    candidates = [max(2, min(options["sizes"], default=1) + 1), options["dynamic_hint"] + 3]
    return sorted({size for size in candidates if size not in listed})


if __name__ == "__main__":
    import os

    from ccache_cli.store import owners

    owners.die_with_parent(os.getppid())  # a killed ccache leaves no compile running
    sys.exit(main(sys.argv))
