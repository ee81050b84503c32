"""What a size's stored code assumes of the program that runs it, as a manifest records
it (`assumptions` in manifest.py; key/assumptions.py says what each check means and
checks them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Assumption:
    """One thing a size's stored code assumes of the program that runs it
    (key/assumptions.py says what each check means)."""

    check: str  # one of schema.ASSUMPTION_CHECKS
    path: str  # where the value is read: Dynamo's source expression, a module:qualname (code), a torch state name
    expected: Any  # JSON: what must hold there
    guard: str  # the Dynamo guard it came from ("" for code and torch_state)


@dataclass(frozen=True)
class Frame:
    """The traced forward whose locals (`L`) and globals (`G`) the paths start from."""

    module: str  # its globals' module
    qualname: str  # its code's qualified name


@dataclass(frozen=True)
class SizeAssumptions:
    """What one size's stored code assumes."""

    frame: Frame
    assumptions: tuple[Assumption, ...]
    unserialized: int  # how many of them aot_compile's own guards drop (global, or a kind it cannot save)

    def counts(self) -> dict[str, int]:
        counted: dict[str, int] = {}
        for assumption in self.assumptions:
            counted[assumption.check] = counted.get(assumption.check, 0) + 1
        return counted

    def to_json(self) -> dict[str, Any]:
        return {
            "frame": {"module": self.frame.module, "qualname": self.frame.qualname},
            "assumptions": [[a.check, a.path, a.expected, a.guard] for a in self.assumptions],
            "unserialized": self.unserialized,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> SizeAssumptions:
        frame = document["frame"]
        return cls(
            Frame(frame["module"], frame["qualname"]),
            tuple(Assumption(*row) for row in document["assumptions"]),
            document.get("unserialized", 0),
        )
