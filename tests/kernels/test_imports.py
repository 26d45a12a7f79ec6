"""Kernels depend only on what lies beneath them: JAX, numpy and
``holojax.kernels.*``, never on ``holojax.{optim,nn,models,data,train}``."""

import pkgutil
import subprocess
import sys

import pytest

import holojax.kernels

ABOVE = ("holojax.optim", "holojax.nn", "holojax.models", "holojax.data", "holojax.train")
MODULES = sorted(["holojax.kernels"] + [
    m.name for m in pkgutil.walk_packages(holojax.kernels.__path__, "holojax.kernels.")])

# A fresh interpreter that refuses to import anything above the kernels.
PROBE = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.startswith({above!r}):
      raise ImportError(f"{{name}} is above holojax.kernels")
sys.meta_path.insert(0, Block())
import {module}
assert not [m for m in sys.modules if m.startswith({above!r})]
"""


def test_every_kernel_module_is_listed():
  assert {"holojax.kernels.backend", "holojax.kernels.quant", "holojax.kernels.phasor.api",
          "holojax.kernels.turbo_adam.api", "holojax.kernels.holokv.api"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_imports_without_the_library_above(module):
  code = PROBE.format(above=ABOVE, module=module)
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"JAX_PLATFORMS": "cpu", "PATH": ""}, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
