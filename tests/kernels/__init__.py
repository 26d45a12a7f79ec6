"""Tests of ``holojax.kernels``: one folder per op, plus the backend chooser.

``PALLAS``: the Pallas backends each kernel test body runs on, "interpret"
everywhere and "triton" where there is a GPU (the suite runs on CPU, see
tests/conftest.py; on a GPU machine: ``JAX_PLATFORMS=cuda pytest tests/kernels``).
"""

import jax
import pytest

PALLAS = ("interpret", pytest.param("triton", marks=pytest.mark.skipif(
    jax.default_backend() != "gpu", reason="compiled Pallas (Triton) needs a GPU")))
