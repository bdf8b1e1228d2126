"""Winograd F(m×m, 3×3): exact transforms, counts, the module against F.conv2d (and in ONNX), and the tile tuner."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.kernels.layer_stats import peak_intermediate_bytes, relative_error
from edgeopt.kernels.winograd import (TILES, WinogradConv2d, flops_ratio, interpolation_points, layer_multiplications,
                                      multiplications, tune_layer, tune_model, winograd_matrices, winograd_supported)


def test_interpolation_points_follow_the_documented_order():
    h, q = Fraction(1, 2), Fraction(1, 4)
    assert interpolation_points(9) == [0, 1, -1, h, -h, 2, -2, q, -q]


@pytest.mark.parametrize("m", TILES)
def test_transforms_compute_correlation_exactly(m):
    AT, G, BT = winograd_matrices(m)
    a = m + 2
    assert (len(AT), len(AT[0]), len(G), len(G[0]), len(BT), len(BT[0])) == (m, a, a, 3, a, a)
    rng = random.Random(m)
    for _ in range(5):
        d = [Fraction(rng.randint(-50, 50), rng.randint(1, 9)) for _ in range(a)]
        g = [Fraction(rng.randint(-50, 50), rng.randint(1, 9)) for _ in range(3)]
        Gg = [sum(G[i][k] * g[k] for k in range(3)) for i in range(a)]
        Bd = [sum(BT[i][k] * d[k] for k in range(a)) for i in range(a)]
        y = [sum(AT[i][j] * Gg[j] * Bd[j] for j in range(a)) for i in range(m)]
        assert y == [sum(d[i + k] * g[k] for k in range(3)) for i in range(m)]


def test_f2_matches_lavin_and_gray():
    AT, G, BT = winograd_matrices(2)
    h = Fraction(1, 2)
    assert AT == ((1, 1, 1, 0), (0, 1, -1, 1))
    assert G == ((1, 0, 0), (h, h, h), (h, -h, h), (0, 0, 1))
    assert BT[:3] == ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0))


def test_multiplication_counts_match_theory():
    assert [multiplications(m)["ratio"] for m in TILES] == [Fraction(9, 4), 4, Fraction(81, 16), Fraction(144, 25)]
    assert [round(flops_ratio(m), 2) for m in TILES] == [2.25, 4.0, 5.06, 5.76]
    assert multiplications(4) == {"direct": 144, "winograd": 36, "ratio": 4}
    assert layer_multiplications(8, 16, 12, 12, None) == 8 * 16 * 144 * 9
    assert layer_multiplications(8, 16, 12, 12, 4) == 8 * 16 * 9 * 36
    assert layer_multiplications(8, 16, 13, 13, 4) == 8 * 16 * 16 * 36  # ragged borders: whole tiles


@pytest.mark.parametrize("conv, words", [
    (nn.Conv2d(4, 4, 3, stride=2), "stride"),
    (nn.Conv2d(4, 4, 3, groups=2), "groups"),
    (nn.Conv2d(4, 4, 3, dilation=2), "dilation"),
    (nn.Conv2d(4, 4, 5), "5x5"),
    (nn.Conv2d(4, 4, 1), "1x1"),
    (nn.Conv1d(4, 4, 3), "not a Conv2d"),
])
def test_unsupported_layers_are_refused_with_a_reason(conv, words):
    ok, why = winograd_supported(conv)
    assert not ok and words in why
    if isinstance(conv, nn.Conv2d):
        with pytest.raises(ValueError, match="conv"):
            WinogradConv2d(conv, 4)


def test_supported_layer_and_unknown_tile():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    assert winograd_supported(conv) == (True, "")
    with pytest.raises(ValueError, match="m: unknown tile 5"):
        WinogradConv2d(conv, 5)


_CASES = [  # (N, C_in, C_out, H, W, padding, padding_mode, bias)
    (1, 3, 5, 9, 11, 1, "zeros", True),
    (2, 4, 3, 8, 8, 0, "zeros", False),
    (1, 2, 4, 7, 13, 2, "zeros", True),
    (3, 5, 2, 6, 10, (1, 0), "zeros", True),
    (1, 4, 4, 10, 7, "same", "zeros", True),
    (1, 3, 2, 5, 5, "valid", "zeros", True),
    (2, 3, 4, 9, 8, 1, "reflect", True),
    (1, 2, 3, 8, 9, 1, "circular", False),
    (1, 2, 3, 6, 7, (2, 1), "replicate", True),
]


@pytest.mark.parametrize("m", TILES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_conv2d_over_shapes_paddings_and_dtypes(m, dtype):
    for i, (N, ci, co, H, W, pad, mode, bias) in enumerate(_CASES):
        torch.manual_seed(i)
        conv = nn.Conv2d(ci, co, 3, padding=pad, padding_mode=mode, bias=bias).to(dtype)
        x = torch.randn(N, ci, H, W, dtype=dtype)
        wino = WinogradConv2d(conv, m)
        with torch.no_grad():
            y = wino(x)
            ref = conv.double()(x.double())
            conv.to(dtype)
        assert y.dtype == dtype and y.shape == ref.shape, (i, y.shape, ref.shape)
        budget = 1e-10 if dtype == torch.float64 else (1e-3 if m == 8 else 1e-5)
        assert relative_error(y, ref) < budget, (i, relative_error(y, ref))


_BUDGET = {torch.float64: {2: 1e-10, 4: 1e-10, 6: 1e-10, 8: 1e-9}, torch.float32: {2: 1e-5, 4: 1e-5, 6: 1e-5, 8: 1e-3},
           torch.bfloat16: {2: 3e-2, 4: 1e-1, 6: 2e-1}}  # bf16 F(8x8) is useless: its error exceeds the output


@pytest.mark.parametrize("dtype", list(_BUDGET), ids=str)
def test_random_shapes_paddings_and_modes(dtype):
    rng = random.Random(str(dtype))
    for trial in range(6):
        N, ci, co = rng.randint(1, 3), rng.randint(1, 7), rng.randint(1, 7)
        H, W = rng.randint(3, 17), rng.randint(3, 17)
        pad = rng.choice([0, 1, 2, (rng.randint(0, 2), rng.randint(0, 2)), "same", "valid"])
        mode = rng.choice(["zeros", "reflect", "replicate", "circular"]) if pad not in (0, "valid") else "zeros"
        amount = pad if isinstance(pad, tuple) else (1, 1) if pad == "same" else (pad, pad)
        if mode == "reflect" and max(amount) >= min(H, W):  # reflection needs padding < the input size
            mode = "zeros"
        torch.manual_seed(trial)
        conv = nn.Conv2d(ci, co, 3, padding=pad, padding_mode=mode, bias=rng.random() < 0.7)
        x = torch.randn(N, ci, H, W, dtype=torch.float64)
        with torch.no_grad():
            ref = conv.double()(x)
            for m, budget in _BUDGET[dtype].items():
                y = WinogradConv2d(conv.to(dtype), m)(x.to(dtype))
                assert y.dtype == dtype and y.shape == ref.shape
                assert relative_error(y, ref) < budget, (trial, m, N, ci, co, H, W, pad, mode, relative_error(y, ref))
                conv.double()


@pytest.mark.parametrize("m", TILES)
@pytest.mark.parametrize("pad, mode", [(1, "zeros"), ((2, 0), "zeros"), (1, "reflect"), ((2, 1), "circular")])
def test_extra_bytes_is_the_measured_peak_of_the_forward(m, pad, mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, padding=pad, padding_mode=mode)
    wino = WinogradConv2d(conv, m)
    x = torch.randn(2, 5, 11, 9)
    assert wino.extra_bytes(tuple(x.shape))["tiles"] == peak_intermediate_bytes(lambda: wino(x), keep=x)


@pytest.mark.parametrize("m", TILES)
def test_exports_to_onnx_with_dynamic_batch_and_spatial_dims(m, tmp_path, capfd):
    import warnings

    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=(2, 1), padding_mode="reflect" if m == 4 else "zeros").eval()
    wino = WinogradConv2d(conv, m)
    path = tmp_path / "wino.onnx"
    dyn = {0: "batch", 2: "h", 3: "w"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wino, (torch.randn(1, 3, 8, 8),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": dyn, "y": dyn}, opset_version=17, dynamo=False)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Conv" in ops and "MatMul" in ops and not any("Unfold" in o or "ATen" in o for o in ops)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ((2, 3, 13, 7), (1, 3, 5, 21)):
        x = torch.randn(shape)
        with torch.no_grad():
            ref = conv(x)
        y = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
        assert y.shape == ref.shape and relative_error(y, ref) < (1e-3 if m == 8 else 1e-5)
    assert "Unfold" not in capfd.readouterr().err


def test_error_against_float64_grows_with_the_tile():
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(1, 32, 24, 24)
    with torch.no_grad():
        ref = conv.double()(x.double())
        conv.float()
        err = [relative_error(WinogradConv2d(conv, m)(x), ref) for m in TILES]
        direct = relative_error(conv(x), ref)
    assert err == sorted(err), err
    assert err[-1] > 10 * err[-2], err  # F(8x8) is far worse than F(6x6)
    assert err[0] < 10 * direct and err[2] < 1e-5 < err[3], (direct, err)


def test_weights_are_transformed_once():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    wino = WinogradConv2d(conv, 4)
    assert wino.weight_transformed.shape == (36, 5, 3)
    assert set(wino.state_dict()) == {"weight_transformed", "bias"}
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        before = wino(x)
        conv.weight.mul_(2)  # later changes to the source conv are not seen
        assert torch.equal(wino(x), before)
    assert wino.extra_bytes((1, 3, 8, 8))["weights"] == (36 - 9) * 15 * 4


def test_tuner_measures_every_tile_and_refuses_f8_at_the_default_budget():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    res = tune_layer(conv, (1, 8, 12, 12), runs=1, threads=1)
    assert res["supported"] and set(res["candidates"]) == {"direct", "F2", "F4", "F6", "F8"}
    for name, c in res["candidates"].items():
        assert c["latency_ms"] > 0 and c["rel_error"] >= 0
        assert c["multiplications"] == layer_multiplications(8, 8, 12, 12, c["tile"])
    assert res["candidates"]["F4"]["flops_ratio"] == pytest.approx(4.0)
    assert res["candidates"]["F4"]["extra_bytes"]["total"] > 0 == res["candidates"]["direct"]["extra_bytes"]["total"]
    assert "F8" in res["refused"] and "budget" in res["refused"]["F8"]
    assert res["choice"] in res["candidates"] and res["candidates"][res["choice"]]["accepted"]
    assert res["choice"] != "F8"
    accepted = [n for n, c in res["candidates"].items() if c["accepted"]]
    assert res["choice"] == min(accepted, key=lambda n: res["candidates"][n]["latency_ms"])


def test_tuner_bad_input_is_a_value_error_naming_the_field():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    for budget in (0, -1e-5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="error_budget"):
            tune_layer(conv, (1, 4, 8, 8), error_budget=budget)
    with pytest.raises(ValueError, match="tiles: unknown tile 5"):
        tune_layer(conv, (1, 4, 8, 8), tiles=(4, 5))
    with pytest.raises(ValueError, match="input_shape"):
        tune_layer(conv, (1, 3, 8, 8))
    res = tune_layer(nn.Conv2d(4, 4, 3, stride=2), (1, 4, 8, 8))
    assert not res["supported"] and "stride" in res["reason"] and res["choice"] == "direct"


def test_tune_model_hooks_each_conv_for_its_input_shape():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2),
                          nn.Conv2d(4, 6, 3)).eval()
    res = tune_model(model, torch.randn(1, 3, 10, 10), tiles=(2, 4), runs=1, threads=1)
    assert set(res) == {"0", "2", "3"}
    assert res["0"]["input_shape"] == [1, 3, 10, 10] and res["0"]["supported"]
    assert res["3"]["input_shape"] == [1, 4, 4, 4] and set(res["3"]["candidates"]) == {"direct", "F2", "F4"}
    assert not res["2"]["supported"] and "stride" in res["2"]["reason"]
    assert [h for m in model.modules() for h in m._forward_pre_hooks.values()] == []  # hooks removed
