"""kernels.winograd: eligible convs replaced (count), ineligible ones kept with reasons, outputs unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeopt.artifact import sha256_module
from edgeopt.errors import PassError, RecipeError
from edgeopt.kernels.winograd import WinogradConv2d
from edgeopt.load import load_model
from edgeopt.passes.base import PassContext, build_pass, get_pass


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),                 # eligible
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),       # stride 2
        nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),       # groups
        nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(),     # dilation
        nn.Conv2d(8, 8, 1),                                       # 1x1
        nn.Conv2d(8, 6, 3, padding="same", padding_mode="reflect"),  # eligible
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()


@pytest.fixture()
def cnn_art():
    return load_model(_cnn(), {"x": torch.randn(2, 3, 14, 14)})


def _count(module, cls):
    return sum(isinstance(m, cls) for m in module.modules())


def test_fixed_tile_replaces_eligible_convs_and_keeps_outputs(cnn_art, tmp_path):
    before = sha256_module(cnn_art.module)
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.winograd", {"tile": 4})(cnn_art, ctx)
    assert out.kind == "torch" and out.module is not cnn_art.module
    assert _count(out.module, WinogradConv2d) == 2
    assert _count(out.module, nn.Conv2d) == 4
    notes = ctx.notes["winograd"]
    assert notes["replaced"] == {"0": 4, "9": 4}
    assert set(notes["skipped"]) == {"2", "4", "6", "8"}
    assert "stride" in notes["skipped"]["2"] and "groups" in notes["skipped"]["4"]
    assert "dilation" in notes["skipped"]["6"] and "1x1" in notes["skipped"]["8"]
    assert len(ctx.warnings) == 1 and "stride" in ctx.warnings[0]
    x = torch.randn(3, 3, 14, 14)
    with torch.no_grad():
        assert torch.allclose(out.module(x), cnn_art.module(x), atol=1e-5)
    # the input artifact's module is untouched
    assert sha256_module(cnn_art.module) == before == cnn_art.sha256
    assert _count(cnn_art.module, WinogradConv2d) == 0


def test_auto_tunes_each_layer_within_the_budget(cnn_art, tmp_path):
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.winograd", {"tile": "auto", "runs": 1, "threads": 1})(cnn_art, ctx)
    notes = ctx.notes["winograd"]
    assert set(notes["tuning"]) == {"0", "2", "4", "6", "8", "9"}
    assert set(notes["replaced"]) | set(notes["kept_direct"]) == {"0", "9"}
    for name, tile in notes["replaced"].items():
        assert tile in (2, 4, 6)  # F(8x8) exceeds the default 1e-5 budget
        assert "F8" in notes["tuning"][name]["refused"]
        assert notes["tuning"][name]["choice"] == f"F{tile}"
    assert _count(out.module, WinogradConv2d) == len(notes["replaced"])
    x = torch.randn(2, 3, 14, 14)
    with torch.no_grad():
        assert torch.allclose(out.module(x), cnn_art.module(x), atol=1e-5)


def test_exclude_and_model_without_convs(cnn_art, tiny_mlp_torch, tmp_path):
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.winograd", {"exclude": ["0"]})(cnn_art, ctx)
    assert ctx.notes["winograd"]["replaced"] == {"9": 4}
    assert ctx.notes["winograd"]["skipped"]["0"] == "excluded by config"
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.winograd", {})(tiny_mlp_torch, ctx)
    assert ctx.notes["winograd"]["replaced"] == {} and out.sha256 == tiny_mlp_torch.sha256


def test_config_errors_are_one_line_and_name_the_field(cnn_art, tmp_path):
    with pytest.raises(RecipeError, match="'tile'"):
        build_pass("kernels.winograd", {"tile": 5})
    with pytest.raises(RecipeError, match="'error_budget'"):
        build_pass("kernels.winograd", {"error_budget": 0})
    with pytest.raises(ValueError, match="error_budget"):
        get_pass("kernels.winograd").Config(error_budget=-1e-5)
    art = load_model(_cnn(), torch.randn(1, 3, 8, 8))
    art.meta.pop("example_inputs")
    with pytest.raises(PassError, match="example inputs"):
        build_pass("kernels.winograd", {"tile": "auto", "runs": 1})(art, PassContext(stage_dir=tmp_path))
