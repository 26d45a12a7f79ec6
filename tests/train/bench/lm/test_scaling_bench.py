"""`holojax bench scaling`: data parallel and FSDP rows on the 8 CPU devices, one process each."""

import json

import pytest

from holojax.train.bench.lm import scaling as sc


def test_tiny_run_on_cpu_devices():
  # A Llama-family model (the GPU run's llama-1b is one) through the real train step.
  cfg = sc.ScalingConfig(**{**sc.TINY.__dict__, "models": ("llama-tiny",),
                            "optimizers": ("turbo_adam",), "devices": (1, 2, 16)})
  out = sc.run(cfg)
  json.dumps(out.results)
  rows = {(r["mode"], r["devices"]): r for r in out.results["rows"]}
  assert set(rows) == {("dp", 1), ("dp", 2), ("fsdp", 2), ("dp", 16), ("fsdp", 16)}
  assert rows["dp", 16]["status"] == "skipped"  # more than the 8 devices present
  one, dp, fsdp = rows["dp", 1], rows["dp", 2], rows["fsdp", 2]
  for r in (one, dp, fsdp):
    assert r["status"] == "ok", r
    assert r["tokens_per_s"] > 0 and r["efficiency"] > 0
  assert one["efficiency"] == 1.0
  # Data parallel replicates parameters and state; FSDP halves them on each device.
  assert dp["param_bytes_per_device"] == one["param_bytes_per_device"]
  assert dp["state_bytes_per_device"] == one["state_bytes_per_device"]
  assert fsdp["param_bytes_per_device"] < 0.6 * one["param_bytes_per_device"]
  assert fsdp["state_bytes_per_device"] < 0.75 * one["state_bytes_per_device"]
  assert "fsdp | 2" in out.table


@pytest.mark.parametrize("kw,match", [
    (dict(modes=("tp",)), "modes"), (dict(devices=(0,)), "devices"),
    (dict(optimizers=("sgd",)), "optimizers"), (dict(steps=0), "steps")])
def test_bad_config_names_the_field(kw, match):
  with pytest.raises(ValueError, match=match):
    sc.ScalingConfig(**kw)
