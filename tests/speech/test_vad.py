"""Silero VAD's stages judged as a VAD: frame decisions against the package's streaming original; the LSTM quantized."""

from __future__ import annotations

import numpy as np
import onnx

from edgeopt.measure.runners import make_runner
from edgeopt.speech import vad
from edgeopt.target import get_target
from edgeopt.zoo import speech


def test_agreement():
    assert vad.agreement(np.array([0.1, 0.9, 0.6]), np.array([0.2, 0.7, 0.4])) == 2 / 3


def test_stages_keep_the_decisions_and_int8_quantizes_the_lstm(tmp_path):
    arts = vad.build(tmp_path, get_target("auto"))
    ops = {n.op_type for n in onnx.load(str(arts["onnx"].path)).graph.node}
    assert "LSTM" in ops  # one LSTM over the chunk sequence, not a loop of cells
    q_ops = {n.op_type for n in onnx.load(str(arts["int8-dynamic"].path)).graph.node}
    assert "DynamicQuantizeLSTM" in q_ops and "LSTM" not in q_ops
    x = np.concatenate([np.zeros(8000, np.float32), speech.synthesize(5), np.zeros(8000, np.float32)])
    x = x[: x.size // 512 * 512]
    ref = vad.streaming_reference(x)
    got = {name: np.asarray(make_runner(arts[name], threads=1).run({"audio": x[None]})[0])[0]
           for name in ("onnx", "int8-dynamic", "int8-with-conv", "openvino")}
    for name in ("onnx", "openvino"):
        np.testing.assert_allclose(got[name], ref, atol=1e-4)
    assert vad.agreement(ref, got["int8-dynamic"]) >= 0.97  # the quantized LSTM keeps the decisions
    assert vad.agreement(ref, got["int8-with-conv"]) < 0.9  # dynamic int8 convolutions do not (the counter-example)
