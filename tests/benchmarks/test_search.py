"""benchmarks/search.py: which diagnoses its AVX2-only check reads (stages and search trials computing in int8)."""

from __future__ import annotations

from types import SimpleNamespace


def _diag(name: str, any_int8: bool) -> dict:
    return {"stage": name, "parent": "onnx", "summary": f"{name} vs onnx", "lines": [],
            "facts": {"precision": {"any_int8": any_int8}}}


def test_int8_diagnoses_are_found_by_precision_in_stages_and_trials_whatever_their_names(load_benchmark):
    bench = load_benchmark("search")
    led = SimpleNamespace(
        stages=[SimpleNamespace(name="litert", notes={"diagnosis": _diag("litert", True)}),   # LiteRT dynamic INT8
                SimpleNamespace(name="ort-fp32", notes={"diagnosis": _diag("ort-fp32", False)}),
                SimpleNamespace(name="int8-named-fp32", notes={"diagnosis": _diag("int8-named-fp32", False)}),
                SimpleNamespace(name="onnx", notes={})],
        search={"trials": [{"number": 4, "family": "ov-int8", "diagnosis": _diag("trial 4 (ov-int8)", True)},
                           {"number": 5, "family": "structural-heads"}]})
    assert [n for n, _ in bench.int8_diagnoses(led)] == ["litert", "trial 4 (ov-int8)"]
    assert bench.int8_diagnoses(SimpleNamespace(stages=[], search=None)) == []
