"""openvino.quantize with weights_only: int8 weight constants, float activations, outputs close to the float IR."""

from __future__ import annotations

import numpy as np

from edgeopt.measure.runners import make_runner
from edgeopt.passes.base import PassContext, build_pass


def _ops(path) -> tuple[int, int]:
    import openvino as ov

    model = ov.Core().read_model(str(path))
    u8 = sum(1 for op in model.get_ops() if op.get_type_name() == "Constant"
             and op.get_output_element_type(0).get_type_name() in ("u8", "i8"))
    fq = sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")
    return u8, fq


def test_weights_only_int8_needs_no_data_and_keeps_outputs(tiny_bert_openvino, tiny_bert_feeds, tmp_path):
    ctx = PassContext(stage_dir=tmp_path)  # no calibration data: weight compression does not need any
    out = build_pass("openvino.quantize", {"weights_only": True})(tiny_bert_openvino, ctx)
    assert _ops(tiny_bert_openvino.path) == (0, 0)
    u8, fq = _ops(out.path)
    assert u8 > 0 and fq == 0  # int8 weights, no activation quantization
    assert ctx.notes["quantization"]["mode"] == "int8-weights-openvino"
    a, b = make_runner(tiny_bert_openvino, threads=1), make_runner(out, threads=1)
    for feed in tiny_bert_feeds[:4]:
        x, y = a.run(feed)[0].ravel(), b.run(feed)[0].ravel()
        assert np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)) > 0.99


def test_accuracy_control_keeps_the_metric_within_max_drop(tiny_bert_openvino, tiny_bert_feeds, tmp_path):
    """NNCF's accuracy control on unlabelled data: the metric is the mean cosine to the float model on the
    calibration feeds, and the quantized model keeps it within max_drop there."""
    ctx = PassContext(stage_dir=tmp_path, calibration=tiny_bert_feeds)
    out = build_pass("openvino.quantize", {"max_drop": 0.002, "preset": "performance"})(tiny_bert_openvino, ctx)
    ac = ctx.notes["quantization"]["accuracy_control"]
    assert ac["metric"] == "mean_cosine" and ac["max_drop"] == 0.002
    assert _ops(out.path)[1] == ac["fake_quantize_nodes"] > 0  # still quantized, maybe partly back in float
    a, b = make_runner(tiny_bert_openvino, threads=1), make_runner(out, threads=1)
    cos = []
    for feed in tiny_bert_feeds:
        x, y = a.run(feed)[0], b.run(feed)[0]
        x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
        cos += list((x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1)))
    assert np.mean(cos) >= 1 - 0.002 - 1e-4


def test_accuracy_control_uses_top1_when_the_data_has_labels(tmp_path):
    import torch

    from edgeopt.data import LABEL_KEY
    from edgeopt.load import load_model
    from edgeopt.passes.openvino.quantize import _validation

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    x = torch.randn(4, 12)
    onnx_art = build_pass("convert.onnx", {})(load_model(net, {"x": x[:2].reshape(2, 3, 4)}),
                                              PassContext(stage_dir=tmp_path / "onnx"))
    ov_art = build_pass("convert.openvino", {"precision": "f32"})(onnx_art, PassContext(stage_dir=tmp_path / "ov"))
    import openvino as ov

    model = ov.Core().read_model(str(ov_art.path))
    xs = x.reshape(4, 3, 4).numpy()
    pred = net(x).argmax(-1).numpy()
    feeds = [{"x": xs[:2], LABEL_KEY: pred[:2]}, {"x": xs[2:], LABEL_KEY: (pred[2:] + 1) % 3}]  # 2 of 4 right
    validate, metric = _validation(ov, model, feeds, ["x"])
    compiled = ov.Core().compile_model(model, "CPU")
    value, per_sample = validate(compiled, [0, 1])
    assert metric == "top1" and value == 0.5 and per_sample == [1.0, 1.0, 0.0, 0.0]
