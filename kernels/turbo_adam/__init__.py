"""TurboAdam's fused v step: a Pallas kernel and its ``jnp`` reference.

:func:`fused_v_update` is the public entry point; ``implementation`` picks
``"xla"`` (the reference, fused by XLA), ``"pallas"`` (Triton-lowered Pallas
on GPU, ``interpret=True`` elsewhere) or ``None`` (auto: XLA). The kernel is
opt-in: it launches one ``pallas_call`` per parameter tensor, and on an H100
compiling and timing it for the GPT-2 124M tree did not finish within two
benchmark time limits (minutes), while the XLA path compiled and timed in
about 100 s. Batching all tensors' blocks into one launch is the fix. :func:`last_backend` says which one
the most recent trace used.

Example::

  >>> import jax.numpy as jnp
  >>> from holojax.kernels import turbo_adam as k
  >>> g = jnp.ones((4, 128)); m = 0.1 * g
  >>> codes = jnp.zeros((4, 64), jnp.uint8); lo = hi = jnp.zeros((4,), jnp.float16)
  >>> sc = jnp.array([0.999, 1e-8, 0.1, 0.001])
  >>> upd, *_ = k.fused_v_update(g, m, codes, lo, hi, sc, jnp.uint32(0), bits=4,
  ...                            implementation="xla")
  >>> k.last_backend()
  'xla'
"""

from __future__ import annotations

import jax

from holojax.kernels.turbo_adam.fused import (KERNEL_WIDTHS, fused_v_update_pallas,
                                              kernel_supports)
from holojax.kernels.turbo_adam.reference import fused_v_update_reference

IMPLEMENTATIONS = ("xla", "pallas", None)
_LAST = {"backend": None}


def resolve_implementation(implementation: str | None, *, bits: int, block_size: int,
                           compress_v: bool = True, backend: str | None = None) -> str:
  """Chooses ``"xla"``, ``"pallas_triton"`` or ``"pallas_interpret"``.

  Raises:
    ValueError: ``implementation`` is unknown, or ``"pallas"`` is forced where
      the kernel cannot run (unsupported layout, no compressed v, TPU).
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r}; choose one of {IMPLEMENTATIONS}")
  backend = backend or jax.default_backend()
  reason = kernel_supports(bits, block_size) if compress_v else "compress_v=False (no v codes)"
  if implementation == "xla":
    return "xla"
  if implementation is None:
    return "xla"  # see the module docstring: the kernel is opt-in for now
  if reason is not None:
    raise ValueError(f"implementation='pallas' cannot run with {reason}; "
                     "use implementation='xla' or None")
  if backend == "gpu":
    return "pallas_triton"
  if backend == "cpu":
    return "pallas_interpret"
  raise ValueError(f"implementation='pallas' needs a GPU (Triton) or CPU (interpret); "
                   f"backend is {backend!r}: use implementation='xla'")


def fused_v_update(g, m, codes, lo, hi, scalars, seed, *, bits: int,
                   implementation: str | None = None):
  """Fused v step; see :mod:`.reference` for the maths and shapes."""
  if implementation in ("pallas_triton", "pallas_interpret"):
    impl = implementation  # already resolved by the caller
  else:
    impl = resolve_implementation(implementation, bits=bits, block_size=g.shape[-1])
  _LAST["backend"] = impl
  if impl == "xla":
    return fused_v_update_reference(g, m, codes, lo, hi, scalars, seed, bits=bits)
  return fused_v_update_pallas(g, m, codes, lo, hi, scalars, seed, bits=bits,
                               interpret=impl == "pallas_interpret")


def last_backend() -> str | None:
  """Backend of the last traced fused step: ``xla``, ``pallas_triton``, ``pallas_interpret``."""
  return _LAST["backend"]


__all__ = ["KERNEL_WIDTHS", "IMPLEMENTATIONS", "fused_v_update", "fused_v_update_pallas",
           "fused_v_update_reference", "kernel_supports", "last_backend",
           "resolve_implementation"]
