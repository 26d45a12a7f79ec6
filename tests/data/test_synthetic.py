"""MQAR and passkey generators."""

import numpy as np
import pytest

from holojax.data.synthetic import IGNORE, mqar, passkey, shifted_accuracy


def test_mqar_structure():
  n, t, v = 8, 64, 128
  ex = mqar(50, seq_len=t, num_pairs=n, vocab_size=v, seed=3)
  assert ex.input_ids.shape == ex.labels.shape == (50, t)
  assert ex.input_ids.dtype == np.int32
  for ids, lb in zip(ex.input_ids, ex.labels):
    keys, vals = ids[0:2 * n:2], ids[1:2 * n:2]
    assert len(set(keys)) == n and np.all((keys >= 1) & (keys < v // 2))
    assert np.all((vals >= v // 2) & (vals < v))
    pos = np.nonzero(lb != IGNORE)[0]
    assert len(pos) == n and np.all(pos > 2 * n)
    table = dict(zip(keys, vals))
    for p in pos:  # query key at p - 1, its value as the target at p
      assert lb[p] == table[ids[p - 1]] and ids[p] == 0
    assert sorted(ids[pos - 1]) == sorted(keys)
    rest = np.ones(t, bool)
    rest[:2 * n] = False
    rest[pos - 1] = False
    assert np.all(ids[rest] == 0)  # filler


def test_mqar_deterministic_and_power_law():
  a = mqar(200, seq_len=256, num_pairs=8, vocab_size=8192, seed=7)
  b = mqar(200, seq_len=256, num_pairs=8, vocab_size=8192, seed=7)
  c = mqar(200, seq_len=256, num_pairs=8, vocab_size=8192, seed=8)
  np.testing.assert_array_equal(a.input_ids, b.input_ids)
  assert not np.array_equal(a.input_ids, c.input_ids)
  gaps = (np.nonzero(a.labels != IGNORE)[1] - 1 - 16) // 2
  assert np.mean(gaps < 30) > 0.3  # space 120: power law favours short gaps


def test_mqar_bad_args():
  with pytest.raises(ValueError, match="seq_len"):
    mqar(1, seq_len=15, num_pairs=4)
  with pytest.raises(ValueError, match="vocab_size"):
    mqar(1, seq_len=64, num_pairs=8, vocab_size=16)


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey(depth):
  ex = passkey(3, seq_len=300, depth=depth, num_digits=5, seed=1)
  assert ex.input_ids.shape == (3, 300)
  for ids, lb in zip(ex.input_ids, ex.labels):
    text = bytes(ids.astype(np.uint8).tolist())
    key = text[-5:]
    assert key.isdigit()
    assert text.endswith(b"The pass key is " + key)
    at = text.index(b"The pass key is " + key + b".")
    assert abs(at / (300 - 70) - depth) < 0.2
    assert np.all(lb[-5:] == ids[-5:]) and np.all(lb[:-5] == IGNORE)
  with pytest.raises(ValueError, match="seq_len"):
    passkey(1, seq_len=50)
  with pytest.raises(ValueError, match="depth"):
    passkey(1, depth=1.5)


def test_shifted_accuracy():
  lg = np.zeros((1, 4, 5))
  lg[0, 0, 3] = lg[0, 2, 1] = 1.0
  lb = np.array([[IGNORE, 3, IGNORE, 2]])
  assert shifted_accuracy(lg, lb) == 0.5
