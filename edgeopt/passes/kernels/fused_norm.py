"""kernels.fused_norm: swap GroupNorm + SiLU/GELU and LayerNorm + GELU module pairs for fused modules."""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any, Literal

from pydantic import field_validator

from edgeopt.artifact import Artifact, register_builder
from edgeopt.kernels import native
from edgeopt.passes.base import Pass, PassContext, register, torch_module_copy
from edgeopt.passes.kernels._common import KernelSwapConfig, code_names, optional_example_inputs

NORM_KINDS = ("group_norm", "layer_norm")


@register("kernels.fused_norm")
class FusedNormPass(Pass):
    """Replace normalization + activation pairs with GroupNormAct / LayerNormAct (edgeopt.kernels.fused_norm).

    How pairs are found, in a deep copy of the model:
    1. nn.Sequential (at any depth): child i is nn.GroupNorm / nn.LayerNorm and child i+1 is nn.SiLU or
       nn.GELU. Child i becomes the fused module (same name, so state-dict keys stay), child i+1 nn.Identity.
    2. Any other module with a direct norm child and an activation (a SiLU/GELU child, or F.silu/F.gelu in
       its forward): its own forward is traced with torch.fx, every child kept as a leaf call. A norm call
       whose only user is an activation call on it becomes one call of the fused module, and the module is
       replaced by the rewritten torch.fx.GraphModule. A forward with `*args`/`**kwargs` that only exist
       for deprecated arguments (diffusers' ResnetBlock2D: norm1 -> nonlinearity, norm2 -> nonlinearity)
       is traced with them bound empty; the rewritten module then takes only the named arguments. A forward
       that does not trace, or a normalized output also used elsewhere, is left alone with the reason in
       ctx.notes["fused_norm"]["skipped"].
    Norms with no activation after them are listed under "unfused"; nothing is ever fused by position alone.
    With `measure` on (and example inputs present) every fused pair is measured before (norm, then the
    activation) vs after (the fused module) on the input it sees in the example run (latency, throughput,
    peak intermediate bytes, error) into ctx.notes["fused_norm"]["per_layer"].

    `backend` (edgeopt.kernels.fused_norm): "eager", "compile" (torch.compile) or "native" (edgeopt's C++
    one-pass kernel; refused at configuration, with the reason, where it cannot be built).
    """

    class Config(KernelSwapConfig):
        backend: Literal["eager", "compile", "native"] = "eager"
        norms: tuple[Literal["group_norm", "layer_norm"], ...] = NORM_KINDS
        trace: bool = True

        @field_validator("backend")
        @classmethod
        def _native_available(cls, backend: str) -> str:
            reason = native.unavailable_reason() if backend == "native" else None
            if reason is not None:
                raise ValueError(f"the native kernels cannot be used here: {reason}")
            return backend

    accepts = ("torch",)
    produces = "torch"

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        from torch import nn

        cfg = self.config
        module = torch_module_copy(art, self.name, share_weights=True)
        norm_types = tuple(t for k, t in (("group_norm", nn.GroupNorm), ("layer_norm", nn.LayerNorm)) if k in cfg.norms)
        fused: dict[str, str] = {}
        skipped: dict[str, str] = {}
        pairs: dict[str, tuple[Any, Any]] = {}  # fused name -> (the original norm, its activation)
        example = optional_example_inputs(art, ctx) if cfg.measure else None
        captured: dict[str, tuple[tuple, dict]] = {}
        if example is not None:
            # torch-backed: imported when the pass runs (pass modules load with the registry)
            from edgeopt.kernels.layer_stats import capture_inputs  # lazy: imports torch

            captured = capture_inputs(module, [n for n, m in module.named_modules() if isinstance(m, norm_types)],
                                      example)
        module = fuse_norms(module, norm_types, cfg.backend, cfg.trace, fused, skipped, pairs)
        unfused = {n: "not followed by an activation" for n, m in module.named_modules()
                   if isinstance(m, norm_types) and n not in fused and n not in skipped}
        per_layer: dict[str, Any] = {}
        if cfg.measure:
            # torch-backed: imported when the pass runs (pass modules load with the registry)
            from edgeopt.kernels.layer_stats import compare_layers  # lazy: imports torch

            items = {}
            for name in (n for n in fused if n in captured):
                norm, act = pairs[name]
                args, kwargs = captured[name]
                items[name] = {"before": lambda *a, norm=norm, act=act, **k: act(norm(*a, **k)),
                               "after": module.get_submodule(name), "args": args, "kwargs": kwargs,
                               "label_before": f"{type(norm).__name__} -> {type(act).__name__}",
                               "label_after": fused[name]}
            per_layer = compare_layers(items, runs=cfg.runs, threads=cfg.threads)
        ctx.notes["fused_norm"] = {"fused": fused, "skipped": skipped, "unfused": unfused, "backend": cfg.backend,
                                   "per_layer": per_layer}
        if cfg.measure and fused and example is None:
            ctx.warnings.append("kernels.fused_norm: per-layer measurement skipped: no example inputs")
        if skipped:
            ctx.warnings.append("kernels.fused_norm: not fused: " + "; ".join(f"{n} ({r})" for n, r in skipped.items()))
        meta = {**art.meta, "fused_norm": dict(fused)}
        rebuild = {"norms": list(cfg.norms), "backend": cfg.backend, "trace": cfg.trace, "fused": sorted(fused)}
        return Artifact.from_module(module, art.input_spec, meta=meta, rebuild=("kernels.fused_norm", rebuild))


def fuse_norms(module: Any, norm_types: tuple[type, ...], backend: str, trace: bool, fused: dict[str, str],
               skipped: dict[str, str], pairs: dict[str, tuple[Any, Any]]) -> Any:
    """Both patterns (adjacent children of an nn.Sequential, then traced parents, deepest first) on `module`,
    in place where it can; returns the module (a new GraphModule when the root itself was rewritten)."""
    from torch import nn

    for name, seq in list(module.named_modules()):
        if isinstance(seq, nn.Sequential):
            _fuse_sequential(seq, name, norm_types, backend, fused, skipped, pairs)
    if trace:
        parents = [(n, m) for n, m in module.named_modules() if _is_candidate_parent(m, norm_types)]
        for name, parent in reversed(parents):  # deepest first
            gm = _fuse_traced(parent, name, norm_types, backend, fused, skipped, pairs)
            if gm is not None:
                module = gm if name == "" else _replace(module, name, gm)
    return module


@register_builder("kernels.fused_norm")
def rebuild_fused(parent: Artifact, args: dict[str, Any], ctx: Any) -> Any:
    """The same fusions on a copy of the input model (the rewrite is deterministic); refused when they differ
    from the recorded `args["fused"]`."""
    from torch import nn

    kinds = {"group_norm": nn.GroupNorm, "layer_norm": nn.LayerNorm}
    fused: dict[str, str] = {}
    module = fuse_norms(torch_module_copy(parent, "kernels.fused_norm", share_weights=True),
                        tuple(kinds[k] for k in args["norms"]), args["backend"], bool(args["trace"]), fused, {}, {})
    if sorted(fused) != list(args["fused"]):
        raise ValueError(f"kernels.fused_norm: the rebuild fused {sorted(fused)}, the saved model {args['fused']}")
    return module


def _qual(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _replace(root: Any, name: str, new: Any) -> Any:
    root.set_submodule(name, new)
    return root


def _pair_label(norm: Any, act: str) -> str:
    return f"{type(norm).__name__}+{act}"


def _fuse_sequential(seq: Any, prefix: str, norm_types: tuple[type, ...], backend: str, fused: dict[str, str],
                     skipped: dict[str, str], pairs: dict[str, tuple[Any, Any]]) -> None:
    """Pattern 1: adjacent (norm, activation) children of one nn.Sequential."""
    from torch import nn

    # torch-backed: imported when the pass runs (pass modules load with the registry)
    from edgeopt.kernels.fused_norm import act_name, fuse_pair  # lazy: imports torch

    keys = list(seq._modules)
    i = 0
    while i < len(keys) - 1:
        norm, act = seq._modules[keys[i]], seq._modules[keys[i + 1]]
        name = act_name(act)
        if isinstance(norm, norm_types) and name is not None:
            new = fuse_pair(norm, act, backend)
            if new is None:  # pragma: no cover - norm_types and act_name agree with fuse_pair
                skipped[_qual(prefix, keys[i])] = f"no fused kernel for {_pair_label(norm, name)}"
            else:
                seq._modules[keys[i]] = new.train(norm.training)
                seq._modules[keys[i + 1]] = nn.Identity()
                fused[_qual(prefix, keys[i])] = _pair_label(norm, name)
                pairs[_qual(prefix, keys[i])] = (norm, act)
                i += 2
                continue
        i += 1


def _is_candidate_parent(m: Any, norm_types: tuple[type, ...]) -> bool:
    """A non-Sequential module with a direct norm child and an activation (child module or F.silu/F.gelu)."""
    from torch import nn

    # torch-backed: imported when the pass runs (pass modules load with the registry)
    from edgeopt.kernels.fused_norm import act_name  # lazy: imports torch

    if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) or isinstance(m, norm_types):
        return False
    children = list(m.children())
    if not any(isinstance(c, norm_types) for c in children):
        return False
    if any(act_name(c) is not None for c in children):
        return True
    names = code_names(type(m).forward)  # through decorators too
    return "silu" in names or "gelu" in names


def _act_of(node: Any, mods: dict[str, Any]) -> tuple[str, Any] | None:
    """(name, equivalent module) if `node` applies SiLU/GELU (module, F.silu, F.gelu) to its one argument, else None."""
    import torch.nn.functional as F
    from torch import nn

    # torch-backed: imported when the pass runs (pass modules load with the registry)
    from edgeopt.kernels.fused_norm import act_name  # lazy: imports torch

    if len(node.args) != 1:
        return None
    if node.op == "call_module":
        name = act_name(mods.get(node.target))
        return (name, mods[node.target]) if name is not None and not node.kwargs else None
    if node.op != "call_function":
        return None
    kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
    if node.target is F.silu and not kwargs:
        return "silu", nn.SiLU()
    approx = kwargs.get("approximate", "none")
    if node.target is F.gelu and set(kwargs) <= {"approximate"} and approx in ("none", "tanh"):
        return ("gelu_tanh" if approx == "tanh" else "gelu"), nn.GELU(approximate=approx)
    return None


def _trace_children_as_leaves(parent: Any) -> Any:
    """torch.fx graph of `parent`'s own forward, each child module kept as one call.

    A forward with `*args`/`**kwargs` is first traced as is; if that fails, it is traced again with one
    placeholder per named positional parameter and the varargs bound empty (as diffusers' blocks are
    called), so the graph takes only the named arguments. Raises whatever torch.fx raised first when
    neither traces.
    """
    tracer = _children_as_leaves_tracer()
    params = list(inspect.signature(type(parent).forward).parameters.values())[1:]  # without self
    concrete = {p.name: None for p in params if _unused_optional(parent, p)} or None
    try:
        return tracer().trace(parent, concrete_args=concrete)
    except Exception as first_error:
        varargs = {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}
        named = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                  inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        if not any(p.kind in varargs for p in params):
            raise
        try:
            return tracer(named_only=named).trace(parent)
        except Exception:
            raise first_error from None


def _unused_optional(parent: Any, param: inspect.Parameter) -> bool:
    """An argument diffusers passes as None to a block that has no layer for it: ResnetBlock2D built without a time
    embedding (the VAE's: `time_emb_proj` is None) gets temb=None, the VAE Decoder with a plain GroupNorm out
    gets latent_embeds=None. Traced with a placeholder, the forward would take the branch that uses them
    (`hidden_states + temb`, `conv_norm_out(sample, latent_embeds)`); traced with None (torch.fx then checks
    at run time that it is None) it takes the branch these blocks run."""
    from torch import nn

    if param.name == "temb":
        return getattr(parent, "time_emb_proj", ...) is None
    if param.name == "latent_embeds":
        return isinstance(getattr(parent, "conv_norm_out", None), nn.GroupNorm)
    return False


@lru_cache(maxsize=1)
def _children_as_leaves_tracer() -> type:
    """The tracer class, defined on first use (torch.fx is imported only when a pass runs)."""
    import torch.fx  # torch-backed: pass modules are imported when the registry loads

    class _ChildrenAsLeaves(torch.fx.Tracer):
        """A tracer that keeps every direct child of the traced module as one call_module node.

        With `named_only` (the forward's named positional parameters), the graph gets one placeholder per
        parameter (with its default) and the forward is called with those alone: varargs bound empty.
        """

        def __init__(self, named_only: list[inspect.Parameter] | None = None):
            super().__init__()
            self.named_only = named_only

        def is_leaf_module(self, m: Any, qualname: str) -> bool:
            return True

        def create_args_for_root(self, root_fn: Any, is_module: bool, concrete_args: Any = None) -> tuple[Any, list]:
            if self.named_only is None:
                return super().create_args_for_root(root_fn, is_module, concrete_args)
            defaults = [() if p.default is inspect.Parameter.empty else (p.default,) for p in self.named_only]
            args = [self.create_proxy("placeholder", p.name, d, {}) for p, d in zip(self.named_only, defaults)]
            # the argument stays in the signature, but the forward is traced with None where the block cannot use it
            args = [None if _unused_optional(self.root, p) else a for p, a in zip(self.named_only, args)]
            return root_fn, [self.root, *args]

    return _ChildrenAsLeaves


def _fuse_traced(parent: Any, prefix: str, norm_types: tuple[type, ...], backend: str, fused: dict[str, str],
                 skipped: dict[str, str], pairs: dict[str, tuple[Any, Any]]) -> Any:
    """Pattern 2: trace `parent`'s own forward (children as leaves) and fuse norm calls followed only by an activation.

    Returns the rewritten GraphModule, or None when nothing was fused.
    """
    import torch.fx

    # torch-backed: imported when the pass runs (pass modules load with the registry)
    from edgeopt.kernels.fused_norm import fuse_pair  # lazy: imports torch

    norm_names = [n for n, c in parent.named_children() if isinstance(c, norm_types)]
    try:
        graph = _trace_children_as_leaves(parent)
    except Exception as e:  # torch.fx raises many types for untraceable Python
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:160]
        for n in norm_names:
            if _qual(prefix, n) not in fused:
                skipped[_qual(prefix, n)] = f"forward of {type(parent).__name__} not traceable by torch.fx: {first}"
        return None
    mods = dict(parent.named_children())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    changes = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), norm_types):
            continue
        qual = _qual(prefix, node.target)
        users = list(node.users)
        act = _act_of(users[0], mods) if len(users) == 1 else None
        if act is None:
            if any(_act_of(u, mods) is not None for u in users):
                skipped[qual] = "normalized output is also used without the activation"
            continue
        if calls[node.target] > 1:
            skipped[qual] = f"{node.target} is called {calls[node.target]} times in the forward"
            continue
        changes.append((node, users[0], act))
    if not changes:
        return None
    gm = torch.fx.GraphModule(parent, graph, class_name=type(parent).__name__)
    for node, user, (act_label, act_mod) in changes:
        norm = mods[node.target]
        gm.add_submodule(node.target, fuse_pair(norm, act_mod, backend))
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
        fused[_qual(prefix, node.target)] = _pair_label(norm, act_label)
        pairs[_qual(prefix, node.target)] = (norm, act_mod)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.train(parent.training)
    return gm
