"""How ccache's own time grows with the number of entries in a store.

Precompiles a model once (by default a transformers Llama from a small random config,
whose key names the 14 files Dynamo traced; `--model` another), `--no-bytecode`, so
each manifest is small (`--bytecode` keeps the compile stack's bytecode and a manifest
of about 0.9 MB), then copies its
manifest into N entries that differ only in their key (the sizes they name), all
sharing the same blobs, each with a usage log of `--uses` uses (a use's line and its
process's result line each), and times, for N = 1, 100 and 1,000, each command as a user
runs it: `inspect` (its table) and `inspect --json`, `env`, `run -- true`, `verify`
(table and `--json`) and `verify ENTRY` (the median of seven runs,
after a first `inspect` that brings the store's index up to date and a first `env` that
lays out the entries' view, each timed apart). Own
time is a run's wall time, and its CPU time, less that of a `ccache --help` run just
before it (the interpreter's and the CLI's start); CPU time is the steadier figure on
a shared machine, and the best run's wall time less the best `--help` run's (timeit's
reading: slower runs are slowed by other work) the figure of the code itself. `run`,
`env` and `inspect` in their plain forms start without Typer's import (cli/main.py), so
their own time may be below zero. ccache-cli's modules are byte-compiled first, as an installed package is.
Prints a table and JSON.

    python benchmarks/store_scale.py [--counts 1,100,1000] [--bytecode] [--uses 100] [--model MODEL]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ccache_cli.store.hashing import hash_json

MODEL = Path(__file__).resolve().parents[1] / "tests" / "models" / "llama.py"
COMMANDS = {
    "inspect": ["inspect"],
    "inspect --json": ["inspect", "--json"],
    "env": ["env"],
    "run -- true": ["run", "--", "true"],
    "verify": ["verify"],
    "verify --json": ["verify", "--json"],
}


def grow(store: Path, template: dict, count: int, uses: int) -> None:
    """Entries up to `count`, each the template with other sizes in its key, used `uses` times."""
    entries = store / "entries"
    have = len(os.listdir(entries))
    (store / "usage").mkdir(exist_ok=True)
    for number in range(have, count):
        document = json.loads(json.dumps(template))
        document["key"]["compile"]["sizes"] = [1000 + number]
        document["id"] = hash_json(document["key"])
        folder = entries / document["id"]
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps(document))
        lines = []
        for use in range(uses):
            at = f"2026-12-01T{use // 3600 % 24:02d}:{use // 60 % 60:02d}:{use % 60:02d}.{number:06d}Z"
            lines.append(json.dumps({"at": at, "by": "run"}))
            lines.append(json.dumps({"at": at, "by": "run", "result": True, "hits": 3, "misses": 0}))
        (store / "usage" / f"{document['id']}.log").write_text("".join(line + "\n" for line in lines))


def run_once(store: Path, args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """One run's wall time and CPU time (user and system, of the process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "ccache_cli", "--store", str(store), *args], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode not in (0, 1):  # verify exits 1 where it finds a problem
        raise SystemExit(f"{args}: {result.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def own_time(store: Path, args: list[str], env: dict[str, str], runs: int = 7) -> tuple[float, float, float]:
    """ccache's own wall and CPU time for a command: the medians, over `runs` runs, of
    the command's time less that of a `--help` run just before it; and the best wall
    time less the best `--help` run's (what the code takes where nothing else runs)."""
    walls, cpus, help_walls, command_walls = [], [], [], []
    for _ in range(runs):
        start_wall, start_cpu = run_once(store, ["--help"], env)
        wall, cpu = run_once(store, args, env)
        walls.append(wall - start_wall)
        cpus.append(cpu - start_cpu)
        help_walls.append(start_wall)
        command_walls.append(wall)
    return statistics.median(walls), statistics.median(cpus), min(command_walls) - min(help_walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,100,1000")
    parser.add_argument("--bytecode", action="store_true")
    parser.add_argument("--model", default=str(MODEL), help="what `ccache precompile` takes")
    parser.add_argument("--uses", type=int, default=100, help="uses recorded in each entry's usage log")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    import ccache_cli

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(ccache_cli.__file__).parent)], check=True)
    with tempfile.TemporaryDirectory(prefix="ccache-scale-") as folder:
        store = Path(folder) / "store"
        env = {**os.environ, "CCACHE_CLI_VIEWS": str(Path(folder) / "views")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        precompile = ["precompile", args.model, "--sizes", "2", "--no-aot"]
        precompile += [] if args.bytecode else ["--no-bytecode"]
        subprocess.run([sys.executable, "-m", "ccache_cli", "--store", str(store), *precompile], env=env, check=True)
        [entry] = os.listdir(store / "entries")
        template = json.loads((store / "entries" / entry / "manifest.json").read_text())
        # and one entry's verify (the first, in every store): a lookup, then that entry's checks
        commands = {**COMMANDS, "verify ENTRY": ["verify", "--json", entry[:12]]}
        shutil.rmtree(store / "usage", ignore_errors=True)
        manifest_kb = (store / "entries" / entry / "manifest.json").stat().st_size / 1024
        results: dict[str, dict[str, tuple[float, float]]] = {}
        first_reads: dict[str, tuple[float, float]] = {}
        first_views: dict[str, tuple[float, float]] = {}
        help_wall, _ = run_once(store, ["--help"], env)
        for count in counts:
            grow(store, template, count, args.uses)
            first_reads[str(count)] = own_time(store, ["inspect", "--json"], env, runs=1)
            first_views[str(count)] = own_time(store, ["env"], env, runs=1)
            results[str(count)] = {name: own_time(store, command, env) for name, command in commands.items()}
    print(f"manifest {manifest_kb:.0f} KB each; `ccache --help` {help_wall * 1e3:.0f} ms (the start alone)")
    print(
        "own time, wall / CPU / best wall (a run's less that of a `--help` run just before it, medians; the best less the best `--help`):"
    )
    print(f"{'entries':>8} {'first read':>19} {'first env':>19} " + " ".join(f"{name:>19}" for name in commands))
    for count, row in results.items():
        cells = [*(first[count] for first in (first_reads, first_views)), *(row[name] for name in commands)]
        print(
            f"{count:>8} "
            + " ".join(f"{wall * 1e3:>6.0f}/{cpu * 1e3:>4.0f}/{best * 1e3:>4.0f} ms" for wall, cpu, best in cells)
        )
    print(
        json.dumps(
            {
                "manifest_kb": manifest_kb,
                "help_s": help_wall,
                "first_read_s": first_reads,
                "first_env_s": first_views,
                "own_wall_cpu_s": results,
            }
        )
    )


if __name__ == "__main__":
    main()
