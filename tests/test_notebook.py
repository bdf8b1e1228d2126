"""notebooks/quickstart.ipynb runs top to bottom (nbclient, a kernel on this venv's python), so it cannot rot."""

from __future__ import annotations

from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook writes its run under tempfile's folder
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stored without outputs
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "best stage that passed its gate:" in text and "offline HTML report:" in text
    mimes = {m for o in outputs for m in o.get("data", {})}
    assert {"application/vnd.plotly.v1+json", "image/png", "text/markdown"} <= mimes
    assert list(tmp_path.glob("edgeopt-quickstart-*/report.html"))
