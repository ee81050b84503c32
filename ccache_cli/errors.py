"""The exceptions the core raises, and the exit codes. The CLI turns each exception
into one line on stderr and its exit code: FAILED when an operation failed or a check
did not pass, BAD_INPUT for bad usage or bad input. Worker processes report theirs to
the process that started them as a `ReportedError`."""

from __future__ import annotations

import enum
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1  # the operation failed, or a check did not pass
    BAD_INPUT = 2  # bad usage or bad input: nothing was changed
    INTERRUPTED = 130  # Ctrl-C


class CcacheError(Exception):
    """Base of every error ccache-cli reports to a user."""

    exit_code = ExitCode.FAILED


class BadInputError(CcacheError):
    """The user asked for something that cannot be done as asked (exit 2)."""

    exit_code = ExitCode.BAD_INPUT


class ModelSpecError(BadInputError):
    """A MODEL argument that does not name a loadable model or its inputs."""


class SizesError(BadInputError):
    """A malformed --sizes list."""


class DeviceError(BadInputError):
    """A --device this machine does not have."""


class EntryNotFoundError(BadInputError):
    """No stored entry matches the id prefix or name given."""


class ArchiveError(BadInputError):
    """An archive that is not one this tool can read, or that fails a check."""


class RegistryError(CcacheError):
    """A registry that cannot be reached, refuses the credentials, or fails a transfer."""


class StoreError(CcacheError):
    """The store cannot be read or written."""


class UnsafeFolderError(CcacheError):
    """A folder ccache would reuse for code that programs load (views) that another user
    could write to: a link, someone else's, or writable by others."""


class CompileError(CcacheError):
    """The model's build function or its compilation failed."""


@dataclass(frozen=True)
class ReportedError:
    """An error as a worker process reports it to the process that started it (the
    compile, verify --run, unpack and download workers alike), in JSON; `raised()` is
    the exception again, in that process, with its class and so its exit code."""

    kind: str  # the name of a class of this module
    message: str
    traceback: str = ""  # where one helps (a compile that failed inside torch)

    @classmethod
    def of(cls, exc: CcacheError, with_traceback: bool = False) -> ReportedError:
        return cls(type(exc).__name__, str(exc), traceback.format_exc() if with_traceback else "")

    @property
    def transfer(self) -> bool:
        """The network's: what was verified before it is worth keeping."""
        return self.kind == RegistryError.__name__

    def raised(self) -> CcacheError:
        found = globals().get(self.kind)
        kind = found if isinstance(found, type) and issubclass(found, CcacheError) else CcacheError
        return kind(self.message)

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message, **({"traceback": self.traceback} if self.traceback else {})}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ReportedError:
        return cls(str(document["kind"]), str(document["message"]), str(document.get("traceback", "")))
