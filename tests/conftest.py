"""pytest's hooks and the shared fixtures (stores compiled once per run); what the tests
share otherwise is in tests/helpers/."""

from __future__ import annotations

import compileall
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from helpers.cli import (
    EXAMPLE,
    FINGERPRINT_ENV,
    FINGERPRINT_FILE_ENV,
    MODELS,
    ccache,
    ccache_json,
    machine_fingerprint_json,
)
from helpers.stores import SMALL_PRECOMPILE, built_once

import ccache_cli

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


@pytest.fixture(scope="session")
def example_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding the bundled example compiled for 1 and 8, AOT included, its two
    packages built at once in package workers (`--jobs 2`; by default one per 8 cores)."""

    def build(folder: Path) -> None:
        result = ccache("precompile", EXAMPLE, "--sizes", "1,8", "--jobs", "2", store=folder / "store")
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
