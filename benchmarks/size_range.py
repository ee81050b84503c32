"""A range of batch sizes served by one package with a dynamic batch dimension.

Precompiles a model (`--model SPEC`; by default the bundled tiny transformer) three
ways into temporary stores: one size (the range's largest), the static sizes
`--static` (a package each), and the range `--range` (one package). Then, each in a
fresh `ccache run` process:

- per-call time at each static size, from its static package and from the range's
  package (median of `--calls` calls after a warm-up), and their ratio;
- warm ready: the process's start to the first call's output, served by the range's
  package;
- random sizes: `--random` calls at sizes drawn from the range, counting the graphs
  torch compiled (none where the package served them all) and the calls served.

Prints a table and JSON.

    python benchmarks/size_range.py [--model SPEC] [--device cpu|cuda] [--range 1-64] [--static 1,8,32,64]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLE = "ccache_cli.examples.tiny_transformer"


def child(args: argparse.Namespace) -> None:
    import torch

    from ccache_cli.precompile import modelspec, plan

    spec = modelspec.parse(args.model)
    module = modelspec.import_target(spec)
    model = modelspec.load_model(module, spec).to(args.device)
    inputs_fn = modelspec.load_inputs(module, None)
    compiled = torch.compile(model)
    sizes = [int(size) for size in args.sizes.split(",")]

    def inputs(size: int) -> plan.CallInputs:
        return plan.to_device(torch, plan.example_inputs(inputs_fn, size), args.device)

    def call(size_inputs: plan.CallInputs) -> None:
        plan.call(compiled, size_inputs)
        if args.device != "cpu":
            torch.cuda.synchronize()

    result: dict = {}
    with torch.no_grad():
        if args.way == "ready":
            call(inputs(sizes[0]))
            result["ready_s"] = time.time() - float(os.environ["SIZE_RANGE_STARTED"])  # from `ccache run`'s start
        elif args.way == "random":
            rng = random.Random(0)
            for _ in range(args.calls):
                call(inputs(rng.randint(*map(int, args.range.split("-")))))
        else:
            for size in sizes:
                size_inputs = inputs(size)
                for _ in range(10):
                    call(size_inputs)
                times = []
                for _ in range(args.calls):
                    start = time.perf_counter()
                    call(size_inputs)
                    times.append(time.perf_counter() - start)
                result[str(size)] = statistics.median(times) * 1e3
    utils = sys.modules.get("torch._dynamo.utils")
    result["graphs"] = utils.counters["stats"]["unique_graphs"] if utils else 0
    result["served"] = sum(sys.modules["ccache_cli.serve.decisions"]._served.values())
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=EXAMPLE)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--range", default="1-64")
    parser.add_argument("--static", default="1,8,32,64")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--random", type=int, default=200)
    parser.add_argument("--child", dest="way")
    parser.add_argument("--sizes")
    args = parser.parse_args()
    if args.way:
        child(args)
        return
    ccache = [sys.executable, "-m", "ccache_cli"]
    largest = args.range.split("-")[1]
    with tempfile.TemporaryDirectory(prefix="ccache-size-range-") as scratch:
        env = {**os.environ, "CCACHE_CLI_VIEWS": str(Path(scratch) / "views")}
        stores = {name: ["--store", str(Path(scratch) / name)] for name in ("one", "static", "range")}
        precompile_s = {}
        for name, sizes in (("one", largest), ("static", args.static), ("range", args.range)):
            start = time.perf_counter()
            compiled = subprocess.run(
                [*ccache, *stores[name], "precompile", args.model, "--sizes", sizes, "--device", args.device],
                env=env,
                capture_output=True,
                text=True,
            )
            precompile_s[name] = time.perf_counter() - start
            if compiled.returncode != 0:
                raise SystemExit(compiled.stderr)

        def run(store: str, way: str, sizes: str, calls: int) -> dict:
            command = [*ccache, *stores[store], "run", "--", sys.executable, __file__, "--child", way]
            command += ["--model", args.model, "--device", args.device, "--sizes", sizes, "--range", args.range]
            command += ["--calls", str(calls)]
            child_env = {**env, "SIZE_RANGE_STARTED": str(time.time())}
            result = subprocess.run(command, env=child_env, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"{store} {way}: {result.stderr}")
            return json.loads(result.stdout.strip().splitlines()[-1])

        static = run("static", "per_call", args.static, args.calls)
        dynamic = run("range", "per_call", args.static, args.calls)
        ready = run("range", "ready", largest, 1)
        randomly = run("range", "random", largest, args.random)
    print(f"{args.model} on {args.device}: range {args.range}, static sizes {args.static}")
    print(
        f"precompile: one size ({largest}) {precompile_s['one']:.1f} s, static sizes {precompile_s['static']:.1f} s, "
        f"range {precompile_s['range']:.1f} s"
    )
    print(f"{'size':>6} {'static ms':>10} {'range ms':>10} {'range/static':>13}")
    for size in args.static.split(","):
        print(f"{size:>6} {static[size]:10.3f} {dynamic[size]:10.3f} {dynamic[size] / static[size]:13.2f}")
    print(f"warm ready on the range's package: {ready['ready_s']:.2f} s (served {ready['served']})")
    print(
        f"{args.random} calls at random sizes in {args.range}: {randomly['graphs']} graphs compiled, "
        f"{randomly['served']} served by the package"
    )
    print(
        json.dumps(
            {"precompile_s": precompile_s, "static_ms": static, "range_ms": dynamic, "ready": ready, "random": randomly}
        )
    )


if __name__ == "__main__":
    main()
