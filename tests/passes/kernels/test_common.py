"""The kernel-swap passes share one base config (runs, threads, measure; exclude where layers are picked by name)."""

from __future__ import annotations

import pytest

from edgeopt.errors import RecipeError
from edgeopt.passes.base import build_pass, get_pass
from edgeopt.passes.kernels._common import KernelSwapConfig, LayerSwapConfig

PASSES = ("kernels.attention", "kernels.winograd", "kernels.fused_norm")


@pytest.mark.parametrize("name", PASSES)
def test_every_kernel_pass_extends_the_shared_config(name):
    config = get_pass(name).Config
    assert issubclass(config, KernelSwapConfig)
    assert (config().runs, config().threads, config().measure) == (5, None, True)
    for field, bad in (("runs", 0), ("threads", 0)):
        with pytest.raises(RecipeError, match=f"'{field}'") as e:
            build_pass(name, {field: bad})
        assert "\n" not in str(e.value)


def test_layer_picking_passes_take_exclude():
    assert issubclass(get_pass("kernels.attention").Config, LayerSwapConfig)
    assert issubclass(get_pass("kernels.winograd").Config, LayerSwapConfig)
    with pytest.raises(RecipeError, match="'exclude'"):
        build_pass("kernels.fused_norm", {"exclude": ["a"]})
