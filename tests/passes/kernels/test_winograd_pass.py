"""kernels.winograd: eligible convs replaced (count), ineligible ones kept with reasons, outputs unchanged,
per-layer measurements in the notes, and the swapped model exports to ONNX."""

from __future__ import annotations

import json

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
    per = notes["per_layer"]  # measured on the input each layer sees in the example run
    assert set(per) == {"0", "9"}
    assert per["0"]["input_shapes"] == [[2, 3, 14, 14]] and per["9"]["input_shapes"] == [[2, 8, 7, 7]]
    for rec in per.values():
        assert rec["before"] == "Conv2d (direct)" and rec["after"] == "F4"
        assert rec["latency_ms"]["before"] > 0 and rec["latency_ms"]["after"] > 0
        assert rec["throughput_per_s"]["after"] == pytest.approx(2000 / rec["latency_ms"]["after"])
        assert rec["rel_error"] < 1e-5 and rec["max_abs_error"] < 1e-4
        assert rec["peak_intermediate_bytes"]["after"] == rec["extra_bytes"]["tiles"] > 0
    json.dumps(notes)  # the ledger stores the notes as JSON
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
    for budget in (0, 1.0, -1e-5):  # impossible budgets: one line naming the field
        with pytest.raises(RecipeError, match="'error_budget'") as e:
            build_pass("kernels.winograd", {"error_budget": budget})
        assert "\n" not in str(e.value)
    with pytest.raises(RecipeError, match="'tiles"):
        build_pass("kernels.winograd", {"tile": "auto", "tiles": [3]})
    with pytest.raises(ValueError, match="error_budget"):
        get_pass("kernels.winograd").Config(error_budget=-1e-5)
    art = load_model(_cnn(), torch.randn(1, 3, 8, 8))
    art.meta.pop("example_inputs")
    with pytest.raises(PassError, match="example inputs"):
        build_pass("kernels.winograd", {"tile": "auto", "runs": 1})(art, PassContext(stage_dir=tmp_path))


def test_fixed_tile_without_example_inputs_skips_measurement(tmp_path):
    art = load_model(_cnn(), torch.randn(1, 3, 8, 8))
    art.meta.pop("example_inputs")
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.winograd", {"tile": 2})(art, ctx)
    assert ctx.notes["winograd"]["replaced"] == {"0": 2, "9": 2} and ctx.notes["winograd"]["per_layer"] == {}
    assert any("per-layer measurement skipped" in w for w in ctx.warnings)
    assert _count(out.module, WinogradConv2d) == 2


@pytest.mark.parametrize("tile", [2, 4, 6])
def test_swapped_model_exports_to_onnx_and_runs(cnn_art, tile, tmp_path, capfd):
    """The bug this guards: an `unfold`-based module failed convert.onnx ("Unsupported: ONNX export of operator
    Unfold") after hundreds of lines on stderr."""
    import numpy as np
    from helpers import run_onnx

    swapped = build_pass("kernels.winograd", {"tile": tile, "measure": False})(cnn_art, PassContext(stage_dir=tmp_path / "w"))
    onnx_art = build_pass("convert.onnx", {})(swapped, PassContext(stage_dir=tmp_path / "onnx"))
    assert onnx_art.kind == "onnx" and onnx_art.path.exists()
    x = np.random.default_rng(0).standard_normal((3, 3, 14, 14)).astype(np.float32)  # another batch size
    (y,) = run_onnx(onnx_art.path, [{"x": x}])
    with torch.no_grad():
        ref = cnn_art.module(torch.from_numpy(x)).numpy()
    assert y.shape == ref.shape and np.abs(y - ref).max() < 1e-4
    err = capfd.readouterr().err
    assert "Unfold" not in err and len(err.splitlines()) < 5, err[:500]


def test_fixed_tile_over_the_error_budget_is_refused(tmp_path):
    """A fixed F8 tile on a bf16 model would be badly wrong: it is skipped with the reason, not used."""
    import torch
    from torch import nn

    from edgeopt.load import load_model
    from edgeopt.passes.base import PassContext, build_pass

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1)).to(torch.bfloat16).eval()
    art = load_model(m, {"x": torch.randn(1, 8, 16, 16).to(torch.bfloat16)})
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.winograd", {"tile": 8, "measure": False})(art, ctx)
    assert ctx.notes["winograd"]["replaced"] == {}
    assert "exceeds the error budget" in ctx.notes["winograd"]["skipped"]["0"]
    assert isinstance(out.module[0], nn.Conv2d)


def test_native_backend_is_recorded_and_rebuilt(native_ops, cnn_art, tmp_path):
    from edgeopt.artifact import Artifact

    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.winograd", {"tile": 4, "backend": "native", "runs": 1})(cnn_art, ctx)
    notes = ctx.notes["winograd"]
    assert notes["replaced"] == {"0": 4, "9": 4} and notes["backend"] == "native"
    assert notes["backends"] == {"0": "native", "9": "native"}
    assert {r["after"] for r in notes["per_layer"].values()} == {"F4-native"}
    assert all(r["rel_error"] < 1e-5 and r["extra_bytes"]["tiles"] > 0 for r in notes["per_layer"].values())
    assert all(m.backend == "native" for m in out.module.modules() if isinstance(m, WinogradConv2d))
    x = torch.randn(3, 3, 14, 14)
    with torch.no_grad():
        assert torch.allclose(out.module(x), cnn_art.module(x), atol=1e-5)
    saved = out.save_weights(tmp_path / "saved", cnn_art.sha256)  # resume: rebuilt with the native backend
    back = Artifact.from_weights(saved.path, cnn_art)
    assert [m.backend for m in back.module.modules() if isinstance(m, WinogradConv2d)] == ["native", "native"]


def test_native_auto_tunes_native_tiles_and_refuses_other_fixed_tiles(native_ops, cnn_art, tmp_path):
    ctx = PassContext(stage_dir=tmp_path)
    build_pass("kernels.winograd", {"tile": "auto", "tiles": [2, 4, 6], "backend": "native", "runs": 1,
                                    "threads": 1, "measure": False})(cnn_art, ctx)
    notes = ctx.notes["winograd"]
    for name in ("0", "9"):
        assert set(notes["tuning"][name]["candidates"]) == {"direct", "F2-native", "F4-native", "F6"}
    for name, tile in notes["replaced"].items():
        assert notes["backends"][name] == ("native" if tile in (2, 4) else "torch")
    with pytest.raises(RecipeError, match="'backend'.*computes tiles 2 and 4, not tile 6"):
        build_pass("kernels.winograd", {"tile": 6, "backend": "native"})


def test_native_backend_keeps_a_unet_within_the_error_budget(native_ops, tmp_path):
    pytest.importorskip("diffusers")
    from edgeopt.kernels.layer_stats import relative_error
    from edgeopt.zoo.unet import build_unet

    module, example = build_unet("tiny", seed=0)
    art = load_model(module, example)
    with torch.no_grad():
        ref = module(*example.values())
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.winograd", {"tile": 4, "backend": "native", "measure": False})(art, ctx)
    swapped = [m for m in out.module.modules() if isinstance(m, WinogradConv2d)]
    assert len(swapped) > 10 and all(m.backend == "native" for m in swapped)
    with torch.no_grad():
        y = out.module(*example.values())
    assert relative_error(y, ref) < 1e-5  # the pass's default error budget


def test_native_backend_exports_to_onnx_through_the_pytorch_ops(native_ops, cnn_art, tmp_path):
    import numpy as np
    from helpers import run_onnx

    swapped = build_pass("kernels.winograd", {"tile": 4, "backend": "native", "measure": False})(
        cnn_art, PassContext(stage_dir=tmp_path / "w"))
    onnx_art = build_pass("convert.onnx", {})(swapped, PassContext(stage_dir=tmp_path / "onnx"))
    x = np.random.default_rng(1).standard_normal((2, 3, 14, 14)).astype(np.float32)
    (y,) = run_onnx(onnx_art.path, [{"x": x}])
    with torch.no_grad():
        ref = cnn_art.module(torch.from_numpy(x)).numpy()
    assert np.abs(y - ref).max() < 1e-4
