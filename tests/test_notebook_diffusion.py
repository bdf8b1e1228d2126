"""notebooks/diffusion.ipynb runs top to bottom (nbclient, a kernel on this venv's python) on a zoo:digits-diffusion
trained for two steps (same architecture, so the same work per step), so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeopt.kernels import native
from edgeopt.zoo import digits_diffusion as dd

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "diffusion.ipynb"
SETTINGS = "THREADS, STEPS, RUNS = 2, 20, 6"


@pytest.mark.slow  # a kernel, a two-step training, the Winograd tuning and interleaved timing: ~1 min on 2 cores
def test_diffusion_notebook_executes(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    pytest.importorskip("diffusers")
    compiled = native.build_dir()
    cache = tmp_path / "cache"
    (cache / "native").mkdir(parents=True)
    if compiled.is_dir():  # the native kernels already built here: shared, not compiled again into the tmp cache
        (cache / "native" / compiled.name).symlink_to(compiled, target_is_directory=True)
    monkeypatch.setenv("EDGEOPT_CACHE", str(cache))
    monkeypatch.setenv(dd.STEPS_ENV, "2")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stored without outputs
    setup = nb.cells[1]
    assert SETTINGS in setup.source
    # one thread here: two OpenMP threads on a 2-core machine that other work shares wait for each other at every
    # barrier (measured: a digits UNet step 38 ms on one thread, 420-2100 ms on two while the machine was loaded)
    setup.source = setup.source.replace(SETTINGS, "THREADS, STEPS, RUNS = 1, 20, 6")
    NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "+ fused GroupNorm+SiLU: 22 norm+SiLU pairs fused" in text
    assert "end to end (20 steps, threads=1, median of 6 interleaved runs): untouched" in text
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert len(tables) == 1 and tables[0].count("\n") == 4  # header, rule, three rows
    assert "| + Winograd (tuned per layer) |" in tables[0]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the images side by side
