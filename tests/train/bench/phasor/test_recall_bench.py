"""recall benchmark (train/bench/phasor/recall.py): TINY end to end, and its pure pieces."""

import dataclasses
import functools

import numpy as np
import pytest

from holojax.optim.accounting import num_params
from holojax.train.bench import harness
from holojax.train.bench.common import Progress, build_lm
from holojax.train.bench.phasor import recall as rb


def test_heads_and_param_counts():
  assert [rb.num_heads(w, 64) for w in (32, 64, 128, 512)] == [1, 1, 2, 8]
  kw = dict(vocab_size=256, num_layers=2, head_width=64, max_seq_len=64, dtype="float32")
  cfg = rb.model_config("phasor", 64, **kw)
  ph, at = build_lm(cfg, 0), build_lm(rb.model_config("attention", 64, **kw), 0)
  assert cfg.hd_dim == 128 and cfg.tie_embeddings
  d, v = 64, 256  # per layer, attention: 4 d^2 + 8 d^2; phasor: 10 d^2 + 8 d^2
  extra = 2 * (6 * d * d + 2 * 2 * d + 1 + 5 * d)  # + k, q, MLP biases, bandwidth
  assert num_params(ph) - num_params(at) == extra
  assert num_params(at) == v * d + 2 * (12 * d * d + 2 * d) + d


def test_passkey_batch_deterministic_with_varied_depths():
  a = rb.passkey_batch(6, 160, seed=3)
  b = rb.passkey_batch(6, 160, seed=3)
  np.testing.assert_array_equal(a.input_ids, b.input_ids)
  assert a.input_ids.shape == (6, 160) and ((a.labels != -100).sum(1) == 5).all()
  needle = np.frombuffer(b"The pass", np.uint8)
  starts = [next(i for i in range(160) if (r[i:i + 8] == needle).all())
            for r in a.input_ids]
  assert len(set(starts)) > 1


@pytest.mark.parametrize("processes", [False, True])
def test_batch_stream_is_deterministic(processes):
  make = functools.partial(rb.mqar_batch, grid=((32, 4), (64, 8)),
                           batch_tokens=256, vocab_size=64, seed=1)
  with rb.BatchStream(make, ahead=4, workers=2, processes=processes) as s:
    got = [s[i] for i in (0, 1, 5)]
  for i, ex in zip((0, 1, 5), got):
    np.testing.assert_array_equal(ex.input_ids, make(i).input_ids)
  assert got[0].input_ids.shape == (8, 32) and got[1].input_ids.shape == (4, 64)
  assert not np.array_equal(got[1].input_ids, got[2].input_ids)


def test_mqar_summary_flags_misses():
  def run(arch, acc):
    return {"arch": arch, "width": 64, "accuracy": acc,
            "mean_accuracy": float(np.mean(list(acc.values())))}
  runs = [run("attention", {"64x4": 1.0, "512x64": 0.5}),
          run("phasor", {"64x4": 0.98, "512x64": 0.2})]
  s = rb.mqar_summary(runs)
  assert s["points_where_attention_reaches"] == 1
  assert not s["phasor_reaches_where_attention_does"]
  assert s["phasor_misses"][0]["grid"] == "64x4"
  runs[1]["accuracy"]["64x4"] = 0.995
  assert rb.mqar_summary(runs)["phasor_reaches_where_attention_does"]
  runs.append(run("phasor:win8", {"64x4": 0.5, "512x64": 0.9}))
  s = rb.mqar_summary(runs)
  assert s["by_arch"] == {"phasor": 0, "phasor:win8": 1}
  assert not rb.mqar_summary(runs, phasor="phasor:win8")["phasor_reaches_where_attention_does"]


def test_phasor_variant_archs():
  cfg = rb.model_config("phasor:conv4+gate+win16", 64, vocab_size=128, num_layers=2,
                        head_width=32, max_seq_len=64, dtype="float32")
  assert (cfg.conv, cfg.write_gate, cfg.window, cfg.hd_dim) == (4, True, 16, 128)
  assert rb.model_config("phasor", 64, vocab_size=128, num_layers=2, head_width=32,
                         max_seq_len=64, dtype="float32").conv == 0
  with pytest.raises(ValueError, match="variants"):
    harness.parse("recall", ["--tiny", "--archs", "phasor:nope", "attention"])
  assert harness.parse("recall", ["--tiny", "--archs", "phasor:win8", "attention"]).archs == (
      "phasor:win8", "attention")


def test_config_validation():
  with pytest.raises(ValueError, match="part"):
    rb.RecallConfig(parts=("nope",))
  with pytest.raises(ValueError, match="grid point"):
    rb.RecallConfig(grid=((16, 8),))
  with pytest.raises(ValueError, match="warmup_fracs"):
    rb.RecallConfig(warmup_fracs=(1.0,))


def test_sweep_covers_every_rate_and_warm_up():
  """Issue 17: the attention baseline's rate and warm-up are swept (every pair),
  and the best pair per (arch, width) is the one reported."""
  cfg = dataclasses.replace(rb.TINY, lrs=(1e-3, 3e-3), warmup_fracs=(0.0, 0.2))
  part = rb.mqar_part(cfg, lambda line: None)
  assert sorted(part.groups) == [(32, lr, wf) for lr in (1e-3, 3e-3) for wf in (0.0, 0.2)]
  runs = [{"arch": "attention", "width": 32, "lr": lr, "warmup_frac": wf,
           "accuracy": {}, "mean_accuracy": acc}
          for (lr, wf), acc in zip([(1e-3, 0.0), (1e-3, 0.2), (3e-3, 0.0)], [0.5, 0.9, 0.7])]
  best = rb.best_runs(runs)[("attention", 32)]
  assert (best["lr"], best["warmup_frac"]) == (1e-3, 0.2)


@pytest.mark.slow
def test_tiny_end_to_end():
  partials = []
  # TINY at 1 layer and fewer steps: the same code paths (two grid shapes, two
  # passkey lengths, both archs), ~half the compile time.
  cfg = dataclasses.replace(rb.TINY, num_layers=1, steps=24, passkey_steps=8,
                            max_minutes=3.0)  # room for a loaded machine
  out = rb.run(cfg, Progress(partial=lambda res: partials.append(len(res))))
  res = out.results
  assert partials  # the results so far, after each model
  mq = res["mqar"]["runs"]
  assert [r["arch"] for r in mq] == ["phasor", "attention"]
  assert all("error" not in r for r in mq)
  assert mq[0]["steps_done"] == mq[1]["steps_done"] > 0  # equal steps
  assert 0.5 < mq[0]["num_params"] / mq[1]["num_params"] < 2.0
  for r in mq:
    assert set(r["accuracy"]) == {"32x4", "64x8"}
    assert all(0.0 <= a <= 1.0 for a in r["accuracy"].values())
    assert np.isfinite(r["final_loss"])
  pk = res["passkey"]["runs"]
  assert [r["arch"] for r in pk] == ["phasor", "attention"]
  for r in pk:
    assert len(r["eval"]) == len(cfg.passkey_lens) * len(cfg.passkey_depths)
    for e in r["eval"]:
      assert 0.0 <= e["exact_match"] <= e["digit_accuracy"] <= 1.0
  assert "MQAR" in out.table and "Passkey" in out.table
  assert len(out.table.splitlines()) < 20
