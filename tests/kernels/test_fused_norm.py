"""Fused normalization + activation modules against nn.GroupNorm / nn.LayerNorm followed by the activation."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from edgeopt.kernels.fused_norm import ACTS, BACKENDS, GroupNormAct, LayerNormAct, act_name, fuse_pair

_ACT_MODULES = {"silu": nn.SiLU(), "gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh")}


def _randomize(norm: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in norm.parameters():
            p.normal_()
    return norm


@pytest.mark.parametrize("backend", ["eager", "native"])  # native: float64 takes the eager path
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_group_norm_act_matches_the_pair(act, dtype, backend):
    torch.manual_seed(0)
    for shape, groups, affine in [((2, 8, 5, 7), 4, True), ((1, 6, 11), 3, True), ((3, 4, 2, 3, 2), 1, False),
                                  ((1, 32, 9, 9), 32, True)]:
        norm = _randomize(nn.GroupNorm(groups, shape[1], eps=1e-4, affine=affine)).to(dtype)
        ref = nn.Sequential(norm, _ACT_MODULES[act]).eval()
        fused = GroupNormAct.from_modules(norm, _ACT_MODULES[act], backend).eval()
        x = (torch.randn(shape, dtype=dtype) * 3 + 2)
        with torch.no_grad():
            y, r = fused(x), ref(x)
        assert y.dtype == dtype and y.shape == x.shape
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert torch.allclose(y, r, atol=tol, rtol=tol), (shape, (y - r).abs().max())


@pytest.mark.parametrize("backend", ["eager", "native"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layer_norm_act_matches_the_pair(act, dtype, backend):
    torch.manual_seed(0)
    for shape, normalized, bias in [((2, 5, 16), 16, True), ((3, 4, 6), (4, 6), True), ((7, 12), 12, False)]:
        norm = _randomize(nn.LayerNorm(normalized, bias=bias)).to(dtype)
        ref = nn.Sequential(norm, _ACT_MODULES[act]).eval()
        fused = LayerNormAct.from_modules(norm, _ACT_MODULES[act], backend).eval()
        x = torch.randn(shape, dtype=dtype)
        with torch.no_grad():
            y, r = fused(x), ref(x)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert torch.allclose(y, r, atol=tol, rtol=tol), (shape, (y - r).abs().max())


def test_same_parameters_as_the_norm_and_gradients_flow():
    torch.manual_seed(0)
    norm = _randomize(nn.GroupNorm(2, 4))
    fused = GroupNormAct.from_modules(norm, nn.SiLU())
    assert set(fused.state_dict()) == set(norm.state_dict()) == {"weight", "bias"}
    assert fused.weight is not norm.weight and torch.equal(fused.weight, norm.weight)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    fused(x).sum().backward()  # the activation runs out of place when autograd records
    x2 = x.detach().clone().requires_grad_()
    nn.functional.silu(norm(x2)).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-6)


def test_native_backend_runs_forward_only_and_falls_back_when_autograd_records():
    from edgeopt.kernels import native

    torch.manual_seed(0)
    norm = _randomize(nn.GroupNorm(2, 6))
    fused = GroupNormAct.from_modules(norm, nn.GELU(), backend="native")
    x = torch.randn(2, 6, 5, 3)
    with torch.inference_mode():
        y = fused(x.transpose(2, 3))  # a non-contiguous input is made contiguous first
        assert torch.allclose(y, nn.functional.gelu(norm(x.transpose(2, 3))), atol=1e-5)
        if native.unavailable_reason() is None:  # the native kernel computed it
            xc = x.transpose(2, 3).contiguous()
            assert torch.equal(y, native.group_norm_act(xc, 2, fused.weight, fused.bias, norm.eps, "gelu"))
    xg = x.clone().requires_grad_()
    fused(xg).sum().backward()  # autograd records: the eager path, gradients flow
    x2 = x.clone().requires_grad_()
    nn.functional.gelu(norm(x2)).sum().backward()
    assert torch.allclose(xg.grad, x2.grad, atol=1e-5) and fused.weight.grad is not None


def test_bad_pairs_and_names_are_refused():
    assert act_name(nn.ReLU()) is None and fuse_pair(nn.GroupNorm(1, 2), nn.ReLU()) is None
    assert fuse_pair(nn.BatchNorm2d(2), nn.SiLU()) is None
    with pytest.raises(ValueError, match="norm, act"):
        GroupNormAct.from_modules(nn.LayerNorm(4), nn.SiLU())
    with pytest.raises(ValueError, match="act: unknown activation 'relu'"):
        GroupNormAct(1, 4, act="relu")
    with pytest.raises(ValueError, match="backend: unknown backend 'triton'; known: eager, compile, native"):
        LayerNormAct(4, backend="triton")
    assert BACKENDS == ("eager", "compile", "native")
    with pytest.raises(ValueError, match="num_groups"):
        GroupNormAct(3, 4)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EDGEOPT_TEST_COMPILE"),
                    reason="torch.compile takes ~25 s cold; set EDGEOPT_TEST_COMPILE=1 to run")
def test_compile_backend_matches_the_pair():
    torch.manual_seed(0)
    norm = _randomize(nn.GroupNorm(2, 4))
    fused = GroupNormAct.from_modules(norm, nn.GELU(), backend="compile").eval()
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        assert torch.allclose(fused(x), nn.functional.gelu(norm(x)), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_random_shapes_against_the_module_pair(dtype):
    import random

    rng = random.Random(str(dtype))
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 0.0}[dtype]  # bf16: same kernels, same bits
    for trial in range(6):
        torch.manual_seed(trial)
        act = rng.choice([nn.SiLU(), nn.GELU(), nn.GELU(approximate="tanh")])
        if rng.random() < 0.5:
            groups = rng.choice([1, 2, 3])
            shape = (rng.randint(1, 3), groups * rng.randint(1, 4), *[rng.randint(1, 9) for _ in range(rng.randint(0, 2))])
            norm = _randomize(nn.GroupNorm(groups, shape[1], affine=rng.random() < 0.8))
        else:
            shape = tuple(rng.randint(1, 7) for _ in range(rng.randint(2, 4)))
            norm = _randomize(nn.LayerNorm(shape[-1], elementwise_affine=rng.random() < 0.8))
        norm = norm.to(dtype)
        fused = fuse_pair(norm, act)
        x = torch.randn(shape).to(dtype) * 2 + 1
        with torch.no_grad():
            ref, y = act(norm(x)), fused(x)
        assert y.dtype == dtype and y.shape == x.shape
        assert (y.double() - ref.double()).abs().max() <= tol, (trial, type(norm).__name__, shape)
