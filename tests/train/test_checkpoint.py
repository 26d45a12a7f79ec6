"""Checkpoint integrity: finite-only saves, checksums, fallback past damaged checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from holojax.train import checkpoint as ckpt

CONFIG = {"class": "X", "width": 4}


def _state(scale=1.0):
  k = jax.random.key(0)
  return {"w": scale * jax.random.normal(k, (64, 64)), "step": jnp.int32(3),
          "codes": jnp.arange(256, dtype=jnp.uint8)}


def _write(tmp_path, steps=(1, 2)):
  mngr = ckpt.manager(str(tmp_path), keep=5, save_every=1)
  for s in steps:
    ckpt.save(mngr, s, _state(float(s)), {"step": s, "model_config": CONFIG})
  mngr.wait_until_finished()
  return mngr


def test_checksum_sees_a_flipped_bit():
  s = _state()
  w = np.asarray(s["w"]).copy()
  w.view(np.uint32)[5, 7] ^= 1 << 3
  assert ckpt.checksum(s) != ckpt.checksum({**s, "w": jnp.asarray(w)})
  assert ckpt.checksum(s) == ckpt.checksum(_state())


def test_checksum_of_complex_state_sees_either_part():
  """HoloAdam keeps complex64 traces: both their real and imaginary bits count."""
  z = jnp.exp(1j * jnp.arange(12.0).reshape(3, 4)).astype(jnp.complex64)
  assert ckpt.checksum({"z": z}) == ckpt.checksum({"z": z + 0})
  assert ckpt.checksum({"z": z}) != ckpt.checksum({"z": z.at[1, 2].add(1e-3)})
  assert ckpt.checksum({"z": z}) != ckpt.checksum({"z": z.at[1, 2].add(1e-3j)})


def test_non_finite_state_is_not_saved(tmp_path):
  mngr = ckpt.manager(str(tmp_path), keep=5, save_every=1)
  bad = {**_state(), "w": _state()["w"].at[0, 0].set(jnp.nan)}
  with pytest.raises(FloatingPointError, match="non-finite"):
    ckpt.save(mngr, 1, bad, {"step": 1})
  mngr.wait_until_finished()
  assert mngr.all_steps() == []


def test_intact_latest_restores_exactly(tmp_path):
  mngr = _write(tmp_path)
  state, meta = ckpt.restore_latest(mngr, _state(), model_config=CONFIG)
  assert meta["step"] == 2
  np.testing.assert_array_equal(state["w"], _state(2.0)["w"])


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_latest_falls_back_to_previous_good(tmp_path, how, damage):
  _write(tmp_path).close()
  damage(tmp_path, 2, how)
  mngr = ckpt.manager(str(tmp_path), keep=5, save_every=1)
  with pytest.warns(RuntimeWarning, match="checkpoint 2"):
    state, meta = ckpt.restore_latest(mngr, _state(), model_config=CONFIG)
  assert meta["step"] == 1
  np.testing.assert_array_equal(state["w"], _state(1.0)["w"])


def test_no_good_checkpoint_is_one_clear_error(tmp_path, damage):
  _write(tmp_path, steps=(1,)).close()
  damage(tmp_path, 1, "stub")
  mngr = ckpt.manager(str(tmp_path), keep=5, save_every=1)
  with pytest.warns(RuntimeWarning), pytest.raises(ckpt.CorruptCheckpointError,
                                                   match=str(tmp_path)):
    ckpt.restore_latest(mngr, _state(), model_config=CONFIG)


def test_other_model_is_refused(tmp_path):
  mngr = _write(tmp_path)
  with pytest.raises(ckpt.ConfigMismatchError, match="width"):
    ckpt.restore_latest(mngr, _state(), model_config={**CONFIG, "width": 8})
