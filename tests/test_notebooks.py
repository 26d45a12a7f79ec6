"""Every notebook in notebooks/ executes at tiny size (HOLOJAX_NB_TINY=1) with nbclient."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"

# notebook -> strings its outputs must contain (what the notebook is for).
EXPECT = {
    "turbo_adam.ipynb": ["turbo_adam", "bits/param"],
    "holo_adam.ipynb": ["cos measured", "theory", "holo_adam", "bits/param"],
    "holo_layers.ipynb": ["TINY=True", "holo_seed_init", "learned parameters"],
    "phasor_memory.ipynb": ["MQAR accuracy", "measured",
                            "prefill == recurrent steps: True"],
    "pretrained.ipynb": ["bytes/token", "ppl@", "passkey accuracy by kind"],
}


def test_every_notebook_is_tested():
  assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECT)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECT))
def test_notebook_runs(name, tmp_path, monkeypatch):
  monkeypatch.setenv("HOLOJAX_NB_TINY", "1")  # the kernel inherits the environment
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  assert nb.metadata["kernelspec"]["name"] == "python3"
  NotebookClient(nb, timeout=180, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not any(o.get("output_type") == "error" for o in outputs)
  text = "".join(o.get("text", "") for o in outputs)
  for s in EXPECT[name]:
    assert s in text, f"{name}: no {s!r} in its outputs"
