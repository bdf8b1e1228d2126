"""compress.ofa: a once-for-all supernet trained on the task's data, then the most accurate subnet under a latency
budget measured on this machine's runtime, extracted as a plain model (edgeopt.nn.ofa underneath)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from edgeopt.artifact import Artifact, register_builder
from edgeopt.errors import InputError, PassError
from edgeopt.executor import is_local
from edgeopt.nn import ofa as O
from edgeopt.passes.base import Pass, PassContext, register
from edgeopt.passes.compress._common import FineTune, derived, module_copy, task_data
from edgeopt.train import TrainConfig


@register("compress.ofa")
class OnceForAll(Pass):
    """Train a once-for-all supernet (`space`: an `edgeopt.nn.ofa.OFAConfig`; input channels and classes come from
    the data) by progressive shrinking on the task's labels (or, without labels, the input model's outputs),
    in-place distilled from its own largest subnet; time every block kind on `runtime` (ONNX Runtime, OpenVINO or
    LiteRT) at `threads` (a latency table, its scale and per-call overhead refit on `calibrate` measured whole
    subnets); fit an accuracy predictor on `samples` random subnets' held-out accuracy; and
    return the subnet of highest predicted accuracy whose predicted latency is within `latency_ms` (or, without it,
    `budget` of the way from the smallest to the largest subnet's latency), its BatchNorm recalibrated, as a plain
    dense module. The supernet, table and predictor's samples are kept in the run folder (`.ofa/<key>`), so the
    stages of one recipe that ask for other budgets reuse them, and an interrupted training resumes by phase.
    With the run's executor on a Ray cluster (`--executor ray`), the table's timing is a measure task on a node of the
    target and the predictor's samples are evaluated as build tasks spread over the cluster (the run folder must be
    one every node sees). ctx.notes["compress.ofa"]: the subnet, predicted and table latency, predictor quality,
    training phases."""

    class Config(FineTune):
        space: dict[str, Any] = Field(default_factory=dict, description="OFAConfig fields (depths, kernel_sizes, ...)")
        epochs: int = Field(default=40, ge=1, description="progressive-shrinking epochs in all")
        latency_ms: float | None = Field(default=None, gt=0)
        budget: float = Field(default=0.5, gt=0, le=1, description="without latency_ms: fraction of the way from "
                                                                    "the smallest to the largest subnet's latency")
        samples: int = Field(default=40, ge=4, description="random subnets measured to fit the accuracy predictor")
        trials: int = Field(default=300, ge=10)
        threads: int = Field(default=2, ge=1)
        runtime: Literal["onnxruntime", "openvino", "litert"] = Field(
            default="onnxruntime", description="the runtime the latency table is measured on")
        calibrate: int = Field(default=8, ge=0, description="random whole subnets timed with the parts to refit the "
                                                            "table's scale and per-call overhead (0: the raw sum)")
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

        @field_validator("calibrate")
        @classmethod
        def _enough(cls, v: int) -> int:
            if 0 < v < 3:
                raise ValueError(f"calibrate: 0 (no calibration) or at least 3 subnets to fit two figures, got {v}")
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
        tag = "" if cfg.runtime == "onnxruntime" else f"{cfg.runtime}-"  # ONNX Runtime keeps its earlier name
        cal = f"-c{cfg.calibrate}" if cfg.calibrate else ""
        table_path = folder / f"latency-{tag}{cfg.threads}t{cal}.json"
        if table_path.is_file():
            table = LatencyTable.load(table_path)
        else:
            try:
                table = LatencyTable.build(net, folder / f"table-{tag}".rstrip("-"), threads=cfg.threads,
                                           progress=ctx.progress, runtime=cfg.runtime, executor=ctx.executor,
                                           calibrate=cfg.calibrate)
            except InputError as e:
                raise PassError(f"{self.name}: latency table on {cfg.runtime}: {e}") from None
            table.save(table_path)
        subs, accs = self._samples(net, ex, fit_data, val, folder, cfg.samples, cfg.train.seed, ctx.executor)
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
            "predictor_samples": len(subs), "phases": phases, "cache": str(folder), "runtime": cfg.runtime,
            "table_calibration": {"subnets": table.calibrated, "scale": table.scale,
                                  "overhead_ms": table.overhead_ms, "one_op_ms": table.call_ms},
            "executor": getattr(ctx.executor, "name", "local")}
        space_args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in space.__dict__.items()}
        return derived(model, art, ("compress.ofa", {"space": space_args, "subnet": sub.to_dict()}),
                       ofa=sub.to_dict())

    @staticmethod
    def _samples(net: Any, ex: Any, fit_data: Any, val: Any, folder: Path, n: int, seed: int, executor: Any = None
                 ) -> tuple[list[Any], list[float]]:
        """`n` random subnets (and the smallest and largest) with their held-out accuracy, cached in `folder`;
        on a cluster executor, evaluated by build tasks (`evaluate_subnets`), one chunk per slot."""
        path = folder / f"samples-{n}-{seed}.json"
        if path.is_file():
            rec = json.loads(path.read_text())
            return [O.SubnetConfig.of(s) for s in rec["subnets"]], rec["accuracy"]
        subs = [ex.sample_smallest(), ex.sample_largest()] + [ex.sample_random(seed=seed * 1000 + i) for i in range(n)]
        folder.mkdir(parents=True, exist_ok=True)
        if is_local(executor):
            accs = [O.evaluate_subnet(net, s, val, calibration=fit_data) for s in subs]
        else:
            accs = _evaluate_on(executor, net, subs, fit_data, val, folder)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"subnets": [s.to_dict() for s in subs], "accuracy": accs}))
        tmp.replace(path)
        return subs, accs


def _evaluate_on(executor: Any, net: Any, subs: list[Any], fit_data: Any, val: Any, folder: Path) -> list[float]:
    """Held-out accuracy of `subs`, evaluated by `executor`'s build tasks: the supernet's weights and the data go to
    `folder` (safetensors; every node must see it), one task per slot, results in order."""
    import os

    from safetensors.torch import save_file

    weights, data = folder / "samples-supernet.safetensors", folder / "samples-data.safetensors"
    for path, tensors in ((weights, net.state_dict()),
                          (data, {"fit_x": fit_data.inputs[0], "fit_y": fit_data.targets,
                                  "val_x": val.inputs[0], "val_y": val.targets})):
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
    space = {k: (list(v) if isinstance(v, tuple) else v) for k, v in net.config.__dict__.items()}
    slots = max(1, int(getattr(executor, "slots", 1)))
    chunks = [list(range(i, len(subs), slots)) for i in range(slots)]
    futures = [(idx, executor.build(evaluate_subnets, {"space": space, "weights": str(weights.resolve()),
                                                       "data": str(data.resolve()),
                                                       "subnets": [subs[i].to_dict() for i in idx]}))
               for idx in chunks if idx]
    accs: list[float] = [0.0] * len(subs)
    for idx, fut in futures:
        for i, a in zip(idx, fut.result()["accuracy"]):
            accs[i] = float(a)
    return accs


def evaluate_subnets(job: dict[str, Any]) -> dict[str, Any]:
    """A build task (plain data in and out): the supernet of `job["space"]` with the weights in `job["weights"]`,
    each of `job["subnets"]` evaluated on the held-out part of `job["data"]` after recalibrating BatchNorm on its
    fit part. Returns {"accuracy": [...]} in the subnets' order."""
    from safetensors.torch import load_file

    from edgeopt.train import TensorData

    for key in ("weights", "data"):
        if not Path(job[key]).is_file():
            raise InputError(f"{job[key]}: not visible on this worker; the run folder must be one every node shares")
    net = O.OFANet(O.OFAConfig(**job["space"]))
    net.load_state_dict(load_file(job["weights"]))
    d = load_file(job["data"])
    fit_data, val = TensorData((d["fit_x"],), d["fit_y"]), TensorData((d["val_x"],), d["val_y"])
    return {"accuracy": [O.evaluate_subnet(net, s, val, calibration=fit_data) for s in job["subnets"]]}


@register_builder("compress.ofa")
def rebuild_ofa(parent: Artifact, args: dict[str, Any], ctx: Any) -> Any:
    """The extracted subnet's architecture from its search space and subnet config (weights loaded afterwards)."""
    net = O.OFANet(O.OFAConfig(**args["space"]))
    return O.OFASubNetworkExtractor(net).extract(args["subnet"])
