"""The package: importing it stays lean, and the public API names resolve."""

from __future__ import annotations

import subprocess
import sys

import edgeopt


def test_import_is_lean():
    code = ("import sys, edgeopt; heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'transformers', 'openvino', "
            "'plotly', 'streamlit') if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import edgeopt pulled in: {out}"


def test_public_api_resolves():
    for name in edgeopt.__all__:
        assert getattr(edgeopt, name) is not None, name
    assert callable(edgeopt.optimize) and callable(edgeopt.analyze) and callable(edgeopt.load_model)
