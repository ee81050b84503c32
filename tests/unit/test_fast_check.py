"""The generated check that repeats a passing full check on every call (key/fast_check.py):
whatever a program changes, a checker that holds one answers as a fresh checker does."""

from __future__ import annotations

import enum
import functools
import math
import sys
import types
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccache_cli.key import assumptions as a
from ccache_cli.key import paths
from ccache_cli.store.assumptions import Assumption, Frame, SizeAssumptions

PROGRAM = "fast_check_program"
LIBRARY = "fast_check_library"  # a module whose code the forward calls
UNIMPORTED = "torch._inductor.fast_check_absent"  # of torch's compile stack, which the program has not imported


class Mode(enum.Enum):
    FAST = 1
    SLOW = 2


def _helper(x: float) -> float:
    return x + 1


def _other_helper(x: float) -> float:
    return x - 1


def _doubled_forward(self: Any, x: float, scale: float = 2.0, *, shift: float = 0.0) -> float:
    return x * scale * 2 + shift


class _LibraryWithADescriptor(types.ModuleType):
    @property
    def Kernel(self) -> type:  # noqa: N802
        return OtherSub


def _scaled(x: float) -> float:
    return 2 * x


class Kernel:
    def apply(self, x: float) -> float:
        return x

    scaled = staticmethod(functools.wraps(_scaled)(lambda x: _scaled(x)))


CODES = (_helper.__code__, _other_helper.__code__)
KERNEL_APPLY = Kernel.apply
_WRAPPED = Kernel.scaled.__wrapped__


class Sub:
    def run(self) -> None:
        pass


class OtherSub:
    pass


def _program() -> tuple[types.ModuleType, Any]:
    """A module, as sys.modules holds it, with a model class, and a model of it."""
    module = types.ModuleType(PROGRAM)
    module.helper = _helper
    module.math = math

    class Model:
        def forward(self, x: float, scale: float = 2.0, *, shift: float = 0.0) -> float:
            return x * scale + shift

    Model.__module__, Model.__qualname__ = PROGRAM, "Model"
    module.Model = Model
    model = Model()
    model.eps = float("1e-6")
    model.bias = 0.0
    model.heads = 4
    model.label = "attention"
    model.flag = False
    model.mode = Mode.FAST
    model.shape = (2, 3.5, "x")
    model.items = [1, 2]
    model.table = {"a": 1}
    model.options = {"a": 1, "b": 2}  # only its key "a" is assumed
    model.sub = Sub()
    model.layers = [Sub(), Sub()]  # only its length is assumed
    model.act = _helper
    model.kernel = Kernel()
    library = types.ModuleType(LIBRARY)
    library.Kernel = Kernel
    Kernel.apply = KERNEL_APPLY
    module.library = library  # (not read by the forward: for the changes below)
    sys.modules[PROGRAM], sys.modules[LIBRARY] = module, library
    return module, model


def _assumptions(module: types.ModuleType, model: Any) -> SizeAssumptions:
    def held(check: str, path: str, expected: Any) -> Assumption:
        return Assumption(check, path, expected, "")

    recorded = [
        held("value", "L['self'].eps", a.describe_value(model.eps)),
        held("value", "L['self'].heads", a.describe_value(model.heads)),
        held("value", "L['self'].label", a.describe_value(model.label)),
        held("value", "L['self'].flag", a.describe_value(model.flag)),
        held("value", "L['self'].mode", a.describe_value(model.mode)),
        held("value", "L['self'].shape", a.describe_value(model.shape)),
        held("value", "L['self'].items", a.describe_value(model.items)),
        held("value", "L['scale']", a.describe_value(2.0)),
        held("value", "L['shift']", a.describe_value(0.0)),
        held("identity", "G['__import_math']", "module:math"),
        held("value", "L['self'].bias", a.describe_value(0.0)),
        held("keys", "L['self'].table", [a.describe_value(key) for key in model.table]),
        held("length", "L['self'].items", 2),
        held("length", "L['self'].layers", 2),
        held("dict_key", "L['self'].table", ["a", True]),
        held("dict_key", "L['self'].options", ["a", True]),
        held("attribute", "L['self']", ["extra", False]),
        held("attribute", "L['self'].gone", ["anything", False]),  # its path fails: absent as traced
        held("own_attribute_absent", "L['self']", "forward"),
        held("type", "L['self'].sub", a.describe_type(Sub)),
        held("identity", "L['self'].act", a.describe_identity(_helper)),
        held("identity", "G['helper']", a.describe_identity(_helper)),
        held("identity", "G['math']", a.describe_identity(math)),
        held("identity", "G['__builtins_dict___0']['len']", a.describe_identity(len)),
        held("code", f"{PROGRAM}:Model.forward", a.code_digest(module.Model.forward.__code__)),
        held("code", f"{LIBRARY}:Kernel.apply", a.code_digest(Kernel.apply.__code__)),
        held("code", f"{LIBRARY}:Kernel.scaled", a.code_digest(_scaled.__code__)),  # through the decorator
        held("identity", "L['self'].kernel.apply", a.describe_identity(model.kernel.apply)),
        held("identity", "L['self'].layers[0].run", a.describe_identity(model.layers[0].run)),  # a bound method
        held("identity", f"G['__import_{UNIMPORTED.replace('.', '_dot_')}']", f"module:{UNIMPORTED}"),
    ]
    return SizeAssumptions(Frame(PROGRAM, "Model.forward"), tuple(recorded), 0)


Change = Callable[[types.ModuleType, Any], None]


def _replace_forward(module: types.ModuleType, model: Any) -> None:
    def forward(self: Any, x: float, scale: float = 2.0, *, shift: float = 0.0) -> float:
        return x * scale * 2 + shift

    module.Model.forward = forward


def _swap_code(module: types.ModuleType, model: Any) -> None:
    _helper.__code__, _other_helper.__code__ = _other_helper.__code__, _helper.__code__


CHANGES: dict[str, Change] = {
    "eps other value": lambda m, o: setattr(o, "eps", 0.5),
    "eps same value, new object": lambda m, o: setattr(o, "eps", float("1e-6")),
    "eps negative zero": lambda m, o: setattr(o, "eps", -0.0),
    "heads other value": lambda m, o: setattr(o, "heads", 3),
    "heads a big equal int": lambda m, o: setattr(o, "heads", int("4")),
    "heads a bool": lambda m, o: setattr(o, "heads", True),
    "heads a float": lambda m, o: setattr(o, "heads", 4.0),
    "label other": lambda m, o: setattr(o, "label", "mlp"),
    "label a str subclass": lambda m, o: setattr(o, "label", type("S", (str,), {})("attention")),
    "flag flipped": lambda m, o: setattr(o, "flag", True),
    "flag 0": lambda m, o: setattr(o, "flag", 0),
    "mode other": lambda m, o: setattr(o, "mode", Mode.SLOW),
    "shape equal new tuple": lambda m, o: setattr(o, "shape", (2, 3.5, "x")),
    "shape other": lambda m, o: setattr(o, "shape", (2, 3.5, "y")),
    "layers appended": lambda m, o: o.layers.append(Sub()),
    "items appended": lambda m, o: o.items.append(3),
    "items changed in place": lambda m, o: o.items.__setitem__(0, 5),
    "items replaced equal": lambda m, o: setattr(o, "items", [1, 2]),
    "table key added": lambda m, o: o.table.__setitem__("b", 2),
    "table key removed": lambda m, o: o.table.pop("a"),
    "extra set": lambda m, o: setattr(o, "extra", 1),
    "gone set": lambda m, o: setattr(o, "gone", types.SimpleNamespace(anything=1)),
    "forward set on the instance": lambda m, o: setattr(o, "forward", lambda x: x),
    "sub of another class": lambda m, o: setattr(o, "sub", OtherSub()),
    "sub another of its class": lambda m, o: setattr(o, "sub", Sub()),
    "act another function": lambda m, o: setattr(o, "act", _other_helper),
    "act's code swapped": _swap_code,
    "helper replaced": lambda m, o: setattr(m, "helper", _other_helper),
    "helper removed": lambda m, o: delattr(m, "helper"),
    "math replaced": lambda m, o: setattr(m, "math", types.ModuleType("math")),
    "forward replaced on the class": _replace_forward,
    "forward's code swapped": lambda m, o: setattr(m.Model.forward, "__code__", _doubled_forward.__code__),
    "options key a removed": lambda m, o: o.options.pop("a"),
    "options key c added": lambda m, o: o.options.__setitem__("c", 3),
    "kernel's apply replaced": lambda m, o: setattr(Kernel, "apply", lambda self, x: -x),
    "library replaced in sys.modules": lambda m, o: sys.modules.__setitem__(LIBRARY, types.ModuleType(LIBRARY)),
    "library removed from sys.modules": lambda m, o: sys.modules.pop(LIBRARY),
    "a layer's run replaced": lambda m, o: setattr(o.layers[0], "run", _helper.__get__(o.layers[0])),
    "another kernel": lambda m, o: setattr(o, "kernel", Kernel()),
    "scaled's inner function replaced": lambda m, o: setattr(Kernel.scaled, "__wrapped__", _helper),
    "the compile-stack module imported as another": lambda m, o: sys.modules.__setitem__(
        UNIMPORTED, types.ModuleType("x")
    ),
    "forward's default changed": lambda m, o: setattr(m.Model.forward, "__defaults__", (3.0,)),
    "forward's keyword default changed in place": lambda m, o: m.Model.forward.__kwdefaults__.__setitem__("shift", 1.0),
    "an import name set in the module": lambda m, o: setattr(m, "__import_math", types.ModuleType("x")),
    "bias negative zero": lambda m, o: setattr(o, "bias", -0.0),
    "the library's class given a descriptor": lambda m, o: setattr(m.library, "__class__", _LibraryWithADescriptor),
    "module replaced in sys.modules": lambda m, o: sys.modules.__setitem__(PROGRAM, types.ModuleType(PROGRAM)),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_held_check_answers_as_a_fresh_one_after_a_change(change: str) -> None:
    _answers_as_a_fresh_one([change], ())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(sorted(CHANGES)), max_size=3, unique=True), st.sampled_from([(), (3.0,)]))
def test_a_held_check_answers_as_a_fresh_one_whatever_changes(changes: list[str], extra: tuple[Any, ...]) -> None:
    _answers_as_a_fresh_one(changes, extra)


def _answers_as_a_fresh_one(changes: list[str], extra: tuple[Any, ...]) -> None:
    try:
        module, model = _program()
        recorded = _assumptions(module, model)
        checker = a.Checker(None, recorded)
        for _ in range(3):  # the second passing check makes the generated one, the third uses it
            assert checker.program_mismatch(model, (1.0,), {}) is None
        for name in changes:
            CHANGES[name](module, model)
        for _ in range(2):
            held = checker.program_mismatch(model, (1.0, *extra), {})
            paths._signatures.clear()  # the reference answer: nothing held
            assert held == a.Checker(None, recorded).program_mismatch(model, (1.0, *extra), {})
    finally:
        _helper.__code__, _other_helper.__code__ = CODES
        Kernel.apply, Kernel.scaled.__wrapped__ = KERNEL_APPLY, _WRAPPED
        sys.modules.pop(UNIMPORTED, None)
        sys.modules.pop(PROGRAM, None)
        sys.modules.pop(LIBRARY, None)


def test_repeated_checks_read_nothing_again_while_all_holds(monkeypatch: Any) -> None:
    module, model = _program()
    try:
        other = module.Model()  # a second model, called in turn with the first
        vars(other).update(vars(model), eps=float("1e-6"))  # an equal float, another object
        checker = a.Checker(None, _assumptions(module, model))
        for called in (model, model, other):
            assert checker.program_mismatch(called, (1.0,), {}) is None
        with monkeypatch.context() as patched:
            patched.setattr(checker._paths, "evaluate", None)  # the full check's pass: not taken
            for called in (model, other, model):
                assert checker.program_mismatch(called, (1.0,), {}) is None
        model.eps = 0.5
        assert checker.program_mismatch(model, (1.0,), {}) == "eps is 0.5; the stored code was built with 1e-06"
    finally:
        sys.modules.pop(PROGRAM, None)
        sys.modules.pop(LIBRARY, None)


def test_a_size_that_assumes_nothing_of_the_program_is_checked_as_often() -> None:
    checker = a.Checker(None, SizeAssumptions(Frame("math", "f"), (), 0))
    assert [checker.program_mismatch(None, (1.0,), {}, function=_helper) for _ in range(3)] == [None] * 3
    assert checker._held  # the generated check of nothing


def test_a_generated_check_pins_what_holds_when_it_is_made_not_what_the_full_check_read() -> None:
    """A read with a side effect (a `__getattr__` reached by `hasattr`) that replaces a
    function's code after the full check compared it: no check is generated on it."""
    module, model = _program()

    class Probe:
        reads = 0

        def __getattr__(self, name: str) -> Any:
            Probe.reads += 1
            if Probe.reads == 2:  # in the second full check, the one that generates
                model.act.__code__ = _other_helper.__code__
            raise AttributeError(name)

    model.probe = Probe()
    recorded = _assumptions(module, model)
    recorded = SizeAssumptions(
        recorded.frame, (*recorded.assumptions, Assumption("attribute", "L['self'].probe", ["x", False], "")), 0
    )
    try:
        checker = a.Checker(None, recorded)
        assert [checker.program_mismatch(model, (1.0,), {}) for _ in range(2)] == [None, None]
        assert "act is function" in (checker.program_mismatch(model, (1.0,), {}) or "")
    finally:
        _helper.__code__, _other_helper.__code__ = CODES
        sys.modules.pop(PROGRAM, None)
        sys.modules.pop(LIBRARY, None)


def _state_checker() -> a.Checker:
    torch = pytest.importorskip("torch")
    state = tuple(Assumption("torch_state", name, value, "") for name, value in a.torch_state(torch).items())
    return a.Checker(torch, SizeAssumptions(Frame("math", "f"), state, 0))


def test_the_held_torch_state_sees_what_the_full_check_compares() -> None:
    import torch

    checker = _state_checker()
    assert [checker.state_mismatch() for _ in range(3)] == [None] * 3
    before = torch.get_autocast_dtype("cpu")
    try:
        torch.set_autocast_dtype("cpu", torch.float16)  # autocast itself off: Dynamo's guard.check() skips it
        assert "autocast_state" in (checker.state_mismatch() or "")
    finally:
        torch.set_autocast_dtype("cpu", before)
    assert checker.state_mismatch() is None
    try:
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"  # torch cannot name the precision then
        assert "float32 matmul precision is unreadable" in (checker.state_mismatch() or "")
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = "none"


def test_the_traced_module_replaced_in_sys_modules_is_read_anew() -> None:
    module, model = _program()
    recorded = SizeAssumptions(
        Frame(PROGRAM, "Model.forward"), (Assumption("identity", "G['helper']", a.describe_identity(_helper), ""),), 0
    )
    try:
        checker = a.Checker(None, recorded)
        assert [checker.program_mismatch(model, (1.0,), {}) for _ in range(3)] == [None] * 3
        sys.modules[PROGRAM] = types.ModuleType(PROGRAM)
        sys.modules[PROGRAM].helper = _other_helper
        assert "helper is function" in (checker.program_mismatch(model, (1.0,), {}) or "")
    finally:
        sys.modules.pop(PROGRAM, None)
        sys.modules.pop(LIBRARY, None)
