"""Optional dependencies: which pip extra brings which module, and the one-line error when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgeopt.errors import InputError

# extra -> the modules it brings (pyproject.toml's [project.optional-dependencies] lists the packages)
EXTRAS: dict[str, tuple[str, ...]] = {
    "openvino": ("openvino", "nncf"),
    "dashboard": ("streamlit",),
    "diffusion": ("diffusers",),
    "pruning": ("torch_pruning",),
    "ray": ("ray",),
    "mobile": ("litert_torch", "ai_edge_litert", "ai_edge_quantizer", "pnnx", "ncnn", "coremltools"),
    "llm": ("gguf", "accelerate", "onnxruntime_genai", "litert_lm"),
}
_EXTRA_OF = {mod: extra for extra, mods in EXTRAS.items() for mod in mods}


class MissingExtra(InputError):
    """A feature needs a package from an extra that is not installed (the message names the extra)."""


def install_hint(module: str) -> str:
    """`pip install 'edgeopt[EXTRA]'` for a module an extra brings, else `pip install MODULE`."""
    extra = _EXTRA_OF.get(module.split(".")[0])
    return f"pip install 'edgeopt[{extra}]'" if extra else f"pip install {module.split('.')[0]}"


def require(module: str, what: str) -> ModuleType:
    """Import `module` for `what` (a pass, runtime or command), or raise MissingExtra naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{what} needs {module.split('.')[0]}, which is not installed: {install_hint(module)}") from None


def available(module: str) -> bool:
    """Whether `module` can be imported (without importing it twice)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
