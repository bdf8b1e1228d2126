"""nn.smooth: Linears that read one tensor are found by running the model, and SmoothQuant's explicit scale in front
of them leaves the fp32 function as it was while moving the activation outliers into the weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgeopt.data import random_feeds
from edgeopt.nn.smooth import channel_scales, shared_input_linears, smooth_shared_inputs


def _batches(art, n=4, seed=0):
    feeds = random_feeds(art.input_spec, n, {"batch": 2, "sequence": 16}, seed=seed, vocab=120)
    return [tuple(torch.from_numpy(np.ascontiguousarray(f[k])) for k in art.input_spec.names) for f in feeds]


def test_query_key_value_are_the_linears_that_share_an_input(tiny_bert_torch):
    groups, act = shared_input_linears(tiny_bert_torch.module, _batches(tiny_bert_torch))
    assert [[n.rsplit(".", 1)[-1] for n in g] for g in groups] == [["query", "key", "value"]] * 2
    assert [g[0].split(".layer.")[1][0] for g in groups] == ["0", "1"]
    linears = [n for n, m in tiny_bert_torch.module.named_modules() if isinstance(m, nn.Linear)]
    assert set(act) <= set(linears) and all(a.shape == (32,) or a.shape == (64,) for a in act.values())


def test_a_chain_of_linears_has_no_shared_input():
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 4)).eval()
    groups, act = shared_input_linears(net, [(torch.randn(3, 8),) for _ in range(3)])
    assert groups == [] and set(act) == {"0", "2", "3"}


class Twice(nn.Module):
    """`a` reads x with `b`, then y with `c`: two groups share it, and one scale cannot serve both."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d, self.e = (nn.Linear(4, 4) for _ in range(5))

    def forward(self, x):
        y = self.a(x) + self.b(x)
        z = self.a(y) + self.c(y)
        return self.d(z) * self.e(z)


def test_a_linear_in_two_groups_keeps_both_groups_unscaled():
    torch.manual_seed(0)
    net = Twice().eval()
    ref = copy.deepcopy(net)
    batches = [(torch.randn(3, 4),) for _ in range(2)]
    groups, _ = shared_input_linears(net, batches)
    assert groups == [["d", "e"]]
    assert smooth_shared_inputs(net, batches)["linears"] == 2
    assert isinstance(net.a, nn.Linear) and type(net.d).__name__ == "ScaledLinear"
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), rtol=1e-4, atol=1e-6)


def test_smoothing_keeps_the_function_and_evens_out_the_outlier_channel(tiny_bert_torch):
    model = copy.deepcopy(tiny_bert_torch.module).eval()
    emb_ln = model.inner.encoder.embeddings.LayerNorm if hasattr(model, "inner") else None
    if emb_ln is None:
        emb_ln = next(m for n, m in model.named_modules() if n.endswith("embeddings.LayerNorm"))
    with torch.no_grad():
        emb_ln.weight[3] = 40.0  # one outlier channel into layer 0's query / key / value
    ref_model = copy.deepcopy(model)
    batches = _batches(tiny_bert_torch)
    q0 = next(n for n, _ in model.named_modules() if n.endswith("layer.0.attention.self.query"))
    before = shared_input_linears(model, batches)[1][q0]
    done = smooth_shared_inputs(model, batches, alpha=0.5)
    assert (done["groups"], done["linears"], done["alpha"]) == (2, 6, 0.5) and done["max_scale"] > 1
    scaled = model.get_submodule(q0)
    assert type(scaled).__name__ == "ScaledLinear" and isinstance(scaled.linear, nn.Linear)
    # the channel the scale divides most is the outlier, and the smoothed input's range is flatter
    assert int(torch.argmin(scaled.inv)) == 3
    after = before * scaled.inv
    assert float(after.max() / after.median()) < float(before.max() / before.median()) / 4
    with torch.no_grad():
        for args in _batches(tiny_bert_torch, seed=9):
            want, got = ref_model(*args), model(*args)
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_scales_and_a_bad_alpha():
    act, w = torch.tensor([4.0, 1.0]), torch.tensor([[1.0, 4.0], [0.5, 1.0]])
    assert torch.allclose(channel_scales(act, [w], 0.5), torch.tensor([2.0, 0.5]))
    with pytest.raises(ValueError, match="alpha must be in"):
        smooth_shared_inputs(nn.Linear(2, 2), [], alpha=1.0)
