"""Tests of ``holojax.kernels``: one folder per op, plus the backend chooser.

``PALLAS``: the Pallas backends each kernel test body runs on, "interpret"
everywhere and "triton" where there is a GPU (the suite runs on CPU, see
tests/conftest.py; on a GPU machine: ``JAX_PLATFORMS=cuda pytest tests/kernels``).
``ON_HOPPER``: whether ``backend.require_hopper`` passes here (Mosaic GPU).
"""

import jax
import pytest

from holojax.kernels import backend


def _passes(check) -> bool:
  try:
    check()
  except backend.Unsupported:
    return False
  return True


ON_HOPPER = _passes(backend.require_hopper)  # where the Mosaic GPU backends run

PALLAS = ("interpret", pytest.param("triton", marks=pytest.mark.skipif(
    jax.default_backend() != "gpu", reason="compiled Pallas (Triton) needs a GPU")))
