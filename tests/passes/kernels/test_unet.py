"""The kernel passes on a tiny diffusers UNet2DConditionModel: each swap's structural change and numeric equivalence."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from edgeopt.kernels.attention import IMPLS, EdgeoptAttnProcessor
from edgeopt.kernels.fused_norm import GroupNormAct
from edgeopt.kernels.layer_stats import relative_error
from edgeopt.kernels.winograd import WinogradConv2d
from edgeopt.load import load_model
from edgeopt.passes.base import PassContext, build_pass
from edgeopt.zoo.unet import build_unet

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def unet():
    module, example = build_unet("tiny", seed=0)
    art = load_model(module, example)
    with torch.no_grad():
        ref = module(*example.values())
    return art, example, ref


def _out(art, example):
    with torch.no_grad():
        return art.module(*example.values())


def _count(module, cls):
    return sum(isinstance(m, cls) for m in module.modules())


def _by_type(module, name):
    return {n: m for n, m in module.named_modules() if type(m).__name__ == name}


def test_fused_norm_fuses_every_resnet_block_pair(unet, tmp_path):
    art, example, ref = unet
    blocks = _by_type(art.module, "ResnetBlock2D")
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.fused_norm", {"runs": 1})(art, ctx)
    notes = ctx.notes["fused_norm"]
    assert set(notes["fused"]) == {f"{b}.norm{i}" for b in blocks for i in (1, 2)}
    assert set(notes["fused"].values()) == {"GroupNorm+silu"}
    assert _count(out.module, GroupNormAct) == 2 * len(blocks)
    # the blocks became traced GraphModules; the attention blocks' GroupNorms (no activation) stay plain
    traced = {n for n, m in out.module.named_modules() if isinstance(m, torch.fx.GraphModule)}
    plain = {n for n, m in out.module.named_modules() if isinstance(m, nn.GroupNorm)}
    assert traced == set(blocks) and plain == {n for n in notes["unfused"] if ".attentions." in n and n.endswith(".norm")} | {
        "unet.conv_norm_out"}
    assert "not traceable" in notes["skipped"]["unet.conv_norm_out"]  # UNet2DConditionModel.forward: left alone
    assert set(notes["per_layer"]) == set(notes["fused"])
    assert torch.allclose(_out(out, example), ref, atol=1e-5)
    assert not any(isinstance(m, torch.fx.GraphModule) for m in art.module.modules())  # input untouched


@pytest.mark.parametrize("impl", IMPLS)
def test_attention_processors_swapped_on_every_layer(unet, impl, tmp_path):
    art, example, ref = unet
    layers = _by_type(art.module, "Attention")
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.attention", {"impl": impl, "q_block": 32, "k_block": 48, "measure": False})(art, ctx)
    procs = {n: m.processor for n, m in _by_type(out.module, "Attention").items()}
    assert set(procs) == set(layers) and len(procs) == 8
    assert all(isinstance(p, EdgeoptAttnProcessor) and p.impl == impl for p in procs.values())
    assert {r["kind"] for r in ctx.notes["attention"]["layers"].values()} == {"diffusers"}
    assert relative_error(_out(out, example), ref) < 1e-5
    assert all(type(m.processor).__name__ == "AttnProcessor2_0" for m in layers.values())  # input untouched


def test_attention_auto_measures_self_and_cross_attention(unet, tmp_path):
    art, example, ref = unet
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.attention", {"impl": "auto", "runs": 1, "threads": 1})(art, ctx)
    layers = ctx.notes["attention"]["layers"]
    attn1 = layers["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1"]
    attn2 = layers["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2"]
    assert attn1["dims"] == {"B": 1, "nh": 2, "Tq": 256, "Tk": 256, "hs": 16}  # 16x16 latent: 256 tokens
    assert attn2["dims"] == {"B": 1, "nh": 2, "Tq": 256, "Tk": 8, "hs": 16}  # cross-attention to 8 text tokens
    assert set(attn1["measured"]) == set(IMPLS) and attn1["impl"] in IMPLS
    per = ctx.notes["attention"]["per_layer"]
    assert set(per) == set(layers) and all(r["before"] == "AttnProcessor2_0" for r in per.values())
    assert relative_error(_out(out, example), ref) < 1e-5


def test_custom_diffusers_processor_is_skipped_with_a_reason(unet, tmp_path):
    import copy

    art, example, _ = unet

    class Custom:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
            return hidden_states

    module = copy.deepcopy(art.module)
    name = "unet.mid_block.attentions.0.transformer_blocks.0.attn1"
    module.get_submodule(name).set_processor(Custom())
    ctx = PassContext(stage_dir=tmp_path)
    build_pass("kernels.attention", {"impl": "flash", "measure": False})(load_model(module, example), ctx)
    assert "Custom is not supported" in ctx.notes["attention"]["skipped"][name]
    assert name not in ctx.notes["attention"]["layers"] and len(ctx.notes["attention"]["layers"]) == 7


def test_winograd_swaps_eligible_convs_and_skips_the_rest(unet, tmp_path):
    art, example, ref = unet
    convs = {n: m for n, m in art.module.named_modules() if isinstance(m, nn.Conv2d)}
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.winograd", {"tile": 4, "measure": False})(art, ctx)
    notes = ctx.notes["winograd"]
    eligible = {n for n, c in convs.items() if c.kernel_size == (3, 3) and c.stride == (1, 1)}
    assert set(notes["replaced"]) == eligible and _count(out.module, WinogradConv2d) == len(eligible)
    assert "unet.conv_in" in eligible and "unet.up_blocks.0.upsamplers.0.conv" in eligible
    assert "stride" in notes["skipped"]["unet.down_blocks.0.downsamplers.0.conv"]
    assert "1x1" in notes["skipped"]["unet.down_blocks.0.attentions.0.proj_in"]
    assert relative_error(_out(out, example), ref) < 1e-5


def test_all_three_in_a_row_stay_close_to_the_untouched_unet(unet, tmp_path):
    art, example, ref = unet
    for i, (name, cfg) in enumerate([("kernels.fused_norm", {}), ("kernels.attention", {"impl": "flash"}),
                                     ("kernels.winograd", {"tile": 4})]):
        art = build_pass(name, {**cfg, "measure": False})(art, PassContext(stage_dir=tmp_path / str(i)))
    m = art.module
    assert _count(m, GroupNormAct) == 16 and _count(m, WinogradConv2d) > 10
    assert all(isinstance(a.processor, EdgeoptAttnProcessor) for a in _by_type(m, "Attention").values())
    assert relative_error(_out(art, example), ref) < 1e-5
