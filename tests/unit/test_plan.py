"""The compile plan's facts about torch's modes, against torch's own list."""

from __future__ import annotations

import torch

from ccache_cli.precompile import plan
from ccache_cli.precompile.precompile import MODES


def test_the_modes_that_record_cuda_graphs_are_torch_s() -> None:
    recording = {mode for mode in MODES if torch._inductor.list_mode_options(mode).get("triton.cudagraphs")}
    assert recording == plan.CUDA_GRAPH_MODES


def test_packages_are_built_without_cuda_graphs_in_every_mode() -> None:
    for mode in MODES:
        assert "triton.cudagraphs" not in plan.package_configs(torch, mode)
