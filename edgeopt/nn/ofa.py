"""Once-for-all networks: a MobileNetV3-style supernet with elastic kernel, depth and width, subnet control and
extraction of a subnet into a plain dense module.

    from edgeopt.nn.ofa import OFAConfig, OFANet, OFASubNetworkExtractor, create_progressive_shrinking_schedule

    cfg = OFAConfig(depths=(1, 2, 3), kernel_sizes=(3, 5, 7), expand_ratios=(3, 4, 6), resolutions=(24, 28, 32))
    net = OFANet(cfg)                                   # train it (progressive shrinking), then:
    ex = OFASubNetworkExtractor(net)
    sub = ex.sample_random(seed=0)                      # {"r": 28, "d": [2, 1, 3], "k": [...], "e": [...]}
    ex.get_complexity(sub)                              # {"macs", "flops", "params"}
    dense = ex.extract(sub)                             # nn.Module with no elastic machinery: exports to ONNX

Following Cai et al., "Once-for-All: Train One Network and Specialize it for Efficient Deployment" (ICLR 2020):
- elastic kernel: the depthwise conv keeps the largest kernel; a smaller one is the centre crop of the next
  larger one passed through a learned kernel transformation matrix (one per size step and layer, shared by
  the channels, initialised to the identity);
- elastic depth (`ElasticDepth`, a stage): a stage runs its first d blocks;
- elastic width (`ElasticWidth`, the 1×1 convs of a block): an inverted residual's expanded channels are the first
  in × e of the largest; `sort_channels` reorders them by importance (L1 norm) so the kept ones are the important
  ones;
- `ElasticKernel` / `ElasticBlock` are the names the paper's terms map to (`ElasticKernelConv`,
  `ElasticInvertedResidual`);
- resolution: the input is resized to the subnet's resolution.
Written by hand: the original once-for-all repository has been unmaintained since 2023 and NNCF removed its
elastic (BootstrapNAS) support in 3.0, so no maintained library provides these modules.
"""

from __future__ import annotations

import random as _random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from edgeopt.nn import blocks

# torch is imported on first use (`import edgeopt.nn` stays torch-free): the module classes resolve through the
# module-level __getattr__.
__all__ = ["OFAConfig", "SubnetConfig", "create_progressive_shrinking_schedule", "OFANet", "OFASubNetworkExtractor",
           "ElasticKernelConv", "ElasticKernel", "ElasticInvertedResidual", "ElasticBlock", "ElasticWidth",
           "ElasticDepth", "train_progressive", "calibrate_bn", "evaluate_subnet",
           "encode", "AccuracyPredictor", "search_subnet", "random_subnet"]
_MODULES = ("OFANet", "OFASubNetworkExtractor", "ElasticKernelConv", "ElasticKernel", "ElasticInvertedResidual",
            "ElasticBlock", "ElasticWidth", "ElasticDepth")
_BUILT: dict[str, Any] = {}


def _tuple_of_ints(name: str, v: Any) -> tuple[int, ...]:
    try:
        t = tuple(int(x) for x in v)
    except TypeError:
        raise ValueError(f"OFAConfig: field {name!r}: expected a list of integers, got {v!r}") from None
    if not t:
        raise ValueError(f"OFAConfig: field {name!r}: must not be empty")
    return t


@dataclass(frozen=True)
class OFAConfig:
    """The supernet's search space. Stages: `widths` output channels and `strides`; `depths` the blocks a stage may
    run (its largest is the blocks built); `kernel_sizes` the depthwise kernels (odd, the largest is the one
    stored); `expand_ratios` the inverted residuals' expansions; `resolutions` the input sizes. Invalid values
    raise ValueError naming the field."""

    depths: tuple[int, ...] = (1, 2, 3)
    kernel_sizes: tuple[int, ...] = (3, 5, 7)
    expand_ratios: tuple[float, ...] = (3, 4, 6)
    resolutions: tuple[int, ...] = (24, 28, 32)
    widths: tuple[int, ...] = (16, 24, 40)
    strides: tuple[int, ...] = (1, 2, 2)
    stem_width: int = 16
    stem_stride: int = 1
    head_width: int = 64
    in_channels: int = 1
    num_classes: int = 10
    act: str = "hardswish"

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(sorted(set(_tuple_of_ints("depths", self.depths)))))
        object.__setattr__(self, "kernel_sizes", tuple(sorted(set(_tuple_of_ints("kernel_sizes", self.kernel_sizes)))))
        object.__setattr__(self, "resolutions", tuple(sorted(set(_tuple_of_ints("resolutions", self.resolutions)))))
        object.__setattr__(self, "widths", _tuple_of_ints("widths", self.widths))
        object.__setattr__(self, "strides", _tuple_of_ints("strides", self.strides))
        try:
            er = tuple(sorted({float(x) for x in self.expand_ratios}))
        except TypeError:
            raise ValueError(f"OFAConfig: field 'expand_ratios': expected a list of numbers, got "
                             f"{self.expand_ratios!r}") from None
        object.__setattr__(self, "expand_ratios", er)
        if not er or er[0] <= 0:
            raise ValueError(f"OFAConfig: field 'expand_ratios': must be > 0, got {list(er)}")
        if self.depths[0] < 1:
            raise ValueError(f"OFAConfig: field 'depths': must be >= 1, got {list(self.depths)}")
        even = [k for k in self.kernel_sizes if k % 2 == 0 or k < 1]
        if even:
            raise ValueError(f"OFAConfig: field 'kernel_sizes': must be odd and positive, got {even}")
        if self.resolutions[0] < 8:
            raise ValueError(f"OFAConfig: field 'resolutions': must be >= 8, got {list(self.resolutions)}")
        if len(self.widths) != len(self.strides):
            raise ValueError(f"OFAConfig: fields 'widths' and 'strides': one per stage, got {len(self.widths)} and "
                             f"{len(self.strides)}")
        if any(w < 1 for w in self.widths) or any(s not in (1, 2) for s in self.strides):
            raise ValueError("OFAConfig: fields 'widths' (>= 1) and 'strides' (1 or 2) per stage")
        for name in ("stem_width", "head_width", "in_channels", "num_classes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"OFAConfig: field {name!r}: must be >= 1, got {getattr(self, name)}")
        if self.stem_stride not in (1, 2):
            raise ValueError(f"OFAConfig: field 'stem_stride': 1 or 2, got {self.stem_stride}")
        if self.act not in ("relu", "relu6", "silu", "gelu", "hardswish"):
            raise ValueError(f"OFAConfig: field 'act': expected relu, relu6, silu, gelu or hardswish, got {self.act!r}")

    @property
    def stages(self) -> int:
        return len(self.widths)

    @property
    def max_depth(self) -> int:
        return self.depths[-1]

    @property
    def max_kernel(self) -> int:
        return self.kernel_sizes[-1]

    @property
    def max_expand(self) -> float:
        return self.expand_ratios[-1]


@dataclass(frozen=True)
class SubnetConfig:
    """One subnet: input resolution `r`, active blocks `d` per stage, and per block (all max-depth slots, stage
    by stage; the inactive ones are ignored) depthwise kernel `k` and expansion `e`."""

    r: int
    d: tuple[int, ...]
    k: tuple[int, ...]
    e: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"r": self.r, "d": list(self.d), "k": list(self.k), "e": list(self.e)}

    def check(self, cfg: OFAConfig) -> "SubnetConfig":
        """ValueError naming the field when the subnet is outside `cfg`'s space."""
        n = cfg.stages * cfg.max_depth
        if self.r not in cfg.resolutions:
            raise ValueError(f"subnet: field 'r': {self.r} is not one of the resolutions {list(cfg.resolutions)}")
        if len(self.d) != cfg.stages or any(x not in cfg.depths for x in self.d):
            raise ValueError(f"subnet: field 'd': {list(self.d)}: expected {cfg.stages} depths from {list(cfg.depths)}")
        if len(self.k) != n or any(x not in cfg.kernel_sizes for x in self.k):
            raise ValueError(f"subnet: field 'k': expected {n} kernel sizes from {list(cfg.kernel_sizes)}, "
                             f"got {list(self.k)}")
        if len(self.e) != n or any(float(x) not in cfg.expand_ratios for x in self.e):
            raise ValueError(f"subnet: field 'e': expected {n} expand ratios from {list(cfg.expand_ratios)}, "
                             f"got {list(self.e)}")
        return self

    @classmethod
    def of(cls, v: "SubnetConfig | dict[str, Any]") -> "SubnetConfig":
        if isinstance(v, SubnetConfig):
            return v
        try:
            return cls(int(v["r"]), tuple(int(x) for x in v["d"]), tuple(int(x) for x in v["k"]),
                       tuple(float(x) for x in v["e"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"subnet: expected keys r, d, k, e ({e.__class__.__name__}: {e})") from None


@dataclass(frozen=True)
class Phase:
    """One phase of progressive shrinking: the dimensions sampled from (others stay at their largest)."""

    name: str
    epochs: int
    kernel_sizes: tuple[int, ...]
    depths: tuple[int, ...]
    expand_ratios: tuple[float, ...]
    resolutions: tuple[int, ...]
    subnets_per_step: int = 1
    distill: bool = True  # in-place distillation from the largest subnet

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def random_subnet(rng: _random.Random, config: OFAConfig, space: Phase | None = None) -> SubnetConfig:
    """A uniformly random subnet drawn with `rng` (resolution, depths, kernels, expansions, in that order), from
    `space`'s choices when given (a progressive-shrinking phase), else the whole of `config`'s."""
    c, n = config, config.stages * config.max_depth
    s = space or c
    return SubnetConfig(rng.choice(s.resolutions), tuple(rng.choice(s.depths) for _ in range(c.stages)),
                        tuple(rng.choice(s.kernel_sizes) for _ in range(n)),
                        tuple(rng.choice(s.expand_ratios) for _ in range(n)))


def create_progressive_shrinking_schedule(config: OFAConfig, total_epochs: int) -> list[Phase]:
    """Progressive shrinking (Cai et al., 2020): the full network, then elastic kernel, elastic depth (the
    deeper choices first, then all), elastic width (the wider expansions first, then all), each later phase
    sampling from everything the earlier ones opened. Epochs split 25 / 15 / 10 / 15 / 15 / 20 % (at least 1 per
    phase; phases with nothing new to open are dropped). Every phase but the first distills in place from the
    largest subnet; resolution is elastic throughout."""
    if int(total_epochs) < 1:
        raise ValueError(f"create_progressive_shrinking_schedule: total_epochs must be >= 1, got {total_epochs}")
    c = config
    ks, ds, es, rs = c.kernel_sizes, c.depths, c.expand_ratios, c.resolutions
    plan = [("full", 0.25, (c.max_kernel,), (c.max_depth,), (c.max_expand,), False),
            ("elastic_kernel", 0.15, ks, (c.max_depth,), (c.max_expand,), True),
            ("elastic_depth_1", 0.10, ks, ds[-2:], (c.max_expand,), True),
            ("elastic_depth_2", 0.15, ks, ds, (c.max_expand,), True),
            ("elastic_width_1", 0.15, ks, ds, es[-2:], True),
            ("elastic_width_2", 0.20, ks, ds, es, True)]
    phases: list[Phase] = []
    seen: set[tuple[Any, ...]] = set()
    for name, share, k, d, e, distill in plan:
        key = (k, d, e)
        if key in seen:
            continue
        seen.add(key)
        phases.append(Phase(name, max(1, round(share * total_epochs)), k, d, e, rs,
                            subnets_per_step=1 if name == "full" else 2, distill=distill))
    return phases


def calibrate_bn(net: Any, subnet: SubnetConfig | dict[str, Any], data: Any, batches: int = 8,
                 batch_size: int = 64, seed: int = 0) -> None:
    """Re-estimate every BatchNorm's running statistics for `subnet` (its channels, depth and resolution) from
    `batches` batches of `data` (a TensorData), as an exact cumulative average; the net is left set to `subnet`,
    in eval mode. OFA's subnets share BatchNorm layers whose statistics belong to whatever ran last: without this,
    a subnet's accuracy is not its own."""
    import torch

    net.set_active(subnet)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
    net.train()
    gen = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for i, (x, _) in enumerate(data.batches(batch_size, gen)):
                if i >= batches:
                    break
                for bn in bns:
                    bn.momentum = 1.0 / (i + 1)
                net(*x)
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m
        net.eval()


def evaluate_subnet(net: Any, subnet: SubnetConfig | dict[str, Any], data: Any, calibration: Any = None) -> float:
    """Top-1 accuracy of `subnet` on `data` after recalibrating BatchNorm on `calibration` (default: `data`)."""
    from edgeopt.train import evaluate

    calibrate_bn(net, subnet, calibration if calibration is not None else data)
    return float(evaluate(net, data))


def train_progressive(net: Any, data: Any, schedule: list[Phase], lr: float = 3e-3, batch_size: int = 64,
                      seed: int = 0, checkpoint: Any = None, progress: Any = None, augment_shift: float = 0.0,
                      temperature: float = 1.0, max_batches: int | None = None) -> list[dict[str, Any]]:
    """Train `net` (an OFANet) through the progressive-shrinking `schedule` on `data` (TensorData with class labels,
    or reference outputs to regress, e.g. a model's logits).

    "full" trains the largest subnet on the targets (cross-entropy, or MSE to reference outputs). Each later phase samples `subnets_per_step` random subnets
    of its space per batch and trains them on the labels plus KD (`edgeopt.nn.distill.kd_loss` at `temperature`)
    from a frozen copy of the network as it left the "full" phase, set to its largest subnet; the first phase with
    an elastic width first importance-sorts the channels. Each phase is `edgeopt.train.fit` (seeded, cosine
    learning rate, rich progress; each record has the phase's wall and CPU seconds). `checkpoint`: a folder; after each phase the weights (safetensors) and the
    phases done are written there, and a later call with the same schedule resumes after the last finished
    phase (the teacher is rebuilt from the saved "full" weights). Returns one record per phase."""
    import copy
    import json
    import time
    from pathlib import Path

    import torch
    import torch.nn.functional as F

    from edgeopt.nn.distill import freeze, kd_loss
    from edgeopt.train import TrainConfig, fit

    if data.targets is None:
        raise ValueError("train_progressive: data needs targets (class labels or reference outputs)")
    folder = Path(checkpoint) if checkpoint is not None else None
    plan = [p.to_dict() for p in schedule]
    done: list[dict[str, Any]] = []
    teacher = None
    if folder is not None and (folder / "ofa.json").is_file():
        from safetensors.torch import load_file

        state = json.loads((folder / "ofa.json").read_text())
        if state.get("schedule") == plan and state.get("config") == repr(net.config):
            net.load_state_dict(load_file(str(folder / "supernet.safetensors")))
            done = state["done"]
            if (folder / "teacher.safetensors").is_file():
                teacher = copy.deepcopy(net)
                teacher.load_state_dict(load_file(str(folder / "teacher.safetensors")))
                teacher.set_active(teacher.largest())
                freeze(teacher)
    rng = _random.Random(seed)
    sorted_width = any(p["expand_ratios"] != [net.config.max_expand] for p in done)
    for i, phase in enumerate(schedule):
        if i < len(done):
            continue
        if phase.name != "full" and teacher is None:
            teacher = freeze(copy.deepcopy(net))
            teacher.set_active(teacher.largest())
        if len(phase.expand_ratios) > 1 and not sorted_width:
            net.sort_channels()
            sorted_width = True

        def sample() -> SubnetConfig:
            return random_subnet(rng, net.config, phase)

        def loss_fn(model: Any, x: tuple[Any, ...], y: Any) -> Any:
            subs = [model.largest()] if phase.name == "full" else [sample() for _ in range(phase.subnets_per_step)]
            soft = None
            if phase.distill and teacher is not None:
                with torch.no_grad():
                    soft = teacher(*x)
            total = 0.0
            for sub in subs:
                model.set_active(sub)
                out = model(*x)
                loss = F.mse_loss(out, y) if y.is_floating_point() else F.cross_entropy(out, y)
                if soft is not None:
                    loss = 0.5 * loss + 0.5 * kd_loss(out, soft, temperature)
                total = total + loss
            return total / len(subs)

        cfg = TrainConfig(epochs=phase.epochs, batch_size=batch_size, lr=lr, seed=seed + i, augment_shift=augment_shift,
                          max_batches=max_batches, weight_decay=1e-5)
        cpu0 = time.process_time()
        res = fit(net, data, cfg, loss_fn=loss_fn, progress=progress, description=f"ofa {phase.name}")
        net.set_active(net.largest())
        done.append({**phase.to_dict(), "loss": res.history[-1]["loss"] if res.history else None,
                     "seconds": round(res.seconds, 1), "cpu_seconds": round(time.process_time() - cpu0, 1)})
        if folder is not None:  # each file through a temporary name; the record of finished phases last
            import os

            from safetensors.torch import save_file

            folder.mkdir(parents=True, exist_ok=True)
            for name, m in (("supernet", net), ("teacher", teacher)):
                if m is not None:
                    tmp = folder / f".{name}.tmp"
                    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp))
                    os.replace(tmp, folder / f"{name}.safetensors")
            tmp = folder / ".ofa.json.tmp"
            tmp.write_text(json.dumps({"config": repr(net.config), "schedule": plan, "done": done}))
            os.replace(tmp, folder / "ofa.json")
    return done


def encode(config: OFAConfig, subnet: SubnetConfig | dict[str, Any]) -> list[float]:
    """A subnet as features: resolution and per-stage depth one-hot; per block slot kernel and expansion one-hot
    (all zeros for a slot its stage does not run)."""
    sub = SubnetConfig.of(subnet).check(config)
    c = config
    f = [float(sub.r == r) for r in c.resolutions]
    i = 0
    for d in sub.d:
        f += [float(d == x) for x in c.depths]
        for j in range(c.max_depth):
            on = j < d
            f += [float(on and sub.k[i] == k) for k in c.kernel_sizes]
            f += [float(on and sub.e[i] == e) for e in c.expand_ratios]
            i += 1
    return f


class AccuracyPredictor:
    """Predicts a subnet's accuracy from `encode(subnet)`: ridge regression with its penalty chosen by
    cross-validation (scikit-learn's RidgeCV), fit on subnets whose accuracy was measured."""

    def __init__(self, config: OFAConfig):
        self.config = config
        self.model: Any = None

    def fit(self, subnets: Sequence[Any], accuracies: Sequence[float]) -> "AccuracyPredictor":
        import numpy as np
        from sklearn.linear_model import RidgeCV

        if len(subnets) != len(accuracies) or len(subnets) < 3:
            raise ValueError(f"AccuracyPredictor.fit: need 3 or more subnets with one accuracy each, got "
                             f"{len(subnets)} and {len(accuracies)}")
        x = np.array([encode(self.config, s) for s in subnets])
        self.model = RidgeCV(alphas=np.logspace(-3, 2, 12)).fit(x, np.asarray(accuracies, dtype=float))
        return self

    def predict(self, subnets: Sequence[Any]) -> list[float]:
        import numpy as np

        if self.model is None:
            raise ValueError("AccuracyPredictor: fit it first")
        return [float(v) for v in self.model.predict(np.array([encode(self.config, s) for s in subnets]))]

    def score(self, subnets: Sequence[Any], accuracies: Sequence[float]) -> dict[str, float]:
        """RMSE and Spearman rank correlation of the predictions against measured `accuracies`."""
        import numpy as np
        from scipy.stats import spearmanr

        p, a = np.array(self.predict(subnets)), np.asarray(accuracies, dtype=float)
        return {"rmse": float(np.sqrt(np.mean((p - a) ** 2))), "spearman": float(spearmanr(p, a).statistic)}


def search_subnet(config: OFAConfig, fitness: Callable[[SubnetConfig], float], cost: Callable[[SubnetConfig], float],
                  budget: float, trials: int = 300, seed: int = 0) -> dict[str, Any]:
    """The subnet with the highest `fitness` whose `cost` is within `budget` (e.g. predicted accuracy under a
    latency table's milliseconds, or under a FLOPs count): Optuna's TPE sampler over the space, the budget as its
    constraint. Returns {"subnet", "fitness", "cost", "feasible", "trials"}; without a feasible trial the
    cheapest one is returned with feasible False."""
    import optuna

    c = config
    n = c.stages * c.max_depth

    def build(trial: Any) -> SubnetConfig:
        return SubnetConfig(trial.suggest_categorical("r", list(c.resolutions)),
                            tuple(trial.suggest_categorical(f"d{s}", list(c.depths)) for s in range(c.stages)),
                            tuple(trial.suggest_categorical(f"k{i}", list(c.kernel_sizes)) for i in range(n)),
                            tuple(trial.suggest_categorical(f"e{i}", list(c.expand_ratios)) for i in range(n)))

    def objective(trial: Any) -> float:
        sub = build(trial)
        price = float(cost(sub))
        trial.set_user_attr("cost", price)
        trial.set_constraint("budget", price - budget)  # feasible when <= 0
        trial.set_user_attr("subnet", sub.to_dict())
        return float(fitness(sub))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=trials)
    done = [t for t in study.trials if t.value is not None]
    feasible = [t for t in done if t.user_attrs["cost"] <= budget]
    best = max(feasible, key=lambda t: t.value) if feasible else min(done, key=lambda t: t.user_attrs["cost"])
    return {"subnet": SubnetConfig.of(best.user_attrs["subnet"]), "fitness": float(best.value),
            "cost": float(best.user_attrs["cost"]), "feasible": bool(feasible), "trials": len(done)}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        if not _BUILT:
            _BUILT.update(_build())
        return _BUILT[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build() -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ElasticKernelConv(nn.Module):
        """A depthwise conv whose kernel may be any of `kernel_sizes`: the largest is stored; a smaller one is the
        centre crop of the next larger kernel passed through a learned (k² × k²) transformation matrix."""

        def __init__(self, channels: int, kernel_sizes: Sequence[int], stride: int = 1):
            super().__init__()
            self.kernel_sizes = sorted(kernel_sizes)
            self.stride = stride
            kmax = self.kernel_sizes[-1]
            self.weight = nn.Parameter(torch.empty(channels, 1, kmax, kmax))
            nn.init.kaiming_normal_(self.weight, mode="fan_out")
            self.transforms = nn.ParameterDict({
                f"{big}to{small}": nn.Parameter(torch.eye(small * small))
                for big, small in zip(self.kernel_sizes[1:], self.kernel_sizes[:-1])})
            self.active_kernel = kmax
            self.active_channels = channels

        def kernel(self, k: int) -> torch.Tensor:
            """The (channels, 1, k, k) kernel of size k (all channels)."""
            w = self.weight
            for big, small in zip(reversed(self.kernel_sizes[1:]), reversed(self.kernel_sizes[:-1])):
                if big <= k:
                    break
                off = (big - small) // 2
                crop = w[:, :, off:off + small, off:off + small]
                c = crop.shape[0]
                w = (crop.reshape(c, small * small) @ self.transforms[f"{big}to{small}"]).reshape(c, 1, small, small)
            return w

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            k, c = self.active_kernel, x.shape[1]
            return F.conv2d(x, self.kernel(k)[:c], None, self.stride, k // 2, 1, c)

    class ElasticWidth(nn.Conv2d):
        """A 1×1 convolution (no bias) of elastic width: it produces its first `active_out` output channels (all by
        default) from however many input channels it is given (the first ones of its weight), so one weight serves
        every width. The weight is the largest one's; `sort_channels` of the block orders it by importance."""

        def __init__(self, in_channels: int, out_channels: int):
            super().__init__(in_channels, out_channels, 1, bias=False)
            self.active_out = out_channels

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, self.weight[:self.active_out, :x.shape[1]])

    class ElasticDepth(nn.ModuleList):
        """A stage of blocks of elastic depth: it runs its first `active_depth` blocks (all by default)."""

        def __init__(self, blocks_: Sequence[nn.Module]):
            super().__init__(blocks_)
            self.active_depth = len(self)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for blk in self[:self.active_depth]:
                x = blk(x)
            return x

    def _bn(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
        """BatchNorm over the first x.shape[1] channels of `bn` (running statistics sliced the same way)."""
        c = x.shape[1]
        if c == bn.num_features:
            return bn(x)
        use_batch = bn.training or bn.running_mean is None
        return F.batch_norm(x, bn.running_mean[:c] if bn.running_mean is not None else None,
                            bn.running_var[:c] if bn.running_var is not None else None, bn.weight[:c],
                            bn.bias[:c], use_batch, bn.momentum if bn.momentum is not None else 0.1, bn.eps)

    class ElasticInvertedResidual(nn.Module):
        """MobileNetV3-style inverted residual with an elastic depthwise kernel and elastic expansion: 1×1 expand
        (BN, act) → depthwise k×k (BN, act) → 1×1 project (BN), the identity shortcut when shapes allow."""

        def __init__(self, cin: int, cout: int, stride: int, cfg: OFAConfig):
            super().__init__()
            self.cin, self.cout, self.stride = cin, cout, stride
            self.hidden_max = blocks.make_divisible(cin * cfg.max_expand, 8)
            self.expand = ElasticWidth(cin, self.hidden_max)       # elastic output: the expansion
            self.bn1 = nn.BatchNorm2d(self.hidden_max)
            self.dw = ElasticKernelConv(self.hidden_max, cfg.kernel_sizes, stride)
            self.bn2 = nn.BatchNorm2d(self.hidden_max)
            self.project = ElasticWidth(self.hidden_max, cout)     # its input follows the expansion
            self.bn3 = nn.BatchNorm2d(cout)
            self.act = blocks.make_act(cfg.act)
            self.use_res = stride == 1 and cin == cout
            self.active_expand = cfg.max_expand

        @property
        def active_expand(self) -> float:
            return self._active_expand

        @active_expand.setter
        def active_expand(self, e: float) -> None:
            self._active_expand = float(e)
            self.expand.active_out = self.hidden(e)

        def hidden(self, e: float) -> int:
            return min(self.hidden_max, blocks.make_divisible(self.cin * e, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.act(_bn(self.bn1, self.expand(x)))
            y = self.act(_bn(self.bn2, self.dw(y)))
            y = self.bn3(self.project(y))
            return x + y if self.use_res else y

        @torch.no_grad()
        def sort_channels(self) -> None:
            """Reorder the expanded channels by the L1 norm of their projection weights (most important first), so
            a narrower expansion keeps the important ones; the function is unchanged."""
            order = torch.argsort(self.project.weight.abs().sum(dim=(0, 2, 3)), descending=True)
            self.expand.weight.copy_(self.expand.weight[order])
            for bn in (self.bn1, self.bn2):
                for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                    t.copy_(t[order])
            self.dw.weight.copy_(self.dw.weight[order])
            self.project.weight.copy_(self.project.weight[:, order])

        def dense(self, k: int, e: float) -> nn.Module:
            """This block at kernel k and expansion e as plain modules, weights copied."""
            h = self.hidden(e)
            act = type(self.act)
            m = _DenseIR(self.cin, self.cout, h, k, self.stride, act, self.use_res)
            with torch.no_grad():
                m.expand.weight.copy_(self.expand.weight[:h])
                m.dw.weight.copy_(self.dw.kernel(k)[:h])
                m.project.weight.copy_(self.project.weight[:, :h])
                for src, dst, n in ((self.bn1, m.bn1, h), (self.bn2, m.bn2, h), (self.bn3, m.bn3, self.cout)):
                    for a in ("weight", "bias", "running_mean", "running_var"):
                        getattr(dst, a).copy_(getattr(src, a)[:n])
                    dst.eps, dst.momentum = src.eps, src.momentum
            return m

    class _DenseIR(nn.Module):
        """A plain inverted residual (what `ElasticInvertedResidual.dense` returns)."""

        def __init__(self, cin: int, cout: int, hidden: int, k: int, stride: int, act: type, use_res: bool):
            super().__init__()
            self.expand = nn.Conv2d(cin, hidden, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(hidden)
            self.dw = nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False)
            self.bn2 = nn.BatchNorm2d(hidden)
            self.project = nn.Conv2d(hidden, cout, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout)
            self.act = act()
            self.use_res = use_res

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.act(self.bn1(self.expand(x)))
            y = self.act(self.bn2(self.dw(y)))
            y = self.bn3(self.project(y))
            return x + y if self.use_res else y

    class _Head(nn.Module):
        def __init__(self, cin: int, width: int, classes: int, act: str):
            super().__init__()
            self.conv = blocks.ConvBNAct(cin, width, 1, act=act)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(width, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.pool(self.conv(x)).flatten(1))

    class _DenseNet(nn.Module):
        """An extracted subnet: stem, the active blocks, head; resizes its input to `resolution` first."""

        def __init__(self, stem: nn.Module, blocks_: list[nn.Module], head: nn.Module, resolution: int):
            super().__init__()
            self.stem, self.blocks, self.head = stem, nn.Sequential(*blocks_), head
            self.resolution = resolution

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
                x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
            return self.head(self.blocks(self.stem(x)))

    class OFANet(nn.Module):
        """The supernet: stem (3×3 conv, BN, act), stages of `ElasticInvertedResidual` (max depth each, the first of
        a stage strided), head (1×1 conv to `head_width`, pool, linear). `set_active(subnet)` picks the subnet the
        next forward runs; the input is resized to the subnet's resolution."""

        def __init__(self, config: OFAConfig | None = None):
            super().__init__()
            self.config = c = config or OFAConfig()
            self.stem = blocks.ConvBNAct(c.in_channels, c.stem_width, 3, c.stem_stride, act=c.act)
            stages, cin = [], c.stem_width
            for w, s in zip(c.widths, c.strides):
                stages.append(ElasticDepth([ElasticInvertedResidual(cin if i == 0 else w, w, s if i == 0 else 1, c)
                                            for i in range(c.max_depth)]))
                cin = w
            self.stages = nn.ModuleList(stages)
            self.head = _Head(cin, c.head_width, c.num_classes, c.act)
            self.active = self.largest()

        def largest(self) -> SubnetConfig:
            c, n = self.config, self.config.stages * self.config.max_depth
            return SubnetConfig(c.resolutions[-1], (c.max_depth,) * c.stages, (c.max_kernel,) * n,
                                (c.max_expand,) * n)

        def set_active(self, subnet: SubnetConfig | dict[str, Any]) -> SubnetConfig:
            sub = SubnetConfig.of(subnet).check(self.config)
            i = 0
            for stage, d in zip(self.stages, sub.d):
                stage.active_depth = d
                for blk in stage:
                    blk.dw.active_kernel, blk.active_expand = sub.k[i], sub.e[i]
                    i += 1
            self.active = sub
            return sub

        def active_blocks(self, sub: SubnetConfig | None = None) -> list[tuple[Any, int, float]]:
            """(block, kernel, expand) of every block the subnet runs, in order."""
            sub = sub or self.active
            out, i = [], 0
            for stage, d in zip(self.stages, sub.d):
                for j, blk in enumerate(stage):
                    if j < d:
                        out.append((blk, sub.k[i], sub.e[i]))
                    i += 1
            return out

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            r = self.active.r
            if x.shape[-1] != r or x.shape[-2] != r:
                x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
            x = self.stem(x)
            for stage in self.stages:
                x = stage(x)
            return self.head(x)

        def sort_channels(self) -> None:
            """Importance-sort every block's expanded channels (before training elastic width)."""
            for stage in self.stages:
                for blk in stage:
                    blk.sort_channels()

    class OFASubNetworkExtractor:
        """Samples subnets of a trained `OFANet`, switches it to one (`set_config`), counts a subnet's cost
        (`get_complexity`) and extracts it as a plain dense module (`extract`)."""

        def __init__(self, net: OFANet):
            self.net, self.config = net, net.config

        def _n(self) -> int:
            return self.config.stages * self.config.max_depth

        def sample_largest(self) -> SubnetConfig:
            return self.net.largest()

        def sample_smallest(self) -> SubnetConfig:
            c, n = self.config, self._n()
            return SubnetConfig(c.resolutions[0], (c.depths[0],) * c.stages, (c.kernel_sizes[0],) * n,
                                (c.expand_ratios[0],) * n)

        def sample_random(self, seed: int | None = None, space: Phase | None = None) -> SubnetConfig:
            """A uniformly random subnet (of `space`'s choices when given, e.g. a progressive-shrinking phase)."""
            return random_subnet(_random.Random(seed), self.config, space)

        def set_config(self, subnet: SubnetConfig | dict[str, Any]) -> SubnetConfig:
            return self.net.set_active(subnet)

        def get_complexity(self, subnet: SubnetConfig | dict[str, Any]) -> dict[str, int]:
            """MACs (multiply-accumulates of the convs and the classifier at the subnet's resolution), FLOPs
            (2 × MACs) and parameters of the extracted dense subnet."""
            sub = SubnetConfig.of(subnet).check(self.config)
            c = self.config
            r = (sub.r + c.stem_stride - 1) // c.stem_stride  # the stem's output size (3×3, padding 1)
            macs = r * r * c.in_channels * c.stem_width * 9
            for blk, k, e in self.net.active_blocks(sub):
                h = blk.hidden(e)
                out = (r + blk.stride - 1) // blk.stride
                macs += r * r * blk.cin * h + out * out * h * k * k + out * out * h * blk.cout
                r = out
            macs += r * r * self.net.head.conv[0].in_channels * c.head_width + c.head_width * c.num_classes
            params = sum(p.numel() for p in self.extract(sub).parameters())
            return {"macs": int(macs), "flops": int(2 * macs), "params": int(params)}

        def extract(self, subnet: SubnetConfig | dict[str, Any]) -> nn.Module:
            """The subnet as a standalone module of plain Conv2d / BatchNorm2d / Linear layers (weights copied, the
            kernel transformations applied), in eval mode; the same outputs as the supernet set to it."""
            import copy

            sub = SubnetConfig.of(subnet).check(self.config)
            blocks_ = [blk.dense(k, e) for blk, k, e in self.net.active_blocks(sub)]
            return _DenseNet(copy.deepcopy(self.net.stem), blocks_, copy.deepcopy(self.net.head), sub.r).eval()

    return {"OFANet": OFANet, "OFASubNetworkExtractor": OFASubNetworkExtractor,
            "ElasticKernelConv": ElasticKernelConv, "ElasticKernel": ElasticKernelConv,
            "ElasticInvertedResidual": ElasticInvertedResidual, "ElasticBlock": ElasticInvertedResidual,
            "ElasticWidth": ElasticWidth, "ElasticDepth": ElasticDepth}

