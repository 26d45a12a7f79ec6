"""The seed 001 spiral recipe."""

import numpy as np
import pytest

from holojax.data import make_spirals


def test_shapes_dtypes_labels_and_determinism():
  x_n2, y_n = make_spirals(1000, seed=3)
  assert x_n2.shape == (2000, 2) and x_n2.dtype == np.float32
  assert y_n.shape == (2000,)
  np.testing.assert_array_equal(y_n[:1000], 0)
  np.testing.assert_array_equal(y_n[1000:], 1)
  x2, y2 = make_spirals(1000, seed=3)
  np.testing.assert_array_equal(x_n2, x2)
  np.testing.assert_array_equal(y_n, y2)
  assert not np.allclose(make_spirals(1000, seed=4)[0], x_n2)


def test_noise_free_geometry():
  # Without noise: class 0 at r = 2 theta + pi, class 1 at r = 2 theta - pi
  # along the same direction, so x0 - x1 = (2 pi / 20) (cos theta, sin theta).
  x_n2, _ = make_spirals(500, seed=0, noise=0.0)
  x0, x1 = x_n2[:500].astype(np.float64), x_n2[500:].astype(np.float64)
  np.testing.assert_allclose(np.linalg.norm(x0 - x1, axis=1), np.pi / 10,
                             rtol=1e-5)
  r0 = 20 * np.linalg.norm(x0, axis=1)
  assert r0.min() >= np.pi - 1e-4 and r0.max() <= 9 * np.pi + 1e-4
  # theta = sqrt(U) 4 pi: angle of class 0 is theta mod 2 pi, r0 = 2 theta + pi.
  theta = (r0 - np.pi) / 2
  ang = np.arctan2(x0[:, 1], x0[:, 0])
  np.testing.assert_allclose(np.cos(ang - theta), 1.0, atol=1e-4)


def test_noise_scale():
  x_clean, _ = make_spirals(2000, seed=1, noise=0.0)
  x_noisy, _ = make_spirals(2000, seed=1)
  # Same theta draws; the noise is N(0, 1.5^2) per coordinate before /20.
  std = np.std((x_noisy - x_clean) * 20)
  assert 1.4 < std < 1.6


@pytest.mark.parametrize("kw,name", [({"n": 0}, "n"), ({"n": 2.5}, "n"),
                                     ({"n": 5, "scale": 0.0}, "scale"),
                                     ({"n": 5, "noise": -1.0}, "noise")])
def test_bad_arguments(kw, name):
  with pytest.raises(ValueError, match=name):
    make_spirals(**kw)
