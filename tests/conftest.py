from __future__ import annotations

import compileall
import contextlib
import functools
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from filelock import FileLock

import ccache_cli
from ccache_cli.archive.frames import FRAME_SIZE, FrameWriter
from ccache_cli.store.hashing import hash_json
from ccache_cli.store.manifest import parse as parse_manifest
from ccache_cli.store.store import Store

MODELS = Path(__file__).parent / "models"
UNIT = Path(__file__).parent / "unit"
# Every process the tests start trusts this CPU's flags for Inductor's vector ISA,
# instead of compiling and loading probe programs in each fresh cache (8 to 10 s of
# every cold compile here). It picks the same ISA where the probes pass, as they do on
# the machines the tests run on; the compiles themselves stay real.
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")
# The test command installs without bytecode (pip --no-compile): each module is
# compiled once, by the first process that imports it, which must be let write it.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
# On a few cores, each compiling process starting Inductor's pool of compile workers
# (each importing torch) costs more CPU than the pool saves; the compiles are the same.
if (os.cpu_count() or 1) <= 4:
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
# The tests write several GB in all (stores, archives, views) and flush them as the
# store does (syncfs): where the machine has a RAM-backed file system with room, their
# folders go there (kept only for failed tests: tmp_path_retention_policy), so that
# the disk's writeback is not what the run waits for.
_RAM_FS = Path("/dev/shm")


def _memory_available() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0


if (
    "PYTEST_DEBUG_TEMPROOT" not in os.environ
    and _RAM_FS.is_dir()
    and os.access(_RAM_FS, os.W_OK)
    and not os.statvfs(_RAM_FS).f_flag & os.ST_NOEXEC  # the tests load compiled kernels from their folders
    and min(shutil.disk_usage(_RAM_FS).free, _memory_available()) > 8 << 30
):
    os.environ["PYTEST_DEBUG_TEMPROOT"] = str(_RAM_FS)
# The tiers: tests/unit (pure functions), then the integration tests, of which those
# that compile for real or kill processes in loops say `pytestmark = pytest.mark.slow`;
# and any test of a fixture that compiles is slow too.
COMPILED_FIXTURES = {"example_store", "example_entry", "llama", "small_store", "two_files_stores"}
FINGERPRINT_ENV = "CCACHE_CLI_TEST_FINGERPRINT"  # `ccache fingerprint --json`, learned once per run
FINGERPRINT_FILE_ENV = "CCACHE_CLI_TEST_FINGERPRINT_FILE"  # where the controller writes it


def pytest_configure(config: pytest.Config) -> None:
    """Once, in the controller before the workers start: bytecode for the project and
    the test models (every process the tests start imports them, and an editable
    install leaves them without .pyc files, which the first processes would all race to
    write); and this machine's fingerprint for every worker (each time it is learned
    costs a torch import), learned while the workers start."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        for folder in (Path(ccache_cli.__file__).parent, MODELS):
            compileall.compile_dir(str(folder), quiet=1)
        unit_only = all(Path(arg.split("::")[0]).resolve().is_relative_to(UNIT) for arg in config.args)
        if not unit_only and FINGERPRINT_ENV not in os.environ:
            _learn_fingerprint_in_background(Path(tempfile.mkdtemp(prefix="ccache-cli-tests-")) / "fingerprint.json")


def pytest_unconfigure(config: pytest.Config) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER") and FINGERPRINT_FILE_ENV in os.environ:
        shutil.rmtree(Path(os.environ[FINGERPRINT_FILE_ENV]).parent, ignore_errors=True)


def _learn_fingerprint_in_background(path: Path) -> None:
    """`ccache fingerprint --json` into `path` (whole or not at all), which
    `machine_fingerprint_json` waits for."""
    os.environ[FINGERPRINT_FILE_ENV] = str(path)
    learning = subprocess.Popen(
        [sys.executable, "-m", "ccache_cli", "fingerprint", "--json"], stdout=subprocess.PIPE, text=True
    )

    def finish() -> None:
        learned = learning.communicate()[0]
        if learning.returncode == 0:
            path.with_suffix(".tmp").write_text(learned)
            path.with_suffix(".tmp").replace(path)
        else:
            path.with_suffix(".failed").touch()

    threading.Thread(target=finish, daemon=True).start()


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker more than the cores, since every worker spends part of its
    time waiting on the subprocesses it starts (6 min 42 s against 7 min 6 s on 2 cores)."""
    return (os.cpu_count() or 1) + 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if COMPILED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


EXAMPLE = "ccache_cli.examples.tiny_transformer"


def ccache(
    *args: str,
    store: Path | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    python_flags: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a user would."""
    command = [sys.executable, *python_flags, "-m", "ccache_cli"]
    if store is not None:
        command += ["--store", str(store)]
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env.pop("CCACHE_CLI_DEBUG", None)
    return subprocess.run(command + list(args), capture_output=True, text=True, cwd=cwd, env=full_env, timeout=900)


def imported_modules(result: subprocess.CompletedProcess[str]) -> set[str]:
    """Top-level module names from `python -X importtime` output."""
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def ccache_json(*args: str, **kwargs: object) -> dict:
    result = ccache(*args, "--json", **kwargs)  # type: ignore[arg-type]
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


HIT_PROBE = textwrap.dedent(
    """
    import json, sys, torch
    from torch._dynamo.utils import counters
    from ccache_cli.examples.tiny_transformer import build, example_inputs
    device = sys.argv[1]
    compiled = torch.compile(build().to(device), backend="inductor", dynamic=False)
    torch._dynamo.config.recompile_limit = 16
    with torch.no_grad():
        for size in json.loads(sys.argv[2]):
            compiled(*(t.to(device) for t in example_inputs(size)))
    print(json.dumps({**counters["inductor"], **counters["aot_autograd"]}))
    """
)


def run_on_cache_dir(inductor_dir: Path, device: str, sizes: list[int], cwd: Path) -> dict[str, int]:
    """Compile the example in a fresh process on `inductor_dir`, with what `unpack
    --export-dir` says to set: on a GPU, that variable alone; on the CPU, the thread
    setting precompile compiles C++ kernels with too. Torch's cache counters."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_dir)}
    env.pop("TRITON_CACHE_DIR", None)
    env.pop("TORCHINDUCTOR_CPP_DYNAMIC_THREADS", None)
    if device == "cpu":
        env["TORCHINDUCTOR_CPP_DYNAMIC_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", HIT_PROBE, device, json.dumps(sizes)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# Compiles the example as a server would, prints torch's cache counters and whether
# every output equals eager. `api` goes through ccache_cli.compile, `torch` through
# torch.compile.
SERVE = textwrap.dedent(
    """
    import json, sys, torch
    import ccache_cli
    from ccache_cli.examples.tiny_transformer import build, example_inputs
    way, sizes = sys.argv[1], json.loads(sys.argv[2])
    device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    model = build().to(device)
    if way == "api":
        compiled = ccache_cli.compile(model)
    else:
        compiled = torch.compile(model, dynamic=False)
        torch._dynamo.config.recompile_limit = 16
    def inputs(size):
        return tuple(t.to(device) for t in example_inputs(size))
    with torch.no_grad():
        same = all(torch.allclose(compiled(*inputs(s)), model(*inputs(s)), atol=1e-3) for s in sizes)
    compile_stack = [name for name in ("torch._dynamo", "torch._inductor") if name in sys.modules]
    from torch._dynamo.utils import counters
    print(json.dumps({"same": same, **counters["inductor"], **counters["aot_autograd"],
                      "frames": counters["stats"]["unique_graphs"], "compile_stack": compile_stack}))
    """
)


def write_serve_script(folder: Path) -> Path:
    script = folder / "serve.py"
    script.write_text(SERVE)
    return script


def serve_counters(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def store_leftovers(store: Path) -> list[str]:
    """Entries and staging files a failed command must not leave behind."""
    found = []
    for folder in ("entries", "tmp"):
        if (store / folder).is_dir():
            found += [f"{folder}/{p.name}" for p in (store / folder).iterdir()]
    return found


@functools.cache
def cpu_fingerprint() -> dict:
    """This machine's CPU fingerprint, as an entry compiled here would carry it."""
    from ccache_cli.in_program.fingerprint import entry_fingerprint

    return entry_fingerprint(json.loads(machine_fingerprint_json()), "cpu")


def machine_fingerprint_json() -> str:
    """`ccache fingerprint --json`, learned once per run where the controller did (in
    the background: waited for here), else once per process."""
    if FINGERPRINT_ENV not in os.environ:
        learned_file = Path(os.environ.get(FINGERPRINT_FILE_ENV, "/nonexistent"))
        deadline = time.monotonic() + 300
        while FINGERPRINT_FILE_ENV in os.environ and time.monotonic() < deadline:
            if learned_file.is_file():
                os.environ[FINGERPRINT_ENV] = learned_file.read_text()
                return os.environ[FINGERPRINT_ENV]
            if learned_file.with_suffix(".failed").exists():
                break
            time.sleep(0.05)
        learned = ccache("fingerprint", "--json")
        assert learned.returncode == 0, learned.stderr
        os.environ[FINGERPRINT_ENV] = learned.stdout
    return os.environ[FINGERPRINT_ENV]


def make_entry(
    store: Store, name: str, files: dict[str, bytes], fingerprint: dict | None = None, device: str = "cpu"
) -> str:
    """Publish a synthetic entry (no compile): real blobs, a real manifest."""
    import hashlib

    with store.staging() as staging:
        refs = {}
        for path, data in files.items():
            staged = staging / hashlib.sha256(path.encode()).hexdigest()
            staged.write_bytes(data)
            ref = store.stage_blob(staging, staged)
            refs[path] = {"sha256": ref.sha256, "size": ref.size}
        manifest = synthetic_manifest(name, refs, fingerprint or cpu_fingerprint(), device)
        store.publish([parse_manifest(manifest)], staging, {ref["sha256"] for ref in refs.values()})
    return manifest["id"]


def synthetic_manifest(name: str, files: dict[str, dict], fingerprint: dict | None = None, device: str = "cpu") -> dict:
    """A manifest that follows the schema, for entries made without compiling."""
    key = {
        "fingerprint": dict(fingerprint or cpu_fingerprint()),
        "compile": {"device": device, "sizes": [1], "dynamic": False, "mode": "default"},
        "model": {"module": name, "attr": "build", "inputs": f"{name}:example_inputs"},
        "inputs": {},
        "sources": [],
    }
    return {
        "format": 1,
        "id": hash_json(key),
        "name": name,
        "created": "2026-11-22T00:00:00Z",
        "lookup": "0" * 64,
        "key": key,
        "timings": {"sizes": [], "aot": None},
        "aot": {"status": "disabled", "reason": None},
        "files": files,
    }


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder that `build` fills, built once per test run: under pytest-xdist the first
    worker to ask builds it in a folder the run's workers share, and each worker gets its
    own copy (tests write to what fixtures give them)."""
    mine = tmp_path_factory.mktemp(name)
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        build(mine)
        return mine
    shared_root = tmp_path_factory.getbasetemp().parent  # this run's folder, above each worker's
    shared = shared_root / f"shared-{name}"
    with FileLock(str(shared_root / f"shared-{name}.lock")):
        if not (shared_root / f"shared-{name}.done").exists():
            shutil.rmtree(shared, ignore_errors=True)
            shared.mkdir()
            build(shared)
            (shared_root / f"shared-{name}.done").touch()
    shutil.copytree(shared, mine, symlinks=True, dirs_exist_ok=True)
    return mine


@pytest.fixture(scope="session")
def example_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding the bundled example compiled for 1 and 8, AOT included."""

    def build(folder: Path) -> None:
        result = ccache("precompile", EXAMPLE, "--sizes", "1,8", store=folder / "store")
        assert result.returncode == 0, result.stderr

    return built_once(tmp_path_factory, "example", build) / "store"


@pytest.fixture(scope="session")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """tests/models/small.py precompiled for size 2 without AOT (`models`, a copy of
    tests/models, is where it was precompiled from), and how long that took (s)."""

    def build(folder: Path) -> None:
        shutil.copytree(MODELS, folder / "models")
        started = time.monotonic()
        result = ccache(*SMALL_PRECOMPILE, store=folder / "store", cwd=folder / "models")
        assert result.returncode == 0, result.stderr
        (folder / "seconds").write_text(str(time.monotonic() - started))

    folder = built_once(tmp_path_factory, "small", build)
    return {"store": folder / "store", "models": folder / "models", "seconds": float((folder / "seconds").read_text())}


SMALL_PRECOMPILE = ("precompile", "small.py", "--sizes", "2", "--no-aot")


@pytest.fixture(scope="session")
def two_files_stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-file model in `code/` precompiled for size 2 (store `one`) and sizes 2,4
    (store `two`), beside an untraced file of the same folder."""

    def build(root: Path) -> None:
        shutil.copytree(MODELS / "two_files", root / "code")
        (root / "code" / "unused.py").write_text("VALUE = 1\n")
        for store, sizes in (("one", "2"), ("two", "2,4")):
            model = str(root / "code" / "model.py")
            result = ccache("precompile", model, "--sizes", sizes, "--no-aot", store=root / store, cwd=root)
            assert result.returncode == 0, result.stderr

    return built_once(tmp_path_factory, "two-files", build)


@pytest.fixture(scope="session")
def machine_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This machine's fingerprint as `ccache fingerprint --json` writes it, in a file."""
    target = tmp_path_factory.mktemp("fingerprint") / "fingerprint.json"
    target.write_text(machine_fingerprint_json())
    return target


@pytest.fixture(scope="session")
def example_entry(example_store: Path) -> dict:
    entries = ccache_json("inspect", store=example_store)["entries"]
    assert len(entries) == 1
    return entries[0]


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A private copy of the test models, so a test may move or edit them."""
    target = tmp_path / "models"
    shutil.copytree(MODELS, target)
    return target


def framed_archive(
    members: list[tuple[tarfile.TarInfo, bytes | None]], trailing: bytes = b"", groups_at: tuple[int, ...] = (2, 3)
) -> bytes:
    """A tar stream in pack's framed layout: a new group at each member index in
    `groups_at` (by default: the head's two members, files.json, then the rest)."""
    raw = io.BytesIO()
    cuts = [0]
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (info, data) in enumerate(members):
            if i in groups_at:
                cuts.append(tar.offset)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    data = raw.getvalue() + trailing
    out = io.BytesIO()
    frames = FrameWriter(out, level=3)
    for start, end in zip(cuts, [*cuts[1:], len(data)]):
        for at in range(start, max(end, start + 1), FRAME_SIZE):
            frames.write(data[at : min(at + FRAME_SIZE, end)], starts_group=at == start)
    return out.getvalue()


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (the store lock aside) and its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def regular(name: str, data: bytes, size: int | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data) if size is None else size
    return info, data


def head_members(manifests: list[dict], version: int = 4) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The head members pack writes for these manifests (each as given, checked or not)."""
    refs = {ref["sha256"]: ref["size"] for m in manifests for ref in m["files"].values()}
    index = {
        "format": version,
        "entries": [{k: v for k, v in m.items() if k != "files"} for m in manifests],
        "artifacts": {m["id"]: [] for m in manifests},
        "digests": {m["id"]: hash_json(m) for m in manifests},
    }
    listed = "".join(f"{sha256} {size}\n" for sha256, size in sorted(refs.items()))
    files = {"files": {m["id"]: m["files"] for m in manifests}}
    return [
        regular("index.json", json.dumps(index).encode()),
        regular("blobs.txt", listed.encode()),
        regular("files.json", json.dumps(files).encode()),
    ]


@contextlib.contextmanager
def small_tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `folder` with `options` (its size, its inodes) for as long as the
    block runs; the test is skipped where none can be mounted (not root, no tmpfs)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
