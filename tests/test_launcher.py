"""`ccache` as a compiler launcher (cli/launcher.py): build tools run whatever `ccache`
is first on PATH. With ccache-cli's first, a compiler's command line goes to Debian's
ccache where it is installed, else straight to the compiler; its output and exit code
untouched. Real compilers, a real CMake project, torch's own `load_inline`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent  # ccache-cli's `ccache` and `ccache-cli` scripts
OURS = BIN / "ccache"
COMPILER_CACHE = shutil.which("ccache", path="/usr/bin")
NO_COMPILER_CACHE = "needs Debian's ccache in /usr/bin (apt-get install ccache; .ci/run installs it)"


def run(args: list[str], tmp_path: Path, with_compiler_cache: bool) -> subprocess.CompletedProcess[str]:
    """`args` with ccache-cli's scripts first on PATH, and Debian's ccache after them or not at all."""
    tools = [str(BIN), "/usr/bin", "/bin"] if with_compiler_cache else [str(BIN), str(_bin_without_ccache(tmp_path))]
    env = {**os.environ, "PATH": os.pathsep.join(tools), "CCACHE_DIR": str(tmp_path / "ccache-dir")}
    return subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)


def _bin_without_ccache(tmp_path: Path) -> Path:
    """A folder of links to what a build needs from /usr/bin, less ccache."""
    folder = tmp_path / "usr-bin"
    if not folder.exists():
        folder.mkdir()
        for name in ("gcc", "cc", "g++", "c++", "as", "ld", "sh", "make", "cmake", "ninja", "cpp", "collect2"):
            found = shutil.which(name, path="/usr/bin:/bin")
            if found:
                os.symlink(found, folder / name)
    return folder


@pytest.mark.parametrize("with_compiler_cache", [False, True])
def test_a_compile_through_ccache_gives_the_compiler_s_result(tmp_path: Path, with_compiler_cache: bool) -> None:
    if with_compiler_cache and COMPILER_CACHE is None:
        pytest.skip(NO_COMPILER_CACHE)
    (tmp_path / "ok.c").write_text("int main(void) { return 0; }\n")
    (tmp_path / "bad.c").write_text("int main(void) { return missing; }\n")
    built = run([str(OURS), "gcc", "-c", "ok.c", "-o", "ok.o"], tmp_path, with_compiler_cache)
    assert built.returncode == 0 and (tmp_path / "ok.o").is_file(), built.stderr
    failed = run([str(OURS), "gcc", "-c", "bad.c", "-o", "bad.o"], tmp_path, with_compiler_cache)
    assert failed.returncode == 1 and "'missing' undeclared" in failed.stderr.replace("‘", "'").replace("’", "'")
    assert "No such command" not in failed.stderr


def test_compiler_cache_options_reach_debian_s_ccache(tmp_path: Path) -> None:
    if COMPILER_CACHE is None:
        pytest.skip(NO_COMPILER_CACHE)
    (tmp_path / "ok.c").write_text("int main(void) { return 0; }\n")
    for _ in range(2):
        assert run([str(OURS), "gcc", "-c", "ok.c", "-o", "ok.o"], tmp_path, True).returncode == 0
    stats = run([str(OURS), "-s"], tmp_path, True)
    assert stats.returncode == 0 and "Hits:" in stats.stdout and "1 /" in stats.stdout, stats.stdout
    assert run([str(OURS), "-M", "5G"], tmp_path, True).returncode == 0
    assert "max_size = 5.0G" in run([str(OURS), "-p"], tmp_path, True).stdout
    version = run([str(OURS), "--version"], tmp_path, True)
    assert version.stdout.startswith("ccache version"), version.stdout
    # Its own name never hands over.
    assert run([str(BIN / "ccache-cli"), "--version"], tmp_path, True).stdout.startswith("ccache-cli ")


def test_without_a_compiler_cache_its_options_say_what_this_ccache_is(tmp_path: Path) -> None:
    result = run([str(OURS), "-s"], tmp_path, False)
    assert result.returncode == 2 and "this `ccache` is ccache-cli" in result.stderr, result.stderr
    assert run([str(OURS), "--version"], tmp_path, False).stdout.startswith("ccache-cli ")
    assert run([str(OURS), "gc", "--help"], tmp_path, False).returncode == 0  # its own commands stay its own


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake (apt-get install cmake)")
@pytest.mark.extended
@pytest.mark.parametrize("with_compiler_cache", [False, True])
def test_a_cmake_project_with_ccache_as_its_compiler_launcher(tmp_path: Path, with_compiler_cache: bool) -> None:
    if with_compiler_cache and COMPILER_CACHE is None:
        pytest.skip(NO_COMPILER_CACHE)
    source = tmp_path / "project"
    source.mkdir()
    (source / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16)\nproject(hello C)\nadd_executable(hello main.c)\n"
    )
    (source / "main.c").write_text('#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n')
    configure = ["cmake", "-S", str(source), "-B", str(tmp_path / "build"), "-DCMAKE_C_COMPILER_LAUNCHER=ccache"]
    assert run(configure, tmp_path, with_compiler_cache).returncode == 0
    built = run(["cmake", "--build", str(tmp_path / "build")], tmp_path, with_compiler_cache)
    assert built.returncode == 0, built.stdout + built.stderr
    assert subprocess.run([str(tmp_path / "build" / "hello")], capture_output=True, text=True).stdout == "hello\n"


@pytest.mark.slow
@pytest.mark.extended
def test_torch_load_inline_builds_with_ccache_cli_first_on_path(tmp_path: Path) -> None:
    """torch.utils.cpp_extension puts `shutil.which("ccache")` in front of the compiler."""
    program = Path(__file__).parent / "programs" / "inline_extension.py"
    env_path = os.pathsep.join([str(BIN), str(_bin_without_ccache(tmp_path))])
    result = subprocess.run(
        [sys.executable, str(program)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PATH": env_path, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"result": [3.0, 3.0]' in result.stdout
    assert "ccache " in (tmp_path / "ext" / "ccache_inline_probe" / "build.ninja").read_text()  # it went through ours


def test_ccache_cli_s_own_command_lines_are_never_handed_over(tmp_path: Path) -> None:
    """`--store=/path` holds a path separator, like a compiler's path; `run` takes the
    program's own options after it."""
    store = tmp_path / "store"
    listed = run([str(OURS), f"--store={store}", "inspect", "--json"], tmp_path, COMPILER_CACHE is not None)
    assert listed.returncode == 0 and '"entries": []' in listed.stdout, listed.stderr
    ran = run([str(OURS), f"--store={store}", "run", "true", "--store", "x"], tmp_path, False)
    assert "--store goes before the command" not in ran.stderr
