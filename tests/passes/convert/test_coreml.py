"""convert.coreml: an ML Program package with the torch model's names and shapes, fp16 by default, never measured here."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeopt.errors import PassError, RecipeError
from edgeopt.load import load_model
from edgeopt.passes.base import PassContext, build_pass
from edgeopt.passes.convert.coreml import NOT_MEASURED

pytest.importorskip("coremltools")


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


@pytest.fixture(scope="module")
def cnn():
    art = load_model(_cnn(), {"x": torch.randn(2, 3, 16, 16)})
    art.meta["output_names"] = ["logits"]
    return art


@pytest.fixture(scope="module")
def fp16(cnn, tmp_path_factory):
    stage = tmp_path_factory.mktemp("coreml16")
    ctx = PassContext(stage_dir=stage)
    return build_pass("convert.coreml", {})(cnn, ctx), ctx, stage


def test_package_is_written_alone(fp16):
    out, _, stage = fp16
    assert out.kind == "coreml" and out.path == stage / "model.mlpackage" and out.path.is_dir()
    assert [p.name for p in stage.iterdir()] == ["model.mlpackage"], "no temporary folder left"
    files = [p for p in out.path.rglob("*") if p.is_file()]
    assert any(p.name == "Manifest.json" for p in files) and out.size_bytes == sum(p.stat().st_size for p in files)


def test_structure_is_checked_and_recorded(fp16, cnn):
    out, ctx, _ = fp16
    notes = ctx.notes["coreml"]
    assert notes["measured"] is False and notes["why"] == NOT_MEASURED
    assert notes["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    assert [o["name"] for o in notes["outputs"]] == ["logits"] and notes["outputs"][0]["shape"] in ([1, 4], [])
    assert notes["ops"]["conv"] == 2 and notes["ops"]["linear"] == 1
    assert out.meta["coreml"]["precision"] == "fp16" and out.meta["coreml"]["batch"] == 1
    assert out.input_spec == cnn.input_spec


def test_fp16_default_stores_half_weights_and_fp32_does_not(fp16, cnn, tmp_path):
    ctx32 = PassContext(stage_dir=tmp_path)
    out32 = build_pass("convert.coreml", {"precision": "fp32", "minimum_deployment_target": "iOS16"})(cnn, ctx32)
    w16, w32 = fp16[1].notes["coreml"]["weights_dtype"], ctx32.notes["coreml"]["weights_dtype"]
    assert w16.get("FLOAT16", 0) >= 4 and "FLOAT32" not in w16, w16
    assert w32.get("FLOAT32", 0) >= 4 and "FLOAT16" not in w32, w32
    assert fp16[1].notes["coreml"]["ops"].get("cast", 0) >= 2 and "cast" not in ctx32.notes["coreml"]["ops"]
    assert out32.meta["coreml"]["minimum_deployment_target"] == "iOS16"


def test_bad_config_is_a_recipe_error():
    with pytest.raises(RecipeError, match="precision"):
        build_pass("convert.coreml", {"precision": "int3"})
    with pytest.raises(RecipeError, match="minimum_deployment_target"):
        build_pass("convert.coreml", {"minimum_deployment_target": "iOS12"})


class CumMax(nn.Module):
    def forward(self, x):
        return torch.cummax(x, 1)[0]


def test_unsupported_op_is_one_line_naming_it(tmp_path):
    art = load_model(CumMax(), {"x": torch.randn(1, 4, 4)})
    with pytest.raises(PassError) as e:
        build_pass("convert.coreml", {})(art, PassContext(stage_dir=tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "cummax" in msg, msg
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_digits_cnn(tmp_path):
    art = load_model("zoo:digits-cnn")
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("convert.coreml", {})(art, ctx)
    notes = ctx.notes["coreml"]
    assert notes["inputs"][0]["name"] == "image" and notes["outputs"][0]["name"] == "logits"
    assert notes["ops"]["conv"] == 40 and out.meta["coreml"]["precision"] == "fp16"
