"""Tests of ``holojax.kernels``: one folder per op, plus the backend chooser.

``PALLAS``: the Pallas backends each kernel test body runs on, "interpret"
everywhere and "triton" where there is a GPU (the suite runs on CPU, see
tests/conftest.py; on a GPU machine: ``JAX_PLATFORMS=cuda pytest tests/kernels``).
``ON_HOPPER``: whether ``backend.require_hopper`` passes here (Mosaic GPU).
``use_mosaic_gpu_interpreter``: run a test's compiled Mosaic GPU launches in
jax's Mosaic GPU interpreter on CPU.
"""

import functools

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


def use_mosaic_gpu_interpreter(monkeypatch, *, drop_layouts: bool = False, **interpret_params):
  """For the rest of the test, ``plgpu.kernel`` launches run in jax's Mosaic
  GPU interpreter (on CPU: the TMA copies, pipeline slots, barriers and
  index maps of the compiled launch, a warpgroup as one thread), and
  ``backend.require_hopper`` passes. Skips where the interpreter is missing.

  ``drop_layouts``: register-layout casts become the identity (the
  interpreter has no rule for them). ``interpret_params``: fields of its
  ``InterpretGPUParams`` (e.g. ``uninitialized_memory="zero"``).
  emit_pipeline predicates its output copies, and jax 0.10.2's interpreter
  refuses any predicate, so the predicate is applied here.
  """
  params = pytest.importorskip("jax._src.pallas.mosaic_gpu.interpret.params")
  callbacks = pytest.importorskip("jax._src.pallas.mosaic_gpu.interpret.gpu_callbacks")
  from jax.experimental.pallas import mosaic_gpu as plgpu  # noqa: PLC0415

  copy_out = callbacks.copy_smem_to_gmem

  def predicated_copy_out(*, predicate, token, **kwargs):
    if predicate is not None and not bool(predicate):
      return token
    return copy_out(predicate=None, token=token, **kwargs)

  monkeypatch.setattr(callbacks, "copy_smem_to_gmem", predicated_copy_out)
  if drop_layouts:
    from jax._src.pallas.mosaic_gpu import core as gpu_core  # noqa: PLC0415
    monkeypatch.setattr(gpu_core, "layout_cast", lambda x, layout: x)
    monkeypatch.setattr(plgpu, "layout_cast", lambda x, layout: x)
  monkeypatch.setattr(plgpu, "kernel", functools.partial(
      plgpu.kernel, interpret=params.InterpretGPUParams(**interpret_params)))
  monkeypatch.setattr(backend, "require_hopper", lambda *a, **k: None)
