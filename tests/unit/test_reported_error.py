"""A worker's error, reported in JSON, is raised again in its parent as the same class
(so with the same exit code), whatever the worker."""

from __future__ import annotations

import json

import pytest

from ccache_cli import errors
from ccache_cli.errors import ReportedError


@pytest.mark.parametrize(
    "raised", [errors.ArchiveError("bad member"), errors.RegistryError("cut off"), errors.StoreError("disk full")]
)
def test_a_reported_error_is_raised_again_as_its_class(raised: errors.CcacheError) -> None:
    try:
        raise raised
    except errors.CcacheError as exc:
        report = json.loads(json.dumps(ReportedError.of(exc, with_traceback=True).to_json()))
    again = ReportedError.from_json(report)
    assert type(again.raised()) is type(raised) and str(again.raised()) == str(raised)
    assert again.raised().exit_code == raised.exit_code
    assert again.transfer == isinstance(raised, errors.RegistryError)
    assert "Traceback" in again.traceback


def test_a_kind_that_is_no_error_class_is_a_plain_failure() -> None:
    for kind in ("ExitCode", "ReportedError", "nonsense", "__builtins__"):
        raised = ReportedError(kind, "it broke").raised()
        assert type(raised) is errors.CcacheError and raised.exit_code == 1
