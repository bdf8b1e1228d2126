"""distill: knowledge distillation from a frozen teacher into a smaller student — soft KL × T² + hard CE,
embedding losses (cosine / MSE), feature distillation with learned adapters, and patient KD layer maps."""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, model_validator

from edgeopt.artifact import Artifact, register_builder
from edgeopt.errors import PassError, RecipeError
from edgeopt.passes.base import Pass, PassContext, register
from edgeopt.passes.compress._common import FineTune, derived, example_args, module_copy, param_count, task_data
from edgeopt.train import TrainConfig


@register("distill")
class Distill(Pass):
    """Train a student to match a frozen teacher (eval mode, no gradients) on the training data.

    Who is who: with `teacher` unset the input model is the teacher and the student is derived from it —
    `student_layers` keeps that many transformer layers (picked as `layer_map` picks them, default half),
    `student_width` shrinks every prunable channel group to that fraction on torch-pruning's graph (default
    0.5 for non-transformers), `student_arch` builds a fresh zoo architecture (e.g. `digits-cnn`). With
    `teacher: zoo:NAME` the input model is the student.

    Loss = alpha · KL(softmax(t/T) ‖ softmax(s/T)) · T² + (1 - alpha) · CE(s, labels) for classifiers
    (`loss: kd`; without labels the hard term is dropped), or 1 - cosine / MSE to the teacher's outputs for
    embedding models (`loss: cosine|mse`); plus beta · feature loss: MSE between L2-normalized hidden
    features of (student, teacher) layer pairs — given in `features`, or from `layer_map` for layer stacks
    (PKD-skip: every (N/k)-th teacher layer; PKD-last: the last k-1) — through a learned linear / 1×1-conv
    adapter where widths differ. A student whose outputs differ in shape from the teacher's is refused.
    """

    class Config(FineTune):
        teacher: str | None = Field(default=None, description="zoo:NAME of a torch teacher; unset: the input is the teacher")
        student_layers: int | None = Field(default=None, ge=1)
        student_width: float | None = Field(default=None, gt=0, lt=1)
        student_arch: str | None = None
        loss: Literal["auto", "kd", "cosine", "mse"] = "auto"
        temperature: float = Field(default=4.0, gt=0)
        alpha: float = Field(default=0.7, ge=0, le=1, description="weight of the soft (teacher) term")
        features: tuple[tuple[str, str], ...] = Field(default=(), description="(student module, teacher module) pairs")
        layer_map: Literal["none", "pkd-skip", "pkd-last"] = "none"
        beta: float = Field(default=10.0, ge=0, description="weight of the feature loss")
        train: TrainConfig = TrainConfig(epochs=5, patience=3, lr=1e-3)

        @model_validator(mode="after")
        def _one_student(self) -> "Distill.Config":
            given = [n for n in ("student_layers", "student_width", "student_arch") if getattr(self, n) is not None]
            if len(given) > 1:
                raise ValueError(f"give one of student_layers, student_width, student_arch (got {', '.join(given)})")
            if self.teacher is not None and given:
                raise ValueError(f"with a teacher set the input model is the student; drop {given[0]}")
            return self

    accepts = ("torch",)
    produces = "torch"
    tolerance = None
    tolerance_reason = ("the student is a different, smaller model: it is scored against the teacher on held-out data "
                        "(accuracy, or cosine to the teacher) and never ends below its score before training")

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        import torch

        from edgeopt import train as tr

        cfg = self.config
        example = example_args(art, ctx, self.name)
        if cfg.teacher is not None:
            teacher = load_teacher(cfg.teacher)
            student = module_copy(art, self.name)
            how, rebuild = "input", ("copy", {})
        else:
            teacher = module_copy(art, self.name)
            student, how, rebuild = make_student(teacher, example, cfg, ctx.target)
        freeze(teacher)
        with torch.no_grad():
            t_out, s_out = teacher(*example), student(*example)
        if tuple(t_out.shape) != tuple(s_out.shape):
            raise PassError(f"{self.name}: student output shape {tuple(s_out.shape)} does not match the teacher's "
                            f"{tuple(t_out.shape)} (student: {type(student).__name__}, teacher: {type(teacher).__name__})")
        data = task_data(art, ctx, cfg, teacher, self.name)
        fit_data, val = data.split(cfg.val_fraction, seed=cfg.train.seed)
        kind = cfg.loss if cfg.loss != "auto" else ("kd" if data.labelled or _looks_like_logits(t_out) else "cosine")
        pairs = list(cfg.features) or layer_pairs(student, teacher, cfg.layer_map)
        feat = FeatureDistiller(student, teacher, pairs, example) if pairs and cfg.beta > 0 else None
        loss_fn = make_loss(teacher, kind, cfg.temperature, cfg.alpha, feat, cfg.beta)
        params = list(student.parameters()) + (list(feat.adapters.parameters()) if feat else [])
        score_before = tr.evaluate(student, val) if val.targets is not None else None
        try:
            result = tr.fit(student, fit_data, cfg.train, loss_fn=loss_fn, val=val, params=params,
                            progress=ctx.progress, description=f"{self.name} ({kind})")
        finally:
            if feat is not None:
                feat.remove()
        teacher_score = tr.evaluate(teacher, val)
        ctx.notes[self.name] = {
            "student": how, "loss": kind, "temperature": cfg.temperature, "alpha": cfg.alpha,
            "feature_pairs": [list(p) for p in pairs], "beta": cfg.beta if pairs else 0.0,
            "metric": "accuracy" if data.labelled else "cosine_to_teacher",
            "teacher_params": param_count(teacher), "student_params": param_count(student),
            "teacher_score": teacher_score, "student_score_before": score_before,
            "student_score": tr.evaluate(student, val), "fit": result.to_dict(),
        }
        meta = {"distilled_from": art.meta.get("source") if cfg.teacher is None else cfg.teacher}
        if how.startswith("layers:"):
            meta["num_layers"] = int(how.split(":")[1].split()[0])
        return derived(student, art, rebuild, **meta)


# ---------------------------------------------------------------------------------------------- students
def freeze(model: Any) -> Any:
    """Teacher mode: eval (dropout off, BatchNorm statistics fixed) and no gradients, for good."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_teacher(source: str) -> Any:
    if not source.startswith("zoo:"):
        raise RecipeError(f"distill: field 'teacher': expected zoo:NAME of a torch model, got {source!r}")
    from edgeopt.zoo import load_zoo_model

    art = load_zoo_model(source[4:])
    if art.module is None:
        raise RecipeError(f"distill: field 'teacher': {source} is not a torch model")
    return copy.deepcopy(art.module)


def layer_stack(model: Any) -> tuple[str, Any] | None:
    """(name, ModuleList) of the model's main stack of identical layers (HF encoder.layer and the like)."""
    from torch import nn

    best = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) >= 2 and len({type(c) for c in m}) == 1:
            if best is None or len(m) > len(best[1]):
                best = (name, m)
    return best


def pick_layers(n_teacher: int, n_student: int, layer_map: str) -> list[int]:
    """Teacher layer indices (0-based) matched to student layers 1..k-1 (the last student layer is matched
    through the output loss): PKD-skip takes every (N/k)-th layer, PKD-last the last k-1 before the top."""
    k = n_student
    if k <= 1:
        return []
    if layer_map == "pkd-last":
        return list(range(n_teacher - k, n_teacher - 1))
    step = n_teacher / k
    return [int(round(step * (i + 1))) - 1 for i in range(k - 1)]


def student_init_layers(n_teacher: int, n_student: int, layer_map: str) -> list[int]:
    """Teacher layers a layer-dropped student starts from: the PKD map's layers plus the top one
    (pkd-last: the top k layers; otherwise every (N/k)-th, ending at the top)."""
    if layer_map == "pkd-last":
        return list(range(n_teacher - n_student, n_teacher))
    return pick_layers(n_teacher, n_student, "pkd-skip") + [n_teacher - 1]


def make_student(teacher: Any, example: tuple[Any, ...], cfg: Any, target: Any
                 ) -> tuple[Any, str, tuple[str, dict[str, Any]]]:
    """The student derived from the teacher as the config asks; returns (student, how, rebuild): `how` for
    the notes, `rebuild` the (builder, args) that rebuild the student's architecture from the teacher."""
    stack = layer_stack(teacher)
    if cfg.student_arch is not None:
        from edgeopt.zoo.digits import ARCHS, build

        if cfg.student_arch not in ARCHS:
            raise RecipeError(f"distill: field 'student_arch': unknown {cfg.student_arch!r}; known: {', '.join(ARCHS)}")
        import torch

        torch.manual_seed(cfg.train.seed)
        spec = ARCHS[cfg.student_arch]
        return build(spec).eval(), f"arch:{cfg.student_arch}", ("zoo.digits", {"spec": spec.model_dump(mode="json")})
    layers = cfg.student_layers
    if layers is None and cfg.student_width is None and stack is not None and _is_transformer(teacher):
        layers = max(1, len(stack[1]) // 2)
    if layers is not None:
        if stack is None:
            raise RecipeError("distill: field 'student_layers': the model has no stack of layers to shorten")
        name, layer_list = stack
        if layers >= len(layer_list):
            raise RecipeError(f"distill: field 'student_layers': {layers} is not fewer than the teacher's "
                              f"{len(layer_list)} layers ({name})")
        keep = student_init_layers(len(layer_list), layers, cfg.layer_map)
        student = keep_layers(teacher, name, keep)
        return (student, f"layers:{layers} from teacher layers {','.join(map(str, keep))}",
                ("distill.layers", {"stack": name, "keep": keep}))
    width = cfg.student_width or 0.5
    from edgeopt.passes.compress import policy
    from edgeopt.passes.compress.prune_channels import channel_counts, probe_groups, prune_to

    student = copy.deepcopy(teacher)
    safe, _, _ = probe_groups(student, example, ())
    if not safe:
        raise PassError("distill: no prunable channel group to derive a narrower student from")
    original = channel_counts(student, example, safe)

    class _Cfg:
        importance, scope, max_layer_sparsity, importance_batches = "l1", "layer", 0.95, 1

    counts, _ = prune_to(student, example, safe, original, 1 - width, _Cfg, policy.channel_multiple(target), None, None)
    return student.eval(), f"width:{width}", ("prune.channels", {"counts": counts})


def keep_layers(model: Any, stack: str, keep: list[int]) -> Any:
    """A copy of `model` whose layer stack `stack` (a ModuleList) holds only the layers `keep`, in that order
    (layer_idx attributes and the Hugging Face config's num_hidden_layers follow)."""
    from torch import nn

    student = copy.deepcopy(model)
    new = nn.ModuleList([copy.deepcopy(student.get_submodule(stack)[i]) for i in keep])
    student.set_submodule(stack, new)
    for i, layer in enumerate(new):
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = i
    cfg_obj = _hf_config(student)
    if cfg_obj is not None and hasattr(cfg_obj, "num_hidden_layers"):
        cfg_obj.num_hidden_layers = len(keep)
    return student.eval()


@register_builder("distill.layers")
def rebuild_layers(parent: Artifact, args: dict[str, Any], ctx: Any) -> Any:
    """A layer-dropped student: the input model keeping the layers `args["keep"]` of its stack `args["stack"]`."""
    return keep_layers(module_copy(parent, "distill"), args["stack"], [int(i) for i in args["keep"]])


@register_builder("zoo.digits")
def rebuild_digits(parent: Artifact, args: dict[str, Any], ctx: Any) -> Any:
    """A fresh digits CNN of the architecture spec `args["spec"]` (MobileNetSpec / ResNetSpec as JSON)."""
    from edgeopt.zoo.digits import MobileNetSpec, ResNetSpec, build

    spec = args["spec"]
    return build((ResNetSpec if spec.get("kind") == "resnet" else MobileNetSpec)(**spec)).eval()


def _hf_config(model: Any) -> Any:
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "num_hidden_layers"):
            return c
    return None


def _is_transformer(model: Any) -> bool:
    from torch import nn

    return any(isinstance(m, (nn.MultiheadAttention, nn.LayerNorm)) for m in model.modules()) and not any(
        isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def _looks_like_logits(out: Any) -> bool:
    return out.dim() == 2 and not bool(((out.norm(dim=-1) - 1).abs() < 1e-3).all())


def layer_pairs(student: Any, teacher: Any, layer_map: str) -> list[tuple[str, str]]:
    """(student module, teacher module) names for patient KD: student layers 0..k-2 against the map's teacher layers."""
    if layer_map == "none":
        return []
    s, t = layer_stack(student), layer_stack(teacher)
    if s is None or t is None:
        raise RecipeError("distill: field 'layer_map': the student or the teacher has no stack of layers")
    idx = pick_layers(len(t[1]), len(s[1]), layer_map)
    return [(f"{s[0]}.{i}", f"{t[0]}.{j}") for i, j in enumerate(idx)]


# ---------------------------------------------------------------------------------------------- losses
class FeatureDistiller:
    """Captures the outputs of (student, teacher) module pairs with forward hooks and turns them into a loss
    through learned adapters (Linear on the last axis, 1×1 Conv2d for feature maps) where widths differ."""

    def __init__(self, student: Any, teacher: Any, pairs: list[tuple[str, str]], example: tuple[Any, ...]):
        import torch
        from torch import nn

        self.pairs = pairs
        self.store: dict[str, Any] = {}
        self.handles = []
        for i, (sn, tn) in enumerate(pairs):
            for side, model, name in (("s", student, sn), ("t", teacher, tn)):
                try:
                    mod = model.get_submodule(name)
                except AttributeError:
                    who = "student" if side == "s" else "teacher"
                    raise RecipeError(f"distill: field 'features': the {who} has no module {name!r}") from None
                self.handles.append(mod.register_forward_hook(self._hook(f"{side}{i}")))
        with torch.no_grad():
            student(*example)
            teacher(*example)
        adapters = []
        for i, (sn, tn) in enumerate(pairs):
            s, t = self.store[f"s{i}"], self.store[f"t{i}"]
            if s.dim() == 4 and t.dim() == 4:
                adapters.append(nn.Identity() if s.shape[1] == t.shape[1] else nn.Conv2d(s.shape[1], t.shape[1], 1))
            elif s.dim() == t.dim():
                adapters.append(nn.Identity() if s.shape[-1] == t.shape[-1] else nn.Linear(s.shape[-1], t.shape[-1]))
            else:
                raise RecipeError(f"distill: field 'features': {sn} gives {tuple(s.shape)} but {tn} gives {tuple(t.shape)}")
        self.adapters = nn.ModuleList(adapters)
        self.store.clear()

    def _hook(self, key: str):
        def hook(_mod, _inp, out):
            self.store[key] = out[0] if isinstance(out, (tuple, list)) else out
        return hook

    def loss(self) -> Any:
        import torch.nn.functional as F

        total = 0.0
        for i, adapter in enumerate(self.adapters):
            s, t = adapter(self.store[f"s{i}"]), self.store[f"t{i}"].detach()
            if s.dim() == 4 and s.shape[-2:] != t.shape[-2:]:
                s = F.adaptive_avg_pool2d(s, t.shape[-2:])
            if s.dim() == 3:  # (B, T, H): the first token, as patient KD does
                s, t = s[:, 0], t[:, 0]
            s, t = F.normalize(s.flatten(1), dim=1), F.normalize(t.flatten(1), dim=1)
            total = total + F.mse_loss(s, t, reduction="sum") / s.shape[0]
        return total / max(1, len(self.adapters))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def kd_loss(student_logits: Any, teacher_logits: Any, temperature: float) -> Any:
    """KL(softmax(t/T) ‖ softmax(s/T)) · T² (Hinton et al., 2015), averaged over the batch."""
    import torch.nn.functional as F

    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                    reduction="batchmean", log_target=True) * (t * t)


def make_loss(teacher: Any, kind: str, temperature: float, alpha: float, feat: FeatureDistiller | None, beta: float):
    """The training loss `loss_fn(student, inputs, targets)` for edgeopt.train.fit."""
    import torch
    import torch.nn.functional as F

    def loss_fn(student, x, y):
        with torch.no_grad():
            t_out = teacher(*x)
        s_out = student(*x)
        if kind == "kd":
            loss = kd_loss(s_out, t_out, temperature)
            if y is not None and not y.is_floating_point():
                loss = alpha * loss + (1 - alpha) * F.cross_entropy(s_out, y)
        elif kind == "cosine":
            loss = (1 - F.cosine_similarity(s_out.flatten(1), t_out.flatten(1), dim=1)).mean()
        else:
            loss = F.mse_loss(s_out, t_out)
        if feat is not None:
            loss = loss + beta * feat.loss()
        return loss

    return loss_fn
