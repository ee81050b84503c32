"""Benchmark `ccache pack` / `unpack` / `inspect ARCHIVE` against tar + zstd -T0 -3.

Builds a synthetic store shaped like real compile caches (many small generated .py
and .json files, .so libraries, cubin-sized binaries, some files shared between
entries), then, in one run, times each tool on the same files and prints the figures.
ccache-cli's bytecode is compiled first, as `pip install` does: a source checkout run
with PYTHONDONTWRITEBYTECODE=1 would otherwise compile it in every process it starts.

    python benchmarks/archive.py [--mb 560] [--repeat 3] [--inspect-gb 1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ccache_cli
from ccache_cli.store.hashing import hash_json
from ccache_cli.store.manifest import parse as manifest_parse
from ccache_cli.store.store import Store

WORDS = (
    "def kernel triton_poi_fused xindex xmask tl.load tl.store in_ptr0 out_ptr0 tmp0 tmp1 = + * "
    "import torch from torch._inductor runtime triton_heuristics @triton.jit pointwise size_hints "
    "buf0 buf1 empty_strided_cuda assert_size_stride reinterpret_tensor extern_kernels.mm"
).split()


def text_blob(rng: random.Random, size: int) -> bytes:
    lines = []
    total = 0
    while total < size:
        line = " ".join(rng.choices(WORDS, k=rng.randint(4, 14))) + f"  # {rng.getrandbits(32):08x}\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def binary_blob(rng: random.Random, size: int) -> bytes:
    # Machine code compresses about 2-3x: random bytes interleaved with repeated runs.
    parts = []
    total = 0
    while total < size:
        chunk = rng.randbytes(rng.randint(64, 512)) + bytes(rng.randint(32, 512)) + b"\x48\x89\xe5\x41\x57" * 40
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)[:size]


def build_store(root: Path, target_mb: int) -> Store:
    rng = random.Random(0)
    store = Store(root)
    shared: dict[str, bytes] = {f"inductor/ab/shared{i}.py": text_blob(rng, 20_000) for i in range(200)}
    total = 0
    n = 0
    while total < target_mb * 1_000_000:
        files: dict[str, bytes] = dict(rng.sample(sorted(shared.items()), 50))
        for i in range(600):  # generated Python kernels and JSON metadata
            files[f"inductor/{i % 97:02x}/k{n}_{i}.py"] = text_blob(rng, rng.randint(1_000, 12_000))
            files[f"inductor/triton/0/{n}_{i}/meta.json"] = json.dumps(
                {"name": f"k{i}", "n": n, "r": rng.random()}
            ).encode()
        for i in range(12):  # C++ kernels and launchers
            files[f"inductor/{i:02x}/c{n}_{i}.so"] = binary_blob(rng, rng.randint(200_000, 900_000))
        for i in range(60):  # cubins
            files[f"inductor/triton/0/{n}_{i}/k.cubin"] = binary_blob(rng, rng.randint(20_000, 120_000))
        publish(store, f"synthetic-{n}", files)
        total += sum(len(d) for d in files.values())
        n += 1
    return store


def publish(store: Store, name: str, files: dict[str, bytes]) -> None:
    with store.staging() as staging:
        refs = {}
        for i, (path, data) in enumerate(files.items()):
            staged = staging / f"f{i}"
            staged.write_bytes(data)
            ref = store.stage_blob(staging, staged)
            refs[path] = {"sha256": ref.sha256, "size": ref.size}
        fingerprint = {
            "python": "3",
            "torch": "2",
            "cuda": None,
            "hip": None,
            "machine": "x86_64",
            "cpu_isa": "avx2",
            "cpu_threads": 2,
        }
        key = {
            "fingerprint": fingerprint,
            "compile": {"device": "cpu", "sizes": [1], "dynamic": False, "mode": "default"},
            "model": {"module": name, "attr": "build", "inputs": f"{name}:example_inputs"},
            "inputs": {},
            "sources": [],
        }
        manifest = {
            "format": 1,
            "id": hash_json(key),
            "name": name,
            "created": "2026-11-22T00:00:00Z",
            "lookup": "0" * 64,
            "key": key,
            "timings": {"sizes": [], "aot": None},
            "aot": {"status": "disabled", "reason": None},
            "files": refs,
        }
        store.publish([manifest_parse(manifest)], staging, {ref["sha256"] for ref in refs.values()})


def timed(command: list[str] | str, **kwargs: object) -> tuple[float, int]:
    """Wall seconds and peak RSS (MB) of one command, measured on that process alone."""
    drop_caches()
    start = time.perf_counter()
    process = subprocess.Popen(command, shell=isinstance(command, str), **kwargs)  # type: ignore[call-overload]
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"failed: {command}")
    return elapsed, usage.ru_maxrss // 1024


@dataclass(frozen=True)
class Comparison:
    ours: float  # median seconds
    theirs: float
    peak_mb: int  # the highest peak RSS of our runs


def compare(ours: list[str], theirs: str, repeat: int, before: Callable[[], None] = lambda: None) -> Comparison:
    our_times, their_times, peaks = [], [], []
    for _ in range(repeat):
        before()
        seconds, peak = timed(ours, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        our_times.append(seconds)
        peaks.append(peak)
        before()
        their_times.append(timed(theirs)[0])
    return Comparison(statistics.median(our_times), statistics.median(their_times), max(peaks))


def drop_caches() -> None:
    subprocess.run("sync", shell=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=560, help="size of the synthetic store, MB")
    parser.add_argument("--inspect-gb", type=float, default=1.0, help="size of the archive inspect is timed on")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each tool; medians are printed")
    parser.add_argument("--workdir", type=Path, default=None, help="e.g. on tmpfs, to leave the disk out")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ccache-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ccache = [sys.executable, "-m", "ccache_cli"]
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(ccache_cli.__file__).parent)], check=True)
    try:
        t0 = time.perf_counter()
        store = build_store(work / "store", args.mb)
        files = sum(1 for p in (store.root / "objects").rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in (store.root / "objects").rglob("*") if p.is_file())
        print(
            f"synthetic store: {len(store.scan().entries)} entries, {files} blobs, {size / 1e6:.0f} MB "
            f"(built in {time.perf_counter() - t0:.0f} s); {os.cpu_count()} cores"
        )

        archive, tarball = work / "a.tar.zst", work / "t.tar.zst"
        target, plain = work / "unpacked", work / "plain"

        def fresh_targets() -> None:
            shutil.rmtree(target, ignore_errors=True)
            shutil.rmtree(plain, ignore_errors=True)
            plain.mkdir()

        # Each pair runs --repeat times, alternating, so that a slow moment of a shared
        # disk does not land on one side only; medians are printed.
        pack = compare(
            [*ccache, "--store", str(store.root), "pack", str(archive)],
            f"tar -C {store.root} -cf - objects entries | zstd -q -f -T0 -3 -o {tarball}",
            args.repeat,
        )
        print(
            f"pack      ccache {pack.ours:6.2f} s  {archive.stat().st_size / 1e6:7.1f} MB  peak {pack.peak_mb} MB (largest process) | "
            f"tar+zstd {pack.theirs:6.2f} s  {tarball.stat().st_size / 1e6:7.1f} MB | "
            f"time {pack.ours / pack.theirs:.2f}x  size {archive.stat().st_size / tarball.stat().st_size:.3f}x"
        )
        unpack = compare(
            [*ccache, "--store", str(target), "unpack", str(archive)],
            f"zstd -q -d -c {tarball} | tar -C {plain} -xf -",
            args.repeat,
            before=fresh_targets,
        )
        print(
            f"unpack    ccache {unpack.ours:6.2f} s  peak {unpack.peak_mb} MB (largest process; checks every hash) | "
            f"tar+zstd {unpack.theirs:6.2f} s | time {unpack.ours / unpack.theirs:.2f}x"
        )

        inspect_s, _ = timed(
            [*ccache, "--store", str(work / "none"), "inspect", str(archive), "--json"], stdout=subprocess.DEVNULL
        )
        print(
            f"inspect   ccache {inspect_s:6.2f} s on a {archive.stat().st_size / 1e6:.0f} MB archive "
            f"({size / 1e6:.0f} MB of blobs)"
        )

        # A 1 GB archive: the same store's entries plus incompressible blobs.
        fresh_targets()
        rng = random.Random(1)
        n = 0
        while archive.stat().st_size < args.inspect_gb * 1e9:
            publish(
                store,
                f"incompressible-{n}",
                {f"inductor/aa/big{n}_{i}.so": rng.randbytes(4_000_000) for i in range(25)},
            )
            subprocess.run(
                [*ccache, "--store", str(store.root), "pack", str(archive), "--level", "1"],
                check=True,
                stderr=subprocess.DEVNULL,
            )
            n += 1
        inspect_s, _ = timed(
            [*ccache, "--store", str(work / "none"), "inspect", str(archive), "--json"], stdout=subprocess.DEVNULL
        )
        print(
            f"inspect   ccache {inspect_s:6.2f} s on a {archive.stat().st_size / 1e9:.2f} GB archive "
            f"({len(store.scan().entries)} entries)"
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
