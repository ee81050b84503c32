"""A torch program with a Numba helper (`@njit(cache=True)`: its machine code goes to
$NUMBA_CACHE_DIR, Numba's own cache): calls it once and prints, as JSON, the seconds
the first call took, whether Numba compiled it in this process, and the result."""

import json
import time

import numpy as np
import torch
from numba import njit


@njit(cache=True)
def smoothed(values):
    out = np.empty_like(values)
    total = 0.0
    for index in range(values.shape[0]):
        total = 0.9 * total + 0.1 * values[index]
        out[index] = total
    return out


start = time.perf_counter()
result = torch.from_numpy(smoothed(np.arange(8, dtype=np.float64)))
seconds = time.perf_counter() - start
compiled = sum(smoothed.stats.cache_hits.values()) == 0
print(
    json.dumps({"seconds": round(seconds, 3), "compiled": compiled, "result": [round(v, 6) for v in result.tolist()]})
)
