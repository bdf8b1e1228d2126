"""The Pass contract: configs validated however they are given, inputs (files and torch modules) untouched."""

from __future__ import annotations

import pytest
import torch

from edgeopt.artifact import Artifact
from edgeopt.errors import PassError, RecipeError
from edgeopt.load import load_model
from edgeopt.passes.base import Pass, PassConfig, PassContext, get_pass, module_fingerprint


def test_ready_config_plus_kwargs_is_validated():
    cls = get_pass("kernels.attention")
    cfg = cls.Config()
    with pytest.raises(RecipeError, match="max_rel_error"):
        cls(cfg, max_rel_error="lots")
    p = cls(cfg, max_rel_error=1e-3)
    assert p.config.max_rel_error == 1e-3 and cfg.max_rel_error == 1e-4


def test_config_of_another_pass_refused():
    with pytest.raises(RecipeError, match="Config"):
        get_pass("graph.simplify")(get_pass("kernels.attention").Config())


class _Sneaky(Pass):
    """A pass that breaks the contract: it trains its input module in place."""

    name = "test.sneaky"
    accepts = ("torch",)
    Config = PassConfig

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        with torch.no_grad():
            next(art.module.parameters()).add_(1.0)
        return art


class _Moody(_Sneaky):
    """A pass that switches its input module to training mode."""

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        art.module.train()
        return art


@pytest.mark.parametrize("cls", [_Sneaky, _Moody])
def test_modified_torch_input_is_caught(cls, tmp_path):
    art = load_model(torch.nn.Sequential(torch.nn.Linear(4, 2)), {"x": torch.randn(1, 4)})
    with pytest.raises(PassError, match="modified its input torch module"):
        cls()(art, PassContext(stage_dir=tmp_path))


def test_load_leaves_the_callers_module_in_its_mode():
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5)).train()
    before = module_fingerprint(m)
    art = load_model(m, {"x": torch.randn(1, 4)})
    assert m.training and module_fingerprint(m) == before, "caller's module untouched"
    assert not art.module.training and art.module is not m
    x = torch.randn(3, 4)
    assert torch.equal(art.module(x), art.module(x)), "edgeopt's copy runs in eval mode (no dropout)"
    ready = torch.nn.Linear(4, 4).eval()
    assert load_model(ready, {"x": torch.randn(1, 4)}).module is ready, "an eval-mode module is not copied"
