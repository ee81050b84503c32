"""Compiles the example model with torch.compile for SIZES (a JSON list) on DEVICE and
prints torch's Inductor and AOTAutograd cache counters as JSON.

    python hit_probe.py DEVICE SIZES
"""

import json
import sys

import torch
from torch._dynamo.utils import counters

from ccache_cli.examples.tiny_transformer import build, example_inputs

device = sys.argv[1]
compiled = torch.compile(build().to(device), backend="inductor", dynamic=False)
torch._dynamo.config.recompile_limit = 16
with torch.no_grad():
    for size in json.loads(sys.argv[2]):
        compiled(*(t.to(device) for t in example_inputs(size)))
print(json.dumps({**counters["inductor"], **counters["aot_autograd"]}))
