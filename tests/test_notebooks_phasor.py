"""Execute notebooks/phasor_memory.ipynb in tiny mode."""

import pathlib
import time

import nbformat
import pytest
from nbclient import NotebookClient

NB = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / (
    "phasor_memory.ipynb")


@pytest.mark.slow
def test_phasor_notebook_runs(monkeypatch):
  monkeypatch.setenv("HOLOJAX_NB_TINY", "1")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(NB, as_version=4)
  start = time.perf_counter()
  NotebookClient(nb, kernel_name="python3", timeout=120,
                 resources={"metadata": {"path": str(NB.parent)}}).execute()
  assert time.perf_counter() - start < 90
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
  assert "MQAR accuracy" in text and "measured" in text
