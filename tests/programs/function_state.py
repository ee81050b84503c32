"""Function compiles that a loaded copy of their compiled code would get wrong (one
writes a global, one reads a global tensor that is rebound, one reads a tensor from its
closure, one through a nested function's closure, one from a default argument, one
counts its calls in a global's object), one whose constant default the program changes
after its first call (in the run), one with positional-only defaults and **kwargs
called with a keyword named like one of them (and under a stance, in the run), and
one whose argument is a function, called with another the second time, and one called
under no_grad and then under inference_mode; and one first called at a new shape inside
torch.export.
PHASE: "capture", or "run" (the closure holds another tensor).

Prints JSON: whether every result equals eager's, the counts of the two that count,
whether the compiled function's call after the export ran compiled code, and the
warnings about torch.compile that the export gave.

    python function_state.py PHASE
"""

import json
import sys
import warnings

import torch

STEP = 0
B = torch.zeros(2)


def counts(x):
    global STEP
    STEP += 1
    return x + 1


def adds_global(x):
    return x + B


def make(w):
    def scaled(x):
        return x * w

    return scaled


def make_nested(w):
    def inner(x):
        return x * w

    def outer(x):
        return inner(x)

    return outer


class Tally:
    def __init__(self):
        self.calls = 0


TALLY = Tally()


def tallies(x):  # Dynamo replays the attribute's write after the graph, with the value it traced
    TALLY.calls += 1
    return x * 4


def double(x):
    return x * 2


def triple(x):
    return x * 3


def applies(x, act):
    return act(x)


def doubled(x):
    return x * 2


x = torch.ones(2)
weights = torch.full((2,), 1.0 if sys.argv[1] == "capture" else 5.0)  # as loaded at start-up
scaled, nested = make(weights), make_nested(weights)


def with_default(x, w=weights):
    return x * w


compiled_counts, compiled_adds, compiled_scaled, compiled_applies, compiled_nested, compiled_default = map(
    torch.compile, (counts, adds_global, scaled, applies, nested, with_default)
)


def scales(x, factor=2.0):
    return x * factor


def positional_only(x, a=1.0, b=2.0, /, **more):
    return x * b + len(more)


compiled_doubled, compiled_tallies, compiled_scales, compiled_positional = (
    torch.compile(doubled),
    torch.compile(tallies),
    torch.compile(scales),
    torch.compile(positional_only),
)
same = True
with torch.no_grad():
    compiled_counts(x)
    compiled_counts(x)
    same &= torch.equal(compiled_adds(x), x + B)
    B = torch.full((2,), 10.0)
    same &= torch.equal(compiled_adds(x), x + B)
    same &= torch.equal(compiled_scaled(x), scaled(x))
    same &= torch.equal(compiled_nested(x), nested(x))
    same &= torch.equal(compiled_default(x), with_default(x))
    same &= torch.equal(compiled_applies(x, double), x * 2)
    same &= torch.equal(compiled_applies(x, triple), x * 3)
    same &= torch.equal(compiled_doubled(x), x * 2)
    for _ in range(3):
        same &= torch.equal(compiled_tallies(x), x * 4)
    same &= torch.equal(compiled_scales(x), x * 2)
    if sys.argv[1] == "run":  # after a served call: what the next reads, where a stored copy holds 2.0
        scales.__defaults__ = (3.0,)
    same &= torch.equal(compiled_scales(x), scales(x))
    same &= torch.equal(compiled_positional(x), x * 2)
    same &= torch.equal(compiled_positional(x, a=9.0), x * 2 + 1)  # `a` by keyword: one of **more
    if sys.argv[1] == "run":  # and under a stance
        with torch.compiler.set_stance("force_eager"):
            same &= torch.equal(compiled_positional(x, a=9.0), x * 2 + 1)
with torch.inference_mode():
    same &= torch.equal(compiled_doubled(x), x * 2)


def marked(t):  # +100 where compiled: tells compiled code from the plain function
    return t * 2 + (100.0 if torch.compiler.is_compiling() else 0.0)


class Exported(torch.nn.Module):
    def forward(self, t):
        return compiled_marked(t)


# A shape no stored function serves, first called inside torch.export (where torch.compile
# traces the plain code); another after it runs the program's own compile, as without ccache.
compiled_marked = torch.compile(marked)
compiled_marked(x)
with warnings.catch_warnings(record=True) as warned:  # none of torch.compile's, as without ccache
    warnings.simplefilter("always")
    torch.export.export(Exported(), (torch.ones(3),), strict=False)
compiled_after_export = bool(compiled_marked(torch.ones(4))[0] > 50)
report = {"same": bool(same), "step": STEP, "tally": TALLY.calls, "compiled_after_export": compiled_after_export}
print(json.dumps({**report, "export_warnings": [str(w.message) for w in warned if "torch.compile" in str(w.message)]}))
