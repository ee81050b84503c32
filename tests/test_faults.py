"""Crashes and races: kill -9 of every writing command at random moments, and writers
racing on one store. After each, the store verifies, gc finds nothing wrong, and the
same command run again succeeds; no process is left behind.

The number of kill trials per command is CCACHE_CLI_KILL_TRIALS (a handful by
default; release checks run 25: see docs/development.md, "Release checks").
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import MODELS, ccache, ccache_json
from helpers.stores import SMALL_PRECOMPILE, make_entry, small_tmpfs

from ccache_cli.store.store import Store

pytestmark = pytest.mark.slow  # real compiles or kill -9 loops

TRIALS = int(os.environ.get("CCACHE_CLI_KILL_TRIALS", "2"))
SEED = int(os.environ.get("CCACHE_CLI_KILL_SEED", "1130"))
NAMES = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")


def synthetic_store(root: Path, blobs_per_entry: int = 400, seed: int = 7) -> Store:
    """Six entries of a few hundred random blobs each, neighbours sharing a third of theirs."""
    rng = random.Random(seed)
    store = Store(root)
    shared = [rng.randbytes(rng.randint(500, 40_000)) for _ in range(blobs_per_entry * len(NAMES))]
    for at, name in enumerate(NAMES):
        start = at * blobs_per_entry * 2 // 3
        files = {f"inductor/{name}/{i:04d}": data for i, data in enumerate(shared[start : start + blobs_per_entry])}
        make_entry(store, name, files)
    return store


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A source store, archives of overlapping entry sets, and a packed copy of everything."""
    folder = tmp_path_factory.mktemp("faults")
    store = synthetic_store(folder / "source")
    archives = {}
    for name, entries in (
        ("all", []),
        ("abc", ["alpha", "beta", "gamma"]),
        ("cde", ["gamma", "delta", "epsilon"]),
        ("efa", ["epsilon", "zeta", "alpha"]),
    ):
        archives[name] = folder / f"{name}.tar.zst"
        result = ccache("pack", str(archives[name]), *entries, store=store.root)
        assert result.returncode == 0, result.stderr
    return {"store": store.root, "archives": archives, "folder": folder}


Clean = Callable[..., None]


@pytest.fixture
def clean(machine_target: Path) -> Clean:
    """A check that a store is clean: `clean(store, cwd=None)`."""
    return functools.partial(_clean, target=machine_target)


def _clean(store: Path, cwd: Path | None = None, *, target: Path) -> None:
    """The store verifies, gc sees nothing wrong, and no process works on it any more."""
    deadline = time.monotonic() + 5
    while (strays := _processes_on(store)) and time.monotonic() < deadline:
        time.sleep(0.05)  # a worker killed with its parent may take a moment to go
    assert not strays, f"processes left behind: {strays}"
    if (store / "entries").is_dir() and any((store / "entries").iterdir()):
        # Against this machine's fingerprint, written once: a fresh store would have
        # each verify import torch to learn it (the checks here are integrity's).
        verified = ccache("verify", "--json", "--target", str(target), store=store, cwd=cwd)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    plan = ccache("gc", "--dry-run", "--json", store=store)
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["warnings"] == [] and "Traceback" not in plan.stderr
    # The index (store/index.py) neither hides nor invents an entry, whatever was killed.
    listed = {entry["id"] for entry in ccache_json("inspect", store=store)["entries"]}
    folders = set(os.listdir(store / "entries")) if (store / "entries").is_dir() else set()
    assert listed == folders


def _processes_on(store: Path) -> list[str]:
    """Command lines of running processes (not this one) that name the store."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if int(pid) != os.getpid() and str(store) in cmdline and state != "Z":
            found.append(f"{pid}: {cmdline[:200]}")
    return found


def killed_after(args: list[str], store: Path, delay: float, cwd: Path | None = None) -> int | None:
    """Run the CLI, kill -9 it after `delay` seconds; its exit code if it ended first."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ccache_cli", "--store", str(store), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=cwd,
    )
    try:
        return process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return None


def duration(args: list[str], store: Path, cwd: Path | None = None) -> float:
    started = time.monotonic()
    result = ccache(*args, store=store, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return time.monotonic() - started


# unpack's in every run; the other writers' in the extended tier (and at length before a release).
@pytest.mark.parametrize(
    "command",
    [
        "unpack",
        "unpack into a partial store",
        *(pytest.param(c, marks=pytest.mark.extended) for c in ("pack", "gc", "rm")),
    ],
)
def test_kill_9_at_random_moments(command: str, source: dict, tmp_path: Path, clean: Clean) -> None:
    rng = random.Random(f"{SEED}-{command}")
    archives = source["archives"]

    def prepare(target: Path) -> list[str]:
        """Lay out the store the command starts from; the command's arguments."""
        if command == "unpack into a partial store":
            assert ccache("unpack", str(archives["abc"]), store=target).returncode == 0
            return ["unpack", str(archives["all"])]
        if command == "unpack":
            return ["unpack", str(archives["all"])]
        shutil.copytree(source["store"], target)
        if command == "pack":
            return ["pack", str(tmp_path / "out.tar.zst")]
        if command == "gc":
            return ["gc", "--max-size", "20M"]
        return ["rm", "alpha", "gamma"]

    timing = tmp_path / "timing"
    longest = duration(prepare(timing), timing)
    for trial in range(TRIALS):
        target = tmp_path / f"store-{trial}"
        args = prepare(target)
        ended = killed_after(args, target, rng.uniform(0.05, longest))
        clean(target)
        if command == "pack":
            out = tmp_path / "out.tar.zst"
            if out.exists():  # only ever a whole archive
                assert ccache("verify", str(out), store=target).returncode == 0
        again = ccache(*args, store=target)
        if command == "rm" and again.returncode == 2:
            # The killed rm had removed some of its entries: removing the rest succeeds.
            assert "no entry matches" in again.stderr, again.stderr
            left = [e["name"] for e in ccache_json("inspect", store=target)["entries"] if e["name"] in args]
            assert not left or ccache("rm", *left, store=target).returncode == 0
        else:
            assert again.returncode == 0, (trial, ended, again.stderr)
        clean(target)
        if command == "pack":
            assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
            assert ccache("verify", str(tmp_path / "out.tar.zst"), store=target).returncode == 0
        if command.startswith("unpack"):
            assert len(ccache_json("inspect", store=target)["entries"]) == len(NAMES)
        shutil.rmtree(target)


@pytest.mark.extended
def test_kill_9_of_precompile(small_store: dict, tmp_path: Path, clean: Clean) -> None:
    rng = random.Random(f"{SEED}-precompile")
    args = list(SMALL_PRECOMPILE)
    longest = small_store["seconds"]  # the same precompile, whole
    for trial in range(max(1, TRIALS // 3)):  # each costs two compiles
        target = tmp_path / f"store-{trial}"
        killed_after(args, target, rng.uniform(0.2, longest), cwd=MODELS)
        clean(target, cwd=MODELS)
        again = ccache(*args, store=target, cwd=MODELS)
        assert again.returncode == 0, again.stderr
        clean(target, cwd=MODELS)
        assert len(ccache_json("inspect", store=target)["entries"]) == 1
        assert not [p for p in (target / "tmp").iterdir()]  # the killed one's staging was reclaimed


KILLED_WHILE_DISCARDING = """
import os, shutil, signal, sys
from collections.abc import Callable
from pathlib import Path
from ccache_cli.store.store import STAGING_OWNER, Store


def killed_midway(path, *args, **kwargs):  # rmtree may take the owner file first
    for found in Path(path).rglob(STAGING_OWNER):
        found.unlink()
    os.kill(os.getpid(), signal.SIGKILL)

shutil.rmtree = killed_midway
with Store(Path(sys.argv[1])).staging() as staging:
    (staging / "kernel.so").write_bytes(b"x" * 5000)
"""


def test_a_writer_killed_while_it_removes_its_staging_leaves_nothing_the_next_one_keeps(tmp_path: Path) -> None:
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_DISCARDING, str(tmp_path)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(list((tmp_path / "tmp").iterdir())) == 1
    with Store(tmp_path).staging():
        pass
    assert list((tmp_path / "tmp").iterdir()) == []


def test_writers_racing_on_one_store(source: dict, tmp_path: Path, clean: Clean) -> None:
    """Eight processes at once, for several rounds: unpacks of overlapping archives, rm and
    gc. Each succeeds or fails for a reason of its own; the store verifies at the end."""
    archives = source["archives"]
    target = tmp_path / "store"
    own_reasons = ("no entry matches",)  # rm of an entry another process removed first
    for round_ in range(3):
        commands = [
            ["unpack", str(archives["abc"])],
            ["unpack", str(archives["cde"])],
            ["unpack", str(archives["efa"])],
            ["unpack", str(archives["all"])],
            ["rm", NAMES[round_]],
            ["rm", NAMES[round_ + 2]],
            ["gc", "--max-size", "15M"],
            ["gc"],
        ]
        random.Random(round_).shuffle(commands)
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "ccache_cli", "--store", str(target), *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in commands
        ]
        for args, process in zip(commands, processes):
            out, err = process.communicate(timeout=300)
            assert "Traceback" not in err and "No such file" not in err and "is missing" not in err, (args, err)
            if process.returncode != 0:
                assert args[0] == "rm" and any(reason in err for reason in own_reasons), (args, process.returncode, err)
        clean(target)
    assert ccache("unpack", str(archives["all"]), store=target).returncode == 0
    clean(target)
    assert len(ccache_json("inspect", store=target)["entries"]) == len(NAMES)


def test_a_writer_waiting_for_the_lock_says_who_holds_it(source: dict, tmp_path: Path) -> None:
    target = tmp_path / "store"
    shutil.copytree(source["store"], target)
    holder = subprocess.Popen(  # holds the lock until a line comes on its stdin
        [
            sys.executable,
            "-c",
            (
                "import sys\nfrom ccache_cli.store.store import Store\n"
                "with Store(sys.argv[1]).lock():\n    print('held', flush=True)\n    sys.stdin.readline()\n"
            ),
            str(target),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None and holder.stdout.readline().strip() == "held"
    writer = subprocess.Popen(
        [sys.executable, "-m", "ccache_cli", "--store", str(target), "gc"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert writer.stderr is not None
    said = []
    for line in writer.stderr:  # until it says it waits, however long its start took
        said.append(line)
        if "waiting for the lock" in line:
            break
    holder.stdin.write("release\n")
    holder.stdin.close()
    holder.wait(timeout=60)
    _, rest = writer.communicate(timeout=600)
    stderr = "".join(said) + rest
    assert writer.returncode == 0, stderr
    assert f"waiting for the lock of store {target}, held by pid {holder.pid}" in stderr, stderr


def _unpack_into_a_small_store(small: Path, source: dict) -> tuple[Path, list[Path], subprocess.CompletedProcess]:
    """Unpack every entry into a store holding one tiny entry on the small file system
    `small`: the store, what it held before, and unpack's result."""
    store = small / "store"
    make_entry(Store(store), "tiny", {"inductor/fxgraph/t": b"tiny"})
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    return store, before, ccache("unpack", str(source["archives"]["all"]), store=store)


def test_disk_full_is_one_line_and_leaves_nothing(source: dict, tmp_path: Path) -> None:
    """On a file system that fills up: one line saying so, the store as it was, no temp files."""
    with small_tmpfs(tmp_path / "small", "size=4m") as small:
        store, before, result = _unpack_into_a_small_store(small, source)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "no space left on the device of store" in lines[0], result.stderr
        assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
        packed = ccache("pack", str(small / "out.tar.zst"), store=source["store"])
        assert packed.returncode == 1 and len(packed.stderr.strip().splitlines()) == 1, packed.stderr
        assert "No space left on device" in packed.stderr or "no space left" in packed.stderr, packed.stderr
        assert sorted(p.name for p in small.iterdir()) == ["store"]


def test_inodes_running_out_is_the_same_one_line(source: dict, tmp_path: Path) -> None:
    """A file system out of inodes, with room left: unpack says what a full disk says."""
    with small_tmpfs(tmp_path / "few-inodes", "size=64m,nr_inodes=200") as small:
        store, before, result = _unpack_into_a_small_store(small, source)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert "no space left on the device of store" in lines[0] and "nothing was changed" in lines[0], lines[0]
        assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
