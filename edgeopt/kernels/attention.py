"""Attention variants selectable per layer: naive, partially fused softmax, FlashAttention-style tiling and SDPA.

Written by hand: no library offers these as interchangeable PyTorch implementations of one function (PyTorch's
`scaled_dot_product_attention` picks its own kernel internally and exposes none of its intermediates).

All take q (B, nh, Tq, hs), k (B, nh, Tk, hs), v (B, nh, Tk, hv) and an optional mask broadcastable to
(B, nh, Tq, Tk): additive (float, added to the scaled scores) or boolean (True = attend, as in SDPA).

- `naive`: S = q k^T · scale (+ mask), P = softmax(S), P v. Stores both (Tq, Tk) matrices.
- `partial_softmax` (the paper's partially fused softmax, two passes over key blocks): a reduction computes
  each row's max and sum of exponentials; the exp is then folded into the product with V block by block and
  the normalization applied once to the result, so the probability matrix is never stored. Unlike the
  paper's GPU kernel, which writes S once and reads it twice, S is recomputed per key block in the second
  pass, so no (Tq, Tk) matrix exists at all: intermediates are O(Tq · k_block).
- `flash`: tiled over query and key blocks with an online softmax (running max and sum, the partial output
  rescaled as the max grows); neither matrix stored: intermediates are O(q_block · (k_block + hv)).
- `sdpa`: torch.nn.functional.scaled_dot_product_attention (PyTorch picks its CPU kernel).
- `partial_softmax_native`, `flash_native`: the same two algorithms as single C++ kernels
  (`edgeopt.kernels.native`: blocked over (batch, head, query block) on torch's threads, block products on
  ATen's matmul, row reductions and exponentials in AVX2+FMA or scalar code chosen at run time); each thread
  holds one (q_block × k_block) score block and two row vectors, and accumulates into its rows of the
  output. Forward only: they run for float32 CPU inputs when autograd is not recording, and otherwise (or
  where the kernels cannot be built, warned once with the reason) the Python version of the same algorithm
  runs. Masks reach them as additive float32 (booleans become 0 / -inf).

Fully masked rows (every key -inf) give NaN in naive, partial_softmax and flash alike, as softmax over all -inf
does; PyTorch's SDPA returns zeros there. Masks from Hugging Face use the dtype's minimum instead of -inf.

Models plug in through `MultiHeadSelfAttention` (a generic q/k/v module), transformers' AttentionInterface
(`hf_attention_forward`, registered as "edgeopt") and diffusers' processors (`EdgeoptAttnProcessor`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.kernels import native
from edgeopt.kernels.checks import one_of
from edgeopt.kernels.layer_stats import peak_intermediate_bytes as layer_peak_bytes

IMPLS: tuple[str, ...] = ("naive", "partial_softmax", "flash", "sdpa")  # the PyTorch implementations
NATIVE_IMPLS: tuple[str, ...] = tuple(native.ATTENTION_IMPLS)  # the C++ ones (edgeopt.kernels.native)
ALL_IMPLS: tuple[str, ...] = IMPLS + NATIVE_IMPLS
BLOCK_FIELDS: tuple[str, ...] = ("q_block", "k_block")
# Chosen by measurement on a 2-core AVX512 Xeon, fp32, 2 threads, 2 heads: flash at 4096 tokens, head dim 40,
# takes 116 ms with 128/128 blocks and 38 ms with 256/512 (fewer Python-level iterations, larger products).
DEFAULT_BLOCKS: dict[str, int] = {"q_block": 256, "k_block": 512}


def check_impls(impls: str | Iterable[str], field: str = "impls") -> tuple[str, ...]:
    """Implementation names from ALL_IMPLS (a sequence or "naive,flash"); an unknown one is an ArgumentError (a
    ValueError) naming `field` and listing the known ones."""
    return one_of(impls if isinstance(impls, str) else tuple(impls), ALL_IMPLS, field, "attention implementation")


def check_impl(impl: str, field: str = "impl") -> str:
    """`impl` if it names an implementation, else an ArgumentError (a ValueError) naming `field`."""
    return check_impls((impl,), field)[0]


def check_blocks(blocks: dict[str, Any]) -> dict[str, int]:
    """Block sizes merged over the defaults; unknown names or non-positive sizes raise ValueError naming the field."""
    out = dict(DEFAULT_BLOCKS)
    for name, value in blocks.items():
        if name not in BLOCK_FIELDS:
            raise ValueError(f"{name}: unknown block size; known: {', '.join(BLOCK_FIELDS)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: block size must be an int >= 1, got {value!r}")
        out[name] = value
    return out


def _check_mask(mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    full = (*q.shape[:-1], k.shape[-2])  # (B, nh, Tq, Tk)
    try:
        fits = torch.broadcast_shapes(mask.shape, full) == torch.Size(full)
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"mask: shape {tuple(mask.shape)} does not broadcast to (B, nh, Tq, Tk) = {full}")
    while mask.dim() < 2:
        mask = mask.unsqueeze(0)
    if mask.dtype != torch.bool and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)
    return mask


def _apply_mask_(s: torch.Tensor, mask: torch.Tensor | None, qs: slice, ks: slice) -> torch.Tensor:
    """Add (float) or apply (bool) the block (qs, ks) of `mask` to the score block `s`, in place."""
    if mask is None:
        return s
    mb = mask
    if mb.shape[-2] != 1:
        mb = mb[..., qs, :]
    if mb.shape[-1] != 1:
        mb = mb[..., ks]  # (B|1, nh|1, q rows|1, k cols|1)
    if mb.dtype == torch.bool:
        return s.masked_fill_(~mb, float("-inf"))
    return s.add_(mb)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Running statistics and the partial output stay in at least float32."""
    return torch.promote_types(dtype, torch.float32)


def _naive(q, k, v, mask, scale, blocks):
    att = (q @ k.transpose(-2, -1)) * scale  # (B, nh, Tq, Tk) scores
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else att + mask  # (B, nh, Tq, Tk)
    att = F.softmax(att, dim=-1)  # (B, nh, Tq, Tk) probabilities
    return att @ v  # (B, nh, Tq, hv)


def _partial_softmax(q, k, v, mask, scale, blocks):
    kb = blocks["k_block"]
    Tk = k.shape[-2]
    acc_t = _acc_dtype(q.dtype)
    row = (*q.shape[:-1], 1)  # (B, nh, Tq, 1)
    m = torch.full(row, float("-inf"), dtype=acc_t, device=q.device)  # (B, nh, Tq, 1) running row max
    l = torch.zeros(row, dtype=acc_t, device=q.device)  # (B, nh, Tq, 1) running sum of exponentials
    rows = slice(None)
    # pass 1, the reduction: each row's max and sum of exp, key block by key block
    for k0 in range(0, Tk, kb):
        ks = slice(k0, k0 + kb)
        s = (q @ k[..., ks, :].transpose(-2, -1)).to(acc_t).mul_(scale)  # (B, nh, Tq, kb)
        _apply_mask_(s, mask, rows, ks)
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))  # (B, nh, Tq, 1)
        m_safe = m_new.nan_to_num(neginf=0.0)  # (B, nh, Tq, 1) rows masked so far: exp(-inf - 0) = 0
        l.mul_((m - m_safe).exp_()).add_(s.sub_(m_safe).exp_().sum(-1, keepdim=True))  # (B, nh, Tq, 1)
        m = m_new
        del s  # free the block before the next one is computed
    m_safe = m.nan_to_num(neginf=0.0)  # (B, nh, Tq, 1)
    # pass 2: exp folded into the product with V; the probability matrix is never formed
    out = torch.zeros((*q.shape[:-1], v.shape[-1]), dtype=acc_t, device=q.device)  # (B, nh, Tq, hv)
    for k0 in range(0, Tk, kb):
        ks = slice(k0, k0 + kb)
        s = (q @ k[..., ks, :].transpose(-2, -1)).to(acc_t).mul_(scale)  # (B, nh, Tq, kb)
        _apply_mask_(s, mask, rows, ks)
        p = s.sub_(m_safe).exp_()  # (B, nh, Tq, kb) unnormalized, in place of s
        out += (p.to(v.dtype) @ v[..., ks, :]).to(acc_t)  # (B, nh, Tq, hv)
        del s, p
    return out.div_(l).to(q.dtype)  # (B, nh, Tq, hv) normalized once


def _flash(q, k, v, mask, scale, blocks):
    qb, kb = blocks["q_block"], blocks["k_block"]
    Tq, Tk = q.shape[-2], k.shape[-2]
    acc_t = _acc_dtype(q.dtype)
    out = torch.empty((*q.shape[:-1], v.shape[-1]), dtype=q.dtype, device=q.device)  # (B, nh, Tq, hv)
    for q0 in range(0, Tq, qb):
        qs = slice(q0, q0 + qb)
        qi = q[..., qs, :]  # (B, nh, qb, hs)
        row = (*qi.shape[:-1], 1)  # (B, nh, qb, 1)
        m = torch.full(row, float("-inf"), dtype=acc_t, device=q.device)  # (B, nh, qb, 1) running max
        l = torch.zeros(row, dtype=acc_t, device=q.device)  # (B, nh, qb, 1) running sum of exp
        acc = torch.zeros((*qi.shape[:-1], v.shape[-1]), dtype=acc_t, device=q.device)  # (B, nh, qb, hv)
        for k0 in range(0, Tk, kb):
            ks = slice(k0, k0 + kb)
            s = (qi @ k[..., ks, :].transpose(-2, -1)).to(acc_t).mul_(scale)  # (B, nh, qb, kb)
            _apply_mask_(s, mask, qs, ks)
            m_new = torch.maximum(m, s.amax(-1, keepdim=True))  # (B, nh, qb, 1)
            m_safe = m_new.nan_to_num(neginf=0.0)  # (B, nh, qb, 1)
            p = s.sub_(m_safe).exp_()  # (B, nh, qb, kb) in place of s
            corr = (m - m_safe).exp_()  # (B, nh, qb, 1) rescales what was summed under the old max
            l.mul_(corr).add_(p.sum(-1, keepdim=True))  # (B, nh, qb, 1)
            acc.mul_(corr).add_((p.to(v.dtype) @ v[..., ks, :]).to(acc_t))  # (B, nh, qb, hv)
            m = m_new
            del s, p
        out[..., qs, :] = acc.div_(l)  # (B, nh, qb, hv)
    return out


def _sdpa(q, k, v, mask, scale, blocks):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # (B, nh, Tq, hv)


def _native_ops(q, k, v, mask):
    """The native operators when they apply (float32 CPU tensors of at most 4 dims with equal batch dims,
    autograd not recording), else None."""
    tensors = [t for t in (q, k, v, mask) if t is not None]
    if q.dtype != torch.float32 or any(t.device.type != "cpu" for t in tensors):
        return None
    if q.dim() > 4 or not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    return native.ops_or_warn()


def _as_4d(t: torch.Tensor) -> torch.Tensor:
    """(..., T, d) with at most 4 dims as a (B, nh, T, d) view."""
    return t[(None,) * (4 - t.dim())]


def _native(impl, fallback, q, k, v, mask, scale, blocks):
    """The native kernel of `impl` where it applies, else `fallback` (the Python version of the same algorithm)."""
    ops = _native_ops(q, k, v, mask)
    if ops is None:
        return fallback(q, k, v, mask, scale, blocks)
    m = None
    if mask is not None:
        if mask.dtype == torch.bool:  # True = attend -> 0, False -> -inf
            mask = torch.zeros(mask.shape, dtype=torch.float32).masked_fill_(~mask, float("-inf"))
        m = _as_4d(mask.expand(*q.shape[:-1], k.shape[-2]))  # (B, nh, Tq, Tk) view, broadcast dims of stride 0
    q4, k4, v4 = (_as_4d(t).contiguous() for t in (q, k, v))  # (B, nh, Tq, hs), (B, nh, Tk, hs), (B, nh, Tk, hv)
    kernel = getattr(ops, native.ATTENTION_IMPLS[impl])
    y = kernel(q4, k4, v4, scale, m, blocks["q_block"], blocks["k_block"], native.use_scalar())  # (B, nh, Tq, hv)
    return y.view(*q.shape[:-1], v.shape[-1])


def _partial_softmax_native(q, k, v, mask, scale, blocks):
    return _native("partial_softmax_native", _partial_softmax, q, k, v, mask, scale, blocks)


def _flash_native(q, k, v, mask, scale, blocks):
    return _native("flash_native", _flash, q, k, v, mask, scale, blocks)


_IMPL_FNS = {"naive": _naive, "partial_softmax": _partial_softmax, "flash": _flash, "sdpa": _sdpa,
             "partial_softmax_native": _partial_softmax_native, "flash_native": _flash_native}


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              impl: str = "naive", scale: float | None = None, **block_sizes: int) -> torch.Tensor:
    """softmax(q k^T · scale + mask) v with the chosen implementation; returns (B, nh, Tq, hv).

    `scale` defaults to hs^-0.5; `block_sizes` are `q_block` (flash, and both native kernels) and `k_block`.
    """
    check_impl(impl)
    blocks = check_blocks(block_sizes)
    if q.dim() < 2 or k.shape[-1] != q.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"q, k, v: incompatible shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    mask = _check_mask(mask, q, k)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _IMPL_FNS[impl](q, k, v, mask, scale, blocks)


# ------------------------------------------------------------------ memory of the intermediates
def peak_intermediate_bytes(impl: str, B: int, nh: int, Tq: int, Tk: int, hs: int,
                            dtype: torch.dtype = torch.float32, blocks: dict[str, int] | None = None,
                            hv: int | None = None) -> int | None:
    """Analytic peak bytes of the intermediates (everything but inputs and output) of this module's code.

    naive: scores and probabilities, 2·(Tq·Tk). partial_softmax: one score block, the p·v product and three
    row vectors, Tq·(kb + hv + 3). flash: one score block, the block accumulator and p·v product and four
    row vectors, qb·(kb + 2·hv + 4). All per (batch, head); statistics counted at max(itemsize, 4) bytes.
    Native kernels (float32): per thread in use (torch.get_num_threads()), one qb × kb score block and two
    row vectors, as `native.attention_workspace_bytes` sizes them (what the kernel then reports through
    `native.workspace_bytes()`); other dtypes run the Python algorithm and get its figure.
    sdpa: None, PyTorch's kernel keeps its workspace internal (`measured_peak_intermediate_bytes` sees
    only what it returns).
    """
    check_impl(impl)
    b = check_blocks(blocks or {})
    hv = hs if hv is None else hv
    s = torch.empty((), dtype=dtype).element_size()
    sa = torch.empty((), dtype=_acc_dtype(dtype)).element_size()
    bh = B * nh
    if impl in NATIVE_IMPLS:
        if dtype == torch.float32:
            return native.attention_workspace_bytes(B, nh, Tq, Tk, b["q_block"], b["k_block"], torch.get_num_threads())
        impl = impl.removesuffix("_native")
    if impl == "naive":
        return 2 * bh * Tq * Tk * s
    if impl == "partial_softmax":
        kb = min(b["k_block"], Tk)
        return bh * Tq * (kb + hv + 3) * sa
    if impl == "flash":
        qb, kb = min(b["q_block"], Tq), min(b["k_block"], Tk)
        return bh * qb * (kb + 2 * hv + 4) * sa
    return None


def measured_peak_intermediate_bytes(impl: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                     mask: torch.Tensor | None = None, scale: float | None = None,
                                     **block_sizes: int) -> int:
    """Peak bytes of tensors allocated (and not returned) while `attention(...)` runs, measured op by op.

    See `edgeopt.kernels.layer_stats.peak_intermediate_bytes`: every tensor an ATen op creates is seen;
    workspace an op keeps inside itself (SDPA's kernel buffers, the native kernels' scratch, which
    `native.workspace_bytes()` reports) is invisible to it.
    """
    return layer_peak_bytes(lambda: attention(q, k, v, mask, impl=impl, scale=scale, **block_sizes), keep=(q, k, v, mask))


# ------------------------------------------------------------------ a reference attention module
class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v nn.Linear projections and a selectable implementation.

    The generic module `kernels.attention` swaps implementations in: `impl` and `blocks` are plain attributes
    that `set_impl` validates.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = True, impl: str = "naive", **block_sizes: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads: {num_heads} does not divide dim {dim}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim, bias=bias)
        self.k = nn.Linear(dim, dim, bias=bias)
        self.v = nn.Linear(dim, dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.impl, self.blocks = "naive", {}
        self.set_impl(impl, **block_sizes)

    def set_impl(self, impl: str, **block_sizes: int) -> None:
        """Select the attention implementation (and block sizes) this module uses from now on."""
        self.impl = check_impl(impl)
        check_blocks(block_sizes)
        self.blocks = dict(block_sizes)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, impl={self.impl!r}, blocks={self.blocks}"

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape  # (B, T, C)
        nh, hs = self.num_heads, self.head_dim
        q = self.q(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.v(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        y = attention(q, k, v, mask, impl=self.impl, **self.blocks)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C) heads side by side
        return self.proj(y)  # (B, T, C)


def attention_flops(B: int, nh: int, Tq: int, Tk: int, hs: int, hv: int | None = None) -> int:
    """Multiply-add FLOPs (2 per MAC) of the two products q k^T and P v, the same for every implementation
    except partial_softmax, which computes q k^T twice."""
    hv = hs if hv is None else hv
    return 2 * B * nh * Tq * Tk * (hs + hv)


# ------------------------------------------------------------------ Hugging Face integration
HF_NAME = "edgeopt"  # the name registered in transformers' AttentionInterface and AttentionMaskInterface
HF_SPEC_ATTR = "edgeopt_attention"  # per-module attribute: {"impl": ..., "blocks": {...}}
HF_SWAPPABLE = ("eager", "sdpa", None, HF_NAME)  # model attention implementations the kernels may replace
_HF_UNSUPPORTED_KWARGS = ("sliding_window", "softcap", "s_aux")
_HF_DISPATCHED: ContextVar[dict[int, nn.Module] | None] = ContextVar("edgeopt_hf_dispatched", default=None)


def _hf_eager(module: nn.Module):
    """The eager attention function of the module's own modeling file (transformers keeps one per model)."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    return fn if fn is not None else _eager_with_weights


def _eager_with_weights(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    if key.shape[1] != query.shape[1]:  # grouped key/value heads: each serves query.shape[1] // key.shape[1]
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)  # (B, nh, Tk, hs|hv)
    att = (query @ key.transpose(-2, -1)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)  # (B, nh, Tq, Tk)
    if attention_mask is not None:
        att = att + attention_mask[..., : key.shape[-2]]  # (B, nh, Tq, Tk)
    att = F.dropout(F.softmax(att, dim=-1), p=dropout, training=module.training)  # (B, nh, Tq, Tk)
    return (att @ value).transpose(1, 2).contiguous(), att  # (B, Tq, nh, hv), (B, nh, Tq, Tk)


def hf_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                         **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function: the implementation in module.edgeopt_attention, else the model's eager one.

    `module` is whatever the calling layer hands to the function it looked up in the attention-function
    registry (the layer itself in every transformers model); inside `record_hf_dispatch` it is recorded.
    query (B, nh, Tq, hs), key/value (B, nh, Tk, hs), attention_mask additive (B, 1, Tq, Tk) or None (the
    "edgeopt" mask interface builds eager masks). Falls back to eager for modules without a spec, dropout in
    training, grouped key/value heads, or features (sliding window, soft-capping, sinks) the kernels lack.
    """
    seen = _HF_DISPATCHED.get()
    if seen is not None:
        seen[id(module)] = module
    spec = getattr(module, HF_SPEC_ATTR, None)
    if (spec is None or (dropout and module.training) or key.shape[1] != query.shape[1]
            or any(kwargs.get(k) is not None for k in _HF_UNSUPPORTED_KWARGS)):
        return _hf_eager(module)(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    y = attention(query, key, value, attention_mask, impl=spec["impl"], scale=scaling,
                  **spec["blocks"])  # (B, nh, Tq, hv)
    return y.transpose(1, 2).contiguous(), None  # (B, Tq, nh, hv) as transformers expects


@contextmanager
def record_hf_dispatch() -> Iterator[dict[int, nn.Module]]:
    """{id(module): module} of every module transformers hands to `hf_attention_forward` while the block runs.

    This is how layers are known to dispatch through the attention-function registry: by the calls it makes,
    not by how a forward is written (decorators, helper functions and renames do not change it).
    """
    seen: dict[int, nn.Module] = {}
    token = _HF_DISPATCHED.set(seen)
    try:
        yield seen
    finally:
        _HF_DISPATCHED.reset(token)


def register_hf_attention() -> str:
    """Register `hf_attention_forward` and eager-style masks under "edgeopt" in transformers (idempotent)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask

    AttentionInterface.register(HF_NAME, hf_attention_forward)
    AttentionMaskInterface.register(HF_NAME, eager_mask)
    return HF_NAME


def _hf_configs(module: nn.Module, extra: Iterable[Any] = ()) -> list[Any]:
    """The distinct transformers configs of `module`'s submodules (and `extra`), parents before children."""
    out: dict[int, Any] = {}
    for c in [getattr(m, "config", None) for m in module.modules()] + list(extra):
        if c is not None and hasattr(c, "_attn_implementation") and id(c) not in out:
            out[id(c)] = c
    return list(out.values())


def use_hf_attention(module: nn.Module, configs: Iterable[Any] = ()) -> list[tuple[Any, Any]]:
    """Switch the transformers models in `module` (and the stand-alone layer `configs`) to the "edgeopt" attention.

    Models go through `PreTrainedModel.set_attn_implementation` (the public switch, which also sets their
    sub-models); the given layer configs it did not switch (a layer outside any model, a model class whose
    source transformers cannot inspect) are set directly. Configs whose implementation is not in
    HF_SWAPPABLE (flash, flex, paged, ...) keep it. Returns [(config, previous implementation)] for
    `restore_hf_attention`.
    """
    register_hf_attention()
    configs = list(configs)
    before = [(c, c._attn_implementation) for c in _hf_configs(module, configs)]
    transformers = sys.modules.get("transformers")
    pretrained = getattr(transformers, "PreTrainedModel", None)
    done: set[int] = set()
    for m in module.modules():
        if pretrained is not None and isinstance(m, pretrained) and id(m.config) not in done:
            done.update(id(c) for c in _hf_configs(m))
            if m.config._attn_implementation in HF_SWAPPABLE:
                try:
                    m.set_attn_implementation(HF_NAME)
                except ValueError:  # refused for this model: its layers' configs are set below
                    pass
    for c in configs:  # layers outside any model, or in one whose class transformers will not switch
        if c._attn_implementation in HF_SWAPPABLE and c._attn_implementation != HF_NAME:
            c._attn_implementation = HF_NAME
    for c, prev in before:  # what the switch must not change
        if prev not in HF_SWAPPABLE and c._attn_implementation != prev:
            c._attn_implementation = prev
    return before


def restore_hf_attention(before: list[tuple[Any, Any]]) -> None:
    """Undo `use_hf_attention`: every config back to its previous implementation (parents first)."""
    for c, prev in before:
        if c._attn_implementation != prev:
            c._attn_implementation = prev


# ------------------------------------------------------------------ diffusers integration
DIFFUSERS_PROCESSORS = ("AttnProcessor2_0", "AttnProcessor")  # the stock processors EdgeoptAttnProcessor replaces


class EdgeoptAttnProcessor:
    """A diffusers attention processor that computes attention with one of ALL_IMPLS.

    Everything around the attention product is done as diffusers' `AttnProcessor2_0` does it (spatial and
    group norm, q/k/v projections, cross-attention norm, q/k norms, output projection, residual, rescale);
    `scale` None is SDPA's default hs^-0.5 (what AttnProcessor2_0 uses), else the layer's `attn.scale` as
    the classic `AttnProcessor` uses it. Set with `Attention.set_processor`; picklable.
    """

    def __init__(self, impl: str = "partial_softmax", scale: float | None = None, **block_sizes: int):
        self.impl = check_impl(impl)
        check_blocks(block_sizes)
        self.blocks = dict(block_sizes)
        self.scale = scale

    def __repr__(self) -> str:
        return f"EdgeoptAttnProcessor(impl={self.impl!r}, blocks={self.blocks}, scale={self.scale})"

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            B, C, H, W = hidden_states.shape  # (B, C, H, W)
            hidden_states = hidden_states.view(B, C, H * W).transpose(1, 2)  # (B, T, C)
        B, Tk, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, Tk, B)
            attention_mask = attention_mask.view(B, attn.heads, -1, attention_mask.shape[-1])  # (B, nh, Tq|1, Tk)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)  # (B, T, C)
        query = attn.to_q(hidden_states)  # (B, Tq, nh*hs)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)  # (B, Tk, nh*hs)
        value = attn.to_v(encoder_hidden_states)  # (B, Tk, nh*hv)
        nh = attn.heads
        hs = key.shape[-1] // nh
        query = query.view(B, -1, nh, hs).transpose(1, 2)  # (B, nh, Tq, hs)
        key = key.view(B, -1, nh, hs).transpose(1, 2)  # (B, nh, Tk, hs)
        value = value.view(B, -1, nh, value.shape[-1] // nh).transpose(1, 2)  # (B, nh, Tk, hv)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        y = attention(query, key, value, attention_mask, impl=self.impl, scale=self.scale,
                      **self.blocks)  # (B, nh, Tq, hv)
        y = y.transpose(1, 2).reshape(B, -1, nh * y.shape[-1]).to(query.dtype)  # (B, Tq, nh*hv)
        y = attn.to_out[0](y)  # (B, Tq, C) output projection
        y = attn.to_out[1](y)  # dropout
        if input_ndim == 4:
            y = y.transpose(-1, -2).reshape(B, C, H, W)  # (B, C, H, W)
        if attn.residual_connection:
            y = y + residual
        return y / attn.rescale_output_factor


def diffusers_processor_for(attn: nn.Module, impl: str, **block_sizes: int) -> EdgeoptAttnProcessor:
    """The EdgeoptAttnProcessor that replaces `attn`'s current stock processor with the same scale.

    Raises ValueError naming the processor when it is not one of DIFFUSERS_PROCESSORS (custom processors
    do things this one does not: IP adapters, added key/values, LoRA, fused projections, ...).
    """
    current = type(attn.processor).__name__
    if isinstance(attn.processor, EdgeoptAttnProcessor):
        return EdgeoptAttnProcessor(impl, attn.processor.scale, **block_sizes)
    if current not in DIFFUSERS_PROCESSORS:
        raise ValueError(f"processor: {current} is not supported (only {', '.join(DIFFUSERS_PROCESSORS)})")
    scale = None if current == "AttnProcessor2_0" else float(attn.scale)
    return EdgeoptAttnProcessor(impl, scale, **block_sizes)


__all__ = ["IMPLS", "NATIVE_IMPLS", "ALL_IMPLS", "BLOCK_FIELDS", "DEFAULT_BLOCKS", "attention", "check_impl", "check_impls", "check_blocks",
           "peak_intermediate_bytes", "measured_peak_intermediate_bytes", "MultiHeadSelfAttention",
           "attention_flops", "hf_attention_forward", "register_hf_attention", "record_hf_dispatch", "use_hf_attention",
           "restore_hf_attention", "EdgeoptAttnProcessor",
           "diffusers_processor_for"]
