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
