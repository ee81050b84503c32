"""Unit tests of the pure parsers behind command-line options."""

from __future__ import annotations

import datetime as dt

import pytest

from ccache_cli.cli.main import plain_command
from ccache_cli.cli.parsing import MAX_SIZE, parse_age, parse_devices, parse_size, parse_sizes
from ccache_cli.cli.render import human_bytes
from ccache_cli.errors import BadInputError, DeviceError, ExitCode, SizesError
from ccache_cli.precompile.precompile import check_device


@pytest.mark.parametrize(
    ("text", "sizes"),
    [
        ("1,8,32", ((1, 8, 32), ())),
        (" 4 , 2 ", ((4, 2), ())),
        ("8,8,1", ((8, 1), ())),
        (str(MAX_SIZE), ((MAX_SIZE,), ())),
        ("1-64", ((), ((1, 64),))),
        ("1,8, 2-256 ,1-64,2-256", ((1, 8), ((2, 256), (1, 64)))),
    ],
)
def test_parse_sizes_keeps_order_and_drops_repeats(text: str, sizes: tuple) -> None:
    assert parse_sizes(text) == sizes


@pytest.mark.parametrize(
    "text",
    ["", " ", "1,,8", "0", "-1", "1.5", "eight", "1;8", str(MAX_SIZE + 1), "\u0661,\u0668", "2\u00b2", "\uff18"]
    + ["1-", "-8", "8-1", "4-4", "0-8", "1-2-3", "1 - 8x", f"1-{MAX_SIZE + 1}"],
)
def test_parse_sizes_refuses_what_is_not_a_list_of_batch_sizes(text: str) -> None:
    with pytest.raises(SizesError) as caught:
        parse_sizes(text)
    assert caught.value.exit_code == ExitCode.BAD_INPUT
    assert "--sizes" in str(caught.value)


def test_parse_devices_and_check_device() -> None:
    assert parse_devices("0,1,1,3") == (0, 1, 3)
    assert check_device("cuda") == "cuda:0"
    assert check_device("cuda:3") == "cuda:3"
    assert check_device("cpu") == "cpu"
    for bad in ("0,a", "-1", "", "\u0661", "1\u00b2"):
        with pytest.raises(DeviceError):
            parse_devices(bad)
    for bad in ("gpu", "cuda:x", "tpu:0"):
        with pytest.raises(DeviceError):
            check_device(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1000", 1000), ("500M", 500 << 20), ("2G", 2 << 30), ("1.5GiB", int(1.5 * (1 << 30))), ("10k", 10 << 10)],
)
def test_parse_size_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "age"),
    [
        ("30d", dt.timedelta(days=30)),
        ("12h", dt.timedelta(hours=12)),
        ("2w", dt.timedelta(weeks=2)),
        ("90m", dt.timedelta(minutes=90)),
        ("45s", dt.timedelta(seconds=45)),
    ],
)
def test_parse_age_units(text: str, age: dt.timedelta) -> None:
    assert parse_age(text) == age


@pytest.mark.parametrize("parse", [parse_size, parse_age])
@pytest.mark.parametrize("text", ["", "big", "5 parsecs", "-3d", "1e9G"])
def test_size_and_age_refuse_nonsense(parse, text: str) -> None:
    with pytest.raises(BadInputError):
        parse(text)


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(999) == "999 B"
    assert human_bytes(1500) == "1.5 KB"
    assert human_bytes(2_500_000_000) == "2.5 GB"
    assert human_bytes(7 * 10**12) == "7000.0 GB"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "--", "python", "x.py"], ("run", None, False, [], ["python", "x.py"])),
        (["--store", "/s", "-q", "run", "llama", "--", "srv"], ("run", "/s", True, ["llama"], ["srv"])),
        (["--store=/s", "pack", "out.tar.zst", "a", "--json"], ("pack", "/s", False, ["out.tar.zst", "a"], [])),
        (["unpack", "-"], ("unpack", None, False, ["-"], [])),
        (["push", "reg.io/t/c:v1", "a", "b"], ("push", None, False, ["reg.io/t/c:v1", "a", "b"], [])),
        (["-q", "pull", "reg.io/t/c:v1", "--json"], ("pull", None, True, ["reg.io/t/c:v1"], [])),
        (["-q", "env", "a", "--json"], ("env", None, True, ["a"], [])),
        (["--store", "/s", "inspect"], ("inspect", "/s", False, [], [])),
        (["inspect", "--json"], ("inspect", None, False, [], [])),
    ],
)
def test_plain_command_lines_are_recognised(argv: list[str], expected: tuple) -> None:
    plain = plain_command(argv)
    assert plain is not None
    assert (plain.command, plain.store, plain.quiet, plain.args, plain.program) == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--help"],
        ["run", "--capture", "x", "--", "cmd"],
        ["pack", "--sign", "k", "o"],
        ["unpack", "a", "b"],
        ["inspect", "a"],  # one entry, an archive's or a registry's: the app's
        ["inspect", "--insecure"],
        ["env", "--help"],
        ["run", "--"],
        ["pack"],
        ["pull", "reg.io/t/c:v1", "--insecure"],
        ["push", "reg.io/t/c:v1", "--compatible-only"],
        ["pull", "a", "b"],
    ],
)
def test_anything_else_goes_to_the_app(argv: list[str]) -> None:
    assert plain_command(argv) is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("localhost:5000/cache:v1@", "empty digest"),
        ("localhost:99999/x", "port 99999"),
        ("localhost:0/x", "port 0"),
        ("localhost:5000/x@sha256:abc", "digest"),
    ],
)
def test_a_reference_that_would_pull_something_else_is_bad_input(text: str, why: str) -> None:
    from ccache_cli.registry.reference import parse

    with pytest.raises(BadInputError) as caught:
        parse(text)
    assert caught.value.exit_code == ExitCode.BAD_INPUT and why in str(caught.value)
