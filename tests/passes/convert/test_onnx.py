"""convert.onnx: the export leaves the module it was given exactly as it was (weights and train/eval modes)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from edgeopt.artifact import Artifact
from edgeopt.load import load_model
from edgeopt.passes.base import PassContext, build_pass, module_fingerprint


def test_export_keeps_submodule_modes_and_matches(tmp_path):
    """The exporters switch modules to eval; a swapped-in submodule still in training mode (as Winograd's used to
    be) must come back as it was, or the pass contract reports a modified input."""
    art = load_model(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)),
                     {"x": torch.randn(2, 4)})
    art.module[1].train()  # one submodule left in training mode (no effect on ReLU's output)
    art = Artifact.from_module(art.module, art.input_spec, meta=art.meta)
    before = module_fingerprint(art.module)
    out = build_pass("convert.onnx", {})(art, PassContext(stage_dir=tmp_path))
    assert module_fingerprint(art.module) == before and art.module[1].training
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    got = ort.InferenceSession(str(out.path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, art.module(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
