"""Execute notebooks/holo_layers.ipynb at tiny size (HOLOJAX_NB_TINY=1)."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NB = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "holo_layers.ipynb"


@pytest.mark.slow
def test_holo_layers_notebook_runs(tmp_path, monkeypatch):
  monkeypatch.setenv("HOLOJAX_NB_TINY", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  nb = nbformat.read(NB, as_version=4)
  assert nb.metadata["kernelspec"]["name"] == "python3"
  NotebookClient(nb, timeout=120, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
  assert "TINY=True" in outs
  assert "holo_seed_init" in outs and "learned parameters" in outs
  assert (tmp_path / "spiral.png").stat().st_size > 1000
  assert not any(o.get("output_type") == "error" for c in nb.cells
                 if c.cell_type == "code" for o in c.get("outputs", []))
