"""`holojax bench holo_convert`: the tiny run end to end, and its config's errors."""

import json

import pytest

from holojax.models.llama import LLAMA_PRESETS
from holojax.nn.holo import holo_param_count, lowrank_param_count, equal_param_rank
from holojax.train.bench.lm import holo_convert as hc


@pytest.fixture(scope="module")
def tiny():
  return hc.run(hc.TINY)


def test_tiny_run_rows_match_the_parameter_formula(tiny):
  r = tiny.results
  json.dumps(r)
  assert list(r["rows"]) == list(hc.TINY.variants)
  cfg = LLAMA_PRESETS["llama-tiny"]
  d, kv, f = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
  shapes = {"q": (d, d), "k": (d, kv), "v": (d, kv), "o": (d, d), "gate": (d, f), "up": (d, f),
            "down": (f, d)}
  mlp = ("gate", "up", "down")
  dense = lambda names: sum(i * o for n, (i, o) in shapes.items() if n in names)
  layers = cfg.num_hidden_layers
  want_holo = cfg.num_params() - layers * (dense(shapes) - sum(
      holo_param_count(i, o, 8) for i, o in shapes.values()))
  want_low = cfg.num_params() - layers * (dense(mlp) - sum(
      lowrank_param_count(*shapes[n], equal_param_rank(*shapes[n], 8)) for n in mlp))
  rows = r["rows"]
  assert rows["original"]["params"] == cfg.num_params()
  assert rows["holo-fresh-all-h8"]["params"] == rows["holo-all-h8+distill"]["params"] == want_holo
  assert rows["lowrank-cal-mlp-h8"]["params"] == want_low
  # fitted to the calibration inputs' outputs, not to the weights
  assert rows["lowrank-cal-mlp-h8"]["out_err_mean"] < rows["lowrank-cal-mlp-h8"]["fit_err_mean"]
  assert rows["holo-fresh-all-h8"]["fit_err_mean"] > 0.9  # nothing transferred
  assert rows["original"]["fit_err_mean"] == 0.0
  fits = r["fits"]["holo-all-h8"]["layers"]
  assert len(fits) == 7 * layers and all(0 < x["rel_err"] < 1 for x in fits)
  log = r["distill"]["holo-all-h8"]
  assert len(log["kl"]) == hc.TINY.distill_steps and log["trained_params"] == sum(
      holo_param_count(i, o, 8) for i, o in shapes.values()) * layers
  assert all(isinstance(a, str) for v in rows.values() for a in v["answers"])
  assert "-91.4%" in tiny.table and "holo-fresh-all-h8" in tiny.table


@pytest.mark.parametrize("kw,match", [
    (dict(variants=("holo-all-32",)), "variants"),
    (dict(variants=("svd-all-h8",)), "variants"),
    (dict(variants=("holo-fresh-cal-all-h8",)), "calibrated"),
    (dict(ppl_context=100, ppl_chunk=32), "ppl_context"),
    (dict(distill_lr=0.0), "distill_lr"),
    (dict(distill_steps=0), "distill_steps"),
])
def test_bad_config_names_the_field(kw, match):
  with pytest.raises(ValueError, match=match):
    hc.HoloConvertConfig.tiny(**kw)
