"""The native Winograd kernel against F.conv2d: its transforms, both code paths, odd shapes, the module's native
backend and its fallbacks, the tuner's native candidates, bad input, and the no-compiler error."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.kernels import native
from edgeopt.kernels.layer_stats import relative_error
from edgeopt.kernels.winograd import WinogradConv2d, transform_matrices, tune_layer, winograd_matrices

PATHS = (False, True)  # scalar=False: AVX2+FMA where the CPU has it; scalar=True: the plain C++ path
# (N, C_in, C_out, H, W, padding (left, right, top, bottom), bias): odd sizes, C_in != C_out, ragged tile
# edges, more than 8 tiles in a row (full 8-tile groups plus a tail), both GEMM forms (P < 16 and P >= 16)
SHAPES = [
    (1, 3, 5, 8, 8, (1, 1, 1, 1), True),
    (2, 7, 4, 13, 11, (1, 1, 1, 1), False),
    (1, 4, 6, 9, 17, (0, 0, 0, 0), True),
    (1, 6, 3, 37, 45, (1, 1, 1, 1), True),
    (2, 5, 8, 3, 3, (0, 0, 0, 0), False),
    (1, 5, 3, 1, 1, (1, 1, 1, 1), True),
    (1, 4, 4, 10, 7, (2, 0, 1, 3), True),
]


@pytest.fixture()
def ops(native_ops):
    """The compiled operators (tests/conftest.py's session fixture: built once per machine and torch version)."""
    return native_ops


def _case(N, ci, co, H, W, pad, bias, seed=0):
    """A random input, U and bias of a conv with these sizes, and its float64 reference output."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(co, ci, 3, 3, generator=g) / (3 * ci**0.5)
    b = torch.randn(co, generator=g) if bias else None
    x = torch.randn(N, ci, H, W, generator=g)
    ref = F.conv2d(F.pad(x.double(), pad), w.double(), None if b is None else b.double())
    return x, w, b, ref


def _U(w, m):
    """(α², C_out, C_in) transformed weights, as WinogradConv2d computes them."""
    conv = nn.Conv2d(w.shape[1], w.shape[0], 3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(w)
    return WinogradConv2d(conv, m).weight_transformed


@pytest.mark.parametrize("m", native.WINOGRAD_TILES)
def test_compiled_transforms_are_the_exact_construction(ops, m):
    AT, BT = native.winograd_matrices(m)
    ref_AT, _, ref_BT = transform_matrices(m)  # float64 from the exact fractions
    exact_AT, _, exact_BT = winograd_matrices(m)
    assert torch.equal(AT.double(), ref_AT) and torch.equal(BT.double(), ref_BT)
    assert [[float(v) for v in row] for row in exact_BT] == BT.tolist()  # every entry exact in float32
    assert [[float(v) for v in row] for row in exact_AT] == AT.tolist()


@pytest.mark.parametrize("scalar", PATHS, ids=["vector", "scalar"])
@pytest.mark.parametrize("m", native.WINOGRAD_TILES)
def test_matches_conv2d_over_odd_shapes_and_paddings(ops, m, scalar):
    for N, ci, co, H, W, pad, bias in SHAPES:
        x, w, b, ref = _case(N, ci, co, H, W, pad, bias)
        y = native.winograd_conv2d(x, _U(w, m), b, pad, m, scalar=scalar)
        assert y.shape == ref.shape and y.dtype == torch.float32 and y.is_contiguous()
        assert relative_error(y, ref) <= (1e-4 if m == 4 else 1e-5), (m, N, ci, co, H, W, pad)
        fp32 = F.conv2d(F.pad(x, pad), w, b)  # the untouched float32 path
        assert torch.allclose(y, fp32, atol=2e-5, rtol=1e-4)


def test_paths_agree_and_the_environment_forces_scalar(ops, monkeypatch):
    x, w, b, _ = _case(2, 9, 10, 19, 23, (1, 1, 1, 1), True, seed=3)
    for m in native.WINOGRAD_TILES:
        U = _U(w, m)
        vec = native.winograd_conv2d(x, U, b, (1, 1, 1, 1), m, scalar=False)
        sca = native.winograd_conv2d(x, U, b, (1, 1, 1, 1), m, scalar=True)
        # the same sums, rounded differently (FMA vs multiply-then-add): F4's transforms amplify that to ~1e-7
        assert relative_error(vec, sca) < 2e-6 and torch.allclose(vec, sca, atol=2e-5, rtol=1e-5)
        monkeypatch.setenv("EDGEOPT_NATIVE_SCALAR", "1")
        assert torch.equal(native.winograd_conv2d(x, U, b, (1, 1, 1, 1), m), sca)  # scalar=None: the environment
        monkeypatch.delenv("EDGEOPT_NATIVE_SCALAR")
        assert torch.equal(native.winograd_conv2d(x, U, b, (1, 1, 1, 1), m), vec)


@pytest.mark.parametrize("threads", [1, 2])
def test_workspace_is_what_the_formula_says(ops, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for N, ci, co, H, W, pad, _ in SHAPES + [(1, 8, 16, 40, 40, (1, 1, 1, 1), False)]:
            x, w, _, _ = _case(N, ci, co, H, W, pad, False)
            for m in native.WINOGRAD_TILES:
                native.winograd_conv2d(x, _U(w, m), None, pad, m)
                assert native.workspace_bytes() == native.winograd_workspace_bytes(x.shape, co, m, pad, threads)
    finally:
        torch.set_num_threads(before)
    # (1, 320, 64, 64), F4: V and M, 36 × 320 × 256 floats each
    assert native.winograd_workspace_bytes((1, 320, 64, 64), 320, 4, (1, 1, 1, 1), 2) == 2 * 4 * 36 * 320 * 256


def test_module_native_backend_and_its_fallbacks(ops):
    torch.manual_seed(0)
    for conv in (nn.Conv2d(6, 4, 3, padding=1), nn.Conv2d(3, 5, 3, padding="same", padding_mode="reflect"),
                 nn.Conv2d(4, 4, 3, bias=False)):
        x = torch.randn(2, conv.in_channels, 11, 14)
        with torch.no_grad():
            ref = conv(x)
            for m in native.WINOGRAD_TILES:
                mod = WinogradConv2d(conv, m, backend="native")
                assert "backend='native'" in repr(mod)
                y = mod(x)
                assert relative_error(y, ref) < 1e-5
                xp = F.pad(x, mod.pad, mode=conv.padding_mode) if conv.padding_mode != "zeros" else x
                pad = mod.pad if conv.padding_mode == "zeros" else (0, 0, 0, 0)
                assert torch.equal(y, native.winograd_conv2d(xp, mod.weight_transformed, mod.bias, pad, m))
                assert mod.extra_bytes(tuple(x.shape))["tiles"] >= native.workspace_bytes() > 0
    mod = WinogradConv2d(nn.Conv2d(3, 4, 3, padding=1), 4, backend="native")
    x = torch.randn(1, 3, 9, 9, requires_grad=True)
    y = mod(x)  # autograd records: the PyTorch-ops path, which has a backward
    assert y.grad_fn is not None
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    bf16 = WinogradConv2d(nn.Conv2d(3, 4, 3, padding=1).to(torch.bfloat16), 4, backend="native")
    with torch.no_grad():
        assert bf16(torch.randn(1, 3, 9, 9, dtype=torch.bfloat16)).dtype == torch.bfloat16  # PyTorch-ops path
    with pytest.raises(ValueError, match="backend: the native kernel computes F2 and F4, not F6"):
        WinogradConv2d(nn.Conv2d(3, 4, 3), 6, backend="native")
    with pytest.raises(ValueError, match="backend: unknown backend 'cuda'"):
        WinogradConv2d(nn.Conv2d(3, 4, 3), 4, backend="cuda")


def test_turned_off_after_construction_falls_back_with_one_warning(ops, monkeypatch):
    conv = nn.Conv2d(3, 4, 3, padding=1)
    mod = WinogradConv2d(conv, 4, backend="native")
    x = torch.randn(1, 3, 10, 10)
    monkeypatch.setenv("EDGEOPT_NATIVE", "0")
    monkeypatch.setitem(native._state, "warned", False)
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="native kernels unavailable, using the PyTorch path"):
            y = mod(x)
        assert torch.equal(y, WinogradConv2d(conv, 4)(x))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once already
            mod(x)


def test_tuner_offers_native_candidates(ops):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    res = tune_layer(conv, (1, 8, 12, 12), tiles=(2, 4, 6), runs=1, threads=1, backend="native")
    cands = res["candidates"]
    assert set(cands) == {"direct", "F2-native", "F4-native", "F6"}
    assert cands["F4-native"]["backend"] == "native" and cands["F6"]["backend"] == "torch"
    assert cands["direct"]["backend"] is None and cands["F4-native"]["tile"] == 4
    assert cands["F4-native"]["rel_error"] < 1e-5 and cands["F4-native"]["latency_ms"] > 0
    assert res["backend"] == cands[res["choice"]]["backend"]
    with pytest.raises(ValueError, match="backend: unknown backend"):
        tune_layer(conv, (1, 8, 12, 12), backend="fast")


def test_bad_input_is_a_clear_error(ops):
    x = torch.randn(1, 4, 8, 8)
    U = torch.randn(36, 5, 4)
    with pytest.raises(ValueError, match="x: expected a contiguous tensor"):
        native.winograd_conv2d(x.transpose(2, 3), U, None, (1, 1, 1, 1), 4)
    with pytest.raises(ValueError, match="x: expected a float32 tensor, got Double"):
        native.winograd_conv2d(x.double(), U, None, (1, 1, 1, 1), 4)
    with pytest.raises(ValueError, match="m: expected 2 or 4"):
        native.winograd_conv2d(x, U, None, (1, 1, 1, 1), 6)
    with pytest.raises(ValueError, match=r"U: expected \(16, C_out, 4\)"):
        native.winograd_conv2d(x, U, None, (1, 1, 1, 1), 2)
    with pytest.raises(ValueError, match="padding: expected 4 non-negative values"):
        native.winograd_conv2d(x, U, None, (1, 1), 4)
    with pytest.raises(ValueError, match="bias: expected 5 values, got 4"):
        native.winograd_conv2d(x, U, torch.zeros(4), (1, 1, 1, 1), 4)
    with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
        native.winograd_conv2d(torch.randn(1, 4, 2, 8), U, None, (0, 0, 0, 0), 4)
    assert native.winograd_conv2d(torch.empty(0, 4, 8, 8), U, None, (1, 1, 1, 1), 4).shape == (0, 5, 8, 8)


def test_no_compiler_is_one_line_for_the_module_and_the_pass(monkeypatch, tmp_path):
    from edgeopt.errors import RecipeError
    from edgeopt.passes.base import build_pass

    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path))  # no cached build there
    monkeypatch.setenv("CXX", "/no/such/c++")
    monkeypatch.setitem(native._state, "ops", None)
    with pytest.raises(native.NativeUnavailable, match="no C\\+\\+ compiler") as e:
        WinogradConv2d(nn.Conv2d(3, 4, 3), 4, backend="native")
    assert "\n" not in str(e.value)
    with pytest.raises(RecipeError, match="'backend'.*no C\\+\\+ compiler") as e:
        build_pass("kernels.winograd", {"backend": "native"})
    assert "\n" not in str(e.value)
