"""How a size is compiled: the one description that precompile's worker, `verify
--run` and the runtime's torch.compile fallback all follow, so that the graphs they
trace are the ones stored and hit the same cache entries.

- Inputs: `example_inputs(size)` returns a tuple (positional arguments), a dict
  (keyword arguments, as transformers models are called) or one value; `CallInputs`
  holds both kinds, moved to the model's device.
- torch.compile: backend inductor, the entry's mode, one static graph per size
  (`dynamic=False`), under `torch.no_grad()`, with recompile limits high enough for
  every size.
- AOTInductor packages: `torch.export` (non-strict) of the model on one size's
  inputs, compiled with the Inductor options of the entry's mode (`package_configs`).
- The key describes each input by shape and dtype (tensors) or value (scalars);
  keyword inputs carry their name.
- A range of sizes (`1-64`): example inputs at its largest size, the first dimension
  of the tensors that have it as the batch, dynamic over the range: one torch.compile
  graph (whose guards give its assumptions) and one package that serves every size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ccache_cli.errors import CompileError
from ccache_cli.store.manifest import range_label

# An AOTInductor package holds no CUDA graphs (each process records its own, on its own
# memory: serve/cuda_graphs.py); every other Inductor option of a mode applies.
_NOT_FOR_PACKAGES = {"triton.cudagraphs"}
# torch.compile's modes, as entries and captured functions record them.
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# The modes whose Inductor options record CUDA graphs (`triton.cudagraphs`).
CUDA_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})


class CallInputs(NamedTuple):
    """One call's inputs: positional and keyword."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def tensors(self, torch: Any) -> list[Any]:
        return [value for value in (*self.args, *self.kwargs.values()) if isinstance(value, torch.Tensor)]


def example_inputs(function: Callable[[int], Any], size: int) -> CallInputs:
    """What `example_inputs(size)` returns, as a call's inputs."""
    try:
        inputs = function(size)
    except Exception as exc:
        raise CompileError(f"example inputs for size {size} raised {type(exc).__name__}: {exc}") from exc
    if isinstance(inputs, dict):
        if not all(isinstance(name, str) for name in inputs):
            raise CompileError(f"example inputs for size {size}: a dict's keys must be argument names")
        return CallInputs((), dict(inputs))
    return CallInputs(tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,), {})


def to_device(torch: Any, inputs: CallInputs, device: str) -> CallInputs:
    def moved(value: Any) -> Any:
        return value.to(device) if isinstance(value, torch.Tensor) else value

    return CallInputs(tuple(map(moved, inputs.args)), {name: moved(value) for name, value in inputs.kwargs.items()})


def batched(torch: Any, inputs: CallInputs, size: int) -> list[Any]:
    """The tensors whose first dimension is the batch: those `size` long in it."""
    return [tensor for tensor in inputs.tensors(torch) if tensor.dim() > 0 and tensor.shape[0] == size]


def mark_batch_dynamic(torch: Any, inputs: CallInputs, size: int) -> None:
    """Mark dimension 0 dynamic on every tensor whose first dimension is the batch."""
    for tensor in batched(torch, inputs, size):
        torch._dynamo.mark_dynamic(tensor, 0)


def range_hint(batch_range: tuple[int, int]) -> int:
    """The size a range's example inputs are made for: its largest, which tells the
    batch dimension from the others more surely than a small one."""
    return batch_range[1]


def describe(inputs: CallInputs, batch_range: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """The key's description of one call's inputs: positional first, then keyword by
    name. For a range's inputs (made at `range_hint`), the batch dimension reads
    `"low-high"`."""
    batch = None if batch_range is None else (range_hint(batch_range), range_label(batch_range))
    described = [_describe(value, batch) for value in inputs.args]
    described += [{"name": name, **_describe(value, batch)} for name, value in sorted(inputs.kwargs.items())]
    return described


def _describe(value: Any, batch: tuple[int, str] | None) -> dict[str, Any]:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        shape: list[Any] = list(value.shape)
        if batch is not None and shape and shape[0] == batch[0]:
            shape[0] = batch[1]
        return {"shape": shape, "dtype": str(value.dtype)}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return {"value": value}
    raise CompileError(f"example input of type {type(value).__name__} is not supported; pass tensors or scalars")


def torch_compile(torch: Any, model: Any, mode: str | None, calls: int, **options: Any) -> Any:
    """`model` compiled as precompile compiles it: one static graph per size."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, calls + 2)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, calls + 2)
    options.setdefault("backend", "inductor")
    options.setdefault("dynamic", False)
    return torch.compile(model, mode=mode, **options)


def call(compiled: Any, inputs: CallInputs) -> Any:
    return compiled(*inputs.args, **inputs.kwargs)


def package_configs(torch: Any, mode: str | None) -> dict[str, Any]:
    """The Inductor options an AOTInductor package is built with for `mode`; the weights
    stay out of it (the runtime binds the model's own)."""
    options = {
        name: value
        for name, value in torch._inductor.list_mode_options(mode or "default").items()
        if name not in _NOT_FOR_PACKAGES
    }
    # Every weight a constant bound by name, small ones too (Inductor would write those
    # into the code), so that weights loaded in place are the ones used.
    return {**options, "aot_inductor.package_constants_in_so": False, "always_keep_tensor_constants": True}


def export(torch: Any, model: Any, inputs: CallInputs, batch_range: tuple[int, int] | None = None) -> Any:
    """The model's graph for these inputs: non-strict export, which runs the model's
    Python as it is, so it takes the transformers models that Dynamo's fullgraph
    capture refuses. For a range's inputs, the batch dimension is dynamic over it."""
    shapes = None
    if batch_range is not None:
        batch = torch.export.Dim("batch", min=batch_range[0], max=batch_range[1])
        shapes = torch.export.ShapesCollection()
        for tensor in batched(torch, inputs, range_hint(batch_range)):
            shapes[tensor] = {0: batch}
    with torch.no_grad():
        return torch.export.export(model, inputs.args, inputs.kwargs, dynamic_shapes=shapes, strict=False)


def used_weights(program: Any) -> list[str]:
    """The parameters, buffers and tensor constants an exported program's graph uses
    (attributes it lifted but never reads are left out)."""
    signature = program.graph_signature
    targets = {
        **signature.inputs_to_parameters,
        **signature.inputs_to_buffers,
        **signature.inputs_to_lifted_tensor_constants,
    }
    used = {node.name for node in program.graph.nodes if node.op == "placeholder" and node.users}
    return sorted(target for placeholder, target in targets.items() if placeholder in used)


def model_structure(model: Any) -> str:
    """A digest of what a package assumes of the model it runs on and cannot check
    itself: the module tree (names and classes), every parameter's and buffer's name,
    shape and dtype, and which of them are one tensor (tied weights). Weights' values
    are not part of it: the package runs on the model's own."""
    import hashlib

    digest = hashlib.sha256()
    for name, module in model.named_modules(remove_duplicate=False):
        digest.update(f"m {name} {type(module).__module__}.{type(module).__qualname__}\n".encode())
    first_name: dict[int, str] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for kind, slot in (("p", module._parameters), ("b", module._buffers)):
            for name, tensor in slot.items():
                if tensor is None:
                    continue
                full = f"{prefix}.{name}" if prefix else name
                tied = first_name.setdefault(id(tensor), full)
                digest.update(f"{kind} {full} {tuple(tensor.shape)} {tensor.dtype} {tied}\n".encode())
    return digest.hexdigest()


def package_device_index(device: str) -> int:
    """The device index AOTInductor's loader takes: -1 for the CPU."""
    return -1 if device == "cpu" else int(device.partition(":")[2] or 0)
