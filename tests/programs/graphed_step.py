"""A decode step as generation loops write it on a GPU: a function compiled with
mode reduce-overhead (CUDA graphs), writing each call's row into a static cache (its
address marked static, as transformers' static cache does) and reading the whole cache.
Calls it STEPS times with new inputs, keeps each output and compares it with eager's,
run on a copy of the cache.

Prints JSON: whether every output equals eager's, the graphs Dynamo traced, the CUDA
graphs torch recorded (its CUDA graph trees' roots), and the pools of compile workers
Inductor started (loading stored code needs none).

    python graphed_step.py STEPS
"""

import json
import sys

import torch

WIDTH, ROWS = 64, 16


def step(x, cache, position, weight):
    cache.index_copy_(0, position, x)
    return torch.tanh(x @ weight) + cache.sum(0)


steps = int(sys.argv[1])
torch.manual_seed(0)
weight = torch.randn(WIDTH, WIDTH, device="cuda")
cache, eager_cache = torch.zeros(ROWS, WIDTH, device="cuda"), torch.zeros(ROWS, WIDTH, device="cuda")
torch._dynamo.mark_static_address(cache)
compiled = torch.compile(step, mode="reduce-overhead")
same = True
with torch.no_grad():
    for n in range(steps):
        x, position = torch.randn(1, WIDTH, device="cuda"), torch.tensor([n % ROWS], device="cuda")
        out = compiled(x, cache, position, weight).clone()  # the next replay overwrites a graph's output
        same &= torch.allclose(out, step(x, eager_cache, position, weight), atol=1e-4)
    same &= torch.equal(cache, eager_cache)
graphs = recorded = 0
if "torch._dynamo.utils" in sys.modules:
    graphs = sys.modules["torch._dynamo.utils"].counters["stats"]["unique_graphs"]
if "torch._inductor.cudagraph_trees" in sys.modules:
    manager = sys.modules["torch._inductor.cudagraph_trees"].get_manager(0, create_if_none_exists=False)
    recorded = 0 if manager is None else sum(len(nodes) for nodes in manager.roots.values())
pools = len(getattr(sys.modules.get("torch._inductor.async_compile"), "_pool_set", ()))
print(json.dumps({"same": bool(same), "graphs": graphs, "recorded": recorded, "pools": pools}))
