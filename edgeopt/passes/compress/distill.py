"""distill: knowledge distillation from a frozen teacher into a smaller student — soft KL × T² + hard CE,
embedding losses (cosine / MSE), feature distillation with learned adapters, and patient KD layer maps."""

from __future__ import annotations

import copy
import time
from typing import Any, Literal

from pydantic import Field, model_validator

from edgeopt import train as tr
from edgeopt.artifact import Artifact, register_builder
from edgeopt.errors import PassError, RecipeError
from edgeopt.load import load_model
from edgeopt.nn.distill import teacher_layer_indices
from edgeopt.passes.base import Pass, PassContext, register
from edgeopt.passes.compress import padding, policy
from edgeopt.passes.compress._common import FineTune, derived, example_args, module_copy, param_count
from edgeopt.passes.compress.channels import PruneStep, prune_to
from edgeopt.passes.compress.depgraph import probe_groups
from edgeopt.passes.compress.losses import DistillLoss, FeatureDistiller, freeze, make_loss
from edgeopt.passes.compress.padding import BucketedData, art_mask_index, load_inputs, with_reference
from edgeopt.train import TensorData, TrainConfig
from edgeopt.zoo import digits


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
        layer_map: Literal["none", "pkd-skip", "pkd-last", "same"] = "none"
        beta: float = Field(default=10.0, ge=0, description="weight of the feature loss")
        feature_tokens: Literal["first", "all"] = Field(
            default="first", description="sequence features: compare the first token, or every valid token")
        trim_padding: bool = Field(default=True, description="text models with an attention mask: train on "
                                   "length-bucketed batches cut to their longest sequence (same outputs, less work)")
        dropout: bool = Field(default=True, description="False: the student trains in eval mode (no dropout, "
                              "BatchNorm statistics frozen)")
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

        cfg = self.config
        cpu0 = time.process_time()
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
        mask_at = art_mask_index(art) if cfg.trim_padding else None
        data = load_inputs(art, ctx, cfg, self.name)
        fit_data, val = data.split(cfg.val_fraction, seed=cfg.train.seed)
        val = with_reference(val, teacher, mask_at)
        kind = cfg.loss if cfg.loss != "auto" else ("kd" if data.labelled or _looks_like_logits(t_out) else "cosine")
        pairs = list(cfg.features) or layer_pairs(student, teacher, cfg.layer_map)
        score_before = padding.evaluate(student, val, mask_at) if val.targets is not None else None
        result = distill_fit(student, teacher, fit_data, val, DistillLoss(kind, cfg.temperature, cfg.alpha, cfg.beta),
                             cfg.train, pairs=pairs, example=example, tokens=cfg.feature_tokens, mask_at=mask_at,
                             dropout=cfg.dropout, progress=ctx.progress, description=f"{self.name} ({kind})")
        teacher_score = padding.evaluate(teacher, val, mask_at)
        ctx.notes[self.name] = {
            "student": how, "loss": kind, "temperature": cfg.temperature, "alpha": cfg.alpha,
            "feature_pairs": [list(p) for p in pairs], "beta": cfg.beta if pairs else 0.0,
            "feature_tokens": cfg.feature_tokens, "trim_padding": mask_at is not None,
            "samples": len(data), "cpu_seconds": round(time.process_time() - cpu0, 1),
            "metric": "accuracy" if data.labelled else "cosine_to_teacher",
            "teacher_params": param_count(teacher), "student_params": param_count(student),
            "teacher_score": teacher_score, "student_score_before": score_before,
            "student_score": padding.evaluate(student, val, mask_at), "fit": result.to_dict(),
        }
        meta = {"distilled_from": art.meta.get("source") if cfg.teacher is None else cfg.teacher}
        if how.startswith("layers:"):
            meta["num_layers"] = int(how.split(":")[1].split()[0])
        return derived(student, art, rebuild, **meta)


def distill_fit(student: Any, teacher: Any, fit_data: TensorData, val: TensorData | None, spec: DistillLoss,
                train: TrainConfig, *, pairs: list[tuple[str, str]] = (), example: tuple[Any, ...] = (),
                tokens: Literal["first", "all"] = "first", mask_at: int | None = None, dropout: bool = True,
                progress: Any = None, description: str = "distill") -> tr.FitResult:
    """Train `student` in place to match the frozen `teacher` (edgeopt.train.fit): the loss `spec` on the
    outputs, plus spec.beta × the feature loss of the (student, teacher) module `pairs` (`tokens` as
    FeatureDistiller takes it). With `mask_at` (the attention-mask input), batches are length-bucketed and cut
    to their longest sequence, and `val` (targets: the teacher's outputs or labels) is scored the same way.
    `dropout=False` trains the student in eval mode. Used by distill and by the pruning passes' recovery."""
    feat = FeatureDistiller(student, teacher, list(pairs), example, tokens, mask_at) if pairs and spec.beta > 0 else None
    base = make_loss(teacher, spec, feat)

    def loss_fn(model: Any, x: Any, y: Any) -> Any:
        if not dropout:
            model.eval()
        return base(model, x, y)

    params = list(student.parameters()) + (list(feat.adapters.parameters()) if feat else [])
    if mask_at is not None:
        fit_data = BucketedData(fit_data.inputs, fit_data.targets, mask_at=mask_at)
    score_fn = None
    if val is not None and val.targets is not None:
        score_fn = lambda m: padding.evaluate(m, val, mask_at)  # noqa: E731
    try:
        return tr.fit(student, fit_data, train, loss_fn=loss_fn, score_fn=score_fn, params=params,
                      progress=progress, description=description)
    finally:
        if feat is not None:
            feat.remove()


# ---------------------------------------------------------------------------------------------- students
def load_teacher(source: str) -> Any:
    if not source.startswith("zoo:"):
        raise RecipeError(f"distill: field 'teacher': expected zoo:NAME of a torch model, got {source!r}")
    art = load_model(source)
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
    if n_student <= 1:
        return []
    variant = "last" if layer_map == "pkd-last" else "skip"
    return [i - 1 for i in teacher_layer_indices(n_teacher, n_student, variant)]


def student_init_layers(n_teacher: int, n_student: int, layer_map: str) -> list[int]:
    """Teacher layers a layer-dropped student starts from: the PKD map's layers plus the top one
    (pkd-last: the top k layers; otherwise every (N/k)-th, ending at the top)."""
    if layer_map == "pkd-last":
        return list(range(n_teacher - n_student, n_teacher))
    return pick_layers(n_teacher, n_student, "pkd-skip") + [n_teacher - 1]


def make_student(teacher: Any, example: tuple[Any, ...], cfg: Distill.Config, target: Any
                 ) -> tuple[Any, str, tuple[str, dict[str, Any]]]:
    """The student derived from the teacher as the config asks; returns (student, how, rebuild): `how` for
    the notes, `rebuild` the (builder, args) that rebuild the student's architecture from the teacher."""
    stack = layer_stack(teacher)
    if cfg.student_arch is not None:
        if cfg.student_arch not in digits.ARCHS:
            raise RecipeError(f"distill: field 'student_arch': unknown {cfg.student_arch!r}; known: {', '.join(digits.ARCHS)}")
        import torch

        torch.manual_seed(cfg.train.seed)
        spec = digits.ARCHS[cfg.student_arch]
        return digits.build(spec).eval(), f"arch:{cfg.student_arch}", ("zoo.digits", {"spec": spec.model_dump(mode="json")})
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
    student = copy.deepcopy(teacher)
    groups = probe_groups(student, example)
    if not groups.safe:
        raise PassError("distill: no prunable channel group to derive a narrower student from")
    counts, _ = prune_to(student, example, groups.original, 1 - width, narrow_step(target))
    return student.eval(), f"width:{width}", ("prune.channels", {"counts": counts})


def narrow_step(target: Any) -> PruneStep:
    """How a `student_width` student is cut from the teacher: every group to the width (l1, per layer, up to
    95% of a group), channel counts rounded to the target's multiple."""
    return PruneStep(importance="l1", scope="layer", max_layer_sparsity=0.95,
                     round_to=policy.channel_multiple(target), importance_batches=1)


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
    spec = args["spec"]
    return digits.build((digits.ResNetSpec if spec.get("kind") == "resnet" else digits.MobileNetSpec)(**spec)).eval()


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
    if layer_map == "same":
        if len(s[1]) != len(t[1]):
            raise RecipeError(f"distill: field 'layer_map': 'same' needs as many student layers as teacher layers "
                              f"({len(s[1])} vs {len(t[1])})")
        return [(f"{s[0]}.{i}", f"{t[0]}.{i}") for i in range(len(s[1]))]
    idx = pick_layers(len(t[1]), len(s[1]), layer_map)
    return [(f"{s[0]}.{i}", f"{t[0]}.{j}") for i, j in enumerate(idx)]
