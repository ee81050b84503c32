"""transformers' fast-generation recipe (benchmarks/programs/generate_recipe.py: a
random bf16 Llama, a static KV cache, `model.forward = torch.compile(model.forward)`,
`generate` at batch 1 and 4, 8 new tokens) started cold, warm on torch's own cache,
and warm under `ccache run` on what `ccache run --capture` stored.

Prints, per way, the seconds from the compile call to both generates done ("ready"),
the measured process's whole run ("total"), the graphs torch traced, whether the
tokens equal the first way's, the cold/warm ratio and the time of one warm `generate`
at batch 1, and under it the parts of "ready" and what ccache said (why stored code was
not used, graphs that missed). The way `eager` compiles nothing: the floor of "ready".

    python benchmarks/generate.py [--device cpu|cuda] [--layers N] [--hidden N]
        [--ways cold,torch-warm,capture,run,eager] [--all-devices]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROGRAM = Path(__file__).resolve().parent / "programs" / "generate_recipe.py"
SHAPE = {"cpu": (1, 256), "cuda": (8, 1024)}


def measure(command: list[str], env: dict[str, str]) -> tuple[dict, list[str]]:
    """What the recipe printed, and the lines ccache said on stderr."""
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed:\n{result.stderr[-3000:]}")
    said = [line for line in result.stderr.splitlines() if line.startswith("ccache:")]
    return json.loads(result.stdout.strip().splitlines()[-1]), said


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument(
        "--ways",
        default="cold,torch-warm,capture,run,eager",
        help="which ways, comma-separated (run: twice); tokens are compared with the first way's",
    )
    parser.add_argument(
        "--all-devices",
        action="store_true",
        help="generate compiles the model's __call__ too (mode reduce-overhead), as it does on a GPU",
    )
    args = parser.parse_args()
    chosen = set(args.ways.split(","))
    layers, hidden = args.layers or SHAPE[args.device][0], args.hidden or SHAPE[args.device][1]
    recipe = [sys.executable, str(PROGRAM), args.device, str(layers), str(hidden)]
    recipe += ["all-devices"] if args.all_devices else []
    ccache = [sys.executable, "-m", "ccache_cli"]
    also = ", generate compiles __call__ too (as on a GPU)" if args.all_devices else ""
    print(f"generate recipe: {args.device}, Llama {layers} layers, hidden {hidden}, bf16{also}", flush=True)
    print(
        f"{'way':<18}{'ready s':>9}{'total s':>9}{'graphs':>8}{'same tokens':>13}{'cold/ready':>12}{'ms/generate':>13}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as scratch:
        base = {
            **os.environ,
            "TORCHINDUCTOR_CACHE_DIR": f"{scratch}/torch-cache",
            "TRITON_CACHE_DIR": f"{scratch}/torch-cache/triton",
            "CCACHE_CLI_VIEWS": f"{scratch}/views",
        }
        store = ["--store", f"{scratch}/store"]
        ways = {
            ("cold", "cold"): recipe,
            ("torch warm", "torch-warm"): recipe,
            ("ccache capture", "capture"): [*ccache, *store, "run", "--capture", "gen", "--", *recipe],
            ("ccache run #1", "run"): [*ccache, *store, "run", "gen", "--", *recipe],
            ("ccache run #2", "run"): [*ccache, *store, "run", "gen", "--", *recipe],
            ("eager", "eager"): [*recipe, "eager"],
        }
        first: dict = {}
        for (way, key), command in ways.items():
            if key not in chosen:
                continue
            found, said = measure(command, base)
            first = first or {"way": way, **found}
            ratio = f"{first['ready_s'] / found['ready_s']:>11.1f}x" if first["way"] == "cold" else f"{'-':>12}"
            same = found["tokens"] == first["tokens"]
            print(
                f"{way:<18}{found['ready_s']:>9.2f}{found['total_s']:>9.2f}{found.get('graphs', 0):>8}"
                f"{str(same):>13}{ratio}{found['per_generate_ms']:>13.1f}",
                flush=True,
            )
            print("  " + ", ".join(f"{part} {s:.2f} s" for part, s in found["phases_s"].items()), flush=True)
            for line in said:
                print(f"  {line}", flush=True)


if __name__ == "__main__":
    main()
