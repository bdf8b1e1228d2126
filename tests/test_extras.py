"""Optional extras: the core imports and works without them, and what needs one names it in one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from edgeopt.extras import EXTRAS, MissingExtra, available, install_hint, require


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(MissingExtra, match=r"convert.openvino needs openvino, which is not installed: "
                                           r"pip install 'edgeopt\[openvino\]'"):
        require("openvino", "convert.openvino")
    assert install_hint("torch_pruning") == "pip install 'edgeopt[pruning]'"
    assert install_hint("somethingelse") == "pip install somethingelse"
    assert require("json", "x").dumps([]) == "[]" and available("json") and not available("no_such_module_xyz")


MODULE_DIST = {"litert_lm": "litert_lm_api"}  # import name -> distribution name, where they differ


def test_pyproject_extras_bring_what_extras_py_says():
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        packages = {r.split(">")[0].split("=")[0].split("<")[0].strip().replace("-", "_") for r in extras[extra]}
        dists = {MODULE_DIST.get(m, m) for m in modules}  # a module whose distribution is named differently
        assert dists <= packages, (extra, modules, packages)
        assert {r for r in extras[extra]} <= set(extras["all"])


BLOCK = textwrap.dedent("""
    import sys
    BLOCKED = {"openvino", "nncf", "streamlit", "diffusers", "torch_pruning"}
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}")
    sys.meta_path.insert(0, Block())
""")


@pytest.mark.slow
def test_lean_install_core_works_and_extras_are_named(tmp_path, tiny_mlp_onnx):
    """As if only `pip install edgeopt` were installed: the registry loads, an ONNX pass runs, and a pass or
    command that needs an extra fails with one line naming it."""
    script = BLOCK + textwrap.dedent(f"""
        from pathlib import Path
        from edgeopt.errors import EdgeoptError
        from edgeopt.load import load_model
        from edgeopt.passes.base import PassContext, build_pass, registry
        assert "convert.openvino" in registry() and "prune.channels" in registry()
        art = load_model({str(tiny_mlp_onnx.path)!r})
        build_pass("graph.simplify", {{}})(art, PassContext(stage_dir=Path({str(tmp_path / 's')!r})))
        for name in ("convert.openvino", "dashboard"):
            try:
                if name == "dashboard":
                    from edgeopt.dashboard import serve
                    serve()
                else:
                    build_pass(name, {{}})(art, PassContext(stage_dir=Path({str(tmp_path / 'o')!r})))
            except EdgeoptError as e:
                print(name, "::", e)
        import torch
        from edgeopt.load import load_model as lm
        tm = lm(torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)),
                {{"x": torch.randn(1, 1, 8, 8)}})
        try:
            build_pass("prune.channels", {{"sparsity": 0.5, "floor": None}})(tm, PassContext(stage_dir=Path({str(tmp_path / 'p')!r})))
        except EdgeoptError as e:
            print("prune.channels", "::", e)
        import sys
        print("loaded:", sorted(m for m in ("openvino", "nncf", "streamlit", "diffusers", "torch_pruning") if m in sys.modules))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "convert.openvino :: convert.openvino needs openvino, which is not installed: pip install 'edgeopt[openvino]'" in out
    assert "dashboard :: edgeopt dashboard needs streamlit, which is not installed: pip install 'edgeopt[dashboard]'" in out
    assert "prune.channels :: channel pruning needs torch_pruning, which is not installed: pip install 'edgeopt[pruning]'" in out
    assert "loaded: []" in out
