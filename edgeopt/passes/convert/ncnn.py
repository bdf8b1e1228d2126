"""convert.ncnn: PyTorch -> ncnn (.param + .bin) through pnnx, checked against PyTorch on held-out inputs."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from edgeopt.artifact import Artifact
from edgeopt.errors import EdgeoptError, PassError, first_line
from edgeopt.extras import require
from edgeopt.measure.ncnn import NcnnRunner, read_param
from edgeopt.passes.base import Pass, PassConfig, PassContext, register, torch_module_copy
from edgeopt.passes.convert._export import FP32_REL_TOL, example_args, held_out, min_cosine, relative_error, torch_outputs

PARAM, BIN = "model.ncnn.param", "model.ncnn.bin"
PNNX_TIMEOUT_S = 1800


def _failed_op(log: str) -> str | None:
    """The op a TorchScript traceback points at ("~~~~ <--- HERE" under the call), e.g. torch.linalg_inv."""
    lines = log.splitlines()
    for i, ln in enumerate(lines):
        if "<--- HERE" in ln and i > 0:
            m = re.search(r"~+", ln)
            if m:
                span = lines[i - 1][m.start():m.end()].strip()
                if span:
                    return span
    return None


def _pnnx_error(log: str) -> str:
    """One line saying why pnnx stopped: the op it failed on when its log names one, else its last error line."""
    op = _failed_op(log)
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^(\w+Error|\w+Exception|what\(\)|terminate called|error)", ln, re.I)]
    reason = (errors[-1] if errors else (lines[-1] if lines else "no output"))[:200]
    return f"pnnx failed on op {op}: {reason}" if op else f"pnnx failed: {reason}"


def unsupported_layers(param: Path) -> list[tuple[str, str]]:
    """(type, name) of the layers in an ncnn .param that ncnn has no implementation for (pnnx writes an op it
    cannot lower under its torch/aten/pnnx name, e.g. `aten::sort` or `torch.fft.rfft`); the constant
    `pnnx.Expression` layers that only feed such an op come last."""
    ncnn = require("ncnn", "convert.ncnn")
    bad = [(ly.type, ly.name) for ly in read_param(param).layers if ncnn.layer_to_index(ly.type) < 0]
    return sorted(bad, key=lambda tn: tn[0] == "pnnx.Expression")


@register("convert.ncnn")
class ConvertNcnn(Pass):
    """Convert a torch model to ncnn (model.ncnn.param + model.ncnn.bin) with pnnx, and check it against PyTorch.

    The module is traced at batch 1 (ncnn blobs hold one sample; the runner loops over a batch) and pnnx's
    bundled converter lowers the TorchScript graph to ncnn layers. Its side files (.pnnx.param, _pnnx.py,
    .torchscript, ...) are written in a temporary folder and removed; only the .param/.bin pair is kept.
    An op pnnx cannot lower (left in the .param under its torch name) is a one-line PassError naming it.
    The result is run by ncnn on held-out inputs: in fp32 it must match PyTorch to 1e-4 relative (max abs
    error over the output's max abs), in fp16 to the declared cosine. `fp16` stores the weights as fp16 in
    the .bin and turns on ncnn's fp16 storage/arithmetic at run time (recorded in meta["ncnn"]["fp16"]);
    `optimize` is pnnx's optimization level (0: none, 1: fold constants, 2: also fuse/eliminate ops).
    """

    class Config(PassConfig):
        fp16: bool = False
        optimize: int = Field(default=2, ge=0, le=2, description="pnnx optlevel")

    accepts = ("torch",)
    produces = "ncnn"
    tolerance = 0.999  # fp16 storage; fp32 is held to 1e-4 relative inside the pass

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        import torch  # lazy: torch only when a conversion runs

        pnnx = require("pnnx", "convert.ncnn")
        require("ncnn", "convert.ncnn")
        cfg = self.config
        module = torch_module_copy(art, self.name).eval()
        args = example_args(art, ctx, batch=1)
        ref = torch_outputs(module, args)
        tmp = Path(tempfile.mkdtemp(prefix=".pnnx-", dir=ctx.stage_dir)).resolve()  # pnnx runs with cwd=tmp
        try:
            pt = tmp / "model.pt"
            try:
                with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.jit.trace(module, tuple(args), check_trace=False).save(str(pt))
            except Exception as e:
                raise PassError(f"convert.ncnn: torch.jit.trace cannot trace the model: {first_line(e)}") from None
            log = self._pnnx(pnnx.EXEC_PATH, pt, tmp, args, cfg)
            param, weights = tmp / PARAM, tmp / BIN
            if not param.is_file() or not weights.is_file():
                raise PassError(f"convert.ncnn: {_pnnx_error(log)}")
            bad = unsupported_layers(param)
            if bad:
                kinds = list(dict.fromkeys(t for t, _ in bad))
                raise PassError(f"convert.ncnn: ncnn has no layer for op {bad[0][0]} ({bad[0][1]}); pnnx left "
                                f"{len(bad)} layer(s) unconverted: {', '.join(kinds)}")
            graph = read_param(param)
            if len(graph.outputs) != len(ref):
                raise PassError(f"convert.ncnn: the ncnn model has {len(graph.outputs)} outputs, torch returns {len(ref)}")
            validation = self._validate(art, ctx, param, graph, module, args, ref)
            weights.replace(ctx.stage_dir / BIN)  # the .bin first: a reader that finds the .param finds its weights
            param.replace(ctx.stage_dir / PARAM)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        names = list(art.meta.get("output_names") or [])
        if len(names) != len(ref):
            names = [f"output_{i}" for i in range(len(ref))]
        info = {"inputs": list(graph.inputs), "outputs": list(graph.outputs), "fp16": cfg.fp16,
                "input_names": art.input_spec.names, "output_names": names,
                "output_shapes": [list(r.shape[1:]) for r in ref], "optimize": cfg.optimize,
                "pnnx": getattr(pnnx, "__version__", None)}
        ctx.notes["ncnn"] = {**info, "layers": dict(Counter(ly.type for ly in graph.layers)), "validation": validation}
        meta = {k: v for k, v in art.meta.items() if k not in ("example_inputs", "session")}
        meta["ncnn"] = info
        return Artifact.from_file("ncnn", ctx.stage_dir / PARAM, input_spec=art.input_spec, meta=meta)

    def _pnnx(self, exe: str, pt: Path, tmp: Path, args: list[Any], cfg: Any) -> str:
        """Run pnnx's converter on the traced model; every file it writes goes to `tmp`. Returns its log.

        pnnx.export runs this same bundled binary but throws its log away and then imports the Python file
        it generated; calling the binary keeps the log (which names the op it stopped at) and runs no
        generated code."""
        from pnnx.utils.utils import (  # lazy: pnnx imports torch
            generate_inputs_arg,
            get_shape_from_inputs,
            get_type_from_inputs,
        )

        shapes = generate_inputs_arg(get_shape_from_inputs(args), get_type_from_inputs(args))
        stem = tmp / "model"
        cmd = [exe, str(pt), f"inputshape={shapes}", "device=cpu", f"optlevel={cfg.optimize}",
               f"pnnxparam={stem}.pnnx.param", f"pnnxbin={stem}.pnnx.bin", f"pnnxpy={stem}_pnnx.py",
               f"pnnxonnx={stem}.pnnx.onnx", f"ncnnparam={tmp / PARAM}", f"ncnnbin={tmp / BIN}",
               f"ncnnpy={stem}_ncnn.py", f"fp16={int(cfg.fp16)}"]
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise PassError(f"convert.ncnn: pnnx did not finish within {PNNX_TIMEOUT_S} s") from None
        log = (proc.stdout or "") + "\n" + (proc.stderr or "")
        if proc.returncode != 0:
            raise PassError(f"convert.ncnn: {_pnnx_error(log)}")
        return log

    def _validate(self, art: Artifact, ctx: PassContext, param: Path, graph: Any, module: Any, args: list[Any],
                  ref: list[np.ndarray]) -> dict[str, Any]:
        """Run the ncnn model on held-out feeds beside torch; fp32 within 1e-4 relative, fp16 within the tolerance."""
        import torch  # lazy: torch only when a conversion runs

        feeds = held_out(art, ctx, args)
        worst_rel, worst_cos = 0.0, 1.0
        try:
            with NcnnRunner(param, 1, art.input_spec.names, list(graph.outputs), fp16=self.config.fp16,
                            output_shapes=[list(r.shape[1:]) for r in ref]) as runner:
                for feed in feeds:
                    want = torch_outputs(module, [torch.from_numpy(np.ascontiguousarray(feed[n]))
                                                  for n in art.input_spec.names])
                    got = runner.run(feed)
                    worst_rel = max(worst_rel, relative_error(want, got))
                    worst_cos = min(worst_cos, min_cosine(want, got) if worst_rel < float("inf") else -1.0)
        except EdgeoptError as e:
            raise PassError(f"convert.ncnn: ncnn cannot run the converted model: {e}") from None
        result = {"n": len(feeds), "max_rel_error": worst_rel, "min_cosine": worst_cos}
        if not self.config.fp16 and not worst_rel <= FP32_REL_TOL:
            raise PassError(f"convert.ncnn: the ncnn model differs from PyTorch by {worst_rel:.3g} relative "
                            f"(fp32 tolerance {FP32_REL_TOL})")
        if self.config.fp16 and not worst_cos >= self.tolerance:
            raise PassError(f"convert.ncnn: the fp16 ncnn model's cosine to PyTorch is {worst_cos:.5f} "
                            f"(< {self.tolerance})")
        return result
