"""Executes notebooks/turbo_adam.ipynb (tiny settings) with nbclient."""

import os
import pathlib
import time

import nbformat
from nbclient import NotebookClient

NB = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "turbo_adam.ipynb"


def test_turbo_adam_notebook_runs():
  nb = nbformat.read(NB, as_version=4)
  env_before = os.environ.get("HOLOJAX_NB_TINY")
  os.environ["HOLOJAX_NB_TINY"] = "1"  # the kernel inherits the environment
  try:
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NB.parent)}}).execute()
    assert time.perf_counter() - t0 < 60
  finally:
    if env_before is None:
      os.environ.pop("HOLOJAX_NB_TINY", None)
    else:
      os.environ["HOLOJAX_NB_TINY"] = env_before
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
  assert "turbo_adam" in text and "bits/param" in text
