"""Checking a warm start's outputs: against a record of the outputs precompile got
(`outputs/size-N.json`) where the call is the same (same inputs, same weights), and
against eager.

The record keeps, for each tensor of a call's output (flattened as torch's pytree
does), its shape, dtype, the float64 norm of all its elements and up to 1,024 of
them at evenly spaced positions: a few kilobytes where logits can be tens of
megabytes, and enough to catch kernels that compute something else.

- Against the record (the same kernels ran): within a relative 1e-3 of the tensor's
  scale, elementwise and in norm.
- Against eager (other kernels, other rounding): within the dtype's relative
  tolerance of the tensor's scale (its largest magnitude) elementwise, as bf16 logits
  compiled and eager normally differ by a few hundredths where their values are a few
  units.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

SAMPLES = 1024
RECORDED_TOLERANCE = 1e-3
EAGER_TOLERANCE = {"float64": 1e-7, "float32": 1e-4, "float16": 1e-2, "bfloat16": 1.6e-2}


def record(torch: Any, model: Any, inputs: Any, output: Any) -> dict[str, Any]:
    """The record of one call: its output, and digests of its inputs and of the model's
    weights, which say whether a later call is the same call."""
    return {"inputs": digest(torch, inputs), "weights": digest(torch, _weights(model)), **sample(torch, output)}


def sample(torch: Any, value: Any, count: int = SAMPLES) -> dict[str, Any]:
    return {"outputs": [_sample_leaf(torch, leaf, count) for leaf in torch.utils._pytree.tree_flatten(value)[0]]}


def digest(torch: Any, value: Any) -> str:
    """A digest of the tensors in `value`, from a few values of each."""
    return hashlib.sha256(json.dumps(sample(torch, value, 16), sort_keys=True).encode()).hexdigest()


def _weights(model: Any) -> list[Any]:
    return [tensor for _, tensor in sorted(model.state_dict(keep_vars=True).items())]


def _sample_leaf(torch: Any, leaf: Any, samples: int) -> dict[str, Any]:
    if not isinstance(leaf, torch.Tensor):
        return {"value": leaf if isinstance(leaf, (bool, int, float, str)) or leaf is None else type(leaf).__name__}
    flat = leaf.detach().reshape(-1)
    count = min(flat.numel(), samples)
    # Evenly spaced, in integer arithmetic: float positions round past the end of large tensors.
    positions = torch.arange(count, device=flat.device) * (flat.numel() - 1) // max(count - 1, 1)
    values = flat[positions].double().cpu() if leaf.is_floating_point() else flat[positions].cpu()
    return {
        "shape": list(leaf.shape),
        "dtype": str(leaf.dtype).removeprefix("torch."),
        "values": values.tolist(),
        "norm": float(flat.double().norm()) if leaf.is_floating_point() else None,
    }


def same_call(torch: Any, model: Any, inputs: Any, recorded: dict[str, Any]) -> bool:
    """Whether these inputs and the model's weights are those of the recorded call
    (example inputs or weights drawn at random differ in each process)."""
    return recorded.get("inputs") == digest(torch, inputs) and recorded.get("weights") == digest(torch, _weights(model))


def compare_recorded(torch: Any, value: Any, recorded: dict[str, Any]) -> str | None:
    """Why `value` differs from the record of the same call, or None."""
    got = sample(torch, value)["outputs"]
    expected = recorded["outputs"]
    if len(got) != len(expected):
        return f"{len(got)} outputs, precompile recorded {len(expected)}"
    for index, (a, b) in enumerate(zip(got, expected)):
        if "value" in a or "value" in b:
            if a != b:
                return f"output {index} is {a.get('value')!r}, precompile recorded {b.get('value')!r}"
            continue
        if a["shape"] != b["shape"] or a["dtype"] != b["dtype"]:
            return f"output {index} is {tuple(a['shape'])} {a['dtype']}, precompile recorded {tuple(b['shape'])} {b['dtype']}"
        scale = max((abs(v) for v in b["values"]), default=0.0) or 1.0
        worst = max((abs(x - y) for x, y in zip(a["values"], b["values"])), default=0.0)
        if worst > RECORDED_TOLERANCE * scale or (
            b["norm"] is not None and not math.isclose(a["norm"], b["norm"], rel_tol=RECORDED_TOLERANCE)
        ):
            return (
                f"output {index} differs from the output precompile recorded by up to {worst:.3g} (scale {scale:.3g})"
            )
    return None


def compare_eager(torch: Any, compiled: Any, eager: Any) -> str | None:
    """Why `compiled` differs from `eager` beyond the dtype's tolerance, or None."""
    flatten = torch.utils._pytree.tree_flatten
    got, expected = flatten(compiled)[0], flatten(eager)[0]
    if len(got) != len(expected):
        return f"{len(got)} outputs, eager gives {len(expected)}"
    for index, (a, b) in enumerate(zip(got, expected)):
        if not isinstance(b, torch.Tensor):
            if a != b:
                return f"output {index} is {a!r}, eager gives {b!r}"
            continue
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"output {index} is {tuple(a.shape)} {a.dtype}, eager gives {tuple(b.shape)} {b.dtype}"
        if not b.is_floating_point():
            if not torch.equal(a, b):
                return f"output {index} differs from eager"
            continue
        tolerance = EAGER_TOLERANCE.get(str(b.dtype).removeprefix("torch."), 0.0)
        a64, b64 = a.double(), b.double()
        scale = float(b64.abs().max()) if b64.numel() else 0.0
        if not torch.allclose(a64, b64, rtol=tolerance, atol=tolerance * scale):
            worst = float((a64 - b64).abs().max())
            return (
                f"output {index} differs from eager by up to {worst:.3g} (tolerance {tolerance:g} of scale {scale:.3g})"
            )
    return None
