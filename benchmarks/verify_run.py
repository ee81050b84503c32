"""How long `ccache verify --run` takes beside the warm start it performs.

Precompiles the bundled example into a temporary store, then runs `verify --run`
several times and prints, for each, the whole command's seconds, the warm start the
check process measured (process start to every size run once), and their ratio.

    python benchmarks/verify_run.py [--sizes 1,8,32] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time

EXAMPLE = "ccache_cli.examples.tiny_transformer"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,8,32")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ccache-verify-bench-") as store:
        ccache = [sys.executable, "-m", "ccache_cli", "--store", store]
        subprocess.run(
            [*ccache, "precompile", EXAMPLE, "--sizes", args.sizes, "--no-aot"], check=True, stdout=subprocess.DEVNULL
        )
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = subprocess.run([*ccache, "verify", "--run", "--json"], capture_output=True, text=True)
            total = time.perf_counter() - start
            run = next(c for c in json.loads(result.stdout)["checks"] if c["check"] == "run")
            warm = float(re.search(r"warm start ([0-9.]+) s", run["detail"]).group(1))  # type: ignore[union-attr]
            print(
                f"verify --run {total:5.2f} s | warm start {warm:5.2f} s | ratio {total / warm:.2f}x | "
                f"{'pass' if result.returncode == 0 else 'FAIL'}"
            )


if __name__ == "__main__":
    main()
