"""long_context benchmark (train/bench/phasor/long_context.py): TINY end to end, its pieces."""

import dataclasses
import json
import math

import numpy as np
import pytest

from holojax import data as hdata
from holojax.train.bench import harness
from holojax.train.bench.phasor import long_context as lc


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """One --tiny run through the harness: (record, the partial record under $OUT)."""
  tmp = tmp_path_factory.mktemp("long_context")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("OUT", str(tmp / "out"))
    rec = harness.run("long_context", ["--tiny"], record_dir=tmp, quiet=True)
  (path,) = tmp.glob("long_context--*.json")
  assert json.loads(path.read_text()) == rec
  return rec, json.loads((tmp / "out" / "long_context_partial.json").read_text())


@pytest.mark.slow
def test_record_structure(tiny):
  rec, partial = tiny
  assert rec["name"] == "long_context" and set(rec["results"]) == {"lm", "decode"}
  assert set(partial["results"]) == {"lm"}  # written after part lm
  assert rec["config"]["parts"] == ["lm", "decode"]
  table = rec["table"]
  assert "| phasor |" in table and "| gpt_rope |" in table and "| phasor:conv4+gate+win16 |" in table
  assert "val@64" in table and "val@256" in table and "computed, not measured" in table


@pytest.mark.slow
def test_lm_same_steps_tokens_and_finite_losses(tiny):
  lm = tiny[0]["results"]["lm"]
  cfg = lc.TINY
  rows = {r["arch"]: r for r in lm["rows"]}
  assert set(rows) == {"phasor", "phasor:conv4+gate+win16", "gpt_rope"}
  assert lm["best_variant"] in cfg.variants
  switched = rows["phasor:conv4+gate+win16"]["model_config"]
  assert (switched["conv"], switched["write_gate"], switched["window"]) == (4, True, 16)
  assert rows["phasor:conv4+gate+win16"]["num_params"] > rows["phasor"]["num_params"]
  for r in rows.values():
    assert r["steps"] == lm["steps"] == cfg.steps
    assert r["tokens"] == cfg.steps * cfg.batch_size * cfg.train_len
    assert r["finite"] and r["num_params"] > 0
    assert len(r["train_curve"]) >= 2
    for n in cfg.eval_lens:
      assert math.isfinite(r["val"][str(n)])
      assert r["val"][str(n)] < math.log(256)  # learned something over uniform bytes
    first, last = r["train_curve"][0][1], r["train_curve"][-1][1]
    assert last < first
  # same width and depth: parameter counts within 40% (tiny heads make it loose)
  ratio = rows["phasor"]["num_params"] / rows["gpt_rope"]["num_params"]
  assert 0.7 < ratio < 1.4
  assert lm["eval_tokens"] > 0 and lm["eval_tokens"] % max(cfg.eval_lens) == 0


@pytest.mark.slow
def test_decode_state_is_flat(tiny):
  d = tiny[0]["results"]["decode"]
  cfg = lc.TINY
  assert d["weights"] == "trained in part lm" and d["stopped"] is None
  assert d["variant"] == tiny[0]["results"]["lm"]["best_variant"]
  rows = d["rows"]
  ctx = [r["context"] for r in rows]
  assert ctx == lc.decode_milestones(cfg.decode_tokens, cfg.decode_chunk) == [256, 1024, 4096]
  assert len({r["state_bytes"] for r in rows}) == 1  # identical at every milestone
  for r in rows:  # the cache really advanced that far: prompt + 2 decode chunks
    assert r["pos"] == r["context"] + 2 * cfg.decode_chunk
    assert r["all_finite"] and r["us_per_token"] > 0
    assert r["kv_bytes_computed"] == lc.kv_cache_bytes(cfg.layers, cfg.width, r["context"])
  assert rows[-1]["kv_bytes_computed"] > rows[-1]["state_bytes"]
  # per layer: S (2 float32 [B, H, D]) + x_prev [B, width] + pos
  hd, w = cfg.hd_dim, cfg.width
  seed_bytes = cfg.layers * (2 * 4 * hd + 4 * w + 4)
  if d["variant"] == "seed":
    assert rows[0]["state_bytes"] == seed_bytes
  else:  # plus the window's last 16 keys and values (float32) and 3 raw inputs per layer
    assert rows[0]["state_bytes"] >= seed_bytes + cfg.layers * 4 * (2 * 16 * w + 3 * w)
  assert d["mode"] == "prefill" and d["sample_end"]


@pytest.mark.slow
def test_decode_budget_stops_and_is_recorded():
  out = lc.run(dataclasses.replace(lc.TINY, parts=("decode",), decode_max_minutes=1e-9,
                                   decode_mode="stream"))
  d = out.results["decode"]
  assert "lm" not in out.results and d["weights"] == "random init"
  assert d["mode"] == "stream"
  assert [r["context"] for r in d["rows"]] == [256, 512]  # stopped inside segment 2
  assert d["stopped"] and "STOPPED" in out.table


def test_eval_sets_cover_the_same_bytes():
  val = np.arange(5000, dtype=np.int64).astype(np.uint8)
  sets = lc.eval_sets(val, (64, 256), n_tokens=4096, batch_tokens=1024)
  targets = {n: np.concatenate([b[:, 1:].ravel() for b in bs]) for n, bs in sets.items()}
  np.testing.assert_array_equal(targets[64], targets[256])
  np.testing.assert_array_equal(targets[64], val[1:4097].astype(np.int32))
  short = lc.eval_sets(val[:2100], (64, 256), n_tokens=4096, batch_tokens=1024)
  assert sum(len(b) for b in short[256]) * 256 == 2048  # cut to whole batches


def test_helpers():
  assert lc.decode_milestones(2**20, 1024) == [1024, 4096, 16384, 65536, 262144, 2**20]
  assert lc.decode_milestones(3072, 1024) == [1024, 3072]
  assert lc.kv_cache_bytes(4, 256, 2**20) == 4 * 2**30
  (h, *others), g = lc.model_configs(lc.LongContextConfig())
  assert len(others) == len(lc.LongContextConfig().variants) - 1
  assert (h.hidden_size, h.num_hidden_layers, h.num_heads) == (256, 4, 4)
  assert (g.hidden_size, g.num_hidden_layers, g.num_heads) == (256, 4, 4)
  assert h.max_seq_len >= 16384 and g.max_seq_len >= 16384 and h.vocab_size == hdata.VOCAB_SIZE
  # Equal parameters: attention's MLP grows to the largest variant's count, by at most 64 units.
  most = max(lc.phasor_params(c) for c in (h, *others))
  assert most <= g.num_params() < most + 64 * 2 * 256 * 4
  assert g.intermediate_size % 64 == 0
  (_, *_), g_width = lc.model_configs(lc.LongContextConfig(match_params=False))
  assert g_width.intermediate_size == 4 * 256 < g.intermediate_size


def test_bad_arguments():
  with pytest.raises(ValueError, match="variants"):
    harness.parse("long_context", ["--tiny", "--variants", "seed", "seed"])
  with pytest.raises(ValueError, match="variants"):
    harness.parse("long_context", ["--tiny", "--variants", "wind4"])
  with pytest.raises(ValueError, match="parts"):
    harness.parse("long_context", ["--parts", "lm,nope"])
  with pytest.raises(ValueError, match="calib_steps"):
    harness.parse("long_context", ["--calib-steps", "2"])
  with pytest.raises(ValueError, match="decode_chunk"):
    harness.parse("long_context", ["--decode-tokens", "1000"])
  with pytest.raises(ValueError, match="decode_mode"):
    harness.parse("long_context", ["--decode-mode", "fast"])
  cfg = harness.parse("long_context", ["--tiny", "--max-minutes", "none", "--eval-lens", "64",
                                       "128"])
  assert cfg.max_minutes is None and cfg.eval_lens == (64, 128) and cfg.parts == ("lm", "decode")
