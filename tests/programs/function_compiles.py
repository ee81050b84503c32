"""Function compiles as programs write them: a function (`torch.compile(fn)`), a
module's bound forward through a functools.wraps decorator (`model.forward =
torch.compile(model.forward)`, as transformers writes forwards and its generation
recipe compiles them) and the `@torch.compile` decorator (mode reduce-overhead, as
transformers' generate compiles a model's `__call__` on a GPU), called at SIZES (a JSON
list) after CHANGE: "none", "global" (a module global the code reads) or "attribute"
(a model attribute set after building); with "nested", the model is called through
other compiles first: of its `__call__` in mode reduce-overhead (as transformers'
generate compiles it on a GPU) and of the model with fullgraph=True (Dynamo skips
nn.Module's frames, so the compiled forward is the first frame each meets), and of a
function calling it, with options (which ccache leaves to torch.compile).

Prints JSON: whether every output equals eager's, the graphs Dynamo traced, the
FX graphs Inductor missed in its cache, and whether the compiled function has
torch.compile's own attributes.

    python function_compiles.py CHANGE SIZES
"""

import functools
import json
import sys

import torch

SCALE = 2.0


def plain(x, y):
    return torch.relu(x @ y) * SCALE


def returns_dict(forward):
    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        return {"out": forward(self, *args, **kwargs)}

    return wrapper


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(16, 16)
        self.scale = 0.5

    @returns_dict
    def forward(self, x):
        return torch.tanh(self.linear(x)) * self.scale


@torch.compile(mode="reduce-overhead")  # records CUDA graphs on a GPU; the same code here
def decorated(x):
    return torch.sigmoid(x) + SCALE


def eager_decorated(x):
    return torch.sigmoid(x) + SCALE


change, sizes = sys.argv[1], json.loads(sys.argv[2])
torch.manual_seed(0)
model = Block().eval()
if change == "attribute":
    model.scale = 3.0
if change == "global":
    SCALE = 3.0
compiled_plain = torch.compile(plain)
model.forward = torch.compile(model.forward)
nested = torch.compile(lambda x: model(x)["out"] + 1, options={"epilogue_fusion": True})
model_call = torch.compile(model.__call__, mode="reduce-overhead")
whole = torch.compile(model, fullgraph=True)
same = True
with torch.no_grad():
    for size in sizes:
        x, y = torch.randn(size, 16), torch.randn(16, 16)
        if change == "nested":
            same &= torch.allclose(model_call(x)["out"], type(model).forward(model, x)["out"])
            same &= torch.allclose(whole(x)["out"], type(model).forward(model, x)["out"])
        same &= torch.allclose(compiled_plain(x, y), plain(x, y))
        same &= torch.allclose(model(x)["out"], type(model).forward(model, x)["out"])
        same &= torch.allclose(decorated(x), eager_decorated(x))
        if change == "nested":
            same &= torch.allclose(nested(x), type(model).forward(model, x)["out"] + 1)
    # torch.compile runs its functions eagerly under this stance: stored code does not run either.
    with torch.compiler.set_stance("force_eager"):
        same &= torch.allclose(compiled_plain(x, y), plain(x, y))
graphs = misses = 0
if "torch._dynamo.utils" in sys.modules:
    counters = sys.modules["torch._dynamo.utils"].counters
    graphs, misses = counters["stats"]["unique_graphs"], counters["inductor"]["fxgraph_cache_miss"]
# torch.compile's own attributes on what it returned, routed or not (after the counters: it imports Dynamo)
# (torch 2.11's own result has no `_is_torch_compile`; from 2.13 on, every result has it)
has_marker = getattr(compiled_plain, "_is_torch_compile", torch.torch_version.TorchVersion(torch.__version__) < "2.13")
api = has_marker and isinstance(compiled_plain.get_compiler_config(), dict)
print(json.dumps({"same": bool(same), "graphs": graphs, "misses": misses, "api": api}))
