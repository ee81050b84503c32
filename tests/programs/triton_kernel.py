"""Launches a Triton kernel (JIT-compiled into $TRITON_CACHE_DIR, Triton's own cache)
on the GPU and prints, as JSON, whether its result is right and the seconds the first
launch took."""

import json
import time

import torch
import triton
import triton.language as tl


@triton.jit
def add_one(x, out, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(out + offsets, tl.load(x + offsets, mask=mask) + 1.0, mask=mask)


x = torch.arange(1000, device="cuda", dtype=torch.float32)
out = torch.empty_like(x)
start = time.perf_counter()
add_one[(triton.cdiv(1000, 256),)](x, out, 1000, BLOCK=256)
torch.cuda.synchronize()
print(json.dumps({"right": bool(torch.equal(out, x + 1)), "first_launch_s": round(time.perf_counter() - start, 3)}))
