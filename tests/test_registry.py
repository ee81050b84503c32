"""push, pull, inspect REF and verify REF against a real registry: the CNCF
distribution registry (`docker-registry serve`), started on loopback for the tests."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import zstandard
from helpers.cli import ccache, ccache_json, imported_modules
from helpers.stores import make_entry, small_tmpfs, snapshot, store_leftovers
from registry_server import NO_REGISTRY, REGISTRY, Registry, free_port

from ccache_cli.registry import layout
from ccache_cli.store.store import Store

pytestmark = pytest.mark.skipif(REGISTRY is None, reason=NO_REGISTRY)
OCI = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    server = Registry(tmp_path / "registry")
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


def entry_files(seed: int, shared: dict[str, bytes] | None = None, big: int = 2, small: int = 150) -> dict[str, bytes]:
    """A synthetic cache: generated sources and metadata, a few binaries over 1 MiB."""
    rng = random.Random(seed)
    files = dict(shared or {})
    for i in range(small):
        files[f"inductor/{i % 16:02x}/k{seed}_{i}.py"] = f"# kernel {seed} {i}\n".encode() + rng.randbytes(
            rng.randint(200, 6000)
        )
    for i in range(big):
        files[f"aot/size-{i}/model.pt2"] = rng.randbytes(layout.BIG_BLOB + rng.randint(1, 300_000))
    return files


def blobs_of(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (store / "objects").rglob("*") if p.is_file()}


def test_push_pull_inspect_and_verify_a_reference(registry: Registry, tmp_path: Path) -> None:
    source = tmp_path / "source"
    shared = {f"bytecode/torch/m{i}.pyc": random.Random(i).randbytes(3000) for i in range(40)}
    ids = sorted(make_entry(Store(source), f"model-{n}", entry_files(n, shared)) for n in range(3))
    ref = f"{registry.host}/team/model-cache:v1"

    pushed = ccache_json("push", ref, store=source)
    assert sorted(pushed["entries"]) == ids and pushed["uploaded"] == pushed["layers"]
    assert registry.blob_uploads() == pushed["layers"]

    # inspect and verify read the manifest and the index only: no layer is downloaded.
    before = registry.blob_downloads()
    listed = ccache_json("inspect", ref, store=tmp_path / "empty")
    assert sorted(item["id"] for item in listed["entries"]) == ids
    verified = ccache_json("verify", ref, store=tmp_path / "empty")
    assert verified["ok"] and {c["check"] for c in verified["checks"]} == {"integrity", "compatibility", "freshness"}
    assert registry.blob_downloads() - before == 2  # the index, once per command

    # push, pull and inspect REF never import torch (they run in image builds and initContainers),
    # nor oras where the registry asks for no credentials.
    for args, store in ((["push", ref], source), (["pull", ref], tmp_path / "no-torch"), (["inspect", ref], source)):
        result = ccache(*args, store=store, python_flags=["-X", "importtime"])
        assert result.returncode == 0, (args, result.stderr[-500:])
        assert not {"torch", "oras"} & imported_modules(result), (args, result.stderr[-500:])

    pulled_store = tmp_path / "pulled"
    pulled = ccache_json("pull", ref, store=pulled_store)
    assert sorted(pulled["added"]) == ids and pulled["downloaded"] == pulled["layers"]
    assert blobs_of(pulled_store) == blobs_of(source)
    for entry_id in ids:
        assert (pulled_store / "entries" / entry_id / "manifest.json").read_text() == (
            source / "entries" / entry_id / "manifest.json"
        ).read_text()
    assert ccache("verify", ids[0], store=pulled_store).returncode == 0
    assert sorted(store_leftovers(pulled_store)) == sorted(f"entries/{entry_id}" for entry_id in ids)

    # A second pull downloads the manifest's config only: every blob is there.
    again = ccache_json("pull", ref, store=pulled_store)
    assert again["added"] == [] and sorted(again["kept"]) == ids and again["new_blobs"] == 0
    assert again["downloaded"] == 1 + len(ids)  # the index and the catalogs


def test_a_push_uploads_only_what_the_registry_lacks(registry: Registry, tmp_path: Path) -> None:
    """Ten entries pushed; one changed and pushed again: only its new layers go up. A
    store holding the old version pulls only those layers."""
    source = tmp_path / "source"
    store = Store(source)
    files = {n: entry_files(n, big=1) for n in range(10)}
    for n in range(10):
        make_entry(store, f"model-{n}", files[n])
    ref = f"{registry.host}/team/cache:latest"
    first = ccache_json("push", ref, store=source)
    puller = tmp_path / "puller"
    ccache_json("pull", ref, store=puller)

    # Model 3 edited in a few places: its entry replaced by one with three new files.
    assert ccache("rm", "model-3", store=source).returncode == 0
    changed = dict(files[3])
    for path in sorted(changed)[:3]:
        changed[path] = changed[path] + b"# edited\n"
    make_entry(store, "model-3-edited", changed)
    uploads = registry.blob_uploads()
    second = ccache_json("push", ref, store=source)
    new_layers = second["uploaded"]
    assert registry.blob_uploads() - uploads == new_layers
    # Its catalog, the index and the packs holding the three edited files, at most:
    # every other layer (nine entries' packs, every big blob) was there already.
    assert 2 < new_layers <= 2 + 3, second
    assert second["layers"] == first["layers"]

    pulled = ccache_json("pull", ref, store=puller)
    assert len(pulled["added"]) == 1 and pulled["new_blobs"] == 3
    assert pulled["downloaded"] <= 1 + 10 + 3  # index, catalogs, the new packs


def test_entries_sharing_most_files_share_most_layers(registry: Registry, tmp_path: Path) -> None:
    source = tmp_path / "source"
    store = Store(source)
    base = entry_files(1, small=12000)  # a dozen packs, as a real entry's thousands of files make
    grown = {**base, **{f"inductor/{i:02x}/extra{i}.py": b"# another size\n" * (i + 1) for i in range(4)}}
    make_entry(store, "sizes-1-8", base)
    make_entry(store, "sizes-1-8-32", grown)
    ref = f"{registry.host}/team/cache:two"
    ccache_json("push", ref, store=source)
    manifest = json.loads(requests.get(f"http://{registry.host}/v2/team/cache/manifests/two", headers=OCI).content)
    catalogs = [layer for layer in manifest["layers"] if layer["mediaType"] == layout.CATALOG_TYPE]
    packs = []
    for catalog in catalogs:
        data = requests.get(f"http://{registry.host}/v2/team/cache/blobs/{catalog['digest']}").content
        packs.append({digest for digest, _ in json.loads(zstandard.decompress(data))["packs"]})
    shared = packs[0] & packs[1]
    assert len(shared) >= 0.6 * max(len(packs[0]), len(packs[1])), (len(shared), [len(p) for p in packs])


@pytest.mark.extended
def test_registry_faults_leave_the_store_unchanged(registry: Registry, tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_entry(Store(source), "model", entry_files(5))
    ref = f"{registry.host}/team/cache:v1"
    ccache_json("push", ref, store=source)
    target = tmp_path / "target"
    make_entry(Store(target), "other", {"inductor/aa/x.py": b"x"})
    before = snapshot(target)

    def refused(args: list[str], code: int, message: str) -> None:
        result = ccache(*args, store=target)
        assert result.returncode == code, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
        assert snapshot(target) == before and not list((target / "tmp").iterdir())

    refused(["pull", f"{registry.host}/team/cache:missing"], 2, "not found")
    refused(["pull", f"{registry.host}/team/nothing:v1"], 2, "not found")
    refused(["pull", "not a reference"], 2, "not a registry reference")
    for typo in (f"{registry.host}/team//cache:v1", "registry.example.com/team:v1:v2", f"{registry.host}/Team/cache"):
        refused(["pull", typo], 2, "not a registry reference")
    started = time.monotonic()
    refused(["pull", f"127.0.0.1:{free_port()}/team/cache:v1"], 1, "cannot reach registry")
    assert time.monotonic() - started < 15

    # A manifest of another artifact type (an image's, say).
    config = b"{}"
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    upload = requests.post(f"http://{registry.host}/v2/team/image/blobs/uploads/")
    requests.put(upload.headers["Location"] + f"&digest={digest}", data=config).raise_for_status()
    image = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": len(config)},
        "layers": [],
    }
    requests.put(
        f"http://{registry.host}/v2/team/image/manifests/v1",
        data=json.dumps(image),
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    ).raise_for_status()
    refused(["pull", f"{registry.host}/team/image:v1"], 2, "not a ccache artifact")
    refused(["inspect", f"{registry.host}/team/image:v1"], 2, "not a ccache artifact")

    # A blob whose content no longer matches its digest, in the registry's storage.
    manifest = json.loads(requests.get(f"http://{registry.host}/v2/team/cache/manifests/v1", headers=OCI).content)
    pack = next(layer for layer in manifest["layers"] if layer["mediaType"] == layout.PACK_TYPE)
    data = registry.blob_data(pack["digest"])
    corrupted = bytearray(data.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    data.write_bytes(bytes(corrupted))
    refused(["pull", ref], 2, "corrupt")


def test_credentials_from_docker_config_and_the_environment(tmp_path: Path) -> None:
    bcrypt = pytest.importorskip("bcrypt")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("ci:" + bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode() + "\n")
    server = Registry(tmp_path / "registry", htpasswd)
    server.start()
    try:
        source = tmp_path / "source"
        make_entry(Store(source), "model", entry_files(9, big=1))
        ref = f"{server.host}/team/cache:v1"
        no_docker = {"DOCKER_CONFIG": str(tmp_path / "no-docker")}
        result = ccache("push", ref, store=source, env=no_docker)
        assert result.returncode == 1 and "docker login" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        env = {**no_docker, "CCACHE_CLI_REGISTRY_USERNAME": "ci", "CCACHE_CLI_REGISTRY_PASSWORD": "secret"}
        assert ccache("push", ref, store=source, env=env).returncode == 0
        docker = tmp_path / "docker"
        docker.mkdir()
        auth = base64.b64encode(b"ci:secret").decode()
        (docker / "config.json").write_text(json.dumps({"auths": {server.host: {"auth": auth}}}))
        pulled = ccache_json("pull", ref, store=tmp_path / "pulled", env={"DOCKER_CONFIG": str(docker)})
        assert len(pulled["added"]) == 1
        wrong = {**env, "CCACHE_CLI_REGISTRY_PASSWORD": "wrong"}
        result = ccache("pull", ref, store=tmp_path / "other", env=wrong)
        assert result.returncode == 1 and "docker login" in result.stderr, result.stderr
    finally:
        server.kill()


class CuttingProxy:
    """Forwards loopback connections to the registry until `budget` bytes came back,
    then stops forwarding, so a test can kill the registry mid-pull; and cuts every
    connection that asks for `refused` (a path), as a network that keeps failing it."""

    def __init__(self, upstream: int, budget: int = 1 << 62, refused: str | None = None) -> None:
        self.upstream = upstream
        self.budget = budget
        self.refused = refused.encode() if refused else None
        self.reached = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(65536):
                if not counted and self.refused and b" " + self.refused + b" " in data:
                    break
                if counted:
                    with self._lock:
                        self.budget -= len(data)
                        if self.budget < 0:
                            self.reached.set()
                    if self.reached.is_set():
                        break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()


@pytest.mark.extended
def test_a_pull_cut_off_resumes_where_it_stopped(registry: Registry, tmp_path: Path) -> None:
    """The registry killed mid-pull: exit 1, no entry published; restarted, the next
    pull completes and downloads only the layers it did not finish."""
    source = tmp_path / "source"
    for n in range(3):
        make_entry(Store(source), f"model-{n}", entry_files(20 + n, big=4))
    pushed = ccache_json("push", f"{registry.host}/team/cache:v1", store=source)
    total = sum(p.stat().st_size for p in (registry.storage / "docker/registry/v2/blobs").rglob("data"))
    proxy = CuttingProxy(registry.port, budget=total // 2)
    target = tmp_path / "target"
    pulling = subprocess.Popen(
        [sys.executable, "-m", "ccache_cli", "--store", str(target), "pull", f"127.0.0.1:{proxy.port}/team/cache:v1"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proxy.reached.wait(60)
    registry.kill()
    proxy.close()
    _, stderr = pulling.communicate(timeout=60)
    assert pulling.returncode == 1 and "registry" in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert not list((target / "entries").iterdir()) and not list((target / "tmp").iterdir())
    kept = blobs_of(target)
    assert kept, "the blobs verified before the cut are kept for the next pull"

    registry.start()
    downloads = registry.blob_downloads()
    pulled = ccache_json("pull", f"{registry.host}/team/cache:v1", store=target)
    assert len(pulled["added"]) == 3
    assert pulled["downloaded"] < pushed["layers"] and registry.blob_downloads() - downloads == pulled["downloaded"]
    assert pulled["new_blobs"] == len(blobs_of(source)) - len(kept)
    assert blobs_of(target) == blobs_of(source)


@pytest.mark.extended
def test_a_pull_cut_off_while_catalogs_arrive_keeps_what_the_layers_brought(registry: Registry, tmp_path: Path) -> None:
    """Layers start downloading as their catalogs arrive: one entry's catalog cut off
    by the network (every try) while the others' layers download. Exit 1; the other
    entries' blobs are kept, so the next pull downloads only the cut entry's layers."""
    source = tmp_path / "source"
    files = {n: entry_files(30 + n, big=1) for n in range(3)}
    ids = {n: make_entry(Store(source), f"model-{n}", files[n]) for n in range(3)}
    ccache_json("push", f"{registry.host}/team/cache:v1", store=source)
    manifest = json.loads(requests.get(f"http://{registry.host}/v2/team/cache/manifests/v1", headers=OCI).content)
    [cut] = [
        layer for layer in manifest["layers"] if layer.get("annotations", {}).get(layout.ENTRY_ANNOTATION) == ids[2]
    ]
    proxy = CuttingProxy(registry.port, refused=f"/v2/team/cache/blobs/{cut['digest']}")
    target = tmp_path / "target"
    try:
        result = ccache("pull", f"127.0.0.1:{proxy.port}/team/cache:v1", store=target)
    finally:
        proxy.close()
    assert result.returncode == 1 and "connection" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list((target / "entries").iterdir()) and not list((target / "tmp").iterdir())
    others = {hashlib.sha256(data).hexdigest() for n in (0, 1) for data in files[n].values()}
    assert set(blobs_of(target)) == others  # every layer of the catalogs that arrived, verified and kept

    pulled = ccache_json("pull", f"{registry.host}/team/cache:v1", store=target)
    assert len(pulled["added"]) == 3 and blobs_of(target) == blobs_of(source)
    assert pulled["new_blobs"] == len({hashlib.sha256(data).hexdigest() for data in files[2].values()} - others)


def swap_first_pack(registry: Registry, data: bytes, tag: str) -> None:
    """Push a hostile artifact under `tag`: the one entry of `team/cache:v1` with its
    first pack swapped for `data`, its catalog and manifest rewritten to match."""
    base = f"http://{registry.host}/v2/team/cache"
    manifest = json.loads(requests.get(f"{base}/manifests/v1", headers=OCI).content)

    def upload(data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        location = requests.post(f"{base}/blobs/uploads/").headers["Location"]
        requests.put(f"{location}&digest={digest}", data=data).raise_for_status()
        return {"digest": digest, "size": len(data)}

    swapped = upload(data)
    [catalog_layer] = [layer for layer in manifest["layers"] if layer["mediaType"] == layout.CATALOG_TYPE]
    catalog = json.loads(zstandard.decompress(requests.get(f"{base}/blobs/{catalog_layer['digest']}").content))
    victim = catalog["packs"][0][0]
    catalog["packs"][0][0] = swapped["digest"]
    new_catalog = upload(zstandard.compress(json.dumps(catalog).encode()))
    for layer in manifest["layers"]:
        if layer["digest"] == victim:
            layer.update(swapped)
        elif layer["digest"] == catalog_layer["digest"]:
            layer.update(new_catalog)
    requests.put(
        f"{base}/manifests/{tag}", data=json.dumps(manifest), headers={"Content-Type": layout.MANIFEST_TYPE}
    ).raise_for_status()


def test_a_pack_that_expands_past_its_blobs_is_refused_in_bounded_memory(registry: Registry, tmp_path: Path) -> None:
    """A hostile artifact: one pack swapped for 1 GiB of zeros compressed to kilobytes.
    Pull refuses it without holding it."""
    source = tmp_path / "source"
    make_entry(Store(source), "model", entry_files(3, big=0))
    ccache_json("push", f"{registry.host}/team/cache:v1", store=source)
    swap_first_pack(registry, zstandard.ZstdCompressor(level=1).compress(bytes(1 << 30)), "bomb")
    target = tmp_path / "target"
    # The pull's peak memory, its workers' included, measured by a parent of its own.
    measure = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    pull = ["-m", "ccache_cli", "--store", str(target), "pull", f"{registry.host}/team/cache:bomb"]
    result = subprocess.run([sys.executable, "-c", measure, sys.executable, *pull], capture_output=True, text=True)
    code, peak_kb = map(int, result.stdout.split())
    assert code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert peak_kb < 400 * 1024, peak_kb  # far below the 1 GiB it would expand to
    assert not (target / "entries").exists() or not list((target / "entries").iterdir())


def test_a_pack_layer_larger_than_its_blobs_could_make_is_refused_unread(registry: Registry, tmp_path: Path) -> None:
    """A pull holds a pack whole, so a pack layer larger than zstd makes of the tar of
    the blobs its catalog lists is refused before it is downloaded."""
    source = tmp_path / "source"
    make_entry(Store(source), "model", entry_files(5, big=0, small=20))
    ccache_json("push", f"{registry.host}/team/cache:v1", store=source)
    swap_first_pack(registry, random.Random(5).randbytes(4 << 20), "padded")
    downloads = registry.blob_downloads()
    target = tmp_path / "target"
    result = ccache("pull", f"{registry.host}/team/cache:padded", store=target)
    assert result.returncode == 2 and "names a pack larger than any ccache writes" in result.stderr, result.stderr
    assert registry.blob_downloads() - downloads == 2  # the index and the catalog
    assert store_leftovers(target) == []


def test_a_pull_by_digest_gets_exactly_that_manifest(registry: Registry, tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_entry(Store(source), "model", entry_files(4, big=0))
    pushed = ccache_json("push", f"{registry.host}/team/cache:v1", store=source)
    pulled = ccache_json("pull", f"{registry.host}/team/cache@{pushed['digest']}", store=tmp_path / "target")
    assert pulled["added"] == pushed["entries"]
    again = ccache_json("push", f"{registry.host}/team/cache:v1", store=source)
    assert again["digest"] == pushed["digest"] and again["uploaded"] == 0  # the same entries, the same manifest


def test_trust_covers_registry_references(registry: Registry, tmp_path: Path) -> None:
    """push --sign puts a signature of the config in the manifest; pull, inspect REF and
    verify REF with --trust (or CCACHE_CLI_TRUST) refuse an artifact no trusted key
    signed before downloading anything past the manifest, and leave the store as it was."""
    keys = {}
    for name in ("ours", "theirs"):
        assert ccache("key", "generate", str(tmp_path / name)).returncode == 0
        keys[name] = str(tmp_path / f"{name}.pub")
    source = tmp_path / "source"
    make_entry(Store(source), "model", entry_files(1, {}))
    signed, unsigned = f"{registry.host}/team/cache:signed", f"{registry.host}/team/cache:unsigned"
    assert ccache("push", signed, "--sign", str(tmp_path / "ours"), store=source).returncode == 0
    assert ccache("push", unsigned, store=source).returncode == 0

    target = tmp_path / "target"
    pulled = ccache("pull", signed, "--trust", keys["ours"], store=target)
    assert pulled.returncode == 0, pulled.stderr
    with_env = {"CCACHE_CLI_TRUST": keys["ours"]}
    assert ccache("verify", signed, store=tmp_path / "t2", env=with_env).returncode == 0
    for ref, key, said in ((unsigned, keys["ours"], "is not signed"), (signed, keys["theirs"], "which is not trusted")):
        before = registry.blob_downloads()
        for command in ("pull", "inspect", "verify"):
            refused = ccache(command, ref, store=tmp_path / "refused", env={"CCACHE_CLI_TRUST": key})
            assert refused.returncode == 1 and said in refused.stderr, (command, refused.stderr)
        assert registry.blob_downloads() == before  # refused on the manifest alone
        assert ccache("pull", ref, "--trust", key, store=tmp_path / "refused").returncode == 1
        assert not list((tmp_path / "refused").glob("entries/*"))
    for setting in ("", ":"):
        empty = ccache("pull", signed, store=tmp_path / "empty", env={"CCACHE_CLI_TRUST": setting})
        assert empty.returncode == 2 and "names no public key file" in empty.stderr, empty.stderr


def test_a_pull_onto_a_full_disk_says_so_in_one_line(registry: Registry, tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_entry(Store(source), "big", {f"inductor/blob{i}": random.Random(i).randbytes(300_000) for i in range(20)})
    ref = f"{registry.host}/team/cache:full"
    assert ccache("push", ref, store=source).returncode == 0
    with small_tmpfs(tmp_path / "small", "size=2m") as small:
        result = ccache("pull", ref, store=small / "store")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert "no space left on the device of store" in lines[0] and "nothing was changed" in lines[0], lines[0]
        assert not list((small / "store").glob("entries/*")) and not list((small / "store").glob("tmp/*"))
