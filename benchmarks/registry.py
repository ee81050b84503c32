"""Benchmark `ccache push` and `ccache pull` through a real registry on loopback against
`ccache unpack` of the same entries from a local archive.

Builds archive.py's synthetic store (about 540 MB, tens of thousands of blobs), starts
the distribution registry (`docker-registry`) on 127.0.0.1 with its storage in the
work folder, then prints: the artifact's layout (layers by kind, bytes); the first
push; a second push of the same store (nothing to upload); pull into an empty store
against unpack of a packed archive into an empty store (seconds, peak RSS); a push
after one entry of ten was edited (three files changed), counting the blob uploads in
the registry's log; and the pull of that change into the store that had the old one.

    python benchmarks/registry.py [--mb 540] [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

import archive  # noqa: E402  (this folder's archive benchmark: its synthetic store)
from registry_server import REGISTRY, Registry  # noqa: E402

from ccache_cli.registry import layout  # noqa: E402
from ccache_cli.store.store import Store  # noqa: E402

OCI = {"Accept": layout.MANIFEST_TYPE}


def ccache(store: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ccache_cli", "--store", str(store), *args]


def compile_imported() -> None:
    """Bytecode for every module the commands timed import, as pip writes it when it
    installs a package: a virtual environment installed with --no-compile, or run under
    PYTHONDONTWRITEBYTECODE, would compile requests, rich and the rest from source in
    every process."""
    modules = "ccache_cli.cli.main, ccache_cli.cli.transfer, ccache_cli.registry.transfer, ccache_cli.archive.unpack"
    listing = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, {modules}; print(*(getattr(m, '__file__', None) for m in list(sys.modules.values())))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(f for f in listing if f.endswith(".py"))], check=True)


def run_json(command: list[str]) -> tuple[dict, float, int]:
    """The command's JSON, its wall seconds and peak RSS (MB)."""
    start = time.perf_counter()
    process = subprocess.Popen([*command, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = process.stdout.read()  # type: ignore[union-attr]
    err = process.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"failed: {' '.join(command)}: {err.decode()}")
    return json.loads(out), time.perf_counter() - start, usage.ru_maxrss // 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=540, help="size of the synthetic store, MB")
    parser.add_argument("--repeat", type=int, default=3, help="pulls and unpacks timed; medians are printed")
    parser.add_argument("--workdir", type=Path, default=None, help="e.g. on tmpfs, to leave the disk out")
    args = parser.parse_args()
    if REGISTRY is None:
        raise SystemExit("needs the distribution registry: apt-get install docker-registry")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ccache-registry-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    compile_imported()
    server = Registry(work / "registry")
    server.start()
    try:
        store = archive.build_store(work / "store", args.mb)
        entries = store.scan().entries
        blobs = sum(1 for p in (store.root / "objects").rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in (store.root / "objects").rglob("*") if p.is_file())
        print(f"synthetic store: {len(entries)} entries, {blobs} blobs, {size / 1e6:.0f} MB")
        ref = f"{server.host}/bench/cache:v1"

        pushed, seconds, peak = run_json(ccache(store.root, "push", ref))
        print(
            f"push      {seconds:6.2f} s  peak {peak} MB  {pushed['layers']} layers, {pushed['uploaded_bytes'] / 1e6:.0f} MB "
            f"uploaded ({server.blob_uploads()} blob uploads in the registry's log)"
        )
        manifest = json.loads(requests.get(f"http://{server.host}/v2/bench/cache/manifests/v1", headers=OCI).content)
        kinds: dict[str, list[int]] = {}
        for layer in manifest["layers"]:
            kind = {layout.CATALOG_TYPE: "catalog", layout.PACK_TYPE: "pack", layout.BLOB_TYPE: "blob"}[
                layer["mediaType"]
            ]
            kinds.setdefault(kind, []).append(layer["size"])
        print(
            "layout    "
            + ", ".join(
                f"{len(sizes)} {kind} layers ({sum(sizes) / 1e6:.1f} MB)" for kind, sizes in sorted(kinds.items())
            )
            + f"; config {manifest['config']['size'] / 1e3:.0f} kB, manifest "
            f"{len(json.dumps(manifest)) / 1e3:.0f} kB"
        )
        again, seconds, _ = run_json(ccache(store.root, "push", ref))
        print(f"push again {seconds:5.2f} s  uploaded {again['uploaded']} layers (the manifest only moves)")

        packed = work / "a.tar.zst"
        subprocess.run(ccache(store.root, "pack", str(packed)), check=True, stdout=subprocess.DEVNULL)
        pulls, unpacks, pull_peaks, unpack_peaks = [], [], [], []
        for _ in range(args.repeat):
            for target in (work / "pulled", work / "unpacked"):
                shutil.rmtree(target, ignore_errors=True)
            archive.drop_caches()
            _, seconds, peak = run_json(ccache(work / "pulled", "pull", ref))
            pulls.append(seconds)
            pull_peaks.append(peak)
            archive.drop_caches()
            _, seconds, peak = run_json(ccache(work / "unpacked", "unpack", str(packed)))
            unpacks.append(seconds)
            unpack_peaks.append(peak)
        pull_s, unpack_s = statistics.median(pulls), statistics.median(unpacks)
        print(
            f"pull      {pull_s:6.2f} s  peak {max(pull_peaks)} MB | unpack of a local archive {unpack_s:6.2f} s  "
            f"peak {max(unpack_peaks)} MB (largest process) | {pull_s / unpack_s:.2f}x"
        )

        # One entry of ten edited: three of its files changed.
        ten = sorted(entries, key=lambda e: e.id)[:10]
        edited = ten[3]
        files = {path: store.blob_path(ref_["sha256"]).read_bytes() for path, ref_ in edited.files.items()}
        for path in sorted(files)[:3]:
            files[path] += b"# edited\n"
        partial = work / "ten"
        subprocess.run(ccache(store.root, "pack", str(work / "ten.tar.zst"), *[e.id for e in ten]), check=True)
        subprocess.run(ccache(partial, "unpack", str(work / "ten.tar.zst")), check=True, stdout=subprocess.DEVNULL)
        ten_ref = f"{server.host}/bench/ten:v1"
        run_json(ccache(partial, "push", ten_ref))
        puller = work / "puller"
        run_json(ccache(puller, "pull", ten_ref))
        subprocess.run(ccache(partial, "rm", edited.id), check=True, stdout=subprocess.DEVNULL)
        archive.publish(Store(partial), f"{edited.name}-edited", files)
        uploads = server.blob_uploads()
        second, seconds, _ = run_json(ccache(partial, "push", ten_ref))
        print(
            f"one of ten edited: push {seconds:.2f} s uploaded {second['uploaded']} of {second['layers']} layers, "
            f"{second['uploaded_bytes'] / 1e3:.0f} kB ({server.blob_uploads() - uploads} blob uploads in the log)"
        )
        pulled, seconds, _ = run_json(ccache(puller, "pull", ten_ref))
        print(
            f"           pull {seconds:.2f} s downloaded {pulled['downloaded']} of {pulled['layers']} layers, "
            f"{pulled['downloaded_bytes'] / 1e3:.0f} kB, {pulled['new_blobs']} new blobs"
        )
    finally:
        server.kill()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
