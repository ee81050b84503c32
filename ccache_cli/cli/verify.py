"""`ccache verify [ENTRY|ARCHIVE] [--run] [--target FILE] [--json] [--junit FILE]`."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from xml.etree import ElementTree

import typer

from ccache_cli.archive.signing import trusted_keys
from ccache_cli.check import verify as core
from ccache_cli.errors import ExitCode

from .pack import TRUST_OPTION
from .registry import INSECURE_OPTION
from .render import err, out, print_columns, show


def command(
    ctx: typer.Context,
    ref: str | None = typer.Argument(
        None,
        metavar="[ENTRY|ARCHIVE|REF]",
        help="An entry id prefix or name, a .tar.zst archive, or a registry REF (its manifest and index only) [default: every entry]",
    ),
    run: bool = typer.Option(
        False,
        "--run",
        help="Also start each entry in a fresh process: zero misses, zero recompiles, outputs equal to eager",
    ),
    target: Path | None = typer.Option(
        None,
        "--target",
        metavar="FINGERPRINT.json",
        help="Check compatibility against this machine fingerprint (from `ccache fingerprint --json`)",
    ),
    json_output: bool = typer.Option(False, "--json", help="Write only JSON to stdout"),
    junit: Path | None = typer.Option(None, "--junit", metavar="FILE", help="Also write a JUnit XML report"),
    trust: list[Path] | None = TRUST_OPTION,
    insecure: bool = INSECURE_OPTION,
) -> None:
    """Check that entries are intact, fit the target machine and their sources are unchanged; exit 1 if not."""
    # Hashing every blob, and --run's fresh processes, take a while: say so on a terminal.
    with (
        err.status("verifying (--run starts a process per entry)" if run else "verifying")
        if err.is_terminal
        else nullcontext()
    ):
        report = core.verify(ctx.obj, ref, target, run, trusted_keys(trust or []), insecure)
    if junit is not None:
        junit.write_bytes(junit_xml(report))
    show(report, json_output, _print_report)
    if not report.ok:
        raise typer.Exit(ExitCode.FAILED)


def _print_report(report: core.VerifyReport) -> None:
    out.print(f"ccache verify against {report.target}", markup=False)
    print_columns(
        ("entry", "check", "result", "detail"),
        [
            (check.entry[:12], check.check, ("pass", "green") if check.ok else ("FAIL", "red"), check.detail)
            for check in report.checks
        ],
    )
    failed = sum(not check.ok for check in report.checks)
    out.print(f"{len(report.checks) - failed} passed, {failed} failed")


def junit_xml(report: core.VerifyReport) -> bytes:
    """`--junit`: each check a test case of one suite, as CI systems show them."""
    suite = ElementTree.Element(
        "testsuite",
        name="ccache verify",
        tests=str(len(report.checks)),
        failures=str(sum(not check.ok for check in report.checks)),
    )
    for check in report.checks:
        case = ElementTree.SubElement(suite, "testcase", classname=f"entry {check.entry[:12]}", name=check.check)
        if check.ok:
            ElementTree.SubElement(case, "system-out").text = check.detail
        else:
            ElementTree.SubElement(case, "failure", message=check.detail).text = check.detail
    root = ElementTree.Element("testsuites")
    root.append(suite)
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
