"""edgeopt.llm.calibrate: calibration text runs through the model once per sequence, and the hooks always go."""

from __future__ import annotations

import pytest
import torch

from edgeopt.llm.calibrate import feed
from edgeopt.zoo.llm import TINYLLAMA_MINI, tinyllama


def test_feed_runs_each_sequence_and_removes_the_hooks():
    hf = tinyllama({**TINYLLAMA_MINI, "num_hidden_layers": 1, "vocab_size": 100})
    seen = []
    q = hf.model.layers[0].self_attn.q_proj
    feed(hf, [[1, 2, 3], [4, 5]], [q.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].shape[1]))])
    assert seen == [3, 2] and not q._forward_pre_hooks
    with pytest.raises(IndexError):  # a token id outside the vocabulary fails the forward pass ...
        feed(hf, [[1, 500]], [q.register_forward_pre_hook(lambda m, inp: None)])
    assert not q._forward_pre_hooks  # ... and the hook is gone all the same
    assert not torch.is_inference_mode_enabled()
