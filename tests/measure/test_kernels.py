"""Kernel micro-benchmark API and its CLI: the Winograd tuner, its counts and errors, attention and conv grids."""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

from edgeopt.cli import app
from edgeopt.errors import InputError, RecipeError
from edgeopt.measure import kernels as K
from edgeopt.report.kernels import markdown

runner = CliRunner()


def _one_line_error(result, *needles):
    text = result.output.strip()
    assert result.exit_code == 2 and "Traceback" not in text and len(text.splitlines()) == 1, text
    assert text.startswith("error:") and all(n in text for n in needles), text


def test_layer_spec():
    assert K.parse_layer_spec("conv:256x128x64x32") == {"c_in": 256, "c_out": 128, "h": 64, "w": 32}
    for bad in ("conv:256x256x64", "conv:0x1x2x3", "conv:axbxcxd", "conv:", "conv:1x2x3x4x5"):
        with pytest.raises(InputError, match="C_INxC_OUTxHxW"):
            K.parse_layer_spec(bad)


def test_winograd_counts_match_theory_exactly():
    rows = K.winograd_counts()["rows"]
    assert [r["m"] for r in rows] == [2, 4, 6, 8] and all(r["exact"] for r in rows)
    assert [r["ratio"] for r in rows] == ["9/4", "4/1", "81/16", "144/25"]
    assert [r["stated"] for r in rows] == [2.25, 4.0, 5.06, 5.76]
    assert "MISMATCH" not in markdown(K.winograd_counts())


def test_winograd_tuner_on_a_layer_spec():
    rep = K.winograd_tune("conv:8x6x12x12", tiles="2,4,8", runs=1, threads=1)
    json.dumps(rep)
    (name, res), = rep["layers"].items()
    assert name == "conv" and res["input_shape"] == [1, 8, 12, 12] and set(res["candidates"]) == {"direct", "F2", "F4", "F8"}
    assert res["candidates"]["F4"]["multiplications"] == 8 * 6 * 9 * 36  # 3x3 tiles of 4x4 outputs
    assert res["candidates"]["F4"]["flops_ratio"] == pytest.approx(4.0)
    assert "F8" in res["refused"] and res["choice"] != "F8"  # over the 1e-5 default budget
    assert rep["summary"] == {"convs": 1, "eligible": 1, "winograd": int(res["tile"] is not None),
                              "direct": int(res["tile"] is None), "skipped": {}}
    md = markdown(rep)
    assert "| F4 |" in md and "refused: over budget" in md


def test_winograd_tuner_on_a_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_cnn.py").write_text(textwrap.dedent("""
        from torch import nn
        def build():
            return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2),
                                 nn.Conv2d(4, 4, 3, groups=2))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    rep = K.winograd_tune("my_cnn:build", tiles=[2], runs=1, threads=1, input_shape="1,3,10,10")
    assert set(rep["layers"]) == {"0", "2", "3"} and rep["summary"]["eligible"] == 1
    assert "stride" in rep["summary"]["skipped"]["2"] and "groups" in rep["summary"]["skipped"]["3"]
    with pytest.raises(InputError, match="input_shape"):
        K.winograd_tune("my_cnn:build")
    with pytest.raises(InputError, match="cannot import"):
        K.winograd_tune("my_cnn:nothing", input_shape="1,3,8,8")


@pytest.mark.parametrize("call, err, needle", [
    (lambda: K.winograd_tune("conv:4x4x8x8", error_budget=0), RecipeError, "error_budget"),
    (lambda: K.winograd_tune("conv:4x4x8x8", error_budget=1.0), RecipeError, "error_budget"),
    (lambda: K.winograd_tune("conv:4x4x8x8", error_budget=float("nan")), RecipeError, "error_budget"),
    (lambda: K.winograd_tune("conv:4x4x8x8", tiles="4,5"), RecipeError, "unknown tile 5"),
    (lambda: K.winograd_tune("unet:huge"), InputError, "unknown UNet size"),
    (lambda: K.winograd_tune("nothing-here"), InputError, "not a layer spec"),
    (lambda: K.attention_grid(impls="naive,fast"), RecipeError, "unknown attention implementation 'fast'"),
    (lambda: K.attention_grid(seq_lens="64,x"), RecipeError, "seq_lens"),
    (lambda: K.attention_grid(heads=0), RecipeError, "heads"),
    (lambda: K.conv_grid(channels=()), RecipeError, "channels: empty"),
])
def test_bad_input_is_one_error_naming_the_field(call, err, needle):
    with pytest.raises(err, match=needle) as e:
        call()
    assert "\n" not in str(e.value)


def test_winograd_error_table_grows_with_the_tile():
    rep = K.winograd_errors(layers=[(16, 16, 16)])
    (row,) = rep["rows"]
    errs = [row["rel_error"][k] for k in ("F2", "F4", "F6", "F8")]
    assert errs == sorted(errs) and errs[-1] > 10 * errs[-2]
    assert row["within_budget"] == {"direct": True, "F2": True, "F4": True, "F6": True, "F8": False}


def test_attention_grid():
    rep = K.attention_grid(seq_lens=(48, 96), head_dims="8", runs=1, threads=1, q_block=16, k_block=16)
    json.dumps(rep)
    assert [(r["seq_len"], r["head_dim"]) for r in rep["rows"]] == [(48, 8), (96, 8)]
    for r in rep["rows"]:
        c = r["impls"]
        assert set(c) == {"naive", "partial_softmax", "flash", "sdpa"} and r["fastest"] in c
        assert all(v["rel_error"] < 1e-5 and v["latency_ms"] > 0 for v in c.values())
        mem = {i: v["peak_intermediate_bytes"]["analytic"] for i, v in c.items()}
        assert mem["flash"] < mem["partial_softmax"] < mem["naive"] == 2 * 2 * r["seq_len"] ** 2 * 4
        assert mem["sdpa"] is None and c["naive"]["peak_intermediate_bytes"]["measured"] == mem["naive"]
    md = markdown(rep)
    assert "attention latency" in md and "float64 reference" in md


def test_conv_grid_and_conv_vs_torch():
    rep = K.conv_grid(channels="4", sizes=(8, 10), tiles=(2, 4), runs=1, threads=1)
    assert [(r["channels"], r["size"]) for r in rep["rows"]] == [(4, 8), (4, 10)]
    assert all(set(r["candidates"]) == {"direct", "F2", "F4"} for r in rep["rows"])
    assert "| 4 | 10 |" in markdown(rep)
    v = K.conv_vs_torch(8, 8, 16, tiles=(2, 4), runs=2, tune_runs=1, threads=1)
    json.dumps(v)
    assert v["choice"] == v["tuner"]["choice"]
    if v["vs_torch"] is not None:
        assert v["vs_torch"]["ratio_p10"] <= v["vs_torch"]["ratio_p50"] <= v["vs_torch"]["ratio_p90"]
    assert "torch.nn.functional.conv2d" in markdown(v)


def test_cli_winograd_and_kernels_commands():
    res = runner.invoke(app, ["winograd", "conv:4x4x8x8", "--tiles", "2,4", "--runs", "1", "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert set(json.loads(res.output)["layers"]["conv"]["candidates"]) == {"direct", "F2", "F4"}
    res = runner.invoke(app, ["winograd", "conv:4x4x8x8", "--tiles", "2", "--runs", "1", "--threads", "1"])
    assert res.exit_code == 0 and "Winograd tuner" in res.output and "F2" in res.output
    res = runner.invoke(app, ["kernels", "attention", "--seq-lens", "32", "--head-dims", "8", "--runs", "1",
                              "--threads", "1", "--no-memory", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["rows"][0]["impls"]["flash"]["peak_intermediate_bytes"]["measured"] is None
    res = runner.invoke(app, ["kernels", "conv", "--channels", "4", "--sizes", "8", "--tiles", "2", "--runs", "1",
                              "--threads", "1"])
    assert res.exit_code == 0 and "direct vs Winograd" in res.output


def test_cli_bad_input_is_one_line():
    _one_line_error(runner.invoke(app, ["kernels", "attention", "--impls", "naive,fast"]), "fast", "known:")
    _one_line_error(runner.invoke(app, ["winograd", "conv:4x4x8", "--runs", "1"]), "conv:4x4x8")
    _one_line_error(runner.invoke(app, ["winograd", "conv:4x4x8x8", "--error-budget", "0"]), "error_budget")
    _one_line_error(runner.invoke(app, ["kernels", "conv", "--tiles", "3"]), "unknown tile 3")
    _one_line_error(runner.invoke(app, ["kernels", "unet", "--size", "huge"]), "unet:huge")
