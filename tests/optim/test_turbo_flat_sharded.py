"""TurboAdam's flat tree layout under FSDP (explicit sharding, 8 CPU devices).

Each group's explicitly sharded tensors go to a buffer ``[D, NB_local, ...]``
split over their mesh axes: every device updates its own pieces' blocks, the
per-tensor sums and counts are all-reduced (a few numbers per tensor), and
the v draws hash each block's row in the unsharded buffer, so the update is
the unsharded flat update summed in another order.
"""

import re

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

import holojax.optim.turbo as ta
from tests.optim import contract

# name -> (shape, spec on the ("data", "fsdp") = (2, 4) mesh).
TREE = {"rows": ((64, 160), P("fsdp", None)),    # axis 0 sharded, 2 blocks a row (padded)
        "cols": ((16, 1024), P(None, "fsdp")),   # last axis: 2 whole blocks a shard
        "rep": ((24, 200), P()),                 # replicated: the unsharded buffer
        "bias": ((64,), P("fsdp")),              # dense, sharded
        "s": ((10,), P())}                       # dense, replicated
HARD = {"both": ((32, 512), P("data", "fsdp")),  # two mesh axes: a buffer of its own
        "odd": ((16, 256), P(None, "fsdp")),     # shards of 32: moved to axis 0 (all-to-all)
        "w": ((8, 256), P("fsdp", None))}


def _mesh():
  return jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Explicit,) * 2)


def _run(tree, steps, mesh=None, **kw):
  """(updates, final state, HLO) of ``steps`` flat steps of ``tree``."""
  opt = ta.scale_by_turbo_adam(tree_layout="flat", min_m_compress_elements=1024, **kw)
  return contract.run_steps(opt, contract.placed_params(tree, mesh), steps)


def _run_both(tree, steps, **kw):
  mesh = _mesh()
  with jax.set_mesh(mesh):
    sharded = _run(tree, steps, mesh, **kw)
  return sharded, _run(tree, steps, **kw)


def _assert_close(us_sharded, us_whole, tree, moved=0.0):
  """Per step and tensor: equal to float summation order (|u| ~ 1): within
  1e-5, but for a fraction ``moved`` of the elements within 1e-3 (alpha's
  sums an ulp apart flip a CoState sign now and then)."""
  for t, (a, b) in enumerate(zip(us_sharded, us_whole)):
    for k in tree:
      assert jax.typeof(a[k]).sharding.spec == tree[k][1] or not any(tree[k][1])
      a_k, b_k = np.asarray(a[k]), np.asarray(b[k])
      far = ~np.isclose(a_k, b_k, rtol=1e-5, atol=1e-5)
      assert np.mean(far) <= moved, (t, k, np.mean(far), np.abs(a_k - b_k).max())
      np.testing.assert_allclose(a_k, b_k, rtol=0, atol=1e-3, err_msg=f"step {t}, {k}")


def test_sharded_flat_equals_unsharded_without_a_gather():
  """FSDP on ("data", "fsdp") = (2, 4): 5 steps equal the unsharded flat
  layout's to 1e-5; the sharded tensors' state is split over "fsdp" ([4, NB_local,
  ...], each device its own blocks) and the replicated ones' is whole; the
  compiled update has no all-gather or all-to-all, its all-reduces carry a
  few numbers per tensor (alpha's sums, the quantiles' counts), and the
  blocks' rows are computed at run time (no constant larger than the tree)."""
  (us, s, hlo), (uw, _, _) = _run_both(TREE, 5)
  _assert_close(us, uw, TREE)
  split, whole = s.groups["mv@fsdp"], s.groups["mv"]
  assert set(s.groups) == {"mv", "mv@fsdp", "dense@fsdp"}
  nb_local = (64 // 4) * 2 + 16 * 2  # rows: 16 rows of 2 blocks; cols: 16 rows of 2 blocks
  assert split.v.codes.shape == (4, nb_local, 64) and split.m.alpha.shape == (2,)
  for x in (split.v.codes, split.v.bounds, split.m.ref, split.m.signs, split.m.scales,
            s.groups["dense@fsdp"].mu):
    assert jax.typeof(x).sharding.spec[0] == "fsdp", jax.typeof(x)
  assert not any(jax.typeof(whole.v.codes).sharding.spec)
  assert not contract.collective_sizes(hlo, "all-gather")
  assert not contract.collective_sizes(hlo, "all-to-all")
  reduced = contract.collective_sizes(hlo, "all-reduce")
  assert reduced and max(reduced) <= 16, reduced  # [K=4 thresholds, n=2 tensors] at most
  constants = [int(np.prod([int(d) for d in m.group(1).split(",") if d])) for m in
               re.finditer(r"= \w+\[([\d,]*)\][^=\n]* constant\(", hlo)]
  assert max(constants) <= len(TREE), max(constants)


@pytest.mark.parametrize("kw,moved", [(dict(compress_m=False), 0.0),
                                      (dict(faithful=True, error_feedback=True), 1e-3)],
                         ids=["v_only", "faithful_ef"])
def test_sharded_flat_other_groups_and_meshes(kw, moved):
  """The v-only group and the elementwise path (faithful, error feedback), with
  a tensor sharded over both mesh axes (its own buffer) and one whose shards
  are not whole blocks (moved to axis 0 like tree_layout='leaf': an all-to-all,
  still no all-gather): 3 steps equal the unsharded ones (v only: to 1e-5;
  faithful with error feedback: 6 of 16,384 elements of "both" 4e-5 apart at
  step 3, a CoState sign flipped by alpha's sums in another order)."""
  tree = {**HARD, "bias": TREE["bias"]}
  (us, s, hlo), (uw, _, _) = _run_both(tree, 3, **kw)
  _assert_close(us, uw, tree, moved)
  name = "v" if kw.get("compress_m") is False else "mv"
  assert {f"{name}@data+fsdp", f"{name}@fsdp"} <= set(s.groups)
  assert jax.typeof(s.groups[f"{name}@data+fsdp"].v.codes).sharding.spec[0] == ("data", "fsdp")
  assert not contract.collective_sizes(hlo, "all-gather")


def test_state_of_another_mesh_size_is_refused():
  """Split buffers are [D, NB_local, ...]: a state built on 4 devices does not
  pass for 2 (a clear ValueError, not scrambled blocks)."""
  opt = ta.scale_by_turbo_adam(tree_layout="flat", min_m_compress_elements=1024)
  tree = {"rows": TREE["rows"]}
  four = jax.make_mesh((4,), ("fsdp",), axis_types=(AxisType.Explicit,))
  two = jax.make_mesh((2,), ("fsdp",), axis_types=(AxisType.Explicit,),
                      devices=jax.devices()[:2])
  with jax.set_mesh(four):
    state = jax.eval_shape(opt.init, contract.placed_params(tree, four))
  with jax.set_mesh(two):
    p = contract.placed_params(tree, two)
    with pytest.raises(ValueError, match="tree_layout='flat'.*shardings"):
      jax.eval_shape(opt.update, p, state, p)
