"""prune.heads: head counts and stats, pruned == masked numerically, generic q/k/v attention, ONNX export."""

from __future__ import annotations

import pytest
import torch
from helpers import run_onnx

from edgeopt.data import random_feeds
from edgeopt.errors import RecipeError
from edgeopt.nn import attention as nn_attention
from edgeopt.passes.base import PassContext, build_pass
from edgeopt.passes.compress import prune_heads as ph


@pytest.fixture()
def bert_ctx(tmp_path, tiny_bert_torch):
    feeds = random_feeds(tiny_bert_torch.input_spec, 16, {"batch": 1, "sequence": 16}, seed=3, vocab=120)
    return PassContext(stage_dir=tmp_path / "stage", calibration=feeds)


def test_half_the_heads_of_bert(tiny_bert_torch, bert_ctx):
    state = {k: v.clone() for k, v in tiny_bert_torch.module.state_dict().items()}
    out = build_pass("prune.heads", {"sparsity": 0.5, "recover": "none"})(tiny_bert_torch, bert_ctx)
    notes = bert_ctx.notes["prune.heads"]
    assert (notes["total_heads"], notes["active_heads"], notes["sparsity"]) == (8, 4, 0.5)
    assert out.meta["heads"] == {"total_heads": 8, "active_heads": 4, "sparsity": 0.5}
    layers = out.module.encoder.encoder.layer
    for layer, n in zip(layers, notes["per_layer"].values()):
        att = layer.attention.self
        assert att.query.out_features == att.key.out_features == att.value.out_features == n * 8
        assert layer.attention.output.dense.in_features == n * 8 and att.num_attention_heads == n
    assert all(torch.equal(tiny_bert_torch.module.state_dict()[k], v) for k, v in state.items()), "input untouched"


def test_pruned_equals_masked(tiny_bert_torch, bert_ctx):
    """Cutting heads out of the weights computes exactly what zeroing them with a head mask does."""
    out = build_pass("prune.heads", {"sparsity": 0.5, "recover": "none", "importance": "activation"})(tiny_bert_torch, bert_ctx)
    kept = bert_ctx.notes["prune.heads"]["kept"]
    units, _ = ph.find_attention(tiny_bert_torch.module)
    mask = torch.zeros(len(units), 4)
    for i, u in enumerate(units):
        mask[i, kept[u.name]] = 1.0
    ids = tiny_bert_torch.meta["example_inputs"]
    handles = nn_attention._mask_hooks(units, mask)
    try:
        with torch.no_grad():
            masked = tiny_bert_torch.module(**ids)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        assert torch.allclose(out.module(**ids), masked, atol=1e-5)


def test_pruned_bert_exports_to_onnx(tiny_bert_torch, bert_ctx, tmp_path):
    out = build_pass("prune.heads", {"sparsity": 0.5, "train": {"epochs": 1}})(tiny_bert_torch, bert_ctx)
    assert "fit" in bert_ctx.notes["prune.heads"]
    onnx_art = build_pass("convert.onnx", {})(out, PassContext(stage_dir=tmp_path / "onnx"))
    feeds = random_feeds(onnx_art.input_spec, 2, {"batch": 2, "sequence": 16}, seed=1, vocab=120)
    got = run_onnx(onnx_art.path, feeds)
    with torch.no_grad():
        want = [out.module(*(torch.from_numpy(f[n]) for n in onnx_art.input_spec.names)).numpy() for f in feeds]
    assert all(abs(g - w).max() < 1e-4 for g, w in zip(got, want))


class _MHA(torch.nn.Module):
    """A plain multi-head self-attention with separate q/k/v projections and an explicit head count."""

    def __init__(self, dim: int = 32, heads: int = 8):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj, self.v_proj = (torch.nn.Linear(dim, dim) for _ in range(3))
        self.out_proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = self.v_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        y = torch.softmax(q @ k.transpose(-2, -1) / self.head_dim ** 0.5, -1) @ v  # (B, nh, T, hs)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, -1)).mean(1)  # (B, dim)


def test_generic_attention_layer_scope(tmp_path):
    from edgeopt.load import load_model

    torch.manual_seed(0)
    art = load_model(torch.nn.Sequential(_MHA(), torch.nn.Linear(32, 5)).eval(), {"x": torch.randn(4, 6, 32)})
    feeds = [{"x": torch.randn(8, 6, 32).numpy(), "__label__": torch.randint(0, 5, (8,)).numpy()} for _ in range(4)]
    ctx = PassContext(stage_dir=tmp_path, calibration=feeds)
    out = build_pass("prune.heads", {"sparsity": 0.25, "scope": "layer", "recover": "none"})(art, ctx)
    att = out.module[0]
    assert att.num_heads == 6 and att.q_proj.out_features == 24 and att.out_proj.in_features == 24
    assert ctx.notes["prune.heads"]["metric"] == "accuracy"
    assert out.module(torch.randn(2, 6, 32)).shape == (2, 5)


def test_zero_sparsity_keeps_the_function(tiny_bert_torch, bert_ctx):
    out = build_pass("prune.heads", {"sparsity": 0.0, "recover": "none"})(tiny_bert_torch, bert_ctx)
    ids = tiny_bert_torch.meta["example_inputs"]
    with torch.no_grad():
        assert torch.equal(out.module(**ids), tiny_bert_torch.module(**ids))


def test_choose_heads_keeps_min_heads_and_ranks():
    score = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.01, 0.02, 0.03, 0.04]], dtype=torch.float64)
    assert ph.choose_heads(score, [4, 4], 0.5, "layer", 1) == [[1, 2], [2, 3]]
    keep = ph.choose_heads(score, [4, 4], 0.75, "global", 1)
    assert all(len(k) >= 1 for k in keep) and sum(map(len, keep)) == 2


def test_model_without_attention_and_bad_sparsity(tiny_mlp_torch, tmp_path):
    from edgeopt.errors import PassError

    with pytest.raises(PassError, match="no attention block"):
        build_pass("prune.heads", {})(tiny_mlp_torch, PassContext(stage_dir=tmp_path))
    with pytest.raises(RecipeError, match="sparsity"):
        build_pass("prune.heads", {"sparsity": 1.0})


def test_obs_heads_equal_per_layer_and_compensated(tiny_bert_torch, tmp_path):
    """importance obs: every layer loses the same number of heads, the meta tells graph.fuse the new head count,
    and the compensated output projection keeps the output closer than cutting the same heads uncompensated."""
    import numpy as np

    rng = np.random.default_rng(4)
    feeds = []
    for _ in range(64):
        ids = np.zeros((1, 16), np.int64)
        n = int(rng.integers(4, 17))
        ids[0, :n] = rng.integers(1, 120, n)
        feeds.append({"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64), "token_type_ids": 0 * ids})
    ctx = PassContext(stage_dir=tmp_path / "obs", calibration=feeds)
    out = build_pass("prune.heads", {"sparsity": 0.5, "importance": "obs", "recover": "none"})(tiny_bert_torch, ctx)
    notes = ctx.notes["prune.heads"]
    assert list(notes["per_layer"].values()) == [2, 2]
    assert out.meta["num_heads"] == 2 and out.meta["hidden_size"] == 16
    # the same heads cut without compensation: original weights, masked
    units, _ = ph.find_attention(tiny_bert_torch.module)
    mask = torch.zeros(len(units), 4)
    for i, u in enumerate(units):
        mask[i, notes["kept"][u.name]] = 1.0
    x = tuple(torch.from_numpy(np.concatenate([f[k] for f in feeds[:32]])) for k in tiny_bert_torch.input_spec.names)
    with torch.no_grad():
        ref = tiny_bert_torch.module(*x)
        handles = nn_attention._mask_hooks(units, mask)
        try:
            masked = tiny_bert_torch.module(*x)
        finally:
            for h in handles:
                h.remove()
        pruned = out.module(*x)
    cos = torch.nn.functional.cosine_similarity
    assert float(cos(pruned, ref).mean()) > float(cos(masked, ref).mean())


def test_unequal_heads_turn_attention_fusion_off(tiny_bert_torch, bert_ctx, monkeypatch):
    """Head counts that differ per layer cannot be one Attention num_heads: the meta says 0 (ORT leaves attention
    unfused, the model stays correct) and a warning names scope: layer."""
    monkeypatch.setattr(ph, "choose_heads", lambda *a, **k: [[0, 1, 2], [3]])
    out = build_pass("prune.heads", {"sparsity": 0.5, "recover": "none"})(tiny_bert_torch, bert_ctx)
    assert list(bert_ctx.notes["prune.heads"]["per_layer"].values()) == [3, 1]
    assert out.meta["num_heads"] == 0 and out.meta["hidden_size"] == 0
    assert any("scope: layer" in w for w in bert_ctx.warnings)
