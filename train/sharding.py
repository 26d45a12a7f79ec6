"""Device mesh and sharding rules: data parallel and FSDP over one mesh.

The mesh has two axes, ``("data", "fsdp")``. A batch is split over both
(every device sees ``B / n_devices`` sequences). Parameters and optimizer
state are sharded over ``fsdp`` along their largest dimension that divides
evenly, and replicated over ``data``; XLA inserts the all-gathers and
reduce-scatters (what ``pjit`` used to do, now ``jax.jit`` with
``NamedSharding``). With ``fsdp=1`` this is plain data parallelism.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")


def make_mesh(data: int = 0, fsdp: int = 1, devices=None) -> Mesh:
  """A ``(data, fsdp)`` mesh over ``devices`` (default: all).

  ``data=0`` takes every device left after ``fsdp``.

  Raises:
    ValueError: the shape does not fit the available devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  if fsdp < 1 or data < 0:
    raise ValueError(f"mesh sizes must be positive, got data={data}, fsdp={fsdp}")
  if data == 0:
    if len(devices) % fsdp:
      raise ValueError(f"fsdp={fsdp} does not divide the {len(devices)} available devices")
    data = len(devices) // fsdp
  if data * fsdp > len(devices):
    raise ValueError(f"mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices, "
                     f"only {len(devices)} available")
  grid = np.array(devices[:data * fsdp]).reshape(data, fsdp)
  return Mesh(grid, AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches [B, ...]: split B over every device of the mesh."""
  return NamedSharding(mesh, P(AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(shape: tuple[int, ...], fsdp: int) -> P:
  """Shard the largest dimension divisible by ``fsdp`` over ``fsdp``."""
  if fsdp == 1 or not shape:
    return P()
  order = sorted(range(len(shape)), key=lambda i: -shape[i])
  for i in order:
    if shape[i] % fsdp == 0:
      spec = [None] * len(shape)
      spec[i] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(tree, mesh: Mesh):
  """NamedShardings for a pytree of arrays / ShapeDtypeStructs under the FSDP rule."""
  fsdp = mesh.shape["fsdp"]

  def one(leaf):
    return NamedSharding(mesh, param_spec(tuple(leaf.shape), fsdp))

  return jax.tree.map(one, tree)
