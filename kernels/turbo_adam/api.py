"""TurboAdam's fused v step, the public op: picks a backend and runs it.

Backends (see :mod:`holojax.kernels.backend`): "xla" (the reference,
:mod:`.reference`, fused by XLA), "mosaic" (the Pallas Mosaic GPU kernel,
:mod:`.mosaic_gpu`, on Hopper and newer), "triton" (the Pallas-Triton
kernel, :mod:`.pallas_triton`, on any CUDA GPU: JAX 0.11 deprecates
Pallas's Triton backend, so it serves pre-Hopper GPUs) and "interpret" (the
Triton kernel in the Pallas interpreter, any backend;
``fused_v_update_mosaic(interpret=True)`` is the Mosaic kernel's twin, as
for the phasor op). The alias "pallas" tries "mosaic", then "triton".
Default order: ("xla",): the kernels are opt-in until the Mosaic one is
timed on a GPU. The Triton kernel launches one ``pallas_call`` per
parameter tensor, and on an H100 compiling and timing it for the GPT-2 124M
tree did not finish within two benchmark time limits (minutes), while the
XLA path compiled and timed in about 100 s; ``tree_layout="flat"`` (all
tensors' blocks in a few buffers, one launch each) is the fix.

The row passes (:func:`rowblock_pass_a`, :func:`rowblock_pass_b`; contract
:mod:`.rowblock_reference`, kernels :mod:`.rowblock_mosaic`) run the whole
default TurboAdam step of a flat buffer; their backend follows the fused v
step's (:func:`rowblock_backend`).
"""

from __future__ import annotations

import functools

import jax

from holojax.kernels import backend
from holojax.kernels.turbo_adam import mosaic_gpu, rowblock_mosaic, rowblock_reference
from holojax.kernels.turbo_adam.mosaic_gpu import fused_v_update_mosaic
from holojax.kernels.turbo_adam.pallas_triton import check_layout, fused_v_update_pallas
from holojax.kernels.turbo_adam.reference import fused_v_update_reference

OP = "fused_v_update"
DEFAULT_ORDER = ("xla",)


def _mosaic(*, bits: int, block_size: int):
  """The Mosaic kernel needs a layout it packs in shared memory and a Hopper GPU."""
  mosaic_gpu.check_layout(bits=bits, block_size=block_size)
  backend.require_hopper()


def _triton(*, bits: int, block_size: int):
  """The compiled kernel needs a layout it packs and a GPU."""
  check_layout(bits=bits, block_size=block_size)
  backend.require_triton()


BACKENDS = (
    backend.Backend("xla", backend.runs_anywhere, fused_v_update_reference),
    backend.Backend("mosaic", _mosaic, functools.partial(fused_v_update_mosaic, interpret=False)),
    backend.Backend("triton", _triton, functools.partial(fused_v_update_pallas, interpret=False)),
    backend.Backend("interpret", check_layout,
                    functools.partial(fused_v_update_pallas, interpret=True)),
)
IMPLEMENTATIONS = tuple(b.name for b in BACKENDS)


def _select(bits: int, block_size: int, implementation) -> backend.Backend:
  return backend.select(OP, BACKENDS, implementation, DEFAULT_ORDER, bits=bits,
                        block_size=block_size)


def select_implementation(*, bits: int, block_size: int,
                          implementation: backend.Implementation = None) -> str:
  """The backend :func:`fused_v_update` runs for ``bits``-bit v codes in blocks
  of ``block_size`` (``g.shape[-1]``), by name.

  Raises:
    ValueError: an unknown implementation, or a forced one that cannot run here.

  Example:
    >>> select_implementation(bits=4, block_size=128)
    'xla'
    >>> select_implementation(bits=4, block_size=128, implementation="interpret")
    'interpret'
  """
  return _select(bits, block_size, implementation).name


def fused_v_update(g: jax.Array, m: jax.Array, codes: jax.Array, lo: jax.Array, hi: jax.Array,
                   scalars: jax.Array, seed: jax.Array, *, bits: int,
                   implementation: backend.Implementation = None,
                   row_ids: jax.Array | None = None):
  """Fused v step; see :mod:`.reference` for the maths, shapes and result.

  ``implementation``: None (the default order, "xla"), a name ("xla",
  "mosaic", "triton", "interpret", or "pallas" for the compiled Pallas GPU
  backends: "mosaic" on Hopper, else "triton") or a sequence of names tried
  in order (see :mod:`holojax.kernels.backend`).
  :func:`select_implementation` says which one runs; it runs in
  ``jax.named_scope("fused_v_update/NAME")``. ``row_ids`` (``int32[nb]``, the
  blocks' rows in the draws' index, :mod:`.reference`): "xla" only.

  Example:
    >>> import jax.numpy as jnp
    >>> g = jnp.ones((4, 128)); m = 0.1 * g
    >>> codes = jnp.zeros((4, 64), jnp.uint8); lo = hi = jnp.zeros((4,), jnp.float16)
    >>> sc = jnp.array([0.999, 1e-8, 0.1, 0.001])
    >>> upd, *_ = fused_v_update(g, m, codes, lo, hi, sc, jnp.uint32(0), bits=4,
    ...                          implementation="xla")
    >>> upd.shape
    (4, 128)
  """
  chosen = _select(bits, g.shape[-1], implementation)
  with jax.named_scope(f"{OP}/{chosen.name}"):
    if row_ids is None:
      return chosen.fn(g, m, codes, lo, hi, scalars, seed, bits=bits)
    _refuse_row_ids(OP, chosen.name)  # only the reference takes row ids
    return chosen.fn(g, m, codes, lo, hi, scalars, seed, bits=bits, row_ids=row_ids)


def _refuse_row_ids(op: str, name: str) -> None:
  """Only the ``jnp`` reference draws by given row ids (the kernels hash positions)."""
  if name != "xla":
    raise ValueError(f"{op}: row_ids (a sharded flat buffer) need implementation='xla', "
                     f"got {name!r}")


# ----------------------------------------------------------------------------
# The default step as two row passes (:mod:`.rowblock_reference`).

ROWBLOCK_OP = "turbo_rowblock"


def _rowblock_mosaic(*, v_bits: int, ref_bits: int, block_size: int):
  rowblock_mosaic.check_layout(v_bits=v_bits, ref_bits=ref_bits, block_size=block_size)
  backend.require_hopper()


def _rowblock_interpret(*, v_bits: int, ref_bits: int, block_size: int):
  rowblock_mosaic.check_layout(v_bits=v_bits, ref_bits=ref_bits, block_size=block_size)


ROWBLOCK_BACKENDS = (
    backend.Backend("xla", backend.runs_anywhere, None),
    backend.Backend("mosaic", _rowblock_mosaic, False),
    backend.Backend("interpret", _rowblock_interpret, True),
)


def rowblock_backend(implementation: str, *, v_bits: int, ref_bits: int,
                     block_size: int) -> str | None:
  """The row-pass backend that goes with the fused v step's chosen backend
  ``implementation`` (a name from :func:`select_implementation`): "xla" ->
  "xla" (the ``jnp`` rows); "mosaic" / "interpret" -> the Mosaic GPU row
  kernels, compiled / interpreted, where they handle the layout; None (the
  caller keeps its elementwise path with the fused v step) otherwise.

  Example:
    >>> rowblock_backend("interpret", v_bits=4, ref_bits=2, block_size=128)
    'interpret'
    >>> rowblock_backend("interpret", v_bits=3, ref_bits=2, block_size=128) is None
    True
  """
  if implementation not in {b.name for b in ROWBLOCK_BACKENDS}:
    return None
  try:
    return backend.select(ROWBLOCK_OP, ROWBLOCK_BACKENDS, (implementation,), (), v_bits=v_bits,
                          ref_bits=ref_bits, block_size=block_size).name
  except ValueError:
    return None


def rowblock_pass_a(g, old, scalars, seed, *, v_bits: int, ref_bits: int,
                    implementation: str = "xla", row_ids=None) -> rowblock_reference.PassA:
  """Pass A (:func:`.rowblock_reference.pass_a_rows`) by ``implementation``
  ("xla", "mosaic" or "interpret", see :func:`rowblock_backend`). "xla" sums
  rows by ``rowblock_reference.xla_row_sum``, looked up at each call (a test
  swaps in the kernels' order, ``chunked_row_sum``). ``row_ids``: the blocks'
  rows in the draws' index ("xla" only; None: their positions)."""
  with jax.named_scope(f"{ROWBLOCK_OP}_a/{implementation}"):
    if implementation == "xla":
      return rowblock_reference.pass_a_rows(g, old, scalars, seed, v_bits=v_bits,
                                            ref_bits=ref_bits,
                                            row_sum=rowblock_reference.xla_row_sum,
                                            row_ids=row_ids)
    if row_ids is not None:
      _refuse_row_ids(ROWBLOCK_OP, implementation)
    return rowblock_mosaic.pass_a_mosaic(g, old, scalars, seed, v_bits=v_bits,
                                         ref_bits=ref_bits,
                                         interpret=implementation == "interpret")


def rowblock_pass_b(g, old, scalars, a, alpha, *, v_bits: int, ref_bits: int,
                    implementation: str = "xla"):
  """Pass B (:func:`.rowblock_reference.pass_b_rows`) by ``implementation``."""
  with jax.named_scope(f"{ROWBLOCK_OP}_b/{implementation}"):
    if implementation == "xla":
      return rowblock_reference.pass_b_rows(g, old, scalars, a, alpha, v_bits=v_bits,
                                            ref_bits=ref_bits,
                                            row_sum=rowblock_reference.xla_row_sum)
    return rowblock_mosaic.pass_b_mosaic(g, old, scalars, a, alpha, v_bits=v_bits,
                                         ref_bits=ref_bits,
                                         interpret=implementation == "interpret")
