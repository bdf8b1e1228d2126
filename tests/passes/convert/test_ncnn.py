"""convert.ncnn: pnnx's .param/.bin only (no side files), blob names mapped to torch's, outputs equal to PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeopt.errors import PassError
from edgeopt.load import load_model
from edgeopt.measure.ncnn import NcnnRunner, read_param
from edgeopt.passes.base import PassContext, build_pass
from edgeopt.passes.convert._export import relative_error

pytest.importorskip("pnnx")
pytest.importorskip("ncnn")


class TwoHeads(nn.Module):
    """Two inputs (an image and a vector), two outputs (logits and the feature map): the name mapping's test."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 + 4, 5)

    def forward(self, image, extra):
        f = torch.relu(self.bn(self.conv(image)))
        return self.fc(torch.cat([f.mean((2, 3)), 2 * extra], 1)), f


def _runner(art, threads: int = 1) -> NcnnRunner:
    info = art.meta["ncnn"]
    return NcnnRunner(art.path, threads, input_names=art.input_spec.names, output_names=info["outputs"],
                      fp16=info["fp16"], output_shapes=info["output_shapes"])


def _feed(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((batch, 3, 12, 12)).astype(np.float32),
            "extra": rng.standard_normal((batch, 4)).astype(np.float32)}


@pytest.fixture(scope="module")
def two_heads():
    torch.manual_seed(0)
    m = TwoHeads().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 1.5)
    return load_model(m, {k: torch.from_numpy(v) for k, v in _feed(2, 0).items()})


@pytest.fixture(scope="module")
def converted(two_heads, tmp_path_factory):
    stage = tmp_path_factory.mktemp("ncnn")
    ctx = PassContext(stage_dir=stage, evaluation=[_feed(2, 5)])
    return build_pass("convert.ncnn", {})(two_heads, ctx), ctx, stage


def test_only_param_and_bin_are_kept(converted):
    out, _, stage = converted
    assert out.kind == "ncnn" and out.path == stage / "model.ncnn.param"
    assert sorted(p.name for p in stage.iterdir()) == ["model.ncnn.bin", "model.ncnn.param"]
    assert out.size_bytes == sum(p.stat().st_size for p in stage.iterdir())


def test_blob_names_are_recorded_and_mapped(converted, two_heads):
    out, ctx, _ = converted
    info = out.meta["ncnn"]
    assert info["inputs"] == ["in0", "in1"] and info["outputs"] == ["out0", "out1"]
    assert info["input_names"] == ["image", "extra"] and info["fp16"] is False
    assert info["output_shapes"] == [[5], [8, 12, 12]]
    assert out.input_spec == two_heads.input_spec
    layers = ctx.notes["ncnn"]["layers"]
    assert layers["Convolution"] == 1 and layers["InnerProduct"] == 1 and "BatchNorm" not in layers  # bn folded
    assert ctx.notes["ncnn"]["validation"]["max_rel_error"] <= 1e-4


@pytest.mark.parametrize("batch", [1, 3])
def test_fp32_outputs_equal_torch(converted, two_heads, batch):
    out = converted[0]
    feed = _feed(batch, 11 + batch)
    with torch.no_grad():
        want = [t.numpy() for t in two_heads.module(*(torch.from_numpy(feed[n]) for n in two_heads.input_spec.names))]
    with _runner(out, threads=2) as r:
        got = r.run(feed)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert relative_error(want, got) <= 1e-4


def test_fp16_stores_half_weights(two_heads, converted, tmp_path):
    out16 = build_pass("convert.ncnn", {"fp16": True})(two_heads, PassContext(stage_dir=tmp_path))
    out32 = converted[0]
    assert out16.meta["ncnn"]["fp16"] is True
    assert out16.path.with_suffix(".bin").stat().st_size < 0.75 * out32.path.with_suffix(".bin").stat().st_size
    feed = _feed(2, 3)
    with _runner(out16) as r16, _runner(out32) as r32:
        a, b = r16.run(feed), r32.run(feed)
    assert 0 < relative_error(b, a) < 1e-2  # really rounded to half, still close


class Sorts(nn.Module):
    def forward(self, x):
        return torch.sort(x, dim=-1)[0] + 1


def test_unsupported_op_is_one_line_naming_it(tmp_path):
    art = load_model(Sorts(), {"x": torch.randn(1, 4, 4)})
    with pytest.raises(PassError) as e:
        build_pass("convert.ncnn", {})(art, PassContext(stage_dir=tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "aten::sort" in msg, msg
    assert list(tmp_path.iterdir()) == [], "nothing half-written, no pnnx side files"


@pytest.mark.slow
def test_digits_cnn_matches_torch(tmp_path):
    art = load_model("zoo:digits-cnn")
    out = build_pass("convert.ncnn", {})(art, PassContext(stage_dir=tmp_path))
    assert read_param(out.path).inputs == ("in0",) and out.meta["ncnn"]["output_names"] == ["logits"]
    x = np.random.default_rng(0).uniform(-1, 1, (3, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = art.module(torch.from_numpy(x)).numpy()
    with _runner(out, threads=2) as r:
        for b in (1, 3):
            (got,) = r.run({"image": x[:b]})
            assert got.shape == want[:b].shape and relative_error([want[:b]], [got]) <= 1e-4


def test_a_relative_stage_folder_works(two_heads, tmp_path, monkeypatch):
    """The pipeline's stage folders are relative to the working directory (runs/x/ncnn); pnnx runs in its own."""
    monkeypatch.chdir(tmp_path)
    out = build_pass("convert.ncnn", {})(two_heads, PassContext(stage_dir=Path("runs/stage"), evaluation=[_feed(2, 5)]))
    assert out.path.exists() and sorted(p.name for p in (tmp_path / "runs/stage").iterdir()) == [
        "model.ncnn.bin", "model.ncnn.param"]
