"""The compile plan's facts about torch's modes, against torch's own list."""

from __future__ import annotations

import torch

from ccache_cli.precompile import packages, plan
from ccache_cli.precompile.plan import MODES


def test_the_modes_that_record_cuda_graphs_are_torch_s() -> None:
    recording = {mode for mode in MODES if torch._inductor.list_mode_options(mode).get("triton.cudagraphs")}
    assert recording == plan.CUDA_GRAPH_MODES


def test_packages_are_built_without_cuda_graphs_in_every_mode() -> None:
    for mode in MODES:
        assert "triton.cudagraphs" not in plan.package_configs(torch, mode)


def test_static_sizes_and_ranges_keep_their_own_inputs() -> None:
    """`--sizes 2,1-64`: the size's package from its inputs, the range's from its own."""
    static, ranged = plan.CallInputs(("two",), {}), plan.CallInputs(("sixty-four",), {})
    assert packages.labelled({2: static}, {(1, 64): ranged}) == {"2": static, "1-64": ranged}
