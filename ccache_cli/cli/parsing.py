"""The options whose values are read from text, each refused in one line that names
its flag (BadInputError subclasses: exit code 2): `--sizes`, `--devices`,
`--max-size`, `--older-than`. The core takes what they return."""

from __future__ import annotations

import datetime as dt
import re

from ccache_cli.errors import BadInputError, DeviceError, SizesError

MAX_SIZE = 2**31 - 1  # larger is a typo, not a batch
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_AGE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_sizes(text: str) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """`1,8,1-64` -> ((1, 8), ((1, 64),)): static sizes, and ranges that one package with a
    dynamic batch dimension serves whole; each once, in the order given."""
    if not text.strip():
        raise SizesError("--sizes is empty: give batch sizes like 1,8,32 or a range like 1-64")
    sizes: list[int] = []
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise SizesError(f"--sizes {text!r} has an empty item: give batch sizes like 1,8,32")
        low, dash, high = part.partition("-")
        bounds = (low, high) if dash and low else (part,)
        if not all(bound.isascii() and bound.isdigit() for bound in bounds):
            raise SizesError(f"--sizes {text!r}: {part!r} is not a batch size or a range like 1-64")
        numbers = tuple(int(bound) for bound in bounds)
        if not all(0 < number <= MAX_SIZE for number in numbers):
            raise SizesError(f"--sizes {text!r}: {part!r} is not within batch sizes 1 to {MAX_SIZE}")
        if len(numbers) == 1:
            if numbers[0] not in sizes:
                sizes.append(numbers[0])
            continue
        if numbers[0] >= numbers[1]:
            raise SizesError(f"--sizes {text!r}: the range {part!r} must go from a smaller size to a larger one")
        if numbers not in ranges:
            ranges.append((numbers[0], numbers[1]))
    return tuple(sizes), tuple(ranges)


def parse_devices(text: str) -> tuple[int, ...]:
    """`0,1,3` -> (0, 1, 3): GPU indices, each once."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise DeviceError(f"--devices {text!r}: give GPU indices like 0,1,2,3")
    return tuple(dict.fromkeys(int(part) for part in parts))


def parse_size(text: str) -> int:
    """`500M`, `2G`, `1.5GiB`, `1000` (bytes); binary units."""
    match = _SIZE.match(text)
    if match is None:
        raise BadInputError(f"--max-size {text!r}: give a size such as 500M or 2G")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_age(text: str) -> dt.timedelta:
    """`30d`, `12h`, `2w`, `90m`, `45s`."""
    match = _AGE.match(text)
    if match is None:
        raise BadInputError(f"--older-than {text!r}: give an age such as 30d, 12h or 2w")
    return dt.timedelta(seconds=float(match.group(1)) * _AGE_UNITS[match.group(2).lower()])
