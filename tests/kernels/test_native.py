"""The native C++ kernels against PyTorch references: both code paths, odd shapes, masks, bad input, the build cache."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch
import torch.nn.functional as F

from edgeopt.kernels import native
from edgeopt.kernels.attention import attention

ACTS = ("silu", "gelu", "gelu_tanh", "none")
_ACT_FNS = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "none": lambda t: t}
PATHS = (False, True)  # scalar=False: AVX2+FMA where the CPU has it; scalar=True: the plain C++ path


@pytest.fixture()
def ops(native_ops):
    """The compiled operators (tests/conftest.py's session fixture: built once per machine and torch version)."""
    return native_ops


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ normalization + activation
@pytest.mark.parametrize("scalar", PATHS, ids=["vector", "scalar"])
@pytest.mark.parametrize("act", ACTS)
def test_group_norm_act_matches_pytorch(ops, act, scalar):
    g = _gen()
    for shape, groups, affine in [((2, 8, 5, 7), 4, True), ((1, 6, 11), 3, True), ((3, 4, 2, 3, 2), 1, False),
                                  ((1, 32, 9, 9), 32, True), ((2, 12, 13, 3), 6, True), ((1, 3, 2), 3, True)]:
        x = torch.randn(shape, generator=g) * 3 + 2
        w = torch.randn(shape[1], generator=g) if affine else None
        b = torch.randn(shape[1], generator=g) if affine else None
        y = native.group_norm_act(x, groups, w, b, 1e-4, act, scalar=scalar)
        ref = _ACT_FNS[act](F.group_norm(x, groups, w, b, 1e-4))  # the untouched float32 path
        assert y.shape == x.shape and y.dtype == torch.float32
        assert torch.allclose(y, ref, atol=1e-5, rtol=1e-5), (shape, act, (y - ref).abs().max())


@pytest.mark.parametrize("scalar", PATHS, ids=["vector", "scalar"])
@pytest.mark.parametrize("act", ACTS)
def test_layer_norm_act_matches_pytorch(ops, act, scalar):
    g = _gen(1)
    for shape, normalized, affine in [((2, 5, 16), (16,), True), ((3, 4, 6), (4, 6), True), ((7, 13), (13,), False),
                                      ((1, 1, 77), (77,), True)]:
        x = torch.randn(shape, generator=g) * 2 - 1
        w = torch.randn(normalized, generator=g) if affine else None
        b = torch.randn(normalized, generator=g) if affine else None
        y = native.layer_norm_act(x, normalized, w, b, 1e-5, act, scalar=scalar)
        ref = _ACT_FNS[act](F.layer_norm(x, normalized, w, b, 1e-5))  # the untouched float32 path
        assert torch.allclose(y, ref, atol=1e-5, rtol=1e-5), (shape, act, (y - ref).abs().max())


def test_norm_paths_agree_and_the_environment_forces_scalar(ops, monkeypatch):
    x = torch.randn(2, 16, 7, 9, generator=_gen(2))
    w, b = torch.randn(16, generator=_gen(3)), torch.randn(16, generator=_gen(4))
    for act in ACTS:
        vec = native.group_norm_act(x, 4, w, b, 1e-5, act, scalar=False)
        sca = native.group_norm_act(x, 4, w, b, 1e-5, act, scalar=True)
        assert torch.allclose(vec, sca, atol=2e-6, rtol=2e-6)
        monkeypatch.setenv("EDGEOPT_NATIVE_SCALAR", "1")
        assert torch.equal(native.group_norm_act(x, 4, w, b, 1e-5, act), sca)  # scalar=None: the environment decides
        monkeypatch.delenv("EDGEOPT_NATIVE_SCALAR")
        assert torch.equal(native.group_norm_act(x, 4, w, b, 1e-5, act), vec)


def test_norm_bad_input_is_a_clear_error(ops):
    x = torch.randn(2, 8, 4, 4)
    with pytest.raises(ValueError, match="x: expected a contiguous tensor"):
        native.group_norm_act(x.transpose(2, 3), 2, None, None)
    with pytest.raises(ValueError, match="x: expected a float32 tensor, got Double"):
        native.group_norm_act(x.double(), 2, None, None)
    with pytest.raises(ValueError, match="num_groups: 3 does not divide the 8 channels"):
        native.group_norm_act(x, 3, None, None)
    with pytest.raises(ValueError, match="weight: expected 8 values, got 4"):
        native.group_norm_act(x, 2, torch.ones(4), None)
    with pytest.raises(ValueError, match="act: unknown activation 'relu'"):
        native.group_norm_act(x, 2, None, None, act="relu")
    with pytest.raises(ValueError, match="normalized_shape"):
        native.layer_norm_act(x, (3,), None, None)
    with pytest.raises(ValueError, match="bias: expected a float32 tensor"):
        native.layer_norm_act(x, (4,), torch.ones(4), torch.ones(4, dtype=torch.float64))


def test_empty_input_gives_empty_output(ops):
    assert native.group_norm_act(torch.empty(0, 4, 3), 2, None, None).shape == (0, 4, 3)
    q = torch.empty(1, 2, 0, 8)
    k = v = torch.randn(1, 2, 5, 8)
    assert native.flash_attention(q, k, v, 0.3).shape == (1, 2, 0, 8)


# ------------------------------------------------------------------ attention
_ATT_SHAPES = [  # (B, nh, Tq, Tk, hs, hv): odd sizes, not multiples of 8 or of the blocks
    (1, 1, 1, 1, 4, 4),
    (2, 3, 17, 17, 8, 8),
    (1, 2, 9, 23, 16, 5),
    (1, 2, 37, 77, 40, 40),
    (2, 1, 13, 130, 7, 11),
]
_ATT_BLOCKS = [(256, 512), (4, 5), (1, 64), (7, 9)]
_KERNELS = {"partial_softmax": native.partial_softmax_attention, "flash": native.flash_attention}


def _mask(kind: str, B: int, nh: int, Tq: int, Tk: int, g: torch.Generator) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "additive":  # broadcast over heads
        return torch.randn(B, 1, Tq, Tk, generator=g)
    m = torch.zeros(Tq, Tk)  # anti-causal with -inf: early key blocks fully masked for late rows
    m.masked_fill_(~torch.ones(Tq, Tk, dtype=torch.bool).triu(), float("-inf"))
    m[:, -1] = 0.0
    return m


@pytest.mark.parametrize("scalar", PATHS, ids=["vector", "scalar"])
@pytest.mark.parametrize("mask_kind", ["none", "additive", "anticausal"])
@pytest.mark.parametrize("kernel", list(_KERNELS))
def test_attention_matches_the_float64_reference(ops, kernel, mask_kind, scalar):
    g = _gen(5)
    fn = _KERNELS[kernel]
    for B, nh, Tq, Tk, hs, hv in _ATT_SHAPES:
        q = torch.randn(B, nh, Tq, hs, generator=g)
        k = torch.randn(B, nh, Tk, hs, generator=g) * 1.5
        v = torch.randn(B, nh, Tk, hv, generator=g)
        mask = _mask(mask_kind, B, nh, Tq, Tk, g)
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                             attn_mask=None if mask is None else mask.double())  # (B, nh, Tq, hv)
        full = None if mask is None else mask.expand(B, nh, Tq, Tk)  # a broadcast view: strides 0 where broadcast
        for qb, kb in _ATT_BLOCKS:
            y = fn(q, k, v, hs ** -0.5, full, qb, kb, scalar=scalar)
            assert y.shape == (B, nh, Tq, hv) and y.dtype == torch.float32
            err = (y.double() - ref).abs().max().item()
            assert err < 3e-6, (kernel, (B, nh, Tq, Tk, hs, hv), (qb, kb), err)


@pytest.mark.parametrize("impl", ["partial_softmax_native", "flash_native"])
def test_attention_entry_point_broadcasts_masks_and_dims(ops, impl):
    g = _gen(6)
    q, k, v = (torch.randn(2, 3, 19, 8, generator=g) for _ in range(3))
    bool_mask = torch.rand(1, 3, 19, 19, generator=g) > 0.4
    bool_mask[..., 0] = True
    masks = [None, torch.randn(19, 19, generator=g), torch.randn(2, 1, 1, 19, generator=g), bool_mask]
    with torch.inference_mode():
        for mask in masks:
            ref = attention(q, k, v, mask)  # naive
            assert torch.allclose(attention(q, k, v, mask, impl=impl, q_block=5, k_block=6), ref, atol=3e-6)
        y3 = attention(q[0], k[0], v[0], impl=impl)  # (nh, T, hs): 3 dims
        assert torch.allclose(y3, attention(q[0], k[0], v[0]), atol=3e-6)
        qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # a non-contiguous view, as diffusers hands them over
        assert torch.allclose(attention(qt, k, v, impl=impl), attention(q, k, v), atol=3e-6)


def test_attention_paths_agree_and_fully_masked_rows_are_nan(ops):
    g = _gen(7)
    q, k, v = (torch.randn(1, 2, 21, 12, generator=g) for _ in range(3))
    mask = torch.zeros(1, 1, 21, 21)
    mask[..., 3, :] = float("-inf")  # row 3 sees no key
    full = mask.expand(1, 2, 21, 21)
    for fn in _KERNELS.values():
        vec = fn(q, k, v, 0.25, full, 4, 8, scalar=False)
        sca = fn(q, k, v, 0.25, full, 4, 8, scalar=True)
        assert torch.isnan(vec[..., 3, :]).all() and torch.isnan(sca[..., 3, :]).all()  # as naive softmax gives
        keep = torch.ones(21, dtype=torch.bool)
        keep[3] = False
        assert torch.allclose(vec[..., keep, :], sca[..., keep, :], atol=1e-6)


def test_attention_bad_input_is_a_clear_error(ops):
    q = torch.randn(1, 2, 8, 4)
    k = v = torch.randn(1, 2, 6, 4)
    fn = native.flash_attention
    with pytest.raises(ValueError, match="q: expected a contiguous tensor"):
        fn(q.transpose(2, 3).contiguous().transpose(2, 3), k, v, 0.5)
    with pytest.raises(ValueError, match="k: expected a float32 tensor, got Half"):
        fn(q, k.half(), v, 0.5)
    with pytest.raises(ValueError, match="q, k, v: incompatible shapes"):
        fn(q, torch.randn(1, 2, 6, 5), v, 0.5)
    with pytest.raises(ValueError, match="expected 4 dims"):
        fn(q[0], k[0], v[0], 0.5)
    with pytest.raises(ValueError, match=r"mask: expected shape \(B, nh, Tq, Tk\)"):
        fn(q, k, v, 0.5, torch.zeros(1, 1, 8, 6))
    with pytest.raises(ValueError, match="mask: expected an additive float32 mask"):
        fn(q, k, v, 0.5, torch.ones(1, 2, 8, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="q_block: must be >= 1"):
        native.partial_softmax_attention(q, k, v, 0.5, None, 0, 4)
    with pytest.raises(ValueError, match="k: no keys"):
        fn(q, torch.empty(1, 2, 0, 4), torch.empty(1, 2, 0, 4), 0.5)


@pytest.mark.parametrize("threads", [1, 2])
def test_workspace_is_what_the_formula_says(ops, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for B, nh, Tq, Tk, qb, kb in [(1, 2, 37, 77, 8, 32), (1, 1, 50, 9, 256, 512), (2, 3, 5, 300, 2, 100)]:
            q = torch.randn(B, nh, Tq, 8)
            k = v = torch.randn(B, nh, Tk, 8)
            for fn in _KERNELS.values():
                fn(q, k, v, 0.3, None, qb, kb)
                assert native.workspace_bytes() == native.attention_workspace_bytes(B, nh, Tq, Tk, qb, kb, threads)
    finally:
        torch.set_num_threads(before)
    # one head, 50 rows, 4 threads: the query block shrinks to 13 rows so that 4 items keep 4 threads busy
    assert native.attention_workspace_bytes(1, 1, 50, 9, 256, 512, 4) == 4 * 4 * (13 * 16 + 2 * 13)
    # no (Tq × Tk) matrix: far below the naive scores + probabilities at 4096 tokens, 8 heads
    assert native.attention_workspace_bytes(1, 8, 4096, 4096, 256, 512, 2) < 2 * 8 * 4096 * 4096 * 4 / 500


# ------------------------------------------------------------------ the loader
def test_isa_and_build_info(ops):
    info = native.build_info()
    assert info["isa"] in ("avx2+fma", "scalar") and os.path.isfile(info["path"])
    assert info["key"] == native.build_key() and info["seconds"] > 0
    assert native.unavailable_reason() is None and native.available()


def test_a_second_process_loads_the_cached_library_without_compiling(ops):
    lib = native.build_info()["path"]
    mtime = os.stat(lib).st_mtime_ns
    code = "from edgeopt.kernels import native; native.load(); print(native.build_info()['compiled'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False" and "compiling" not in out.stderr
    assert os.stat(lib).st_mtime_ns == mtime


def test_the_build_lock_lets_one_process_compile(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path))
    builds: list[int] = []

    def slow_build(folder, lib):
        builds.append(threading.get_ident())
        time.sleep(0.3)
        folder.mkdir(parents=True, exist_ok=True)
        lib.write_bytes(b"")
        return 0.3

    monkeypatch.setattr(native, "_build", slow_build)
    results: list[dict] = []
    threads = [threading.Thread(target=lambda: results.append(native.ensure_built())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(results) == 3
    assert sorted(r["compiled"] for r in results) == [False, False, True]
    assert all(r["path"] == results[0]["path"] for r in results) and all(r["seconds"] == 0.3 for r in results)
    assert (tmp_path / "native" / native.build_key() / "built.txt").is_file()


def test_a_compile_failure_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "CFLAGS", ("-O3", "-fopenmp", "-DEDGEOPT_BROKEN=1", "-include", "no/such/header.h"))
    with pytest.raises(native.NativeUnavailable, match="native kernels failed to compile") as e:
        native.ensure_built()
    assert "\n" not in str(e.value) and "no/such/header.h" in str(e.value)


def test_no_compiler_is_reported_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path))  # no cached build there
    monkeypatch.setenv("CXX", "/no/such/c++")
    monkeypatch.setitem(native._state, "ops", None)
    assert native.unavailable_reason() == "no C++ compiler: '/no/such/c++' not found on PATH (install g++ or set CXX)"
    with pytest.raises(native.NativeUnavailable, match="no C\\+\\+ compiler"):
        native.load()
    monkeypatch.setenv("EDGEOPT_NATIVE", "0")
    assert native.unavailable_reason() == "native kernels turned off by EDGEOPT_NATIVE=0"


def test_callers_fall_back_with_one_warning(ops, monkeypatch):
    from edgeopt.kernels.fused_norm import group_norm_act, group_norm_act_native

    monkeypatch.setenv("EDGEOPT_NATIVE", "0")
    monkeypatch.setitem(native._state, "warned", False)
    x, w, b = torch.randn(1, 4, 3, 3), torch.randn(4), torch.randn(4)
    q = k = v = torch.randn(1, 1, 6, 4)
    with torch.inference_mode():
        with pytest.warns(RuntimeWarning, match="native kernels unavailable, using the PyTorch path: .*EDGEOPT_NATIVE=0"):
            y = group_norm_act_native(x, 2, w, b, 1e-5, "silu")
        assert torch.equal(y, group_norm_act(x, 2, w, b, 1e-5, "silu"))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once already
            assert torch.allclose(attention(q, k, v, impl="flash_native"), attention(q, k, v), atol=1e-6)
