"""A compiled function whose first calls four threads make at once, each with other
arguments (so each needs a compile of its own).

Prints JSON: per call, whether its result equals the plain function's.

    python threaded_first_calls.py
"""

import json
import threading

import torch

x = torch.ones(3)


def scaled(t, n=2, flag=True):
    return t * n if flag else t - n


compiled = torch.compile(scaled)
calls = [((x,), {}), ((x, 3), {}), ((x,), {"flag": False}), ((x,), {"n": 4, "flag": False})]
results = {}


def call(at):
    args, kwargs = calls[at]
    results[at] = (compiled(*args, **kwargs), scaled(*args, **kwargs))


threads = [threading.Thread(target=call, args=(at,)) for at in range(len(calls))]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({at: bool(torch.equal(*results[at])) for at in range(len(calls))}))
