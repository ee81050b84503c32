"""`ccache` as a compiler launcher. The name belongs to the C/C++ compiler cache too, and
build systems run whatever `ccache` comes first on PATH: CMake's
`CMAKE_<LANG>_COMPILER_LAUNCHER=ccache`, torch's C++ extension builds (which put
`shutil.which("ccache")` in front of the compiler), Makefiles with `CC="ccache gcc"`.

Invoked as `ccache` (never as `ccache-cli`) with a compiler or an executable path as
its first argument, or a compiler-cache option (`-s`, `-M 5G`, ...), this program hands
the whole command line to the next `ccache` on PATH that is not ccache-cli, or, where
there is none, runs the compiler itself: the output and the exit code are the
compiler's. Decided from argv (and PATH), before anything else is imported.
"""

from __future__ import annotations

import os
import re
import sys
from typing import NoReturn

# A compiler's name, as build systems pass it: gcc, g++-13, x86_64-linux-gnu-gcc, clang++, nvcc, ...
_COMPILER = re.compile(
    r"(?:[\w.]+-)*(?:gcc|g\+\+|cc|c\+\+|clang|clang\+\+|clang-cl|cl|nvcc|hipcc|icc|icpc|icx|icpx|gfortran|ld)"
    r"(?:-[0-9][0-9.]*)?(?:\.exe)?"
)
# The compiler cache's options (ccache 4): none is a ccache-cli option.
_CACHE_OPTIONS = {
    "-s", "--show-stats", "-z", "--zero-stats", "-C", "--clear", "-c", "--cleanup", "-M", "--max-size",
    "-F", "--max-files", "-p", "--show-config", "-k", "--get-config", "-o", "--set-config", "-x",
    "--show-compression", "-X", "--recompress", "-d", "--dir", "--evict-older-than", "--evict-namespace",
    "--print-stats", "--show-log-stats", "--checksum-file", "--hash-file", "--inspect", "--trim-dir",
    "--trim-max-size", "--config-path", "-V", "--version",
}  # fmt: skip
_WITH_VALUE = ("-M", "-F", "-o", "-k", "-d", "-X")  # also written joined: -M5G
_HANDED_OVER_ENV = "CCACHE_CLI_HANDED_OVER"  # set for the compiler cache: a loop back here runs the compiler


def maybe_hand_over(argv: list[str]) -> None:
    """Hand `argv` (sys.argv) over to the compiler cache or the compiler, and never
    return, where this is a compiler launcher's command line; else return."""
    if os.path.basename(argv[0]) != "ccache" or len(argv) < 2:
        return
    first = argv[1]
    is_option = first.partition("=")[0] in _CACHE_OPTIONS or (first[:2] in _WITH_VALUE and len(first) > 2)
    is_compiler = not first.startswith("-") and (os.sep in first or _COMPILER.fullmatch(first) is not None)
    if not (is_option or is_compiler):
        return
    other = None if os.environ.get(_HANDED_OVER_ENV) else compiler_cache(argv[0])
    if first in ("-V", "--version") and other is None:
        return  # ccache-cli's own version
    if other is not None:
        _exec(other, ["ccache", *argv[1:]], {**os.environ, _HANDED_OVER_ENV: "1"})
    if is_option:
        sys.stderr.write(
            f"ccache: error: `ccache {first}` is an option of the C/C++ compiler cache, which is not installed "
            "here; this `ccache` is ccache-cli (torch.compile caches: `ccache-cli --help`)\n"
        )
        sys.exit(2)
    _exec(first, argv[1:], dict(os.environ))


def compiler_cache(ours: str) -> str | None:
    """The first `ccache` on PATH that is not ccache-cli (this script, or another
    install's), or None."""
    mine = os.path.realpath(ours) if os.sep in ours else None
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(folder or os.curdir, "ccache")
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        real = os.path.realpath(candidate)
        if real != mine and not _is_ccache_cli(real):
            return candidate
    return None


def _is_ccache_cli(path: str) -> bool:
    """Whether an executable is a ccache-cli entry script (a Python script naming it)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return head.startswith(b"#!") and b"ccache_cli" in head


def _exec(program: str, args: list[str], env: dict[str, str]) -> NoReturn:
    try:
        if os.sep in program:
            os.execve(program, args, env)
        os.execvpe(program, args, env)
    except OSError as exc:
        sys.stderr.write(f"ccache: error: cannot run {program}: {exc.strerror}\n")
        sys.exit(127 if isinstance(exc, FileNotFoundError) else 126)
