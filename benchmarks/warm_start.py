"""Warm start through ccache against eager, a cold compile and torch's own mechanisms.

Builds a model (`--model SPEC`, as `ccache precompile` takes it; by default the bundled
tiny transformer, d=256 and 4 blocks on the CPU, d=1024 and 8 blocks on a GPU, as in
the design notes), precompiles it into a temporary store with `--mode`, then runs each
way in a fresh process and prints, per way, the seconds from the model built to every
size run once ("ready", with the imports and loads before the first call as "setup"),
from the measured process's start ("total") and from the command's launch ("launch":
the `ccache run` wrapper included), cold/warm ratios, warm minus eager, and the work
torch did: FX-graph cache misses, graphs traced, and benchmark calls made in the
process (autotuning, counted by benchmark_calls.py as they happen: torch's own counters
also replay, on each FX-graph cache hit, the calls of the graph's cold compile):

- eager: no compile
- cold: torch.compile on an empty Inductor cache
- torch inductor dir: torch.compile again on the cache the cold run filled
- torch mega-cache: load_cache_artifacts() of the cold run's bytes into an empty cache
- torch aot load: load_compiled_function() of stored aot_compile functions, empty cache
- torch AOTInductor load: aoti_load_package() of the stored packages, bound to the
  model's weights with load_constants(user_managed=True), empty cache
- ccache run + torch.compile: the program unchanged (`torch.compile(model, mode=...)`,
  nothing else), under `ccache run`, which routes the call to the stored code
- ccache run --no-route + torch.compile: the same without routing: torch.compile on
  the warm caches and stored bytecode
- ccache run + ccache_cli.compile: the API, under `ccache run` (runs the stored
  AOTInductor packages without importing Dynamo or Inductor)

`--no-pyc` runs every process as in an image without bytecode for torch
(PYTHONDONTWRITEBYTECODE=1, PYTHONPYCACHEPREFIX at an empty folder) and adds the two
ccache modes without the stored bytecode (CCACHE_CLI_BYTECODE=0).

    python benchmarks/warm_start.py [--model SPEC] [--mode MODE] [--device cpu|cuda] [--sizes 1,8,32]
                                    [--repeat 2] [--no-pyc] [--ways eager,cold,...]
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

EXAMPLE = "ccache_cli.examples.tiny_transformer"
MODEL_SHAPE = {"cpu": ("256", "4"), "cuda": ("1024", "8")}


def child(way: str, args: argparse.Namespace, sizes: list[int], extra: str | None) -> None:
    """One measured process: build the model, run every size once, print JSON."""
    import benchmark_calls

    benchmark_calls.install()
    import torch

    from ccache_cli.precompile import modelspec
    from ccache_cli.precompile import plan as plan

    spec = modelspec.parse(args.model)
    module = modelspec.import_target(spec)
    model = modelspec.load_model(module, spec).to(args.device)
    inputs_fn = modelspec.load_inputs(module, None)
    inputs = {size: plan.to_device(torch, plan.example_inputs(inputs_fn, size), args.device) for size in sizes}
    mode = None if args.mode == "default" else args.mode
    built = time.perf_counter()
    with torch.no_grad():
        if way == "eager":

            def run(size):  # type: ignore[no-untyped-def]
                return plan.call(model, inputs[size])
        elif way in ("cold", "inductor_dir", "megacache", "ccache_torch"):
            if way == "megacache":
                torch.compiler.load_cache_artifacts(Path(extra).read_bytes())  # type: ignore[arg-type]
            compiled = plan.torch_compile(torch, model, mode, len(sizes))

            def run(size):  # type: ignore[no-untyped-def]
                return plan.call(compiled, inputs[size])
        elif way == "aot":
            torch._dynamo.config.enable_aot_compile = True
            functions = {}
            for size in sizes:
                with open(Path(extra) / f"size-{size}.pt", "rb") as handle:  # type: ignore[arg-type]
                    functions[size] = torch.compiler.load_compiled_function(handle)

            def run(size):  # type: ignore[no-untyped-def]
                return functions[size](model, *inputs[size].args, **inputs[size].kwargs)
        elif way == "aoti":
            from torch._inductor import aoti_load_package

            state = {
                **dict(model.named_parameters(remove_duplicate=False)),
                **dict(model.named_buffers(remove_duplicate=False)),
            }
            packages = {}
            for size in sizes:
                packages[size] = aoti_load_package(str(Path(extra) / f"size-{size}.pt2"))  # type: ignore[arg-type]
                packages[size].load_constants(
                    {name: state[name] for name in packages[size].get_constant_fqns()},
                    check_full_update=True,
                    user_managed=True,
                )

            def run(size):  # type: ignore[no-untyped-def]
                return plan.call(packages[size], inputs[size])
        elif way == "ccache_route":
            compiled = torch.compile(model, mode=mode)  # what an unchanged program writes

            def run(size):  # type: ignore[no-untyped-def]
                return plan.call(compiled, inputs[size])
        elif way == "ccache_api":
            import ccache_cli

            compiled = ccache_cli.compile(model, mode=mode)

            def run(size):  # type: ignore[no-untyped-def]
                return plan.call(compiled, inputs[size])
        else:
            raise SystemExit(f"unknown way {way}")
        prepared = time.perf_counter()
        for size in sizes:
            run(size)
        if args.device != "cpu":
            torch.cuda.synchronize()
    done = time.perf_counter()
    if way == "cold" and extra:
        artifacts = torch.compiler.save_cache_artifacts()
        Path(extra).write_bytes(artifacts[0] if artifacts else b"")
    counters: dict[str, int] = {}
    if "torch._dynamo.utils" in sys.modules:  # else nothing was compiled here
        torch_counters = sys.modules["torch._dynamo.utils"].counters
        counters = {
            "fxgraph_miss": torch_counters["inductor"]["fxgraph_cache_miss"],
            "graphs": torch_counters["stats"]["unique_graphs"],
        }
    # perf_counter is CLOCK_MONOTONIC, one clock for every process: the parent turns
    # done_at into seconds from the command's launch, wrapper included.
    print(
        json.dumps(
            {
                "ready_s": done - built,
                "setup_s": prepared - built,
                "total_s": done - _STARTED,
                "done_at": done,
                "built_s": built - _STARTED,
                "fxgraph_miss": counters.get("fxgraph_miss", 0),
                "graphs": counters.get("graphs", 0),
                "benchmarks": benchmark_calls.count(),
            }
        )
    )


def measure(
    mode: str, args: argparse.Namespace, env: dict[str, str], extra: str | None, wrapper: list[str]
) -> dict[str, float]:
    command = [
        *wrapper,
        sys.executable,
        __file__,
        "--child",
        mode,
        "--device",
        args.device,
        "--sizes",
        args.sizes,
        "--model",
        args.model,
        "--mode",
        args.mode,
    ]
    if extra:
        command += ["--extra", extra]
    launched = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-3000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    measured["launch_s"] = measured.pop("done_at") - launched
    return measured


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=EXAMPLE, help="MODEL as `ccache precompile` takes it [default: the example]")
    parser.add_argument("--mode", default="default", help="torch.compile mode, as `precompile --mode`")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="1,8,32")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--child")
    parser.add_argument("--extra")
    parser.add_argument("--no-pyc", action="store_true")
    parser.add_argument("--ways", default=None, help="only these ways, e.g. eager,cold,inductor_dir,ccache_api")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child:
        child(args.child, args, sizes, args.extra)
        return
    kind = "cpu" if args.device == "cpu" else "cuda"
    dim, blocks = MODEL_SHAPE[kind]
    base = {**os.environ, "CCACHE_EXAMPLE_DIM": dim, "CCACHE_EXAMPLE_BLOCKS": blocks}
    base.pop("TRITON_CACHE_DIR", None)
    with tempfile.TemporaryDirectory(prefix="ccache-warm-bench-") as work_dir:
        work = Path(work_dir)
        store = work / "store"
        ccache = [sys.executable, "-m", "ccache_cli", "--store", str(store)]
        env = {**base, "CCACHE_CLI_VIEWS": str(work / "views")}
        if args.no_pyc:
            (work / "empty-pycache").mkdir()
            env.update({"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(work / "empty-pycache")})
        started = time.perf_counter()
        precompiled = subprocess.run(
            [*ccache, "precompile", args.model, "--sizes", args.sizes, "--device", args.device, "--mode", args.mode],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        what = f"reference model d={dim}, {blocks} blocks" if args.model == EXAMPLE else args.model
        print(
            f"{what}, mode {args.mode}, sizes {args.sizes}, {args.device}; "
            f"precompiled in {time.perf_counter() - started:.1f} s"
        )
        # Its steps as it printed them (seconds since its start), for where the time went.
        print("\n".join(line for line in precompiled.stdout.splitlines() if line.lstrip()[:1].isdigit()))
        inspected = json.loads(
            subprocess.run([*ccache, "inspect", "--json"], check=True, capture_output=True, text=True, env=env).stdout
        )["entries"][0]
        entry = inspected["id"]
        print(
            f"AOTInductor packages: {inspected['aot'].get('packages', {}).get('status')}; "
            f"aot_compile functions: {inspected['aot']['status']} {inspected['aot']['reason'] or ''}"
        )
        aot_dir = work / "aot"
        aot_dir.mkdir()
        manifest = json.loads((store / "entries" / entry / "manifest.json").read_text())
        timings = manifest["timings"]
        print(
            "precompile phases: first calls "
            + ", ".join(f"{report['label']} {report['wall_s']:.1f} s" for report in timings["sizes"])
            + f"; aot_compile functions {sum((timings.get('aot') or {}).values()):.1f} s"
            + f"; packages {sum((timings.get('packages') or {}).values()):.1f} s"
        )
        for path, ref in manifest["files"].items():  # torch's own AOT files, as precompile saved them
            if path.startswith("aot/"):
                (aot_dir / Path(path).name).write_bytes(
                    (store / "objects" / ref["sha256"][:2] / ref["sha256"]).read_bytes()
                )

        results: dict[str, list[dict[str, float]]] = {}
        for round_ in range(args.repeat):
            cold_dir, mega = work / f"cold-{round_}", work / f"mega-{round_}.bin"
            ways = [
                ("eager", {}, None, []),
                ("cold", {"TORCHINDUCTOR_CACHE_DIR": str(cold_dir)}, str(mega), []),
                ("inductor_dir", {"TORCHINDUCTOR_CACHE_DIR": str(cold_dir)}, None, []),
                ("megacache", {"TORCHINDUCTOR_CACHE_DIR": str(work / f"empty-mega-{round_}")}, str(mega), []),
                ("ccache_route", {}, None, [*ccache, "run", "--"]),
                ("ccache_torch", {}, None, [*ccache, "run", "--no-route", "--"]),
                ("ccache_api", {}, None, [*ccache, "run", "--"]),
            ]
            if any(aot_dir.glob("*.pt")):
                ways.insert(
                    4, ("aot", {"TORCHINDUCTOR_CACHE_DIR": str(work / f"empty-aot-{round_}")}, str(aot_dir), [])
                )
            if any(aot_dir.glob("*.pt2")):
                ways.insert(
                    5, ("aoti", {"TORCHINDUCTOR_CACHE_DIR": str(work / f"empty-aoti-{round_}")}, str(aot_dir), [])
                )
            if args.no_pyc:
                ways += [
                    ("ccache_torch", {"CCACHE_CLI_BYTECODE": "0"}, None, [*ccache, "run", "--no-route", "--"]),
                    ("ccache_api", {"CCACHE_CLI_BYTECODE": "0"}, None, [*ccache, "run", "--"]),
                ]
            if args.ways:
                ways = [way for way in ways if way[0] in args.ways.split(",")]
            for mode, extra_env, extra, wrapper in ways:
                label = mode + ("_nobytecode" if extra_env.get("CCACHE_CLI_BYTECODE") == "0" else "")
                results.setdefault(label, []).append(measure(mode, args, {**env, **extra_env}, extra, wrapper))

    labels = {
        "eager": "eager",
        "cold": "cold (empty Inductor cache)",
        "inductor_dir": "torch: same Inductor dir",
        "megacache": "torch: Mega-Cache",
        "aot": "torch: aot_compile + load",
        "aoti": "torch: AOTInductor package load",
        "ccache_route": "ccache run + torch.compile",
        "ccache_torch": "ccache run --no-route + torch.compile",
        "ccache_torch_nobytecode": "  the same, no stored bytecode",
        "ccache_api": "ccache run + ccache_cli.compile",
        "ccache_api_nobytecode": "  the same, no stored bytecode",
    }
    median = {mode: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for mode, runs in results.items()}
    cold = median["cold"]["ready_s"] if "cold" in median else float("nan")
    eager = median["eager"]["ready_s"] if "eager" in median else float("nan")
    print(
        f"{'way':34} {'ready s':>8} {'setup s':>8} {'total s':>8} {'launch s':>9} {'cold/warm':>10} "
        f"{'- eager s':>10} {'misses':>7} {'graphs':>7} {'benchmarks':>10}"
    )
    for mode, label in labels.items():
        if mode not in median:
            continue
        m = median[mode]
        ratio = "" if mode in ("eager", "cold") else f"{cold / m['ready_s']:.1f}x"
        print(
            f"{label:34} {m['ready_s']:8.2f} {m['setup_s']:8.2f} {m['total_s']:8.2f} {m['launch_s']:9.2f} "
            f"{ratio:>10} {m['ready_s'] - eager:10.2f} {int(m['fxgraph_miss']):7d} {int(m['graphs']):7d} "
            f"{int(m['benchmarks']):10d}"
        )
    print(
        f"(medians of {args.repeat} rounds; ready = model built to every size run once, of which setup = imports"
        " and loads before the first call; total = from the measured process's start; launch = from the"
        f" command's launch, the `ccache run` wrapper included{'; no .pyc for torch' if args.no_pyc else ''})"
    )


if __name__ == "__main__":
    main()
