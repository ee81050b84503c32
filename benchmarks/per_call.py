"""Per-call time of stored code under each guard policy, next to torch.compile's.

Precompiles a model (`--model SPEC`, as `ccache precompile` takes it; by default the
bundled tiny transformer) for one size into a temporary store, then times, each in a
fresh process, `--calls` calls of that size after a warm-up:

- eager: no compile
- torch.compile: `ccache run --no-route`, torch.compile on the warm caches (its guards
  run on every call)
- ccache, guards every-call: `ccache run`, the program's torch.compile routed to the
  stored code, every assumption checked on every call (the default)
- ccache, guards once: `ccache run --guards once`, the model's assumptions checked at
  the first call, torch's global state and the forward on every call

and, in the ccache processes, what one full check of the size's assumptions costs, what
the check generated from it that repeats it on every call costs, and what the per-call
check of torch's state costs. Prints a table and JSON.

    python benchmarks/per_call.py [--model SPEC] [--device cpu|cuda] [--mode MODE] [--size 1] [--calls 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLE = "ccache_cli.examples.tiny_transformer"
WAYS = {
    "eager": ["--no-route"],
    "torch.compile": ["--no-route"],
    "ccache, guards every-call": [],
    "ccache, guards once": ["--guards", "once"],
}


def child(args: argparse.Namespace) -> None:
    import torch

    from ccache_cli.precompile import modelspec, plan

    spec = modelspec.parse(args.model)
    module = modelspec.import_target(spec)
    model = modelspec.load_model(module, spec).to(args.device)
    inputs = plan.to_device(torch, plan.example_inputs(modelspec.load_inputs(module, None), args.size), args.device)
    mode = None if args.mode == "default" else args.mode
    call = model if args.way == "eager" else torch.compile(model, dynamic=False, mode=mode)

    def timed(count: int) -> list[float]:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            plan.call(call, inputs)
            if args.device != "cpu":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return times

    with torch.no_grad():
        timed(10)
        per_call = timed(args.calls)
    result = {"median_ms": statistics.median(per_call) * 1e3, "mean_ms": statistics.fmean(per_call) * 1e3}
    decisions = sys.modules.get("ccache_cli.serve.decisions")
    if decisions is not None and args.way.startswith("ccache"):
        result["served"] = sum(decisions._served.values())
        result.update(_check_costs(torch, model, inputs))
    print(json.dumps(result))


def _check_costs(torch, model, inputs):  # type: ignore[no-untyped-def]
    """What checking the size's assumptions costs, in ms: the first full check, the
    second (which generates the check that repeats it), that generated check, and the
    per-call check of torch's state."""
    from ccache_cli.key.assumptions import Checker
    from ccache_cli.serve.stored_code import active_aot_functions

    stored = next((f for f in active_aot_functions() if f.assumptions is not None), None)  # the one size stored
    if stored is None or stored.assumptions is None:
        return {}
    checker = Checker(torch, stored.assumptions)

    def mean_ms(check, count: int) -> float:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        for _ in range(count):
            check()
        return (time.perf_counter() - start) / count * 1e3

    def program() -> None:
        assert checker.program_mismatch(model, inputs.args, inputs.kwargs) is None

    return {
        "assumptions": len(stored.assumptions.assumptions),
        "first_check_ms": mean_ms(program, 1),  # compiles the paths, digests the code
        "second_check_ms": mean_ms(program, 1),  # generates the repeating check
        "check_ms": mean_ms(program, 200),
        "state_check_ms": mean_ms(checker.state_mismatch, 200),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=EXAMPLE)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=1)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--mode", default="default", help="torch.compile mode, as `precompile --mode`")
    parser.add_argument("--child", dest="way")
    args = parser.parse_args()
    if args.way:
        child(args)
        return
    ccache = [sys.executable, "-m", "ccache_cli"]
    with tempfile.TemporaryDirectory(prefix="ccache-per-call-") as scratch:
        store = ["--store", str(Path(scratch) / "store")]
        env = {**os.environ, "CCACHE_CLI_VIEWS": str(Path(scratch) / "views")}
        compiled = subprocess.run(
            [*ccache, *store, "precompile", args.model, "--sizes", str(args.size), "--device", args.device]
            + ["--mode", args.mode],
            env=env,
            capture_output=True,
            text=True,
        )
        if compiled.returncode != 0:
            raise SystemExit(compiled.stderr)
        print(compiled.stdout.strip())  # precompile's report: each first call, the packages, the entry
        results = {}
        for way, options in WAYS.items():
            command = [*ccache, *store, "run", *options, "--", sys.executable, __file__, "--child", way]
            command += ["--model", args.model, "--device", args.device, "--size", str(args.size)]
            command += ["--calls", str(args.calls), "--mode", args.mode]
            run = subprocess.run(command, env=env, capture_output=True, text=True)
            if run.returncode != 0:
                raise SystemExit(f"{way}: {run.stderr}")
            results[way] = json.loads(run.stdout.strip().splitlines()[-1])
            said = [line for line in run.stderr.splitlines() if line.startswith("ccache:")]
            if said:
                results[way]["ccache_said"] = said
    print(f"{args.model} on {args.device}, mode {args.mode}, size {args.size}, {args.calls} calls each")
    print(f"{'way':28} {'median ms':>10} {'mean ms':>9}  served")
    for way, result in results.items():
        print(f"{way:28} {result['median_ms']:10.3f} {result['mean_ms']:9.3f}  {result.get('served', '-')}")
        for line in result.get("ccache_said", []):
            print(f"  {line}")
    costs = results["ccache, guards once"]  # a process that generated no check before
    if "check_ms" in costs:
        print(
            f"{costs['assumptions']} assumptions: first check {costs['first_check_ms']:.2f} ms, second (generates "
            f"the repeating check) {costs['second_check_ms']:.2f} ms, then {costs['check_ms'] * 1e3:.0f} us; "
            f"torch state per call {costs['state_check_ms'] * 1e3:.1f} us"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
