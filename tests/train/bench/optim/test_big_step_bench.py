"""`holojax bench big_step`: each attempt in its own process, OOM reported as a status."""

import dataclasses
import json

import pytest

from holojax.train.bench.optim import big_step as bs


def test_tiny_run_steps_every_optimizer_in_a_child():
  out = bs.run(bs.TINY)
  rows = out.results["rows"]
  json.dumps(out.results)
  assert [r["optimizer"] for r in rows] == list(bs.TINY.optimizers)
  for r in rows:
    assert r["status"] == "ok", r
    assert r["step_ms"] > 0 and r["loss"] > 0
  adamw, turbo = rows
  assert adamw["state_bytes"] == pytest.approx(8 * adamw["params"], abs=64)  # m, v float32
  assert turbo["state_bytes"] < adamw["state_bytes"]
  assert adamw["need_bytes"] == pytest.approx(16 * adamw["params"], abs=64)
  assert "turbo_adam" in out.table and "status" in out.table


def test_out_of_memory_is_a_status_not_a_crash(monkeypatch):
  def boom(*a, **k):
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.0GiB.")
  monkeypatch.setattr(bs, "init_state", boom)
  row = bs.attempt(bs.TINY, "adamw")
  assert (row["status"], row["phase"]) == ("oom", "init") and "RESOURCE_EXHAUSTED" in row["error"]
  monkeypatch.setattr(bs, "init_state", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad")))
  assert bs.attempt(bs.TINY, "adamw")["status"] == "error"


def test_13b_needs_more_than_an_h200_with_adamw_and_less_with_turbo_adam():
  cfg = bs.BigStepConfig()
  n, adamw_state, adamw_need = bs.need(cfg, "adamw")
  _, turbo_state, turbo_need = bs.need(cfg, "turbo_adam")
  assert 13e9 < n < 13.1e9
  assert adamw_need > 141e9 > turbo_need  # the capstone's premise, by shapes alone
  assert turbo_state < n  # under one byte per parameter


@pytest.mark.parametrize("kw,match", [
    (dict(model="gpt2-124m"), "model"), (dict(optimizers=("sgd",)), "optimizers"),
    (dict(seq=100_000), "seq"), (dict(steps=0), "steps"), (dict(dtype="float16"), "dtype")])
def test_bad_config_names_the_field(kw, match):
  with pytest.raises(ValueError, match=match):
    bs.BigStepConfig(**kw)


def test_a_timed_out_attempt_is_an_error_that_quotes_the_child():
  child = bs.in_child("holojax.train.bench.optim.big_step", bs.TINY, ["adamw"], 0.5)
  assert child["status"] == "error" and "timed out after 0.5 s (last said:" in child["error"]


def test_scanned_model_state_has_the_per_layer_models_size():
  """With scan_layers, TurboAdam is told the stacked blocks are layers
  (``scanned``), so its state holds exactly the per-layer model's bytes."""
  flat_cfg, scan_cfg = bs.TINY, dataclasses.replace(bs.TINY, scan_layers=True)
  for spec in ("turbo_adam", "adamw"):
    assert bs.need(scan_cfg, spec) == bs.need(flat_cfg, spec)


def test_analyze_compiles_from_shapes_and_runs_nothing():
  out = bs.run(dataclasses.replace(bs.TINY, analyze=True))
  adamw, turbo = out.results["analysis"]
  assert out.results["rows"] == [] and "temporaries" in out.table
  for x in (adamw, turbo):
    assert x["bytes"] == (x["argument_bytes"] + x["output_bytes"] + x["temp_bytes"]
                          - x["alias_bytes"])
  assert turbo["argument_bytes"] < adamw["argument_bytes"]  # compressed state, same params
