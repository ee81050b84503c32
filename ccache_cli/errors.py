"""The exceptions the core raises, and the exit codes. The CLI turns each exception
into one line on stderr and its exit code: FAILED when an operation failed or a check
did not pass, BAD_INPUT for bad usage or bad input."""

from __future__ import annotations

import enum


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
