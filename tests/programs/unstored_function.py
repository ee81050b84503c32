"""A module whose forward, behind a functools.wraps decorator (as transformers writes
them), writes a module global: a capture stores no code for it (a loaded copy would
write its own globals). Compiles `model.forward`, calls it at two sizes and prints JSON:
whether the outputs equal eager's, the graphs Dynamo traced and the FX graphs Inductor
missed in its cache and found there.

    python unstored_function.py
"""

import functools
import json
import sys

import torch

CALLS = 0


def returns_dict(forward):
    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        return {"out": forward(self, *args, **kwargs)}

    return wrapper


class Counting(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(16, 16)

    @returns_dict
    def forward(self, x):
        global CALLS
        CALLS += 1
        return torch.relu(self.linear(x))


torch.manual_seed(0)
model = Counting().eval()
eager = type(model).forward
model.forward = torch.compile(model.forward)
same = True
with torch.no_grad():
    for size in (2, 4):
        x = torch.randn(size, 16)
        same &= torch.allclose(model(x)["out"], eager(model, x)["out"])
counters = sys.modules["torch._dynamo.utils"].counters
print(
    json.dumps(
        {
            "same": bool(same),
            "graphs": counters["stats"]["unique_graphs"],
            "misses": counters["inductor"]["fxgraph_cache_miss"],
            "hits": counters["inductor"]["fxgraph_cache_hit"],
        }
    )
)
