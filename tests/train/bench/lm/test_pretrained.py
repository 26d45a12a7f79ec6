"""The pretrained-model evaluations on the tiny random model (CPU): structure, passkey prompts."""

import json
import re

import pytest

from holojax.train.bench.lm import pretrained as pe


def test_passkey_prompt_exact_length_and_depth():
  tok = pe.ByteTokenizer()
  for depth in (0.0, 0.5, 1.0):
    ids = pe.passkey_prompt(tok, 1000, depth, "12345")
    assert len(ids) == 1000
    text = tok.decode(ids)
    assert text.startswith(pe.TASK) and text.endswith(pe.QUESTION)
    assert text.count("12345") == 2 and pe.FILLER in text
    at = text.index("The pass key is 12345") / len(text)
    assert abs(at - (0.15 + 0.8 * depth)) < 0.2, (depth, at)
  with pytest.raises(ValueError, match="too short"):
    pe.passkey_prompt(tok, 100, 0.5, "12345")


def test_config_validation():
  with pytest.raises(ValueError, match="caches"):
    pe.PretrainedEvalConfig(caches=("full", "fp8"))
  with pytest.raises(ValueError, match="ppl_chunk"):
    pe.PretrainedEvalConfig(ppl_contexts=(500,), ppl_chunk=256)
  with pytest.raises(ValueError, match="passkey_depths"):
    pe.PretrainedEvalConfig(passkey_depths=(1.5,))


def test_tiny_run(tmp_path):
  (tmp_path / "doc.md").write_text("Held-out prose for the test. " * 40)
  cfg = pe.PretrainedEvalConfig.tiny(caches=("full", "int4", "window"), text_dir=str(tmp_path))
  out = pe.run(cfg)
  r = out.results
  json.dumps(r)  # a record
  assert r["held_out_text"]["files"] == 1
  for kind in cfg.caches:
    assert set(r["perplexity"][kind]) == {"128"} and r["perplexity"][kind]["128"] > 1
    assert 0 <= r["passkey"][kind]["accuracy"] <= 1
    s = r["speed"][kind]["2"]
    assert s["decode_tokens_per_s"] > 0 and s["prefill_tokens_per_s"] > 0
  assert r["speed"]["int4"]["2"]["cache_bytes"] < r["speed"]["full"]["2"]["cache_bytes"]
  assert r["speed"]["int4"]["2"]["bytes_per_token"] < r["speed"]["full"]["2"]["bytes_per_token"]
  assert re.search(r"int4 \|\s+\d+ \|", out.table)
