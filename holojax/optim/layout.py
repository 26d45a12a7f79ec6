"""Row blocks: how compressed optimizer states lay a tensor out, sharding included.

A tensor ``x`` of shape ``(*lead, L)`` is cut along its last axis into
blocks of ``b`` elements, the last block of every row zero-padded::

  row_blocks(x, b): (*lead, L) -> (*lead, ceil(L / b), b)

Blocks never cross rows, so a state laid out this way keeps the tensor's
leading axes and is sharded like the tensor: with FSDP over a leading axis
every device owns whole rows, and block statistics, packing and FFTs stay on
the device. The layout is the same on every mesh (a checkpoint restores onto
another mesh).

Under explicit sharding (``jax.sharding.AxisType.Explicit``) the last axis
may be sharded too, as long as each shard holds whole blocks. When it does
not (a shard length that is not a multiple of ``b``, or ``b=None``: an op
that needs whole rows, such as an FFT along the row), :func:`work_spec` moves
that mesh axis onto the first leading axis it divides: the optimizer
reshards the gradient to that spec (an all-to-all, no gather), keeps its
state there, and reshards the update back. Only a tensor with no such
leading axis (1-D, or leading axes too small) is gathered along its last
axis; the optimizers keep 1-D tensors dense, so in practice none is.

Example:
  >>> import jax.numpy as jnp
  >>> x = jnp.arange(10.0).reshape(2, 5)
  >>> xb = row_blocks(x, 4)
  >>> xb.shape
  (2, 2, 4)
  >>> bool(jnp.all(from_row_blocks(xb, 5) == x))
  True
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P


# ``tree_layout`` of the compressed optimizers: a state per parameter tensor ("leaf",
# sharded like it) or stacked states for the whole tree ("flat": a program whose size
# does not grow with the number of tensors; TurboAdam's splits it per device under
# explicit sharding, :func:`flat_split`; HoloAdam's stacks only tensors of one shape
# and compute spec, :func:`work_spec`, so its stacks are sharded like their members).
TREE_LAYOUTS = ("leaf", "flat")


def leaf_labels(params, spec) -> Any:
  """Per-leaf bools of ``params`` from ``spec``: None (all False), a bool (all),
  a pytree prefix of bools, or a callable ``params -> such a pytree``."""
  if spec is None:
    return jax.tree.map(lambda _: False, params)
  labels = spec(params) if callable(spec) else spec
  return jax.tree.map(lambda c, sub: jax.tree.map(lambda _: bool(c), sub), labels, params)


def refuse_sharded_stack(x, optimizer: str, path) -> None:
  """A stacked tensor (``scanned``) is updated layer by layer on each device, so
  its axis 0 (the layers) must not be explicitly sharded: raises a
  ``ValueError`` naming the leaf ``path`` if it is."""
  spec = explicit_spec(x)
  if spec is not None and _axes(spec[0]):
    raise ValueError(f"{optimizer}: scanned parameter {jax.tree_util.keystr(path)} is sharded "
                     f"as {P(*spec)} across its layers (axis 0); shard the axes inside each "
                     "layer instead")


def num_blocks(n: int, block: int) -> int:
  """Blocks of ``block`` elements that hold ``n`` elements."""
  return -(-n // block)


def _axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, tuple) else (entry,)


def entry_axes(entry) -> tuple[str, ...]:
  """The mesh axes of one ``PartitionSpec`` entry (None, a name or a tuple of names).

  Example:
    >>> entry_axes(None), entry_axes("fsdp"), entry_axes(("data", "fsdp"))
    ((), ('fsdp',), ('data', 'fsdp'))
  """
  return _axes(entry)


def piece_shape(x, spec: P | None = None) -> tuple[int, ...]:
  """The shape of one device's piece of ``x`` under ``spec`` (None: ``x``'s own
  explicit spec; ``x``'s shape when it has none)."""
  entries = explicit_spec(x) if spec is None else tuple(spec) + (None,) * x.ndim
  if entries is None:
    return tuple(x.shape)
  mesh = jax.typeof(x).sharding.mesh
  return tuple(n // math.prod(mesh.shape[a] for a in _axes(e)) for n, e in zip(x.shape, entries))


def explicit_spec(x) -> tuple | None:
  """The explicit ``PartitionSpec`` entries of ``x``'s type (one per axis), or
  ``None`` when ``x`` carries no explicit sharding."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec = getattr(sharding, "spec", None)
  if spec is None or not any(_axes(e) for e in spec):
    return None
  return tuple(spec) + (None,) * (x.ndim - len(spec))


def work_spec(x, block: int | None) -> P | None:
  """The spec to compute ``row_blocks(x, block)`` under, or ``None`` for ``x``'s own.

  ``block=None`` means the whole last axis must be on one device.
  """
  spec = explicit_spec(x)
  if spec is None or not _axes(spec[-1]):
    return None
  mesh = jax.typeof(x).sharding.mesh
  shards = math.prod(mesh.shape[a] for a in _axes(spec[-1]))
  if block is not None and x.shape[-1] % shards == 0 and (x.shape[-1] // shards) % block == 0:
    return None
  new = list(spec)
  new[-1] = None
  for i in range(x.ndim - 1):
    if not _axes(spec[i]) and x.shape[i] % shards == 0:
      new[i] = spec[-1]
      break
  return P(*new)


def flat_split(x, block: int | None) -> tuple[P | None, tuple[str, ...]]:
  """How a flat tree layout splits ``x`` among devices: ``(spec, axes)``.

  ``spec`` is the spec to compute ``x`` under (``None``: its own; else
  :func:`work_spec`'s, or all ``None`` where the pieces would be uneven: a
  gather) and ``axes`` the mesh axes (mesh order) that cut ``x`` under
  ``spec`` into equal pieces, one per device along them, each of whole rows
  of whole blocks of ``block`` elements (``block=None``: any elements);
  ``()`` when ``x`` is whole on every device.

  Example:
    >>> flat_split(jnp.ones((4, 256)), 128)
    (None, ())
  """
  spec = explicit_spec(x)
  if spec is None:
    return None, ()
  work = work_spec(x, block) if block is not None else None
  if work is not None:
    spec = tuple(work) + (None,) * (x.ndim - len(work))
  mesh = jax.typeof(x).sharding.mesh
  shards = [math.prod(mesh.shape[a] for a in _axes(e)) for e in spec]
  if any(n % s for n, s in zip(x.shape, shards)):
    return P(*(None,) * x.ndim), ()
  used = {a for e in spec for a in _axes(e)}
  return work, tuple(a for a in mesh.axis_names if a in used)


def reshard(x, spec: P | None):
  """``x`` resharded to ``spec`` on its own (abstract) mesh; ``None``: unchanged."""
  if spec is None:
    return x
  return jax.sharding.reshard(x, NamedSharding(jax.typeof(x).sharding.mesh, spec))


def row_blocks(x: jax.Array, block: int) -> jax.Array:
  """``(*lead, L) -> (*lead, ceil(L / block), block)``, each row zero-padded."""
  length = x.shape[-1]
  nb = num_blocks(length, block)
  if nb * block != length:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, nb * block - length)])
  return x.reshape(*x.shape[:-1], nb, block)


def from_row_blocks(xb: jax.Array, length: int) -> jax.Array:
  """Inverse of :func:`row_blocks`: ``(*lead, nb, block) -> (*lead, length)``."""
  x = xb.reshape(*xb.shape[:-2], xb.shape[-2] * xb.shape[-1])
  return x if x.shape[-1] == length else x[..., :length]


def per_shard(fn, x: jax.Array, *scalars, lead: int, out_trailing: int):
  """``fn(x, *scalars)`` for an ``fn`` that treats each index of ``x``'s first
  ``lead`` axes independently (rows never mix), run on each device's shard.

  Without explicit sharding this is ``fn(x, *scalars)``. With it, XLA's
  partitioner would gather some row-wise ops (FFTs) over the leading axes;
  ``jax.shard_map`` keeps them local. ``scalars`` are replicated; the output
  has ``x``'s leading axes followed by ``out_trailing`` unsharded ones.
  """
  spec = explicit_spec(x)
  if spec is None:
    return fn(x, *scalars)
  if any(_axes(e) for e in spec[lead:]):
    raise ValueError(f"per_shard: only the first {lead} axes may be sharded, got {P(*spec)}")
  return jax.shard_map(fn, mesh=jax.typeof(x).sharding.mesh,
                       in_specs=(P(*spec),) + (P(),) * len(scalars),
                       out_specs=P(*spec[:lead], *(None,) * out_trailing))(x, *scalars)
