"""verify: the matrix of changes a cache meets between CI and deployment, and the verdicts."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import zstandard
from helpers.archives import framed_archive
from helpers.cli import ccache
from helpers.stores import make_entry

from ccache_cli.store.store import Store

pytestmark = pytest.mark.slow  # real compiles or kill -9 loops


@pytest.fixture
def world(two_files_stores: Path, tmp_path: Path) -> Path:
    """A private copy of the code and stores, at another path than they were made at."""
    shutil.copytree(two_files_stores, tmp_path / "w")
    return tmp_path / "w"


def verify(world: Path, *args: str, store: str = "one", env: dict[str, str] | None = None, cwd: Path | None = None):
    environment = {"PYTHONPATH": str(world / "code"), **(env or {})}
    return ccache("verify", *args, store=world / store, env=environment, cwd=cwd or world)


def failed(result) -> list[dict]:
    data = json.loads(result.stdout)
    assert data["ok"] is (result.returncode == 0)
    return [check for check in data["checks"] if not check["ok"]]


def test_fresh_copy_passes_with_json_and_junit(world: Path) -> None:
    junit = world / "report.xml"
    result = verify(world, "--json", "--junit", str(junit))
    assert result.returncode == 0, result.stdout
    checks = json.loads(result.stdout)["checks"]
    assert {c["check"] for c in checks} == {"integrity", "compatibility", "freshness", "bytecode"}
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "4" and suite.get("failures") == "0"


def test_edited_traced_source_fails_naming_the_file(world: Path) -> None:
    helpers = world / "code" / "helpers.py"
    helpers.write_text(helpers.read_text().replace("2.0 *", "3.0 *"))
    result = verify(world, "--json")
    assert result.returncode == 1
    [check] = failed(result)
    assert check["check"] == "freshness" and "changed: helpers.py" in check["detail"]


def test_edited_untraced_file_of_the_same_package_passes(world: Path) -> None:
    (world / "code" / "unused.py").write_text("VALUE = 2\n")
    assert verify(world, "--json").returncode == 0


def test_deleted_traced_source_fails(world: Path) -> None:
    (world / "code" / "helpers.py").unlink()
    [check] = failed(verify(world, "--json"))
    assert "missing: helpers.py" in check["detail"]


def test_moved_store_other_home_and_working_directory_pass(world: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "store"
    shutil.move(str(world / "one"), moved)
    (tmp_path / "home").mkdir()
    (tmp_path / "cwd").mkdir()
    result = ccache(
        "verify",
        "--json",
        store=moved,
        cwd=tmp_path / "cwd",
        env={"HOME": str(tmp_path / "home"), "PYTHONPATH": str(world / "code")},
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(("component", "value"), [("torch", "2.99.0+cpu"), ("python", "3.99.0"), ("cuda", "13.0")])
def test_target_with_another_build_fails_naming_the_component(
    component: str, value: str, world: Path, machine_target: Path
) -> None:
    fingerprint = json.loads(machine_target.read_text())
    target = world / "target.json"
    target.write_text(json.dumps({**fingerprint, component: value}))
    result = verify(world, "--json", "--target", str(target))
    assert result.returncode == 1
    [check] = failed(result)
    assert check["check"] == "compatibility" and check["detail"].startswith(f"{component}: entry has")
    assert repr(value) in check["detail"]


@pytest.mark.parametrize(
    ("component", "value"), [("gpu", "NVIDIA A100-SXM4-80GB"), ("capability", "sm_80"), ("cuda", "12.8")]
)
def test_gpu_entry_against_another_gpu_fails_naming_the_component(component: str, value: str, tmp_path: Path) -> None:
    h100 = {
        "python": "3.12.3",
        "torch": "2.11.0+cu130",
        "cuda": "13.0",
        "hip": None,
        "machine": "x86_64",
        "triton": "3.6.0",
        "gpu": "NVIDIA H100 80GB HBM3",
        "capability": "sm_90",
    }
    store = Store(tmp_path / "store")
    make_entry(store, "gpu_model", {"inductor/triton/0/k/k.cubin": b"cubin"}, fingerprint=h100, device="cuda:0")
    target = tmp_path / "target.json"
    target.write_text(json.dumps({**h100, "cpu_isa": "avx512", "cpu_threads": 16}))
    assert ccache("verify", "--target", str(target), store=store.root).returncode == 0
    target.write_text(json.dumps({**h100, component: value, "cpu_isa": "avx512", "cpu_threads": 16}))
    result = ccache("verify", "--json", "--target", str(target), store=store.root)
    [check] = failed(result)
    assert check["detail"].startswith(f"{component}: entry has {h100[component]!r}, target has {value!r}")


def test_flipped_byte_in_a_blob_fails_naming_blob_and_entry(world: Path) -> None:
    store = Store(world / "one")
    entry = store.scan().entries[0]
    path, ref = next((p, r) for p, r in sorted(entry.refs.items()) if p.startswith("inductor/fxgraph/"))
    blob = store.blob_path(ref.sha256)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    result = verify(world, "--json")
    assert result.returncode == 1
    [check] = failed(result)
    assert check["entry"] == entry.id and check["check"] == "integrity"
    assert f"blob {ref.sha256[:12]} ({path}): content does not match its hash" in check["detail"]


def test_archive_is_verified_as_a_stream(world: Path) -> None:
    archive = world / "cache.tar.zst"
    assert ccache("pack", str(archive), store=world / "one").returncode == 0
    assert verify(world, str(archive), "--json").returncode == 0
    # The same archive with one blob's bytes changed (a well-formed tar otherwise).
    stream = zstandard.ZstdDecompressor().stream_reader(archive.open("rb"), read_across_frames=True)
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        members = [(member, tar.extractfile(member).read()) for member in tar]  # type: ignore[union-attr]
    info, data = members[-1]
    members[-1] = (info, bytes([data[0] ^ 1]) + data[1:])
    archive.write_bytes(framed_archive(members))
    result = verify(world, str(archive), "--json")
    assert result.returncode == 1
    [check] = failed(result)
    assert f"blob {info.name.split('/')[1][:12]}" in check["detail"] and "does not match its hash" in check["detail"]
    assert not (world / "one" / "tmp").exists() or list((world / "one" / "tmp").iterdir()) == []


def test_run_passes_on_an_intact_entry(world: Path) -> None:
    result = verify(world, "--run", "--json", store="two")
    assert result.returncode == 0, result.stdout
    run = next(c for c in json.loads(result.stdout)["checks"] if c["check"] == "run")
    assert "warm start" in run["detail"] and "2 sizes hit" in run["detail"]


def test_run_fails_naming_the_size_whose_artifacts_are_lost(world: Path) -> None:
    # Store `two` holds sizes 2 and 4; the cache keys (folders named by key under
    # fxgraph/ and aotautograd/) that `one` (size 2 only) lacks are size 4's.
    def cache_key(path: str) -> str:
        return "/".join(path.split("/")[:4] if path.startswith("inductor/fxgraph/") else path.split("/")[:3])

    size_2 = {cache_key(p) for p in Store(world / "one").scan().entries[0].files}
    store = Store(world / "two")
    entry = store.scan().entries[0]
    lost = [
        p
        for p in entry.files
        if p.startswith(("inductor/fxgraph/", "inductor/aotautograd/")) and cache_key(p) not in size_2
    ]
    assert lost
    manifest_file = store.entries_dir / entry.id / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    for path in lost:
        del manifest["files"][path]
    manifest_file.write_text(json.dumps(manifest))
    result = verify(world, "--run", "--json", store="two")
    assert result.returncode == 1
    [check] = failed(result)
    assert check["check"] == "run" and check["detail"].startswith("size 4: ")
    assert "size 2" not in check["detail"]


def test_bad_target_and_archive_run_are_bad_usage(world: Path) -> None:
    (world / "target.json").write_text("{}")
    result = verify(world, "--target", str(world / "target.json"))
    assert result.returncode == 2 and "is not a fingerprint" in result.stderr
    assert ccache("pack", str(world / "a.tar.zst"), store=world / "one").returncode == 0
    result = verify(world, str(world / "a.tar.zst"), "--run")
    assert result.returncode == 2 and "--run needs stored entries" in result.stderr
