"""`ccache env` and `ccache run`: start programs with stored entries active."""

from __future__ import annotations

import sys

import typer

from ccache_cli.errors import BadInputError
from ccache_cli.serve import activation, capture, decisions
from ccache_cli.store.store import Store

from . import lists
from .render import err, human_bytes, show


def env_command(
    ctx: typer.Context,
    entries: list[str] | None = typer.Argument(
        None, metavar="[ENTRY...]", help="Manifest id prefixes or names [default: all that fit this machine]"
    ),
    json_output: bool = typer.Option(False, "--json", help="Write only JSON to stdout"),
) -> None:
    """Print shell exports that make entries active: eval "$(ccache env)". Does not import torch."""
    lists.env(ctx.obj, entries or (), json_output)


def run_command(
    ctx: typer.Context,
    args: list[str] | None = typer.Argument(
        None, metavar="[ENTRY...] -- CMD...", help="Entries [default: all that fit], then the command"
    ),
    capture_name: str | None = typer.Option(
        None, "--capture", metavar="NAME", help="Run CMD on an empty cache and store what it compiles as entry NAME"
    ),
    json_output: bool = typer.Option(
        False, "--json", help="With --capture: write only a JSON summary to stdout (CMD's output goes to stderr)"
    ),
    cache_envs: list[str] = typer.Option(
        [],
        "--cache-env",
        metavar="VAR",
        help="With --capture: also store the cache folder CMD keeps under $VAR, such as TRITON_CACHE_DIR or "
        "TORCH_EXTENSIONS_DIR (vLLM's VLLM_CACHE_ROOT and SGLang's SGLANG_JIT_CACHE_ROOT always are); `run` points VAR at a writable copy",
    ),
    bytecode: bool = typer.Option(
        True,
        "--bytecode/--no-bytecode",
        help="With --capture: also store the .pyc of the modules CMD imported, for images without .pyc files",
    ),
    route: bool = typer.Option(
        True,
        "--route/--no-route",
        help="Serve CMD's own torch.compile calls with the stored AOT code where they fit; with --capture, "
        "store code for its function compiles [also $CCACHE_CLI_ROUTE=0]",
    ),
    guards: str = typer.Option(
        None,
        "--guards",
        metavar="once|every-call",
        help="When stored code's assumptions of the program (attributes, globals, functions) are checked: "
        "on every call, as torch.compile checks its guards, or once per size and model, for programs that "
        "change none of them between calls [default: every-call; also $CCACHE_CLI_GUARDS]",
    ),
) -> None:
    """Run CMD with entries active (or, with --capture, record what it compiles). Does not import torch."""
    store: Store = ctx.obj
    refs, command = _split_command(args or [])
    if not command:
        raise BadInputError("nothing to run: put the command after --, as in `ccache run -- python serve.py`")
    if capture_name is not None:
        if refs:
            raise BadInputError("--capture runs on an empty cache; it takes no ENTRY")
        # With --json, stdout carries only the summary: the command's output goes to stderr.
        result = capture.capture(
            store, capture_name, command, 2 if json_output else None, cache_envs, bytecode, functions=route
        )
        show(result, json_output, _print_capture)
        return
    if cache_envs:
        raise BadInputError("--cache-env goes with --capture: `run` lays out the cache roots an entry stored")
    if guards is not None and guards not in decisions.GUARD_POLICIES:
        raise BadInputError(f"--guards {guards!r}: use one of {', '.join(decisions.GUARD_POLICIES)}")
    active = activation.start(store, refs, route, command, guards)
    lists.warn_replaced(active)
    activation.exec_command(command)


def _print_capture(result: capture.CaptureResult) -> None:
    state = "stored" if result.new else "already stored"
    err.print(
        f"Captured entry {result.entry.short_id} ({result.entry.name}, {state}): {result.files} files, "
        f"{human_bytes(result.entry.bytes)}, {len(result.entry.sources)} traced sources, "
        f"command ran {result.seconds:.1f} s."
    )
    for cache in result.entry.engine_caches():
        version = f" (engine {cache.version})" if cache.version else ""
        err.print(f"  engine cache {cache.var}{version}: {cache.files} files, {human_bytes(cache.bytes)}")
        settings = sorted(result.entry.compile.document.get("engine_settings", {}).get(cache.var, {}))
        if settings:  # the engine hashes them into its cache key: a server must set them alike
            err.print(f"  its key depends on these settings, which the server must set alike: {', '.join(settings)}")
    for function, count in sorted(result.entry.totals.functions.items()):
        err.print(f"  function {function}: {count} compiled function{'s' if count != 1 else ''} stored")
    for line in result.functions_not_stored:
        err.print(f"  no stored code for function {line}")


def _split_command(args: list[str]) -> tuple[list[str], list[str]]:
    """ENTRY arguments and the command. Click keeps the `--` after an ENTRY, but drops
    it when it comes first; then count what followed it on the command line."""
    if "--" in args:
        split = args.index("--")
        return args[:split], args[split + 1 :]
    argv = sys.argv[1:]
    start = argv.index("run") if "run" in argv else 0
    if "--" not in argv[start:]:
        return [], args
    after = len(argv) - argv.index("--", start) - 1
    return args[: len(args) - after], args[len(args) - after :]
