"""The pure parts of the assumption check: which paths are evaluated, how values and
code are described so that two processes compare them."""

from __future__ import annotations

import enum
import os
import subprocess
import sys
import types

import pytest
import torch

from ccache_cli.key import assumptions as a
from ccache_cli.key import paths
from ccache_cli.precompile import guards
from ccache_cli.store.assumptions import Frame


@pytest.mark.parametrize(
    "path",
    [
        "L['self']._modules['n1'].eps",
        "G['__import_torch_dot_nn_dot_modules_dot_module']._global_forward_hooks",
        "dict(type(L['self']).__mro__[1].__dict__)['forward'].__closure__[0].cell_contents",
        "object.__getattribute__(L['self']._modules['model'].config, '__dict__')",  # torch 2.11
    ],
)
def test_dynamo_source_paths_parse(path: str) -> None:
    paths.parse_path(path)


@pytest.mark.parametrize(
    "path",
    [
        "__import__('os').system('true')",
        "L['self'].__class__.__init__(1)",
        "open('/etc/passwd')",
        "L[__import__('os')]",
        "[x for x in L]",
        "L['a'] if G else L['b']",
        "X.y",
        "L['a'].b[c]",
        "type(L['a'], 1)",
        "L['a'].b + 1",
        "object.__getattribute__(L['a'], L['b'])",
        "object.__getattribute__(L['a'], '__dict__', 1)",
        "object.__setattr__(L['a'], 'x')",
    ],
)
def test_a_path_that_would_run_code_is_refused(path: str) -> None:
    with pytest.raises(paths.PathError):
        paths.parse_path(path)


def test_evaluate_resolves_dynamo_installed_globals_without_dynamo() -> None:
    scope = paths.Globals("os.path")
    assert paths.evaluate_one("G['__import_os_dot_path'].join", {}, scope) is os.path.join
    assert paths.evaluate_one("G['__builtins_dict___0']['len']", {}, scope) is len
    assert paths.evaluate_one("G['sep']", {}, scope) == os.sep
    assert paths.evaluate_one("dict(type(L['x']).__dict__)['__module__']", {"x": Color.RED}, scope) == __name__
    with pytest.raises(paths.PathError):
        paths.evaluate_one("L['x'].missing", {"x": 1}, scope)


def test_paths_share_their_prefixes() -> None:
    tree = paths.PathSet()
    first, second = tree.add("L['a'].b['c']"), tree.add("L['a'].b[\"it's\"]")
    assert first != second and len(tree._nodes) == 4
    values = tree.evaluate({"a": type("A", (), {"b": {"c": 1, "it's": 2}})}, {})
    assert values[first] == 1 and values[second] == 2


class Color(enum.Enum):
    RED = 1


def test_values_are_equal_only_in_type_and_value() -> None:
    assert a.describe_value(1) != a.describe_value(1.0) != a.describe_value(True)
    assert a.describe_value((1, "x", None)) == "tuple:(int:1,str:'x',NoneType:None)"
    assert a.describe_value(Color.RED).endswith("Color.RED")
    assert a.describe_value(object()) is None and a.describe_value((1, object())) is None
    assert a.describe_value(float("nan")) == "float:nan"


def test_a_function_is_described_by_name_and_code() -> None:
    def helper(x):  # noqa: ANN001, ANN202
        return x + 1

    def other(x):  # noqa: ANN001, ANN202
        return x + 2

    assert a.describe_identity(os.path) == "module:posixpath"
    assert a.describe_identity(helper) != a.describe_identity(other)
    assert a.describe_identity(len) == a.describe_identity(len)
    assert a.describe_identity(object()) is None


class _Config:
    """As transformers' configs: a `__getattribute__` of its own, through which Dynamo
    reads past (torch 2.11 names such reads `object.__getattribute__(..., name)`), a
    class attribute (`attribute_map`) and a property (`output_attentions`)."""

    aliases = {"alias": "eps"}

    def __init__(self) -> None:
        self.eps = 1e-6
        self._attentions = False

    def __getattribute__(self, name: str) -> object:
        return super().__getattribute__(type(self).aliases.get(name, name))

    @property
    def attentions(self) -> bool:
        return self._attentions


def test_a_generic_attribute_read_is_python_s_past_the_class_s_own_getattribute() -> None:
    config = _Config()
    for name in ("__dict__", "eps", "aliases", "attentions", "alias"):
        path = f"object.__getattribute__(L['c'], {name!r})"
        try:
            expected = object.__getattribute__(config, name)
        except AttributeError:  # "alias" exists only through the class's own __getattribute__
            with pytest.raises(paths.PathError):
                paths.evaluate_one(path, {"c": config}, {})
            continue
        assert paths.evaluate_one(path, {"c": config}, {}) == expected
    assert config.alias == 1e-6  # what Dynamo's guard reads past


def test_a_compile_stack_module_the_program_has_not_imported_is_read_only_where_it_must() -> None:
    """The identity of a function a module of torch's compile stack defines, and the type
    of a sentinel of it, hold unread where the program has not imported that module (no
    Dynamo import to check them); another type (a config's), what is read further on (a
    standard-library module it imported, which the program can patch) or any other
    module's value is read, importing it."""
    program = (
        "import sys, torch\n"
        "from ccache_cli.key import assumptions as a\n"
        "from ccache_cli.store.assumptions import Assumption, Frame, SizeAssumptions\n"
        "def why(check, path, expected):\n"
        "    assumed = SizeAssumptions(Frame('os', 'f'), (Assumption(check, path, expected, 'ID_MATCH'),), 0)\n"
        "    return a.Checker(torch, assumed).program_mismatch(None, (), {}, function=lambda: None)\n"
        "dynamo = \"G['__import_torch_dot__dynamo_dot_utils']\"\n"
        "print(why('identity', dynamo + '.helper', 'function:torch._dynamo.utils.helper:0'), 'torch._dynamo' in sys.modules)\n"
        "sentinel = \"G['__import_torch_dot__dynamo_dot_polyfills_dot_builtins']._sentinel_missing\"\n"
        "print(why('type', sentinel, 'builtins.object'), 'torch._dynamo' in sys.modules)\n"
        "config = \"G['__import_torch_dot__inductor_dot_config'].max_autotune\"\n"
        "print(why('type', config, 'builtins.NoneType') is not None, 'torch._inductor.config' in sys.modules)\n"
        "further = \"G['__import_torch_dot__dynamo_dot_polyfills_dot_builtins'].functools.reduce\"\n"
        "print(why('identity', further, 'builtin:patched') is not None, 'torch._dynamo' in sys.modules)\n"
        "print(why('value', \"G['__import_json_dot_decoder'].NaN\", 'anything') is not None, 'json.decoder' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    expected = ["None", "False", "None", "False", "True", "True", "True", "True", "True", "True"]
    assert result.stdout.split() == expected, result.stderr


def test_code_digests_agree_across_processes_with_other_string_hashing() -> None:
    program = (
        "from ccache_cli.key.assumptions import code_digest\n"
        "def f(x):\n    return x in {'alpha', 'beta', 'gamma', 'delta'}\n"
        "print(code_digest(f.__code__))\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed}
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(digests) == 1 and len(next(iter(digests)).strip()) == 32


def test_paths_are_shown_as_a_program_writes_them() -> None:
    frame = Frame("mymodel", "Model.forward")
    assert paths.display_path("L['self']._modules['layers']._modules['0'].eps", frame, "self") == "layers.0.eps"
    assert paths.display_path("L['self'].config.mult", frame, "self") == "config.mult"
    generic = "object.__getattribute__(L['self'].config, 'output_hidden_states')"  # torch 2.11
    assert paths.display_path(generic, frame, "self") == "config.output_hidden_states"
    assert paths.display_path("G['SCALE']", frame, "self") == "mymodel.SCALE"
    assert paths.display_path("G['__import_a_dot_b'].x", frame, "self") == "a.b.x"


def test_torch_2_11_guard_forms_are_read_as_their_checks() -> None:
    """Forms that torch 2.13 no longer makes and this machine's Dynamo cannot produce:
    DICT_CONTAINS with `invert` (a key that must be absent), and HASATTR whose
    attribute is a method (each read of it makes a new bound method)."""
    entry = types.SimpleNamespace(has_value=True, value={"use_cache": False})
    assert guards._expected("DICT_CONTAINS", entry, None, "return_dict", True) == ["return_dict", False]
    assert guards._expected("DICT_CONTAINS", entry, None, "use_cache", None) == ["use_cache", True]
    blocks = torch.nn.ModuleList()
    assert guards._same_object(blocks.__iter__, blocks.__iter__)
    assert not guards._same_object(blocks.__iter__, torch.nn.ModuleList().__iter__)


def test_a_global_dynamo_installed_by_id_is_read_where_any_process_finds_it() -> None:
    """torch 2.11 installs a module it needs in the traced frame's globals under a name
    made of the module's id (`_140475869140272_c0`): the path goes through the module's
    import instead; any other value cannot be read in another process."""
    scope = {"_140475869140272_c0": torch, "_7_c1": torch.Tensor}
    frame = types.SimpleNamespace(global_scope=scope)
    found = guards._through_installed_global(frame, "G['_140475869140272_c0'].Tensor")
    assert found == ("G['__import_torch'].Tensor", None)
    assert paths.evaluate_one(found[0], {}, paths.Globals("json")) is torch.Tensor
    path, why = guards._through_installed_global(frame, "G['_7_c1'].__name__")
    assert why is not None and "installed by its id" in why
    assert guards._through_installed_global(frame, "G['SCALE']") == ("G['SCALE']", None)


def test_a_range_s_batch_dimension_takes_any_size_in_a_tensor_check() -> None:
    """A range's graph marks the batch dimension dynamic: a tensor the forward reads
    (transformers' `L['kwargs']['input_ids']`) is checked but for that dimension."""
    recorded = torch.zeros(16, 32, dtype=torch.int64)
    torch._dynamo.mark_dynamic(recorded, 0)
    expected = guards._expected("TENSOR_MATCH", types.SimpleNamespace(has_value=True, value=recorded), None, None, None)
    assert expected == ["torch.int64", [None, 32], "cpu"]
    assert a._observe("tensor", torch.ones(3, 32, dtype=torch.int64), expected) == expected
    assert a._observe("tensor", torch.ones(3, 31, dtype=torch.int64), expected) != expected
    static = ["torch.int64", [16, 32], "cpu"]
    assert a._observe("tensor", torch.ones(3, 32, dtype=torch.int64), static) != static
