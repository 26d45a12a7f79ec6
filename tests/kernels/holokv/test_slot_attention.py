"""HoloKV slot attention: the Pallas kernel (interpreted on CPU, compiled on a
GPU) against the jnp reference, the reference against a naive softmax, and
the public op's backend choice and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from holojax.kernels import backend
from holojax.kernels.holokv import (SlotTiles, select_implementation, slot_attention,
                                    slot_attention_reference)

ON_GPU = jax.default_backend() == "gpu"


def _inputs(b, s, g, r, d, *, q_dtype=jnp.float32, kv_dtype=jnp.float32, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  qr = jax.random.normal(k1, (b, g, r, d)).astype(q_dtype)
  ks = jax.random.normal(k2, (b, s, g, d)).astype(kv_dtype)
  vs = jax.random.normal(k3, (b, s, g, d)).astype(kv_dtype)
  return qr, ks, vs


def _op(impl, **kw):
  return jax.jit(lambda q, k, v, n: slot_attention(q, k, v, n, implementation=impl, **kw))


def _naive(qr, ks, vs, n):
  """Softmax over the first n slots, one (b, g, r) at a time, float64."""
  qr, ks, vs = (np.asarray(x, np.float64) for x in (qr, ks, vs))
  b, g, r, d = qr.shape
  o, lse = np.zeros((b, g, r, d)), np.full((b, g, r), -np.inf)
  for i, j, k in np.ndindex(b, g, r):
    if n:
      x = ks[i, :n, j] @ qr[i, j, k]
      lse[i, j, k] = np.log(np.sum(np.exp(x - x.max()))) + x.max()
      o[i, j, k] = np.exp(x - lse[i, j, k]) @ vs[i, :n, j]
  return o, lse


def _check_fills(f, ref, qr, ks, vs, fills, tol):
  """f(n) equals the reference at every fill, one compile for all of them."""
  for n in fills:
    o, lse = f(qr, ks, vs, jnp.int32(n))
    assert o.dtype == lse.dtype == jnp.float32
    o_ref, lse_ref = ref(qr, ks, vs, n)
    np.testing.assert_allclose(o, o_ref, rtol=tol, atol=tol, err_msg=f"o, {n=}")
    np.testing.assert_allclose(lse, lse_ref, rtol=tol, atol=tol, err_msg=f"lse, {n=}")
    if n == 0:
      assert np.all(np.asarray(o) == 0) and np.all(np.asarray(lse) == -np.inf)
  assert f._cache_size() == 1


# (B, S, G, R, D), dtypes, tiles: R not a multiple of 16; S not a multiple of
# block_s; several splits (auto, more than the blocks), programs that walk
# several blocks; fills 0, 1, partial and S.
CASES = {
    "f32_3splits": ((2, 50, 3, 12, 16), jnp.float32, jnp.float32, dict(block_s=16, splits=3)),
    "bf16_auto_splits": ((2, 37, 3, 5, 32), jnp.bfloat16, jnp.bfloat16, dict(block_s=16)),
    "splits_over_blocks": ((2, 70, 3, 16, 16), jnp.float32, jnp.float32,
                           dict(block_s=32, splits=5)),
}


@pytest.mark.parametrize("case", CASES)
def test_interpret_matches_reference(case):
  shape, q_dtype, kv_dtype, tiles = CASES[case]
  qr, ks, vs = _inputs(*shape, q_dtype=q_dtype, kv_dtype=kv_dtype)
  s = shape[1]
  tol = 1e-5 if kv_dtype == jnp.float32 else 1e-4  # both read the same bf16 values
  _check_fills(_op("interpret", **tiles), slot_attention_reference, qr, ks, vs,
               (0, 1, s // 2 + 3, s), tol)


def test_reference_equals_naive_softmax():
  qr, ks, vs = _inputs(2, 11, 3, 4, 8, seed=1)
  ref = jax.jit(slot_attention_reference)
  for n in (0, 1, 6, 11):
    o, lse = ref(qr, ks, vs, n)
    o_ref, lse_ref = _naive(qr, ks, vs, n)
    np.testing.assert_allclose(o, o_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse, lse_ref, rtol=1e-5, atol=1e-5)


def test_xla_traced_fill_compiles_once():
  qr, ks, vs = _inputs(2, 11, 3, 4, 8, seed=2)
  _check_fills(_op("xla"), _naive, qr, ks, vs, (0, 1, 6, 11), 1e-5)


def test_backend_choice():
  """Default ("xla",); forced names, the alias, sequences, the D fallback."""
  qr, ks, vs = _inputs(1, 20, 2, 3, 16)
  assert select_implementation(qr, ks, vs, 5) == "xla"
  assert select_implementation(qr, ks, vs, 5, implementation=["triton", "interpret"]) == (
      "triton" if ON_GPU else "interpret")
  if not ON_GPU:
    for name in ("triton", "pallas"):
      with pytest.raises(ValueError, match=f"implementation='{name}' cannot run here.*GPU"):
        slot_attention(qr, ks, vs, 5, implementation=name)
  q24, k24, v24 = _inputs(1, 20, 2, 3, 24)  # D not a power of two: no Pallas
  assert select_implementation(q24, k24, v24, 5, implementation=("interpret", "xla")) == "xla"
  with pytest.raises(ValueError, match="power of two >= 16, got D=24"):
    slot_attention(q24, k24, v24, 5, implementation="interpret")
  with pytest.raises(ValueError, match="'mosaic' is not one of"):
    select_implementation(qr, ks, vs, 5, implementation="mosaic")


def test_runs_in_a_named_scope():
  qr, ks, vs = _inputs(1, 20, 2, 3, 16)
  hlo = jax.jit(lambda *a: slot_attention(*a, implementation="xla")).lower(
      qr, ks, vs, jnp.int32(3)).as_text(debug_info=True)
  assert "slot_attention/xla" in hlo


def test_argument_errors():
  qr, ks, vs = _inputs(2, 20, 3, 4, 16)
  bad = {
      "qr_bgrd must be": (qr[0], ks, vs, 3, {}),
      "ks_bsgd must be": (qr, ks[0], vs, 3, {}),
      "vs_bsgd shape": (qr, ks, vs[:, :10], 3, {}),
      r"\(B, G, D\)": (qr[:1], ks, vs, 3, {}),
      r"\(B, G, D\) = \(2, 2, 16\)": (qr[:, :2], ks, vs, 3, {}),
      "at least one slot": (qr, ks[:, :0], vs[:, :0], 0, {}),
      "ks_bsgd must be floating": (qr, ks.astype(jnp.int32), vs.astype(jnp.int32), 3, {}),
      "n_valid must be an integer scalar": (qr, ks, vs, jnp.array([3]), {}),
      "n_valid must be an integer": (qr, ks, vs, 3.0, {}),
      r"n_valid=21 must lie in \[0, S=20\]": (qr, ks, vs, 21, {}),
      r"n_valid=-1 must lie": (qr, ks, vs, -1, {}),
      "block_s=48 must be a power of two": (qr, ks, vs, 3, {"block_s": 48}),
      "block_s=8 must be": (qr, ks, vs, 3, {"block_s": 8}),
      "splits=0 must be a positive int": (qr, ks, vs, 3, {"splits": 0}),
      "splits=2.0 must be": (qr, ks, vs, 3, {"splits": 2.0}),
  }
  for msg, (q, k, v, n, kw) in bad.items():
    with pytest.raises(ValueError, match=msg):
      slot_attention(q, k, v, n, implementation="interpret", **kw)


def test_tiles_resolve():
  """block_s shrinks to the slots (>= 16); auto splits fill ~132 programs,
  at most one per block."""
  assert SlotTiles().resolve(batch=1, kv_heads=1, slots=20).block_s == 32
  assert SlotTiles().resolve(batch=1, kv_heads=8, slots=4096).splits == 17
  assert SlotTiles().resolve(batch=1, kv_heads=8, slots=256).splits == 4
  assert SlotTiles().resolve(batch=64, kv_heads=8, slots=4096).splits == 1
  assert SlotTiles(splits=7).resolve(batch=1, kv_heads=1, slots=16).splits == 7


def test_triton_lowering_without_a_gpu(monkeypatch, capsys):
  """The compiled path lowers to one Triton call for a CUDA target, here on
  CPU: its slot loop is an ``scf.for`` bounded by the fill, its two dots are
  IEEE float32 (not TF32). PTX compilation needs a GPU (the test below)."""
  monkeypatch.setattr(backend, "require_triton", lambda *a, **kw: None)
  pallas_call = pl.pallas_call
  monkeypatch.setattr(pl, "pallas_call", lambda *a, **kw: pallas_call(*a, debug=True, **kw))
  q = jax.ShapeDtypeStruct((2, 4, 12, 64), jnp.float32)
  kv = jax.ShapeDtypeStruct((2, 300, 4, 64), jnp.bfloat16)
  n = jax.ShapeDtypeStruct((), jnp.int32)
  text = _op("triton").trace(q, kv, kv, n).lower(lowering_platforms=("cuda",)).as_text()
  assert "xla.gpu.triton" in text and 'name = "holokv_slot_attention"' in text
  ttir = capsys.readouterr().out
  assert ttir.count("scf.for") == 1 and "scf.while" not in ttir
  assert ttir.count("tt.dot") == 2 and "tf32" not in ttir


@pytest.mark.skipif(not ON_GPU, reason="compiled Pallas (Triton) needs a GPU")
@pytest.mark.parametrize("kv_dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("tiles", [{}, dict(block_s=32, splits=3)])
def test_compiled_triton_matches_reference(kv_dtype, tiles):
  qr, ks, vs = _inputs(2, 1000, 4, 12, 64, kv_dtype=kv_dtype, seed=3)
  qr = qr / 8.0  # scaled rows, as the caller builds them
  _check_fills(_op("triton", **tiles), jax.jit(slot_attention_reference), qr, ks, vs,
               (0, 1, 517, 1000), 1e-4)
