"""The import direction of docs/architecture.md holds: no module imports from a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

import edgeopt

ROOT = Path(edgeopt.__file__).parent
# docs/architecture.md, "Layers: who may import whom"
LAYER = {
    "cli": 5, "dashboard": 5,
    "pipeline": 4, "search": 4, "steps": 4, "unet_table": 4, "recipe": 4, "__init__": 4,
    "speech": 4, "operators": 4,
    "passes": 3,
    "report": 2, "analyze": 2, "llm": 2, "diffusion": 2, "measure": 2, "kernels": 2, "ledger": 2, "data": 2,
    "zoo": 1, "load": 1, "export": 1, "nn": 1, "train": 1, "executor": 1,
    "artifact": 0, "target": 0, "extras": 0, "errors": 0, "versions": 0,
}
# the one documented exception: analysis asks graph.fuse's own rule sets what would fire
ALLOWED = {("analyze/opportunities.py", "edgeopt.passes.graph.rules")}


def _group(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "edgeopt":
            if node.module != "edgeopt":
                out.append(node.module)
            else:  # `from edgeopt import x`: a module, or a name of the package's own API
                out += [f"edgeopt.{a.name}" if a.name in LAYER else "edgeopt" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "edgeopt"]
    return out


def test_every_top_level_module_has_a_layer():
    names = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert names == set(LAYER), f"give these a layer in docs/architecture.md and here: {names ^ set(LAYER)}"


def test_imports_only_go_down_or_sideways():
    upward = []
    for f in sorted(ROOT.rglob("*.py")):
        rel = f.relative_to(ROOT)
        own = "__init__" if rel.as_posix() == "__init__.py" else rel.parts[0].removesuffix(".py")
        for target in _imports(f):
            theirs = _group(target)
            if theirs != own and LAYER[theirs] > LAYER[own] and (rel.as_posix(), target) not in ALLOWED:
                upward.append(f"{rel} imports {target} (layer {LAYER[own]} -> {LAYER[theirs]})")
    assert not upward, "\n".join(upward)
