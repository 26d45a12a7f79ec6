"""HoloAdam's flat tree layout under FSDP (explicit sharding, 8 CPU devices).

Tensors group by flattened shape *and* compute spec (the leaf layout's work
spec: a last axis whose shards are not whole rows moves to axis 0, an
all-to-all), so a group's stacked ``[k, *lead, L]`` gradients and its state
are sharded like each member with ``None`` on the new axis: stacking and
splitting are local, each device sketches its own rows, and only the gate's
per-tensor sums are all-reduced.
"""

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

import holojax.optim.holo as ha
from tests.optim import contract

# contract.FSDP_PARAMS plus tensors that stack with them (same shape and compute
# spec: "odd_t" is "odd"'s shape sharded on axis 0, where "odd" is moved), a
# replicated compressed tensor (the unsharded path), a 3-D one and a second vector.
TREE = {**contract.FSDP_PARAMS,
        "rows2": ((256, 128), P("fsdp", None)), "odd_t": ((64, 256), P("fsdp", None)),
        "rep": ((32, 128), P()), "cube": ((8, 16, 128), P("fsdp", None, None)),
        "vec2": ((512,), P("fsdp"))}
KW = dict(min_compress_size=1024, warmup_steps=1, tree_layout="flat")


def _run(steps, mesh=None):
  """(updates, final state, HLO) of ``steps`` flat steps of ``TREE``."""
  opt = ha.scale_by_holo_adam(**KW)
  return contract.run_steps(opt, contract.placed_params(TREE, mesh), steps)


def test_sharded_flat_equals_unsharded_without_a_gather():
  """3 steps under FSDP equal the unsharded flat layout's to 1e-5 (|u| ~ 1);
  updates carry their parameters' shardings; each group's state is stacked
  ``[k, *lead, ...]`` sharded like its members (replicated ones: the unsharded
  ``[k rows, ...]`` buffer); the compiled update has no all-gather, all-to-alls
  only for the two tensors whose last axis is moved (one device's piece,
  there and back: the leaf layout's reshards), and all-reduces of a few
  numbers per tensor (the gate's two rms per sharded tensor)."""
  mesh = contract.explicit_mesh()
  with jax.set_mesh(mesh):
    us, s, hlo = _run(3, mesh)
  uw, sw, _ = _run(3)
  for t, (a, b) in enumerate(zip(us, uw)):
    for k, (_, spec) in TREE.items():
      assert jax.typeof(a[k]).sharding.spec == spec or not any(spec), (k, jax.typeof(a[k]))
      np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-5, atol=1e-5,
                                 err_msg=f"step {t}, {k}")
  def specs(xs):
    return [(tuple(x.shape), tuple(jax.typeof(x).sharding.spec)[:2]) for x in xs]
  f, r = (None, "fsdp"), (None,)  # stacked and sharded like the members; unsharded
  assert specs(s.mu) == [((10,), r), ((1, 64, 4, 52), f), ((1, 8, 16, 4, 7), f),
                         ((2, 64, 4, 13), f), ((32, 4, 7), (None, None)),
                         ((2, 256, 4, 7), f), ((2, 512), f)]
  assert specs(s.nu) == [((10,), r), ((1, 64, 32), f), ((1, 8, 16, 4), f), ((2, 64, 8), f),
                         ((32, 4), (None, None)), ((2, 256, 4), f), ((2, 512), f)]
  assert all(not any(jax.typeof(x).sharding.spec[2:]) for x in s.mu + s.nu)
  assert not contract.collective_sizes(hlo, "all-gather")
  moved = contract.collective_sizes(hlo, "all-to-all")
  # "cols" and "odd" (one device's piece each: 64 x 1024 / 8, 64 x 256 / 8), there and back
  assert sorted(moved) == [2048, 2048, 8192, 8192], moved
  reduced = contract.collective_sizes(hlo, "all-reduce")
  assert reduced and max(reduced) <= 2 * len(TREE), reduced
