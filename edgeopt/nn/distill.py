"""Knowledge distillation building blocks: the KD loss, patient KD (PKD) on hidden states, and a small trainer."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from edgeopt.train import score

# torch is imported on first use: edgeopt.passes.compress.losses imports freeze and kd_loss from here at module
# level and the pass registry imports that module, so `import edgeopt` and the registry must stay torch-free.
# Functions import torch inside; the nn.Module subclass (PatientDistillationLoss) is built on first attribute
# access through the module-level __getattr__ (as edgeopt.nn.blocks does).
__all__ = ["DistillationConfig", "DistillationTrainer", "PatientDistillationLoss", "create_distillation_trainer",
           "freeze", "kd_loss", "output_loss", "teacher_layer_indices"]
_LAZY = ("PatientDistillationLoss",)
_BUILT: dict[str, Any] = {}

Strategy = Literal["kd", "pkd", "cosine", "mse"]
PkdVariant = Literal["skip", "last"]
HiddenStatesFn = Callable[[Any, Any], tuple[Any, Sequence[Any]]]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class DistillationConfig:
    """How a student learns from a frozen teacher; validated at construction (a bad value names its field).

    `strategy`: "kd" = alpha · KL(softmax(t/T) ‖ softmax(s/T)) · T² + (1 - alpha) · CE(s, labels) (the hard term
    only with integer labels; without them the soft term alone, as the compression passes do); "pkd" = that plus
    beta · the patient-KD hidden-state loss (see PatientDistillationLoss); "cosine" = 1 - cosine to the teacher's
    outputs; "mse" = MSE to them (both for embedding models; no hard term).
    `pkd_variant`: "skip" (PKD-Skip: every (N/k)-th teacher layer) or "last" (PKD-Last: the last k-1 before the top).
    `num_teacher_layers` / `student_layers`: how many layer states a hidden-state list holds, counted from its
    end; None = Hugging Face's layout (embeddings first, then one state per layer: len(hidden_states) - 1).
    `beta`: weight of the PKD term; 100 is the PKD paper's (its loss is the mean over the hidden width).
    """

    temperature: float = 4.0
    alpha: float = 0.7
    strategy: Strategy = "kd"
    num_teacher_layers: int | None = None
    pkd_variant: PkdVariant = "skip"
    beta: float = 100.0
    student_layers: int | None = None

    def __post_init__(self) -> None:
        def bad(field: str, why: str, value: Any) -> ValueError:
            return ValueError(f"DistillationConfig: field {field!r}: {why}, got {value!r}")

        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise bad("temperature", "must be > 0", self.temperature)
        if not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise bad("alpha", "must be in [0, 1]", self.alpha)
        if self.strategy not in ("kd", "pkd", "cosine", "mse"):
            raise bad("strategy", "expected kd, pkd, cosine or mse", self.strategy)
        if self.pkd_variant not in ("skip", "last"):
            raise bad("pkd_variant", "expected skip or last", self.pkd_variant)
        if not isinstance(self.beta, (int, float)) or not self.beta >= 0:
            raise bad("beta", "must be >= 0", self.beta)
        for field in ("num_teacher_layers", "student_layers"):
            v = getattr(self, field)
            if v is not None and (not _is_int(v) or v < 1):
                raise bad(field, "must be an integer >= 1 when given", v)
        if self.num_teacher_layers is not None and self.student_layers is not None \
                and self.student_layers > self.num_teacher_layers:
            raise bad("student_layers", f"must not exceed num_teacher_layers ({self.num_teacher_layers})",
                      self.student_layers)


# ------------------------------------------------------------------------------------------------ the losses
def freeze(model: Any) -> Any:
    """Teacher mode: eval (dropout off, BatchNorm statistics fixed) and no gradients, for good (in place)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def kd_loss(student_logits: Any, teacher_logits: Any, temperature: float) -> Any:
    """KL(softmax(t/T) ‖ softmax(s/T)) · T² (Hinton et al., 2015), averaged over the batch.

    Hand-written on torch.nn.functional.kl_div; the compression passes (edgeopt.passes.compress.losses) use
    this same function."""
    import torch.nn.functional as F

    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                    reduction="batchmean", log_target=True) * (t * t)


def output_loss(student_out: Any, teacher_out: Any, config: DistillationConfig, labels: Any = None) -> Any:
    """The loss on the models' outputs that `config.strategy` names ("pkd" counts as "kd"; see
    DistillationConfig): the teacher's outputs are treated as constants."""
    import torch.nn.functional as F

    t_out = teacher_out.detach()
    if config.strategy in ("kd", "pkd"):
        loss = kd_loss(student_out, t_out, config.temperature)
        if labels is not None and not labels.is_floating_point():
            loss = config.alpha * loss + (1 - config.alpha) * F.cross_entropy(student_out, labels)
        return loss
    if config.strategy == "cosine":
        return (1 - F.cosine_similarity(student_out.flatten(1), t_out.flatten(1), dim=1)).mean()
    return F.mse_loss(student_out, t_out)


def teacher_layer_indices(num_teacher: int, num_student: int, variant: PkdVariant = "skip") -> list[int]:
    """The teacher layers (1-based; equal to indices into Hugging Face `hidden_states`, whose entry 0 is the
    embeddings) that the student's intermediate layers 1..k-1 learn from, in order; the student's last layer is
    taught through the output loss instead (Sun et al., 2019).

    "skip" (PKD-Skip): every (N/k)-th teacher layer, e.g. 12 → 6: [2, 4, 6, 8, 10]. "last" (PKD-Last): the last
    k-1 layers below the top, e.g. 12 → 6: [7, 8, 9, 10, 11]. Hand-written: no maintained library implements
    PKD's layer mapping. Same rounding as edgeopt.passes.compress.distill.pick_layers (which is 0-based)."""
    if not _is_int(num_teacher) or not _is_int(num_student) or num_student < 1 or num_teacher < 1:
        raise ValueError(f"teacher_layer_indices: layer counts must be integers >= 1, got teacher {num_teacher!r}, "
                         f"student {num_student!r}")
    if num_student > num_teacher:
        raise ValueError(f"teacher_layer_indices: the student has more layers ({num_student}) than the teacher "
                         f"({num_teacher})")
    if variant not in ("skip", "last"):
        raise ValueError(f"teacher_layer_indices: variant must be skip or last, got {variant!r}")
    k = num_student
    if variant == "last":
        return list(range(num_teacher - k + 1, num_teacher))
    step = num_teacher / k
    return [int(round(step * i)) for i in range(1, k)]


def _layer_states(states: Sequence[Any], n: int | None, who: str) -> list[Any]:
    """The per-layer states (layer 1 first) of a hidden-state list: its last `n` entries, or all but the first
    (the embeddings, Hugging Face's layout) when `n` is None."""
    states = list(states)
    if n is None:
        n = len(states) - 1
    if n < 1 or len(states) < n:
        raise ValueError(f"PatientDistillationLoss: the {who} gave {len(states)} hidden states; need one per layer "
                         f"(plus the embeddings first unless the config counts the layers)")
    return states[len(states) - n:]


def _first_token(h: Any, who: str) -> Any:
    """(B, H) from a (B, S, H) state ([CLS], the first token) or a (B, H) one (as is)."""
    if h.dim() == 3:
        return h[:, 0]
    if h.dim() == 2:
        return h
    raise ValueError(f"PatientDistillationLoss: {who} hidden states must be (batch, seq, hidden) or (batch, hidden), "
                     f"got shape {tuple(h.shape)}")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        if not _BUILT:
            _BUILT.update(_build())
        return _BUILT[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _build() -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class PatientDistillationLoss(nn.Module):
        """Patient Knowledge Distillation (Sun et al., 2019, "Patient Knowledge Distillation for BERT Model
        Compression"): the student's intermediate layers learn the [CLS] states of the teacher layers that
        `config.pkd_variant` picks (teacher_layer_indices), as the MSE between L2-normalized vectors (the
        mean over the batch, the paired layers and the hidden width, as the authors' code computes it).

        Hand-written: no maintained library implements PKD's layer mapping and loss. Hidden states are lists
        of (B, S, H) tensors (the first token is used) or (B, H) ones, in Hugging Face's layout (embeddings
        first) unless the config counts the layers. Where the student's width differs from the teacher's, a
        learned Linear (no bias) maps it there: created on first use as the submodule `projection` (so it is
        in `.parameters()`; DistillationTrainer adds it to its optimizer); with `projection=False` a width
        mismatch raises ValueError.

        `forward(student_logits, teacher_logits, student_hidden, teacher_hidden, labels=None)` is the combined
        loss: output_loss (alpha · KD(T) + (1 - alpha) · CE with integer labels) + beta · PKD."""

        def __init__(self, config: DistillationConfig | None = None, projection: bool = True):
            super().__init__()
            self.config = config or DistillationConfig(strategy="pkd")
            self.allow_projection = projection
            self.register_module("projection", None)

        def teacher_layer_indices(self, num_teacher: int, num_student: int) -> list[int]:
            """teacher_layer_indices with this config's pkd_variant."""
            return teacher_layer_indices(num_teacher, num_student, self.config.pkd_variant)

        def _project(self, s: torch.Tensor, width: int) -> torch.Tensor:
            if s.shape[-1] == width:
                return s
            if not self.allow_projection:
                raise ValueError(f"PatientDistillationLoss: the student's hidden width {s.shape[-1]} differs from the "
                                 f"teacher's {width} and projection=False")
            if self.projection is None:
                self.projection = nn.Linear(s.shape[-1], width, bias=False).to(device=s.device, dtype=s.dtype)
            elif (self.projection.in_features, self.projection.out_features) != (s.shape[-1], width):
                raise ValueError(f"PatientDistillationLoss: the projection maps {self.projection.in_features} → "
                                 f"{self.projection.out_features}, but the widths are now {s.shape[-1]} → {width}")
            return self.projection(s)

        def hidden_loss(self, student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor]
                        ) -> torch.Tensor:
            """The PKD term alone: MSE of the L2-normalized first-token states of the paired layers (0 when the
            student has one layer, so nothing to pair)."""
            s_layers = _layer_states(student_hidden, self.config.student_layers, "student")
            t_layers = _layer_states(teacher_hidden, self.config.num_teacher_layers, "teacher")
            idx = self.teacher_layer_indices(len(t_layers), len(s_layers))
            if not idx:
                return s_layers[-1].new_zeros(())
            s = torch.stack([_first_token(s_layers[j], "student") for j in range(len(idx))], 1)  # (B, M, Hs)
            t = torch.stack([_first_token(t_layers[i - 1], "teacher") for i in idx], 1).detach()  # (B, M, Ht)
            if s.shape[0] != t.shape[0]:
                raise ValueError(f"PatientDistillationLoss: batch sizes differ (student {s.shape[0]}, teacher "
                                 f"{t.shape[0]})")
            s = self._project(s, t.shape[-1])
            return F.mse_loss(F.normalize(s, dim=-1), F.normalize(t.to(s.dtype), dim=-1))

        def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                    labels: torch.Tensor | None = None) -> torch.Tensor:
            loss = output_loss(student_logits, teacher_logits, self.config, labels)
            if self.config.beta > 0:
                loss = loss + self.config.beta * self.hidden_loss(student_hidden, teacher_hidden)
            return loss

    # pickle finds the class through the module's __getattr__
    PatientDistillationLoss.__qualname__ = "PatientDistillationLoss"
    PatientDistillationLoss.__module__ = __name__
    return {"PatientDistillationLoss": PatientDistillationLoss}


# ------------------------------------------------------------------------------------------------ training
def _call(model: Any, inputs: Any, **kwargs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs, **kwargs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs, **kwargs)
    return model(inputs, **kwargs)


def _logits(out: Any) -> Any:
    """The logits of a model's output: `.logits` (Hugging Face), else the first element, else the output."""
    if getattr(out, "logits", None) is not None:
        return out.logits
    if hasattr(out, "to_tuple"):  # a Hugging Face ModelOutput without logits (e.g. BertModel)
        return out.to_tuple()[0]
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def _takes_hidden_flag(model: Any) -> bool:
    """Whether `model(..., output_hidden_states=True)` is accepted: a named parameter or **kwargs in forward."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return False
    return any(p.name == "output_hidden_states" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _split_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, Mapping):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError("DistillationTrainer: a batch is (inputs, labels) (labels may be None) or a dict of keyword "
                     f"inputs, got {type(batch).__name__}")


class DistillationTrainer:
    """Trains `student` to match the frozen `teacher` (freeze: eval mode, no gradients — in place, for good) one
    optimizer step at a time, with the loss `config.strategy` names.

    Models: plain nn.Modules whose forward returns logits (or a tuple, logits first), and Hugging Face models
    (outputs with `.logits`; with strategy "pkd" they are called with output_hidden_states=True and
    `.hidden_states` is used). For PKD with models that return no hidden states, give
    `hidden_states_fn(model, inputs) -> (logits, hidden_states)`; it is then used for both models.
    `inputs` is a tensor, a tuple of positional inputs or a dict of keyword inputs (a "labels" key there is taken
    as the labels), on the models' device. The default optimizer is AdamW(lr) over the student's trainable
    parameters; a PKD projection created on first use is added to the optimizer (given or default) as a new
    parameter group."""

    def __init__(self, teacher: Any, student: Any, config: DistillationConfig | None = None, optimizer: Any = None,
                 lr: float = 1e-3, hidden_states_fn: HiddenStatesFn | None = None, projection: bool = True):
        import torch

        self.config = config or DistillationConfig()
        self.teacher = freeze(teacher)
        self.student = student
        self.hidden_states_fn = hidden_states_fn
        self.criterion = (__getattr__("PatientDistillationLoss")(self.config, projection=projection)
                          if self.config.strategy == "pkd" else None)
        if optimizer is None:
            if not lr > 0:
                raise ValueError(f"create_distillation_trainer: lr must be > 0, got {lr!r}")
            optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr)
        self.optimizer = optimizer
        self.steps = 0

    def _forward(self, model: Any, inputs: Any) -> tuple[Any, Sequence[Any] | None]:
        """(logits, hidden states or None) of one model on `inputs`."""
        if self.hidden_states_fn is not None:
            logits, hidden = self.hidden_states_fn(model, inputs)
            return logits, hidden
        if self.criterion is None:
            return _logits(_call(model, inputs)), None
        out = _call(model, inputs, output_hidden_states=True) if _takes_hidden_flag(model) else _call(model, inputs)
        hidden = getattr(out, "hidden_states", None)
        if hidden is None:
            raise ValueError(f"DistillationTrainer: strategy 'pkd' needs hidden states, and {type(model).__name__} "
                             f"returned none (output_hidden_states=True); pass hidden_states_fn(model, inputs) -> "
                             f"(logits, hidden_states)")
        return _logits(out), hidden

    def _outputs_and_loss(self, inputs: Any, labels: Any) -> tuple[Any, Any, Any]:
        """(student logits, teacher logits, loss); the teacher runs without gradients."""
        import torch

        if isinstance(inputs, Mapping) and "labels" in inputs:
            labels = inputs["labels"] if labels is None else labels
            inputs = {k: v for k, v in inputs.items() if k != "labels"}
        self.teacher.eval()
        with torch.no_grad():
            t_logits, t_hidden = self._forward(self.teacher, inputs)
        s_logits, s_hidden = self._forward(self.student, inputs)
        if self.criterion is not None:
            loss = self.criterion(s_logits, t_logits, s_hidden, t_hidden, labels)
            self._add_new_params()
        else:
            loss = output_loss(s_logits, t_logits, self.config, labels)
        return s_logits, t_logits, loss

    def _add_new_params(self) -> None:
        known = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        new = [p for p in self.criterion.parameters() if p.requires_grad and id(p) not in known]
        if new:
            self.optimizer.add_param_group({"params": new})

    def train_step(self, inputs: Any, labels: Any = None) -> float:
        """One optimizer step on one batch (student in train mode, teacher in eval mode without gradients);
        returns the loss before the step."""
        self.student.train()
        _, _, loss = self._outputs_and_loss(inputs, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return float(loss.detach())

    def fit(self, batches: Iterable[Any], epochs: int = 1) -> list[float]:
        """train_step over every batch ((inputs, labels) pairs or dicts of keyword inputs), `epochs` times;
        returns the mean loss of each epoch. A one-shot iterator is read into a list first. The student is
        left in eval mode."""
        if not _is_int(epochs) or epochs < 0:
            raise ValueError(f"DistillationTrainer.fit: epochs must be an integer >= 0, got {epochs!r}")
        if iter(batches) is batches:
            batches = list(batches)
        history = []
        for _ in range(epochs):
            losses = [self.train_step(*_split_batch(b)) for b in batches]
            history.append(sum(losses) / max(1, len(losses)))
        self.student.eval()
        return history

    def evaluate(self, batches: Iterable[Any]) -> dict[str, float]:
        """The student in eval mode without gradients (its mode restored after), over every batch: the mean
        distillation "loss"; for kd/pkd the top-1 "agreement" with the teacher (and "accuracy" where integer
        labels are given); for cosine/mse the mean "cosine" to the teacher's outputs (edgeopt.train.score)."""
        import torch

        was_training = self.student.training
        self.student.eval()
        losses, s_all, t_all, y_all = [], [], [], []
        try:
            with torch.no_grad():
                for b in batches:
                    inputs, labels = _split_batch(b)
                    if isinstance(inputs, Mapping) and labels is None:
                        labels = inputs.get("labels")
                    s, t, loss = self._outputs_and_loss(inputs, labels)
                    losses.append(float(loss))
                    s_all.append(s)
                    t_all.append(t)
                    if labels is not None and not labels.is_floating_point():
                        y_all.append(labels)
        finally:
            self.student.train(was_training)
        if not losses:
            raise ValueError("DistillationTrainer.evaluate: no batches")
        s, t = torch.cat(s_all), torch.cat(t_all)
        out = {"loss": sum(losses) / len(losses)}
        if self.config.strategy in ("kd", "pkd"):
            out["agreement"] = score(s, t.argmax(-1))
            if len(y_all) == len(losses):
                out["accuracy"] = score(s, torch.cat(y_all))
        else:
            out["cosine"] = score(s, t.float())
        return out


def create_distillation_trainer(teacher: Any, student: Any, config: DistillationConfig | None = None,
                                optimizer: Any = None, lr: float = 1e-3, *,
                                hidden_states_fn: HiddenStatesFn | None = None,
                                projection: bool = True) -> DistillationTrainer:
    """A DistillationTrainer for `student` learning from `teacher` (frozen in place) as `config` says (default:
    DistillationConfig(), plain KD). See DistillationTrainer for the models, inputs and optimizer it takes."""
    return DistillationTrainer(teacher, student, config, optimizer, lr, hidden_states_fn, projection)
