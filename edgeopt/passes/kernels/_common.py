"""What the kernel-swap passes share: their base config, copying the input module, example inputs, code names."""

from __future__ import annotations

import inspect
import types
from typing import Any

from edgeopt.artifact import Artifact
from edgeopt.data import to_torch_args
from edgeopt.errors import PassError
from edgeopt.kernels.checks import PositiveInt
from edgeopt.passes.base import PassConfig, PassContext


class KernelSwapConfig(PassConfig):
    """The fields every kernel-swap pass takes (checked by `edgeopt.kernels.checks`, like the benchmarks' arguments).

    `runs`: timed rounds of each measurement (a choice per layer, the before/after records). `threads`:
    intra-op threads while timing (None: the current setting). `measure`: record every swapped layer before
    vs after into ctx.notes[<pass>]["per_layer"] (needs example inputs).
    """

    runs: PositiveInt = 5
    threads: PositiveInt | None = None
    measure: bool = True


class LayerSwapConfig(KernelSwapConfig):
    """A kernel-swap pass that picks layers by name: `exclude` lists module names it leaves alone."""

    exclude: tuple[str, ...] = ()


def example_inputs(art: Artifact, ctx: PassContext, pass_name: str) -> Any:
    """The inputs a pass runs the model on to see its layers: meta["example_inputs"], else the first calibration feed.

    A dict means named inputs in order, passed positionally (as the runners and convert.onnx do).
    """
    ex = art.meta.get("example_inputs")
    if ex is not None:
        return ex
    if ctx.calibration:
        names = list(art.meta.get("input_names") or art.input_spec.names)
        return to_torch_args(ctx.calibration[0], names)
    raise PassError(f"{pass_name}: needs example inputs to measure layers (artifact meta 'example_inputs' "
                    f"or calibration data)")


def optional_example_inputs(art: Artifact, ctx: PassContext) -> Any:
    """`example_inputs` when the artifact or the calibration data has some, else None (for optional measurement)."""
    if art.meta.get("example_inputs") is None and not ctx.calibration:
        return None
    return example_inputs(art, ctx, "")


def code_names(fn: Any, depth: int = 4) -> set[str]:
    """Global names a function's code uses, looking through decorators (functools.wraps or closures) and nested code."""
    names: set[str] = set()
    try:
        fn = inspect.unwrap(fn)
    except ValueError:  # a __wrapped__ cycle
        pass
    code = getattr(fn, "__code__", None)
    stack = [code] if code is not None else []
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    if depth > 0:  # a decorator without functools.wraps keeps the function it wraps in a closure cell
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                inner = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if inspect.isfunction(inner):
                names |= code_names(inner, depth - 1)
    return names
