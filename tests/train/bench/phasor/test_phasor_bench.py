"""phasor benchmark (train/bench/phasor/memory.py): orthogonality metrics."""

import dataclasses

import numpy as np
import pytest

from holojax.train.bench.phasor import memory as pb


def test_orthogonality_random_beats_rope():
  out = pb.run(dataclasses.replace(pb.TINY, skip_speed=True))
  assert out.results["benchmark"] == "phasor_bench" and "speed" not in out.results
  rows = {r["codes"]: r for r in out.results["orthogonality"]}
  rand, rope = rows["random_uniform"], rows["rope"]
  assert rand["crosstalk_ratio"] > 3 * rope["crosstalk_ratio"]
  assert rope["neighbour_sim"] > 0.9 and abs(rand["neighbour_sim"]) < 0.3
  d = rand["d"]  # random codes: E|sim| ~ sqrt(1 / (pi d))
  assert abs(rand["mean_abs_sim"] / np.sqrt(1 / (np.pi * d)) - 1) < 0.3
  assert "random_uniform" in out.table


def test_lag_similarity_self_is_one():
  sim = pb.lag_similarity(np.array([0.3, 2.0, -1.0]), 5)
  assert sim.shape == (6,) and sim[0] == 1.0


def test_kernels_are_checked_at_construction():
  assert pb.PhasorConfig().kernels == pb.KERNELS
  with pytest.raises(ValueError, match="kernels"):
    pb.PhasorConfig(kernels=("triton", "cudnn"))
