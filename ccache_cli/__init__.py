"""ccache-cli: precompiled torch.compile caches, stored and carried into images.

The Python API for a serving process::

    import ccache_cli
    ccache_cli.activate()                    # the stored entries that fit this machine
    compiled = ccache_cli.compile(model)     # instead of torch.compile(model)

Importing this package does not import torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


def activate(store: str | os.PathLike[str] | None = None, entry: str | Sequence[str] | None = None) -> Any:
    """Make stored entries active in this process, before it compiles anything.

    `store` defaults to $CCACHE_CLI_STORE, else ~/.cache/ccache-cli; `entry` is one or
    more id prefixes or names, by default every entry that fits this machine. Points
    TORCHINDUCTOR_CACHE_DIR at a writable view of them (the store itself is never
    written) and returns the activation (its entries, view and environment).
    Raises `ccache_cli.errors.CcacheError` when there is nothing to activate.
    """
    from .serve.activation import activate as _activate

    return _activate(store, entry)


def compile(model: Any, *, mode: str | None = None, dynamic: bool = False, **torch_compile_kwargs: Any) -> Any:
    """A drop-in for `torch.compile(model)` on the active entries.

    A call whose inputs match a size that precompile stored (same shapes, dtypes and
    device, no_grad, sources unchanged) runs the stored code: no tracing, no compiling.
    That is the size's AOTInductor package, bound to the model's own parameters and
    buffers, while the model holds those tensors in eval mode (no Dynamo or Inductor
    import at all); else its AOT-compiled function, when torch's guards pass. See the
    docs/commands.md (Python API) for what a package cannot check. Any other call goes to
    `torch.compile(model, mode=mode, dynamic=dynamic, ...)`, which finds the stored
    Inductor caches warm. `dynamic` defaults to False, as precompile compiles one static
    graph per size; without an active entry this is plain torch.compile.
    """
    from .serve.api import compile as _compile

    return _compile(model, mode=mode, dynamic=dynamic, **torch_compile_kwargs)
