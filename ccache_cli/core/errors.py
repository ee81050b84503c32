"""The exceptions the core raises. The CLI turns each into one line on stderr and
its exit code: 1 when an operation failed, 2 for bad usage or bad input."""

from __future__ import annotations


class CcacheError(Exception):
    """Base of every error ccache-cli reports to a user."""

    exit_code = 1


class BadInputError(CcacheError):
    """The user asked for something that cannot be done as asked (exit 2)."""

    exit_code = 2


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


class StoreError(CcacheError):
    """The store cannot be read or written."""


class CompileError(CcacheError):
    """The model's build function or its compilation failed."""
