"""GPTQ for a Hugging Face causal LM before its LiteRT export: round each Linear onto the int8 / int4 grid the LiteRT
quantizer will use, letting the columns not yet rounded absorb each rounding error.

GPTQ (Frantar et al., 2023) quantizes a weight matrix one input column at a time and moves each column's error onto
the remaining columns through the inverse Hessian H = XᵀX of the layer's inputs on calibration text, so the layer's
*output* changes as little as the grid allows. Here the grid is exactly the one ai-edge-quantizer computes from
min/max: symmetric, scale = max|w| / qmax per output channel (int8) or per block of `block` inputs (int4). The
element that sets each scale is pinned at ±qmax, so the re-exported weights have the same max, the quantizer
recomputes the same scales, and its rounding returns GPTQ's integers unchanged (the tests check this byte-for-
byte). The fp32 model then carries grid weights, so use it only for the quantized stage it was made for.

Written by hand, after a probe of the libraries made for this:
- ai-edge-quantizer 0.10 has a GPTQ algorithm, but it calibrates through the interpreter one signature at a time:
  a weight that prefill and decode share gets only prefill's Hessian, and a weight used only by a signature with
  no calibration data (decode-only ops, e.g. the output layer and the last block, which prefill prunes) is
  written as raw float bytes under an int8 type: no error, wrong logits.
- NNCF's PyTorch backend has no GPTQ and no data-aware INT8 weight compression.
On SmolLM2-135M (its weights come from a Q4_1 GGUF, whose grid per-channel int8 rounds badly), a torch simulation
of XNNPACK's int8 put GPTQ's weights at top-1 agreement 0.980 where plain rounding gave 0.955.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from edgeopt.errors import InputError
from edgeopt.llm.calibrate import feed

_SHARED_INPUT = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up"}


@dataclass(frozen=True)
class Grid:
    """A symmetric quantization grid: `bits` (8 or 4) and `block` inputs per scale (0: one scale per output channel)."""

    bits: int
    block: int = 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1


def grid_of(variant: str) -> Grid | None:
    """The weight grid of an LLM quantization variant (see `export.VARIANTS`); None for float variants."""
    if variant in ("dynamic_int8", "weight_only_int8"):
        return Grid(8)
    if variant.startswith("dynamic_int4_block"):
        return Grid(4, int(variant.rsplit("block", 1)[1]))
    return None


def part_of(name: str) -> str:
    """Which part of a Llama-family model a Linear named `name` belongs to: attention, feedforward or output."""
    if name.endswith("lm_head"):
        return "output"
    return "attention" if ".self_attn." in name else "feedforward"


def plan(model: Any, variant: str, attention: str = "same", feedforward: str = "same") -> dict[str, Grid]:
    """The grid of every Linear that the stage (`variant` with its per-part overrides) quantizes; float ones are left
    out. The output layer follows `variant` (a tied one shares the embedding's table and is not planned)."""
    import torch  # lazy: heavy

    override = {"attention": attention, "feedforward": feedforward, "output": "same"}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    out: dict[str, Grid] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or (tied and name.endswith("lm_head")):
            continue
        setting = override[part_of(name)]
        g = grid_of(variant if setting == "same" else setting)
        if g is not None:
            out[name] = g
    return out


def _group(name: str) -> str:
    """Linears that read the same tensor share one Hessian (q/k/v; gate/up)."""
    head, _, leaf = name.rpartition(".")
    return f"{head}#{_SHARED_INPUT.get(leaf, leaf)}"


def hessians(model: Any, names: Sequence[str], sequences: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Mean XᵀX (float64) of the inputs of the Linears `names` over `sequences` of token ids, one per input group;
    a Linear with an online input rotation (edgeopt.llm.rotate.HadamardLinear) is seen after its rotation."""
    import torch  # lazy: heavy

    modules = dict(model.named_modules())
    acc: dict[str, list[Any]] = {}
    hooks = []
    leaders = {}
    for name in names:
        leaders.setdefault(_group(name), name)
    for group, name in leaders.items():
        mod = modules[name]

        def hook(m: Any, inp: Any, key: str = group) -> None:
            x = inp[0].detach()
            if hasattr(m, "rotation"):
                x = m.rotation(x)
            x = x.reshape(-1, x.shape[-1]).float()  # one sequence's XᵀX in fp32 (2 x faster), summed in float64
            slot = acc.setdefault(key, [torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64), 0])
            slot[0] += (x.T @ x).double()
            slot[1] += x.shape[0]
        hooks.append(mod.register_forward_pre_hook(hook))
    feed(model, sequences, hooks)
    return {name: acc[_group(name)][0] / max(acc[_group(name)][1], 1) for name in names if _group(name) in acc}


def quantize_weight(weight: Any, hessian: Any, grid: Grid, damp: float = 0.01, block_cols: int = 128) -> Any:
    """GPTQ of one weight matrix (out, in) with the inputs' Hessian (in, in): the float weights on `grid`
    (integers times the min/max scale, the scale-setting element of each group pinned at ±qmax). Rows are
    independent given the Hessian, so Linears that read the same input can be stacked into one call (`gptq` does)."""
    import torch  # lazy: heavy

    w = weight.detach().double().clone()
    rows, cols = w.shape
    groups, scale = _groups(w, grid)
    block = groups.shape[-1]
    scale = scale[..., 0]  # (rows, groups)
    pin = groups.abs().argmax(-1) + torch.arange(cols // block)[None, :] * block  # column that sets each scale
    pin_sign = torch.sign(torch.gather(w, 1, pin))
    h = hessian.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    order = torch.argsort(torch.diagonal(h), descending=True)  # act-order: the most-used inputs first
    inv_order = torch.argsort(order)
    h = h[order][:, order]
    h += damp * torch.diagonal(h).mean() * torch.eye(cols, dtype=torch.float64)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    # column-major working copies (one contiguous row per input column, in act-order), with each column's scale,
    # whether its element sets its group's scale, and that element's pinned integer precomputed
    grp = order // block
    wt = w.T[order].contiguous()  # (cols, rows)
    st = scale.T[grp].contiguous()
    pinned = (pin.T[grp] == order[:, None]).contiguous()
    pinval = (pin_sign.T[grp] * grid.qmax).contiguous()
    qt = torch.empty_like(wt)
    with torch.no_grad():
        for b0 in range(0, cols, block_cols):
            b1 = min(b0 + block_cols, cols)
            w1, err = wt[b0:b1], torch.empty(b1 - b0, rows, dtype=torch.float64)
            hi = hinv[b0:b1, b0:b1]
            for i in range(b1 - b0):
                j = b0 + i
                qi = torch.where(pinned[j], pinval[j], torch.round(w1[i] / st[j]).clamp_(-grid.qmax, grid.qmax))
                qi.mul_(st[j])
                qt[j] = qi
                e = (w1[i] - qi).div_(hi[i, i])
                w1[i:].addr_(hi[i, i:], e, alpha=-1)
                err[i] = e
            wt[b1:].sub_(hinv[b0:b1, b1:].T @ err)
    return qt[inv_order].T.to(weight.dtype)


def gptq(model: Any, sequences: Sequence[Sequence[int]], grids: dict[str, Grid], damp: float = 0.01,
         advance: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Round the Linears named in `grids` (see `plan`) of `model` in place with GPTQ, calibrated on `sequences`
    (token ids; never the text the model is judged on). Returns what was done, with the mean relative output error
    (‖ΔW·X‖ / ‖W·X‖ on the calibration inputs) of plain rounding and of GPTQ."""
    import torch  # lazy: heavy

    if not grids:
        raise InputError("gptq: nothing to quantize (the stage's variant keeps every Linear in float)")
    if not sequences:
        raise InputError("gptq: no calibration sequences")
    modules = dict(model.named_modules())
    missing = [n for n in grids if n not in modules]
    if missing:
        raise InputError(f"gptq: the model has no Linear {missing[0]!r}")
    hs = hessians(model, list(grids), sequences)
    stacks: dict[tuple[str, Grid], list[str]] = {}  # Linears reading one input on one grid: one GPTQ call
    for name, grid in grids.items():
        stacks.setdefault((_group(name), grid), []).append(name)
    rtn_err, gptq_err = [], []
    for (_, grid), names in stacks.items():
        h = hs[names[0]]
        ws = [modules[n].weight.data for n in names]
        qs = quantize_weight(torch.cat(ws), h, grid, damp).split([len(w) for w in ws])
        h32 = h.float()
        for name, w, q in zip(names, ws, qs):
            energy = lambda d: float(((d @ h32) * d).sum(dtype=torch.float64))  # noqa: E731  ‖d·X‖² (calibration)
            w = w.float()
            base = abs(energy(w)) or 1.0
            rtn_err.append((energy(w - _round(w, grid)) / base) ** 0.5)
            gptq_err.append((energy(w - q.float()) / base) ** 0.5)
            with torch.no_grad():
                modules[name].weight.data = q.to(modules[name].weight.dtype)
            if advance is not None:
                advance(1)
    return {"linears": len(grids), "sequences": len(sequences), "damp": damp,
            "grids": sorted({f"int{g.bits}" + (f"_block{g.block}" if g.block else "") for g in grids.values()}),
            "rtn_output_error": sum(rtn_err) / len(rtn_err), "gptq_output_error": sum(gptq_err) / len(gptq_err)}


def _groups(w: Any, grid: Grid) -> tuple[Any, Any]:
    """`w` (out, in) as (out, groups, block) and the quantizer's min/max scale of each group (out, groups, 1)."""
    rows, cols = w.shape
    block = grid.block or cols
    if cols % block:
        raise InputError(f"gptq: {cols} inputs are not a multiple of the block size {block}")
    g = w.reshape(rows, cols // block, block)
    return g, (g.abs().amax(-1, keepdim=True) / grid.qmax).clamp(min=1e-12)


def _round(w: Any, grid: Grid) -> Any:
    """Plain min/max rounding onto `grid` (what the quantizer does without GPTQ)."""
    g, s = _groups(w, grid)
    return ((g / s).round().clamp(-grid.qmax, grid.qmax) * s).reshape(w.shape)
