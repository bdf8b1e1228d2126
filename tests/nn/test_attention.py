"""Attention-head pruning for users' models: nn.MultiheadAttention converted exactly, heads cut out of the weights
with the same outputs as masking them, head counts and exported graphs that shrink."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgeopt.nn import attention as A


class Block(nn.Module):
    """A transformer-ish classifier around nn.MultiheadAttention (what torch-pruning cannot shrink by heads)."""

    def __init__(self, dim: int = 96, heads: int = 48, classes: int = 3, batch_first: bool = True):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=batch_first)
        self.head = nn.Linear(dim, classes)
        self.batch_first = batch_first

    def forward(self, x):
        y = self.attn(x, x, x, need_weights=False)[0]
        return self.head(y.mean(1 if self.batch_first else 0))


@pytest.mark.parametrize("batch_first", [True, False])
def test_converted_multihead_attention_gives_the_same_outputs(batch_first):
    torch.manual_seed(0)
    m = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    p = A.PrunedMultiHeadAttention.from_multihead(m).eval()
    x = torch.randn(2, 7, 32) if batch_first else torch.randn(7, 2, 32)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    causal = torch.triu(torch.ones(7, 7, dtype=torch.bool), 1)
    for kw in ({}, {"key_padding_mask": pad}, {"attn_mask": causal, "key_padding_mask": pad}):
        torch.testing.assert_close(p(x, x, x, **kw)[0], m(x, x, x, need_weights=False, **kw)[0])


def _masked_reference(original: nn.Module, kept: list[list[int]], x: torch.Tensor) -> torch.Tensor:
    """The unpruned model with every dropped head's output zeroed (a head mask): what pruning must equal."""
    ref = copy.deepcopy(original)
    A.convert_multihead_attention(ref)
    units = A.find_attention(ref)[0]
    mask = torch.zeros(len(units), max(u.heads for u in units))
    for i, k in enumerate(kept):
        mask[i, k] = 1.0
    handles = A._mask_hooks(units, mask)
    try:
        with torch.no_grad():
            return A.logits_of(ref(x))
    finally:
        for h in handles:
            h.remove()


def test_sparsity_0_3_of_48_heads_leaves_34_with_the_masked_models_outputs_and_a_smaller_graph(tmp_path):
    torch.manual_seed(0)
    model = Block().eval()
    original = copy.deepcopy(model)
    x, y = torch.randn(64, 6, 96), torch.randint(0, 3, (64,))
    pruner = A.AttentionHeadPruner(model, A.PruningConfig(sparsity=0.3, use_gradients=True))
    assert isinstance(model.attn, A.PrunedMultiHeadAttention)
    pruner.prune((x, y))
    stats = pruner.get_stats()
    assert (stats["total_heads"], stats["active_heads"]) == (48, 34) and stats["importance"] == "gradient"
    assert stats["sparsity"] == pytest.approx(14 / 48)
    assert model.attn.num_heads == 34 and model.attn.q_proj.out_features == 34 * 2
    assert model.attn.out_proj.in_features == 68 and model.attn.out_proj.out_features == 96
    with torch.no_grad():
        torch.testing.assert_close(model(x), _masked_reference(original, pruner.kept, x), atol=1e-5, rtol=1e-5)
    sizes = {}
    for name, m in (("full", original), ("pruned", model)):
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(m, (x[:1],), str(path), input_names=["x"], opset_version=17, dynamo=False)
        sizes[name] = path.stat().st_size
    assert sizes["pruned"] < sizes["full"] * 0.85  # q/k/v rows and out columns of 14 heads are gone
    import onnxruntime as ort

    out = ort.InferenceSession(str(tmp_path / "pruned.onnx")).run(None, {"x": x[:1].numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), model(x[:1]).detach(), atol=1e-5, rtol=1e-4)


def test_activation_and_data_free_importance_and_per_layer_strategy():
    torch.manual_seed(1)
    model = nn.Sequential()
    model.add_module("a", Block(32, 8, batch_first=True))
    x = torch.randn(16, 5, 32)
    pr = A.AttentionHeadPruner(copy.deepcopy(model), A.PruningConfig(sparsity=0.5, strategy="layer",
                                                                      use_gradients=False))
    pr.prune(x)
    assert pr.get_stats()["active_heads"] == 4 and pr.get_stats()["importance"] == "activation"
    free = A.AttentionHeadPruner(copy.deepcopy(model), A.PruningConfig(sparsity=0.25))
    free.prune()  # no data: the heads' weight norms
    assert free.get_stats()["active_heads"] == 6 and free.get_stats()["importance"] == "magnitude"
    scores = A.HeadImportanceScorer(copy.deepcopy(model), "magnitude").score()
    assert scores.shape == (1, 8) and bool((scores > 0).all())


def test_hugging_face_bert_heads_per_layer():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=64, num_labels=2)
    model = transformers.BertForSequenceClassification(cfg).eval()
    original = copy.deepcopy(model)
    ids, labels = torch.randint(0, 50, (16, 8)), torch.randint(0, 2, (16,))
    pruner = A.AttentionHeadPruner(model, A.PruningConfig(sparsity=0.5, strategy="layer"))
    pruner.prune((ids, labels))
    stats = pruner.get_stats()
    assert (stats["total_heads"], stats["active_heads"]) == (12, 6) and set(stats["per_layer"].values()) == {2}
    assert model.bert.encoder.layer[0].attention.self.query.out_features == 16
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, _masked_reference(original, pruner.kept, ids),
                                   atol=1e-5, rtol=1e-4)


def test_bad_config_and_models_without_attention():
    with pytest.raises(ValueError, match="field 'sparsity'"):
        A.PruningConfig(sparsity=1.0)
    with pytest.raises(ValueError, match="field 'strategy'"):
        A.PruningConfig(strategy="random")
    with pytest.raises(ValueError, match="no attention block"):
        A.AttentionHeadPruner(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="needs data"):
        A.HeadImportanceScorer(Block(32, 4), "gradient").score()
