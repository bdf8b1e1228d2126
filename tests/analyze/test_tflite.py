"""analyze.tflite: the op census and the declared inputs, outputs and weight dtypes of a .tflite, read with LiteRT's
flatbuffer schema; a truncated or foreign file is a one-line InputError."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeopt.analyze.tflite import NO_PROFILER, census_summary, op_census, op_precisions, tflite_info, weight_bytes_read
from edgeopt.errors import InputError

litert_torch = pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, image):
        h = torch.relu(self.c2(torch.relu(self.c1(image))))
        return self.fc(h.mean((2, 3))), h


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The net as fp32 .tflite and its dynamic-int8 version from the LiteRT quantizer."""
    from ai_edge_quantizer import quantizer, recipe

    torch.manual_seed(0)
    litert_torch.config.show_progress = False
    d = tmp_path_factory.mktemp("tflite_info")
    fp32 = d / "net.tflite"
    model = litert_torch.convert(Net().eval(), sample_kwargs={"image": torch.randn(1, 3, 8, 8)})
    model.export(str(fp32))
    q = quantizer.Quantizer(model.model_content(), recipe.dynamic_wi8_afp32())
    dyn = d / "net_dyn.tflite"
    dyn.write_bytes(bytes(q.quantize(enable_progress_bar=False, enable_progress_report=False).quantized_model))
    return fp32, dyn


def test_op_census_counts_the_graph(files):
    census = op_census(files[0])
    assert census["CONV_2D"] == 2 and census["FULLY_CONNECTED"] == 1, census
    counts = list(census.values())
    assert counts == sorted(counts, reverse=True), "most frequent first"
    assert op_census(files[0], signature="serving_default") == census
    assert census_summary(census, top=1).startswith("CONV_2D×2, +")


def test_info_names_inputs_outputs_and_weight_dtypes(files):
    fp32, dyn = (tflite_info(f) for f in files)
    assert list(fp32["signatures"]) == ["serving_default"]
    assert fp32["inputs"] == [{"name": "image", "dtype": "float32", "shape": [1, 3, 8, 8]}]
    assert [o["shape"] for o in fp32["outputs"]] == [[1, 5], [1, 8, 8, 8]], "outputs in the model's order"
    assert fp32["weight_dtypes"]["float32"] >= 3 and fp32["int8_weights"] == 0
    assert dyn["int8_weights"] >= 3 and dyn["weight_bytes"] < fp32["weight_bytes"]
    assert fp32["size_bytes"] == files[0].stat().st_size and fp32["ops"] == sum(op_census(files[0]).values())


def test_op_precisions_tell_dynamic_int8_from_float_and_weight_only(files, tmp_path):
    """Dynamic-range int8 (int8 weights read straight into the conv / FC) counts as int8; the same weights behind a
    DEQUANTIZE (weight-only int8) leave the op float."""
    from ai_edge_quantizer import quantizer, recipe

    fp32, dyn = files
    wo = tmp_path / "net_wo.tflite"
    q = quantizer.Quantizer(fp32.read_bytes(), recipe.weight_only_wi8_afp32())
    wo.write_bytes(bytes(q.quantize(enable_progress_bar=False, enable_progress_report=False).quantized_model))

    def mm(path):
        return sorted((p["op_type"], p["precision"], p["kernel"]) for p in op_precisions(path) if p["matmul_like"])

    assert mm(fp32) == [("CONV_2D", "float32", "CONV_2D (float32)")] * 2 + [
        ("FULLY_CONNECTED", "float32", "FULLY_CONNECTED (float32)")]
    assert mm(dyn) == [("CONV_2D", "int8", "CONV_2D (int8 weights, dynamic int8 activations)")] * 2 + [
        ("FULLY_CONNECTED", "int8", "FULLY_CONNECTED (int8 weights, dynamic int8 activations)")]
    assert "DEQUANTIZE" in op_census(wo) and {p for _, p, _ in mm(wo)} == {"float32"}
    every = op_precisions(dyn)
    assert len(every) == sum(op_census(dyn).values())
    assert {p["op_type"] for p in every if p["matmul_like"]} == {"CONV_2D", "FULLY_CONNECTED"}


class Lookup(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(1000, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, ids):
        return self.fc(self.table(ids))


def test_weight_bytes_read_counts_a_lookup_table_as_one_row(files, tmp_path):
    fp32 = files[0]
    conv = (8 * 3 * 9 + 8 + 8 * 8 * 9 + 8 + 8 * 5 + 5) * 4  # every weight and bias, fp32
    assert conv <= weight_bytes_read(fp32) < conv + 64  # (+ a few small constants, e.g. the mean's axes)
    assert weight_bytes_read(fp32, "serving_default") == weight_bytes_read(fp32)
    model = litert_torch.convert(Lookup().eval(), sample_kwargs={"ids": torch.tensor([[1, 2, 3]])})
    model.export(str(tmp_path / "lookup.tflite"))
    got = weight_bytes_read(tmp_path / "lookup.tflite")
    assert 16 * 4 + (16 * 4 + 4) * 4 <= got < 1000 * 16 * 4 / 10  # one row of the 64 KB table, and the Linear
    with pytest.raises(InputError, match="no signature 'decode'"):
        weight_bytes_read(fp32, "decode")


def test_bad_files_are_one_line(files, tmp_path):
    data = files[0].read_bytes()
    cases = {"cut.tflite": data[: len(data) // 2], "tiny.tflite": data[:40], "text.tflite": b"hello"}
    for name, content in cases.items():
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(InputError) as e:
            op_census(bad)
        assert f"{name}: not a valid .tflite file (" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="no such .tflite file"):
        tflite_info(tmp_path / "missing.tflite")
    with pytest.raises(InputError, match="no signature 'decode'"):
        op_census(files[0], signature="decode")


def test_the_profile_sentence():
    assert NO_PROFILER == "LiteRT has no per-op profiler in Python; showing the op census instead"


def test_analyze_a_tflite_reports_precision_and_bytes_per_signature_and_suggests_int8_for_a_float_file(files, tmp_path):
    """`edgeopt analyze model.tflite` (it used to refuse): the float file's three MatMul-like ops are float and
    dynamic INT8 is suggested; the quantized file's are int8 and read fewer weight bytes; the CLI renders it, and a
    missing or truncated file is a one-line error."""
    from rich.console import Console
    from typer.testing import CliRunner

    from edgeopt.analyze import analyze
    from edgeopt.analyze.render import render_analysis
    from edgeopt.cli import app

    fp32, dyn = (analyze(f, target="cpu-avx2") for f in files)
    assert fp32["schema"] == "edgeopt.analysis.tflite/1" and fp32["census"] == op_census(files[0])
    s, q = fp32["signatures"]["serving_default"], dyn["signatures"]["serving_default"]
    assert (s["matmul_like"], s["int8"], s["float"]) == (3, 0, 3) and (q["int8"], q["float"]) == (3, 0)
    assert q["weight_bytes_read"] < s["weight_bytes_read"] == weight_bytes_read(files[0], "serving_default")
    assert [x["what"] for x in fp32["suggestions"]] == ["convert.litert quantize: dynamic_int8"]
    assert "no int8 dot products" in fp32["suggestions"][0]["why"] and not dyn["suggestions"]
    console = Console(record=True, width=160)
    console.print(render_analysis(fp32))
    text = console.export_text()
    assert "LiteRT model analysis" in text and "CONV_2D (float32) ×2" in text
    res = CliRunner().invoke(app, ["analyze", str(files[1]), "--json"])
    assert res.exit_code == 0 and '"edgeopt.analysis.tflite/1"' in res.output
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(files[0].read_bytes()[:100])
    for path in (bad, tmp_path / "missing.tflite"):
        res = CliRunner().invoke(app, ["analyze", str(path)])
        assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1 and "error" in res.output
