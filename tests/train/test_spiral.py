"""Spiral demo (seed 001) and the recomputed compression table."""

import json

from flax import nnx

from holojax.optim.accounting import num_params
from holojax.train.spiral import (
  format_param_table, holo_mlp, holo_param_table, lowrank_mlp, main,
  relu_mlp, run_spiral)


def _n(build) -> int:
  """Learned parameters of ``build(rngs)``, counted abstractly (no compile)."""
  return num_params(nnx.eval_shape(lambda: build(rngs=nnx.Rngs(0))))


def test_holo_spiral_net_reaches_95_percent(tmp_path):
  # The seed's setting: 2 x 1000 points, 500 full-batch Adam(0.01) steps.
  png = tmp_path / "spiral.png"
  res = run_spiral(steps=500, seed=0, out_png=str(png), with_seed_init=False,
                   nets=("holo",))
  assert res["n_points"] == 2000 and res["steps"] == 500
  assert res["holo"]["acc"] >= 0.95, res
  assert res["holo"]["params"] == 2 * 16 * (64 + 64 + 1) == 4128
  assert res["holo"]["basis"] == 16 * (2 + 64 + 64)
  assert png.stat().st_size > 10_000
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  json.dumps(res)


def test_spiral_net_parameter_counts():
  assert _n(holo_mlp) == 4128
  assert _n(relu_mlp) == 2 * 64 + 64 + 64 * 64 + 64 + 65
  # Equal-parameter low-rank net: within 1% of the holo net.
  assert abs(_n(lowrank_mlp) - 4128) / 4128 < 0.01


def test_param_table_is_honest():
  rows = {(r["in"], r["out"], r["H"]): r for r in holo_param_table()}
  assert len(rows) == 12
  r = rows[(784, 256, 32)]
  assert (r["dense"], r["holo"], r["basis"]) == (200_704, 16_384, 25_088)
  assert r["ratio"] == 12.25 and r["seed_claim"] == 8_192
  assert rows[(512, 2048, 32)]["holo"] == 131_072
  assert rows[(4096, 4096, 32)]["ratio"] == 64.0
  for r in rows.values():
    assert r["lowrank_params"] <= r["holo"]
    assert r["lowrank_params"] + r["in"] + r["out"] > r["holo"]
    assert r["ratio_with_basis"] < r["ratio"]
  md = format_param_table(list(rows.values()))
  assert md.count("\n") == 13 and "16,384" in md


def test_cli_main_runs_small(capsys):
  res = main(["--steps", "3", "--n", "20", "--nets", "holo",
              "--no-seed-init", "--table"])
  out = capsys.readouterr().out
  assert res["steps"] == 3 and res["n_points"] == 40
  assert "holo" in res and "relu" not in res and "lowrank" not in res
  assert "| in | out | H |" in out
