"""`holojax bench turbo_rows`: the row passes alone; its tiny run is in tests/train/bench/test_harness.py."""

import jax.numpy as jnp
import pytest

from holojax.kernels.turbo_adam import rowblock_mosaic
from holojax.train.bench.optim import turbo_rows as tr


def test_tiny_rows_record_each_pass_against_its_floor():
  out = tr.run(tr.TurboRowsConfig(params=9 * 128, repeats=1))
  rows = out.results["rows"]
  assert [(r["pass"], r["implementation"]) for r in rows] == [
      ("a", "xla"), ("b", "xla"), ("a", "interpret"), ("b", "interpret")]
  for r in rows:
    assert r["status"] == "ok" and r["ms"] > 0 and 0 < r["floor_ms"]
    assert r["code_mismatch"] <= 1e-3  # the interpreted kernel draws as the rows do
  # pass A moves g and u (8 B), v codes twice (1 B), the reference twice (0.5 B),
  # the signs (1/8 B) per element, plus a few numbers per block
  a = rows[0]["floor_ms"] * out.results["copy_bandwidth_GBps"] * 1e6
  assert 9 * 128 * 9.6 < a < 9 * 128 * 11


def test_helpers():
  x = jnp.zeros((4, 2), jnp.uint8)
  assert tr.moved_bytes((x, jnp.zeros((3,), jnp.float32)), (x,)) == 8 + 12 + 8
  assert tr.code_mismatch((x,), (x.at[0, 0].set(1),)) == pytest.approx(1 / 8)


@pytest.mark.parametrize("kw,match", [(dict(params=0), "params"), (dict(v_bits=3), "v_bits"),
                                      (dict(stages=()), "stages"),
                                      (dict(programs_per_sm=(0,)), "programs_per_sm")])
def test_bad_config_names_the_field(kw, match):
  with pytest.raises(ValueError, match=match):
    tr.TurboRowsConfig(**kw)


def test_kernels_refuse_launch_shapes_that_do_not_fit():
  g, old, scalars, seed = tr.random_state(8, 4, 2, 0)
  for kw, match in ((dict(stages=3), "stages=3"), (dict(stages=0), "stages"),
                    (dict(sms=0), "sms")):
    with pytest.raises(ValueError, match=match):
      rowblock_mosaic.pass_a_mosaic(g, old, scalars, seed, v_bits=4, ref_bits=2,
                                    interpret=True, **kw)
