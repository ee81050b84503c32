"""Which functools.wraps layers of a compiled function stay plain Python around the
stored code (serve/unwrapping.py `unwrap`): only those that do nothing with the function
they wrap but call it, outside any try or with block, without asking whether they are
compiled, and never past torch.compiler.disable. Any other layer is compiled whole, as
torch.compile would. And the call a stored copy gets: every argument given, defaults as
the function holds them now (`with_defaults`)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from hypothesis import given
from hypothesis import strategies as st

from ccache_cli.serve.unwrapping import unwrap, with_defaults


def passing(f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return {"out": f(*args, **kwargs)}

    return wrapper


def catching(f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(x: Any) -> Any:
        try:
            return f(x)
        except Exception:  # would catch what torch.compile raises
            return torch.zeros_like(x)

    return wrapper


def reading(f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(*args: Any) -> Any:  # as transformers' merge_with_config_defaults
        return f(**dict(zip(f.__code__.co_varnames, args)))

    return wrapper


def keyed(f: Callable[..., Any]) -> Callable[..., Any]:
    seen: dict[Any, int] = {}

    @functools.wraps(f)
    def wrapper(x: Any) -> Any:
        seen[f] = seen.get(f, 0) + 1
        return f(x)

    return wrapper


def asking(f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(x: Any) -> Any:
        return f(x) + (0 if torch.compiler.is_compiling() else 100)

    return wrapper


def rebinding(f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(x: Any) -> Any:
        nonlocal f
        result = f(x)
        f = torch.neg
        return result

    return wrapper


def binding(f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(x: Any) -> Any:
        return f.__get__(x)()  # a call, but of something of the function's

    return wrapper


def add_one(x: Any) -> Any:
    return x + 1


def test_a_layer_that_only_calls_its_function_stays_python() -> None:
    unwrapped = unwrap(passing(passing(add_one)))
    assert unwrapped is not None and len(unwrapped.layers) == 2 and unwrapped.inner is add_one


def test_a_layer_that_catches_reads_keys_or_asks_is_compiled_whole() -> None:
    for decorator in (catching, reading, keyed, asking, rebinding, binding):
        compiled = passing(decorator(add_one))
        unwrapped = unwrap(compiled)
        assert unwrapped is not None and len(unwrapped.layers) == 1, decorator.__name__
        assert unwrapped.inner is unwrapped.layers[0][0].__wrapped__ is not add_one


def test_nothing_past_torch_compiler_disable_is_unwrapped() -> None:
    compiled = passing(torch.compiler.disable(add_one))
    unwrapped = unwrap(compiled)
    assert unwrapped is not None and unwrapped.layers == () and unwrapped.inner is compiled


def parameters(a, b=2, /, c=3, d=4, *, e=5, f=6, **more):  # noqa: ANN001, ANN003, ANN201
    return (a, b, c, d, e, f, more)


@given(positional=st.integers(1, 4), by_keyword=st.sets(st.sampled_from("bcdefg")))
def test_a_call_with_defaults_names_every_argument_as_the_function_holds_it_now(
    positional: int, by_keyword: set[str]
) -> None:
    """`b` by keyword is one of **more (b is positional-only), `g` too."""
    args = tuple(range(10, 10 + positional))
    kwargs = {name: 20 for name in by_keyword if name not in "abcd"[:positional] or name == "b"}
    parameters.__defaults__ = (32, 33, 34)  # as a program may set them after compiling
    full_args, full_kwargs = with_defaults(parameters, args, kwargs)
    assert parameters(*full_args, **full_kwargs) == parameters(*args, **kwargs)
    bound = inspect.signature(parameters).bind(*full_args, **full_kwargs)
    assert [name for name in bound.arguments if name != "more"] == list("abcdef")  # no default left to fill in
