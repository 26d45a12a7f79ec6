"""Two interleaved noisy spirals (the seed 001 demo task).

Class 0: ``r = 2 theta + pi``; class 1: ``r = 2 theta - pi`` (the same
spiral turned by 180 degrees); ``theta = sqrt(U) * 4 pi`` with ``U ~
U[0, 1)``; points ``r (cos theta, sin theta) + N(0, sigma^2 I)``,
``sigma = 1.5``, then divided by 20.
"""

from __future__ import annotations

import numpy as np

__all__ = ["make_spirals"]


def make_spirals(n: int = 1000, *, seed: int = 0, noise: float = 1.5,
                 scale: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
  """Two spirals of ``n`` points each, deterministic in ``seed``.

  Args:
    n: points per spiral (> 0).
    seed: numpy ``default_rng`` seed.
    noise: std of the additive Gaussian noise, before scaling.
    scale: coordinates are divided by this.

  Returns:
    ``(x_n2, y_n)``: float32 points [2n, 2] and float32 labels [2n]
    (first ``n`` are class 0, the rest class 1).

  Example:
    >>> x_n2, y_n = make_spirals(10, seed=0)
    >>> x_n2.shape, y_n.shape, float(y_n.sum())
    ((20, 2), (20,), 10.0)
  """
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"n must be a positive int, got {n!r}")
  if not scale > 0:
    raise ValueError(f"scale must be > 0, got {scale}")
  if not noise >= 0:
    raise ValueError(f"noise must be >= 0, got {noise}")
  rng = np.random.default_rng(seed)
  theta_n = np.sqrt(rng.random(n)) * 4 * np.pi
  dir_n2 = np.stack([np.cos(theta_n), np.sin(theta_n)], axis=-1)
  x0_n2 = (2 * theta_n + np.pi)[:, None] * dir_n2 + noise * rng.normal(
    size=(n, 2))
  x1_n2 = (2 * theta_n - np.pi)[:, None] * dir_n2 + noise * rng.normal(
    size=(n, 2))
  x_n2 = np.concatenate([x0_n2, x1_n2]) / scale
  y_n = np.concatenate([np.zeros(n), np.ones(n)])
  return x_n2.astype(np.float32), y_n.astype(np.float32)
