"""compress.ofa: a once-for-all supernet trained on the task's data, then the most accurate subnet under a latency
budget measured on this machine's runtime, extracted as a plain model (edgeopt.nn.ofa underneath)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from edgeopt.artifact import Artifact, register_builder
from edgeopt.errors import PassError
from edgeopt.nn import ofa as O
from edgeopt.passes.base import Pass, PassContext, register
from edgeopt.passes.compress._common import FineTune, derived, module_copy, task_data
from edgeopt.train import TrainConfig


@register("compress.ofa")
class OnceForAll(Pass):
    """Train a once-for-all supernet (`space`: an `edgeopt.nn.ofa.OFAConfig`; input channels and classes come from
    the data) by progressive shrinking on the task's labels (or, without labels, the input model's outputs),
    in-place distilled from its own largest subnet; time every block kind on ONNX Runtime at
    `threads` (a latency table); fit an accuracy predictor on `samples` random subnets' held-out accuracy; and
    return the subnet of highest predicted accuracy whose predicted latency is within `latency_ms` (or, without it,
    `budget` of the way from the smallest to the largest subnet's latency), its BatchNorm recalibrated, as a plain
    dense module. The supernet, table and predictor's samples are kept in the run folder (`.ofa/<key>`), so the
    stages of one recipe that ask for other budgets reuse them, and an interrupted training resumes by phase.
    ctx.notes["compress.ofa"]: the subnet, predicted and table latency, predictor quality, training phases."""

    class Config(FineTune):
        space: dict[str, Any] = Field(default_factory=dict, description="OFAConfig fields (depths, kernel_sizes, ...)")
        epochs: int = Field(default=40, ge=1, description="progressive-shrinking epochs in all")
        latency_ms: float | None = Field(default=None, gt=0)
        budget: float = Field(default=0.5, gt=0, le=1, description="without latency_ms: fraction of the way from "
                                                                    "the smallest to the largest subnet's latency")
        samples: int = Field(default=40, ge=4, description="random subnets measured to fit the accuracy predictor")
        trials: int = Field(default=300, ge=10)
        threads: int = Field(default=2, ge=1)
        train: TrainConfig = TrainConfig(epochs=0, lr=3e-3, batch_size=64, augment_shift=0.1)
        val_fraction: float = Field(default=0.2, gt=0, lt=1)
        selection: Literal["latency", "flops"] = "latency"

        @field_validator("space")
        @classmethod
        def _valid_space(cls, v: dict[str, Any]) -> dict[str, Any]:
            try:
                O.OFAConfig(**v)
            except TypeError as e:
                raise ValueError(f"space: {e}") from None
            return v

        @model_validator(mode="after")
        def _budget(self) -> "OnceForAll.Config":
            if self.selection == "flops" and self.latency_ms is not None:
                raise ValueError("latency_ms is a latency budget: with selection: flops use budget (a fraction)")
            return self

    accepts = ("torch",)
    produces = "torch"
    tolerance = None
    tolerance_reason = ("a new architecture trained from the data: it is scored on held-out data (accuracy), "
                        "gated like every stage")

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        import torch

        from edgeopt.measure.latency_table import LatencyTable

        cfg = self.config
        teacher = module_copy(art, self.name)
        data = task_data(art, ctx, cfg, teacher, self.name)  # labels, else the input model's outputs to match
        x, y = data.inputs[0], data.targets
        if len(data.inputs) != 1 or x.dim() != 4:
            raise PassError(f"{self.name}: needs a model with one image input (batch, channels, H, W)")
        classes = int(y.max()) + 1 if data.labelled else int(y.flatten(1).shape[1])
        try:
            space = O.OFAConfig(**{"in_channels": int(x.shape[1]), "num_classes": classes, **cfg.space})
        except ValueError as e:
            raise PassError(f"{self.name}: {e}") from None
        fit_data, val = data.split(cfg.val_fraction, seed=cfg.train.seed)
        key = hashlib.sha256(json.dumps({"space": repr(space), "epochs": cfg.epochs, "train": cfg.train.key(),
                                         "n": len(data), "first": float(data.inputs[0].sum())},
                                        sort_keys=True).encode()).hexdigest()[:16]
        folder = ctx.stage_dir.parent / ".ofa" / key
        torch.manual_seed(cfg.train.seed)
        net = O.OFANet(space)
        schedule = O.create_progressive_shrinking_schedule(space, cfg.epochs)
        phases = O.train_progressive(net, fit_data, schedule, lr=cfg.train.lr, batch_size=cfg.train.batch_size,
                                     seed=cfg.train.seed, checkpoint=folder / "supernet", progress=ctx.progress,
                                     augment_shift=cfg.train.augment_shift)
        ex = O.OFASubNetworkExtractor(net)
        table_path = folder / f"latency-{cfg.threads}t.json"
        if table_path.is_file():
            table = LatencyTable.load(table_path)
        else:
            table = LatencyTable.build(net, folder / "table", threads=cfg.threads, progress=ctx.progress)
            table.save(table_path)
        subs, accs = self._samples(net, ex, fit_data, val, folder, cfg.samples, cfg.train.seed)
        pred = O.AccuracyPredictor(space).fit(subs, accs)
        small, large = ex.sample_smallest(), ex.sample_largest()
        if cfg.selection == "latency":
            lo, hi = table.predict(net, small), table.predict(net, large)
            budget = cfg.latency_ms if cfg.latency_ms is not None else lo + cfg.budget * (hi - lo)
            cost = lambda s: table.predict(net, s)  # noqa: E731
        else:
            lo, hi = (ex.get_complexity(s)["macs"] for s in (small, large))
            budget = lo + cfg.budget * (hi - lo)
            cost = lambda s: ex.get_complexity(s)["macs"]  # noqa: E731
        found = O.search_subnet(space, lambda s: pred.predict([s])[0], cost, budget, trials=cfg.trials,
                                seed=cfg.train.seed)
        if not found["feasible"]:
            raise PassError(f"{self.name}: no subnet within the budget {budget:.4g} (the smallest costs {lo:.4g})")
        sub = found["subnet"]
        O.calibrate_bn(net, sub, fit_data)
        model = ex.extract(sub)
        ctx.notes[self.name] = {
            "subnet": sub.to_dict(), "selection": cfg.selection, "budget": budget,
            "predicted_ms": table.predict(net, sub), "predicted_accuracy": found["fitness"],
            "val_accuracy": O.evaluate_subnet(net, sub, val, calibration=fit_data),
            "complexity": ex.get_complexity(sub), "latency_range_ms": [table.predict(net, small),
                                                                       table.predict(net, large)],
            "predictor_samples": len(subs), "phases": phases, "cache": str(folder)}
        space_args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in space.__dict__.items()}
        return derived(model, art, ("compress.ofa", {"space": space_args, "subnet": sub.to_dict()}),
                       ofa=sub.to_dict())

    @staticmethod
    def _samples(net: Any, ex: Any, fit_data: Any, val: Any, folder: Path, n: int, seed: int
                 ) -> tuple[list[Any], list[float]]:
        """`n` random subnets (and the smallest and largest) with their held-out accuracy, cached in `folder`."""
        path = folder / f"samples-{n}-{seed}.json"
        if path.is_file():
            rec = json.loads(path.read_text())
            return [O.SubnetConfig.of(s) for s in rec["subnets"]], rec["accuracy"]
        subs = [ex.sample_smallest(), ex.sample_largest()] + [ex.sample_random(seed=seed * 1000 + i) for i in range(n)]
        accs = [O.evaluate_subnet(net, s, val, calibration=fit_data) for s in subs]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"subnets": [s.to_dict() for s in subs], "accuracy": accs}))
        tmp.replace(path)
        return subs, accs


@register_builder("compress.ofa")
def rebuild_ofa(parent: Artifact, args: dict[str, Any], ctx: Any) -> Any:
    """The extracted subnet's architecture from its search space and subnet config (weights loaded afterwards)."""
    net = O.OFANet(O.OFAConfig(**args["space"]))
    return O.OFASubNetworkExtractor(net).extract(args["subnet"])
