"""Every notebook in notebooks/ executes at tiny size (HOLOJAX_NB_TINY=1) with nbclient,
and opens on Colab with a badge and an install cell naming holojax's REPO and INSTALL."""

import os
import pathlib
import re
import subprocess

import nbformat
import pytest
from nbclient import NotebookClient

import holojax

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"

# notebook -> strings its outputs must contain (what the notebook is for).
EXPECT = {
    "turbo_adam.ipynb": ["turbo_adam", "bits/param"],
    "holo_adam.ipynb": ["cos measured", "theory", "holo_adam", "bits/param"],
    "holo_layers.ipynb": ["TINY=True", "holo_seed_init", "learned parameters"],
    "phasor_memory.ipynb": ["MQAR accuracy", "measured",
                            "prefill == recurrent steps: True"],
    "pretrained_experiments.ipynb": ["seed's table by formula", "output err", "held-out loss",
                                     "lowest held-out loss"],
    "pretrained.ipynb": ["bytes/token", "ppl@", "passkey accuracy by kind",
                         "HoloKV demo through", "HoloKV passkey accuracy"],
}


def test_every_notebook_is_tested():
  assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECT)


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_colab_badge_and_install_cell(name):
  """The badge and the install cell carry holojax.REPO / holojax.INSTALL exactly
  (they cannot import them: they run before holojax is installed)."""
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  first = nb.cells[0]
  assert first.cell_type == "markdown"
  badge = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
           f"(https://colab.research.google.com/github/{holojax.REPO}/blob/main/notebooks/{name})")
  assert first.source.startswith(badge), f"{name}: first markdown cell lacks {badge}"
  install = _code_cells(nb)[0].source
  assert re.findall(r'"pip", "install", "-q", "([^"]*)"', install) == [holojax.INSTALL], install
  # No other address of the project anywhere in the notebook.
  text = "".join(c.source for c in nb.cells)
  assert set(re.findall(r"github\.com/([\w.-]+/[\w.-]+)", text)) <= {holojax.REPO}
  assert set(re.findall(r"git\+[^\s\"'`]+", text)) <= {holojax.INSTALL}


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_install_cell_is_noop_when_installed(name, monkeypatch):
  def no_pip(*args, **kwargs):
    raise AssertionError(f"{name}'s install cell ran pip although holojax is importable")
  for f in ("run", "call", "check_call", "check_output", "Popen"):
    monkeypatch.setattr(subprocess, f, no_pip)
  exec(_code_cells(nbformat.read(NOTEBOOKS / name, as_version=4))[0].source, {})


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECT))
def test_notebook_runs(name, tmp_path, monkeypatch):
  monkeypatch.setenv("HOLOJAX_NB_TINY", "1")  # the kernel inherits the environment
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  # One CPU device (not conftest's 8), and conftest's faster compiles: tiny notebooks are
  # compile-bound, and these flags cut their time by about a third.
  # (and the older CPU fusion emitters where conftest found this XLA accepts them).
  fast = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if f == "--xla_cpu_use_fusion_emitters=false"]
  monkeypatch.setenv("XLA_FLAGS", " ".join(["--xla_backend_optimization_level=0",
                                            "--xla_llvm_disable_expensive_passes=true", *fast]))
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  assert nb.metadata["kernelspec"]["name"] == "python3"
  NotebookClient(nb, timeout=180, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not any(o.get("output_type") == "error" for o in outputs)
  text = "".join(o.get("text", "") for o in outputs)
  for s in EXPECT[name]:
    assert s in text, f"{name}: no {s!r} in its outputs"
