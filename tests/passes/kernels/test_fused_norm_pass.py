"""kernels.fused_norm: norm + activation pairs fused in nn.Sequential and in traced forwards, outputs unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.artifact import sha256_module
from edgeopt.errors import RecipeError
from edgeopt.kernels.fused_norm import GroupNormAct, LayerNormAct
from edgeopt.load import load_model
from edgeopt.passes.base import PassContext, build_pass


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, sharing one SiLU module (the diffusers ResNet block's shape)."""

    def __init__(self, c: int):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(4, c), nn.GroupNorm(4, c)
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.nonlinearity = nn.SiLU()

    def forward(self, x):
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = self.conv2(self.nonlinearity(self.norm2(h)))
        return x + h


class FunctionalAct(nn.Module):
    """LayerNorm then F.gelu(tanh) in the forward; a second LayerNorm whose output is also used raw."""

    def __init__(self, d: int):
        super().__init__()
        self.ln, self.ln_shared = nn.LayerNorm(d), nn.LayerNorm(d)
        self.act = nn.GELU()

    def forward(self, x):
        y = F.gelu(self.ln(x), approximate="tanh")
        z = self.ln_shared(y)
        return self.act(z) + z  # z is needed without the activation: must not be fused


class Untraceable(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm, self.act = nn.GroupNorm(2, c), nn.SiLU()

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.act(self.norm(x))
        return self.act(self.norm(-x))


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU(), ResBlock(8),
                      nn.GroupNorm(2, 8), nn.GELU(), Untraceable(8), nn.GroupNorm(2, 8), nn.ReLU())
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.GroupNorm):
                mod.weight.normal_()
                mod.bias.normal_()
    return m.eval()


def _count(module, cls):
    return sum(isinstance(m, cls) for m in module.modules())


def test_sequential_and_traced_pairs_are_fused(tmp_path):
    art = load_model(_model(), {"x": torch.randn(2, 3, 8, 8)})
    before = sha256_module(art.module)
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.fused_norm", {})(art, ctx)
    notes = ctx.notes["fused_norm"]
    assert notes["fused"] == {"1": "GroupNorm+silu", "4": "GroupNorm+gelu", "3.norm1": "GroupNorm+silu",
                              "3.norm2": "GroupNorm+silu"}
    assert _count(out.module, GroupNormAct) == 4
    assert _count(out.module, nn.GroupNorm) == 2  # the untraceable block's and the one before ReLU
    assert isinstance(out.module[2], nn.Identity) and isinstance(out.module[5], nn.Identity)
    assert "6.norm" in notes["skipped"] and "torch.fx" in notes["skipped"]["6.norm"]
    assert notes["unfused"] == {"7": "not followed by an activation"}
    assert any("6.norm" in w for w in ctx.warnings)
    per = notes["per_layer"]  # each fused pair before (norm, then activation) and after (one module)
    assert set(per) == set(notes["fused"])
    assert per["3.norm1"]["before"] == "GroupNorm -> SiLU" and per["3.norm1"]["after"] == "GroupNorm+silu"
    for rec in per.values():
        assert rec["input_shapes"] == [[2, 8, 8, 8]] and rec["rel_error"] < 1e-6 and rec["latency_ms"]["after"] > 0
        assert rec["peak_intermediate_bytes"] == {"before": 2 * 8 * 8 * 8 * 4, "after": 0}  # one tensor less
    for x in (torch.randn(2, 3, 8, 8), -torch.randn(1, 3, 5, 6).abs()):
        with torch.no_grad():
            assert torch.allclose(out.module(x), art.module(x), atol=1e-5)
    assert sha256_module(art.module) == before == art.sha256
    assert _count(art.module, GroupNormAct) == 0 and isinstance(art.module[3], ResBlock)
    # the stage holds no second copy of the weights: the convolutions' tensors are the input's own
    assert out.module[0].weight is art.module[0].weight and out.module[3].conv1.weight is art.module[3].conv1.weight


def test_functional_activation_fused_and_shared_output_left_alone(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), FunctionalAct(16)).eval()
    art = load_model(model, {"x": torch.randn(3, 5, 6)})
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.fused_norm", {})(art, ctx)
    notes = ctx.notes["fused_norm"]
    assert notes["fused"] == {"1.ln": "LayerNorm+gelu_tanh"}
    assert notes["skipped"] == {"1.ln_shared": "normalized output is also used without the activation"}
    assert _count(out.module, LayerNormAct) == 1 and _count(out.module, nn.LayerNorm) == 1
    x = torch.randn(4, 5, 6)
    with torch.no_grad():
        assert torch.allclose(out.module(x), model(x), atol=1e-5)


def test_native_backend_fuses_the_same_pairs_with_the_same_outputs(tmp_path):
    art = load_model(_model(), {"x": torch.randn(2, 3, 8, 8)})
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.fused_norm", {"backend": "native", "runs": 1})(art, ctx)
    fused = [m for m in out.module.modules() if isinstance(m, GroupNormAct)]
    assert len(fused) == 4 and {m.backend for m in fused} == {"native"} and ctx.notes["fused_norm"]["backend"] == "native"
    assert all(rec["rel_error"] < 1e-6 for rec in ctx.notes["fused_norm"]["per_layer"].values())
    for x in (torch.randn(2, 3, 8, 8), -torch.randn(1, 3, 5, 6).abs()):
        with torch.inference_mode():
            assert torch.allclose(out.module(x), art.module(x), atol=1e-5)


def test_native_backend_refused_in_one_line_where_it_cannot_be_built(no_native_compiler):
    with pytest.raises(RecipeError, match=r"'backend'.*native kernels cannot be used here: no C\+\+ compiler") as e:
        build_pass("kernels.fused_norm", {"backend": "native"})
    assert "\n" not in str(e.value)
    build_pass("kernels.fused_norm", {"backend": "eager"})  # the others do not need it


def test_norm_kinds_config_and_trace_off(tmp_path):
    art = load_model(_model(), {"x": torch.randn(1, 3, 8, 8)})
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.fused_norm", {"trace": False})(art, ctx)
    assert set(ctx.notes["fused_norm"]["fused"]) == {"1", "4"} and isinstance(out.module[3], ResBlock)
    ctx = PassContext(stage_dir=tmp_path)
    build_pass("kernels.fused_norm", {"norms": ["layer_norm"]})(art, ctx)
    assert ctx.notes["fused_norm"]["fused"] == {}


def test_transformer_without_pairs_is_unchanged(tiny_bert_torch, tmp_path):
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.fused_norm", {})(tiny_bert_torch, ctx)
    assert ctx.notes["fused_norm"]["fused"] == {} and out.sha256 == tiny_bert_torch.sha256


def test_config_errors(tmp_path):
    with pytest.raises(RecipeError, match="'backend'"):
        build_pass("kernels.fused_norm", {"backend": "triton"})
    with pytest.raises(RecipeError, match="norms"):
        build_pass("kernels.fused_norm", {"norms": ["batch_norm"]})


def test_vae_decoder_blocks_without_a_time_embedding_are_fused_and_still_run(tmp_path):
    """diffusers' ResnetBlock2D in a VAE has no time_emb_proj and is called with temb=None: traced with a
    placeholder its forward would add the embedding it does not have (TypeError at run time)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8,
                                  latent_channels=4).eval()
    z = torch.randn(1, 4, 8, 8)
    art = load_model(vae.decoder, {"sample": z})
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.fused_norm", {"measure": False})(art, ctx)
    fused = ctx.notes["fused_norm"]["fused"]
    assert any(k.endswith("resnets.0.norm1") for k in fused), fused  # the ResNet blocks' pairs were fused
    assert _count(out.module, GroupNormAct) == len(fused)
    with torch.no_grad():
        assert torch.allclose(out.module(z), vae.decoder(z), atol=1e-5)
