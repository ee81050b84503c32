"""ccache installed apart from the program: the program runs in a venv of its own, in
an image without bytecode, and ccache-cli (in this environment) is not installed there.

Makes that venv (this environment's packages linked in, ccache-cli left out), or takes
one with `--python`; precompiles `--model` there with `precompile --python`; then runs
an unchanged program (`torch.compile(model)`, each size once) in that venv, with no
.pyc written or found (PYTHONDONTWRITEBYTECODE=1, PYTHONPYCACHEPREFIX at an empty
folder), and prints the seconds from the process's start, and from the command's
launch, to every size run:

- cold: torch.compile on an empty Inductor cache
- torch's own warm dir: again on the cache the cold run filled
- ccache run: under `ccache run` of this environment (the stored code, routed)
- ccache run --no-route: torch.compile on the warm caches, with the stored bytecode

    python benchmarks/foreign_env.py [--model FILE.py] [--sizes 1,4] [--python VENV/bin/python] [--repeat 2]
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

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from environments import foreign_venv  # noqa: E402  (shared with the tests)

PROGRAM = """
import time
started = time.perf_counter()
import importlib.util, json, sys
import torch
spec = importlib.util.spec_from_file_location("model", sys.argv[1])
model_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model_module)
sizes = json.loads(sys.argv[2])
model = model_module.build()
compiled = torch.compile(model)
with torch.no_grad():
    for size in sizes:
        inputs = model_module.example_inputs(size)
        compiled(**inputs) if isinstance(inputs, dict) else compiled(*inputs)
done = time.perf_counter()
misses = 0
if "torch._dynamo.utils" in sys.modules:
    misses = sys.modules["torch._dynamo.utils"].counters["inductor"]["fxgraph_cache_miss"]
print(json.dumps({"total_s": done - started, "done_at": done, "misses": misses}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(Path(__file__).parent / "models" / "llama_decoder.py"))
    parser.add_argument("--sizes", default="1,4")
    parser.add_argument("--python", help="the program's venv Python [default: make one]")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    model = str(Path(args.model).resolve())
    with tempfile.TemporaryDirectory(prefix="ccache-foreign-bench-") as work_dir:
        work = Path(work_dir)
        python = args.python or str(foreign_venv(work / "venv"))
        ccache = [sys.executable, "-m", "ccache_cli", "--store", str(work / "store")]
        (work / "empty").mkdir()
        base = {
            **os.environ,
            "CCACHE_CLI_VIEWS": str(work / "views"),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPYCACHEPREFIX": str(work / "empty"),
        }
        started = time.perf_counter()
        subprocess.run(
            [*ccache, "precompile", f"{model}:build", "--sizes", args.sizes, "--python", python],
            check=True,
            stdout=subprocess.DEVNULL,
            env=base,
        )
        print(
            f"{args.model}, sizes {args.sizes}; precompiled with --python {python} in {time.perf_counter() - started:.1f} s"
        )
        program = work / "program.py"
        program.write_text(PROGRAM)
        ways = {
            "cold": ([], "cold"),
            "torch's own warm dir": ([], "cold"),
            "ccache run": ([*ccache, "run", "--"], None),
            "ccache run --no-route": ([*ccache, "run", "--no-route", "--"], None),
        }
        results: dict[str, list[dict[str, float]]] = {}
        for round_ in range(args.repeat):
            for label, (wrapper, cache) in ways.items():
                env = dict(base)
                if cache is not None:
                    env["TORCHINDUCTOR_CACHE_DIR"] = str(work / f"{cache}-{round_}")
                launched = time.perf_counter()
                result = subprocess.run(
                    [*wrapper, python, str(program), model, json.dumps(sizes)],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=True,
                )
                report = json.loads(result.stdout.strip().splitlines()[-1])
                report["launch_s"] = report.pop("done_at") - launched
                results.setdefault(label, []).append(report)
    median = {label: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for label, runs in results.items()}
    own = median["torch's own warm dir"]["total_s"]
    print(f"{'way':26} {'total s':>8} {'launch s':>9} {'/ own warm':>11} {'misses':>7}")
    for label, m in median.items():
        print(f"{label:26} {m['total_s']:8.2f} {m['launch_s']:9.2f} {m['total_s'] / own:10.2f}x {int(m['misses']):7d}")
    print(
        f"(medians of {args.repeat} rounds; the program in its own venv without .pyc; total = from the program's"
        " start to every size run once; launch = from the command's launch, the `ccache run` wrapper included)"
    )


if __name__ == "__main__":
    main()
