"""phasor_bench: orthogonality metrics and the CLI (speed part skipped)."""

import json

import numpy as np

from holojax.train.bench import phasor_bench as pb


def test_orthogonality_random_beats_rope(tmp_path):
  out = tmp_path / "p.json"
  rec = pb.main(["--tiny", "--skip-speed", "--out", str(out)])
  assert json.loads(out.read_text())["benchmark"] == "phasor_bench"
  rows = {r["codes"]: r for r in rec["orthogonality"]}
  rand, rope = rows["random_uniform"], rows["rope"]
  assert rand["crosstalk_ratio"] > 3 * rope["crosstalk_ratio"]
  assert rope["neighbour_sim"] > 0.9 and abs(rand["neighbour_sim"]) < 0.3
  d = rand["d"]  # random codes: E|sim| ~ sqrt(1 / (pi d))
  assert abs(rand["mean_abs_sim"] / np.sqrt(1 / (np.pi * d)) - 1) < 0.3


def test_lag_similarity_self_is_one():
  sim = pb.lag_similarity(np.array([0.3, 2.0, -1.0]), 5)
  assert sim.shape == (6,) and sim[0] == 1.0
