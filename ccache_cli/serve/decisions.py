"""The guard policy, whether torch.compile is set to run nothing compiled, and the
tally of what routing and the API decided in this process: calls routed or declined
(with why), calls an entry's stored code ran, and those it did not serve because an
assumption of it did not hold. routing.py counts its decisions here and api.py its
own, and neither needs the other for it; the start-up hook reads `summary` for the
usage logs at exit. Standard library only.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter
from typing import Any

GUARDS_ENV = "CCACHE_CLI_GUARDS"  # "once": check stored code's assumptions at a size's first call only
GUARD_POLICIES = ("once", "every-call")

_lock = threading.Lock()
# "routed", and "declined: <why>" / "fallback: <why>", for the process; "served" per entry id.
_counts: Counter[str] = Counter()
_served: Counter[str] = Counter()
# Per entry id: why its stored code was not used for a model (an assumption that does not hold).
_refused: dict[str, Counter[str]] = {}


def compiler_stance() -> str | None:
    """Why torch.compile would run nothing compiled here, else None: a stance set with
    `torch.compiler.set_stance` (which imports Dynamo: no import here) or
    TORCH_COMPILE_DISABLE=1. Stored code then does not run either: torch.compile does."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    stance = getattr(getattr(eval_frame, "_stance", None), "stance", "default")
    if stance != "default" or os.environ.get("TORCH_COMPILE_DISABLE") == "1":
        return f"torch.compile is set to {stance if stance != 'default' else 'disabled'}"
    return None


def count(what: str, entry: str | None = None) -> None:
    """Count a routing decision; a call the stored code ran is counted for its entry."""
    with _lock:
        if entry is not None:
            _served[entry] += 1
        else:
            _counts[what] += 1


def refuse(entry: str, why: str) -> None:
    """Count a call that `entry`'s stored code did not serve because `why` (an
    assumption of it does not hold), which the process says at exit."""
    with _lock:
        _refused.setdefault(entry, Counter())[why] += 1


def guard_policy() -> str:
    """When stored code's assumptions are checked: on "every-call" (the default, as
    torch.compile checks its guards), or "once" per size and model (CCACHE_CLI_GUARDS),
    for a program that changes nothing its forward reads between calls."""
    policy = os.environ.get(GUARDS_ENV) or "every-call"
    return policy if policy in GUARD_POLICIES else "every-call"


def summary(entry: str) -> dict[str, Any] | None:
    """What routing did in this process, for `entry`'s usage log: the calls routed and
    declined (with why) by the process, the calls `entry`'s code ran and those it did
    not serve (with why); None where torch.compile was never called."""
    with _lock:
        if not _counts and not _served and not _refused:
            return None
        reasons = {key: number for key, number in _counts.items() if ":" in key}
        found = {"routed": _counts["routed"], "served": _served[entry], "not_routed": reasons}
        if _refused.get(entry):
            found["refused"] = dict(_refused[entry])
        return found
