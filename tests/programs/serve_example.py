"""Compiles the example model as a server would (WAY `api`: ccache_cli.compile; `torch`:
torch.compile), calls it at SIZES (a JSON list) on DEVICE, and prints as JSON torch's
cache counters, whether every output equals eager's, the graphs traced and whether
Dynamo or Inductor was imported.

    python serve_example.py WAY SIZES [DEVICE]
"""

import json
import sys

import torch

import ccache_cli
from ccache_cli.examples.tiny_transformer import build, example_inputs

way, sizes = sys.argv[1], json.loads(sys.argv[2])
device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
model = build().to(device)
if way == "api":
    compiled = ccache_cli.compile(model)
else:
    compiled = torch.compile(model, dynamic=False)
    torch._dynamo.config.recompile_limit = 16


def inputs(size):
    return tuple(t.to(device) for t in example_inputs(size))


with torch.no_grad():
    same = all(torch.allclose(compiled(*inputs(s)), model(*inputs(s)), atol=1e-3) for s in sizes)
compile_stack = [name for name in ("torch._dynamo", "torch._inductor") if name in sys.modules]
from torch._dynamo.utils import counters  # noqa: E402 (after compile_stack: it imports Dynamo)

print(
    json.dumps(
        {
            "same": same,
            **counters["inductor"],
            **counters["aot_autograd"],
            "frames": counters["stats"]["unique_graphs"],
            "compile_stack": compile_stack,
        }
    )
)
