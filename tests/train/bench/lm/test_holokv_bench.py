"""The HoloKV evaluation on the tiny random model (CPU): passkey scoring, distillation
that lowers its loss, held-out split, the record, bad config."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from holojax.models import decoding
from holojax.models.kv_cache import CacheSpec
from holojax.models.lora import add_lora, lora_count
from holojax.train.bench.lm import holokv as hb
from holojax.train.bench.lm.distill import train_tokens
from holojax.train.bench.lm import pretrained as pe


@pytest.fixture(scope="module")
def tiny():
  return pe.load(pe.PretrainedEvalConfig.tiny())[0]  # llama-tiny with a 512-token context


def test_teacher_forced_passkey_is_greedy_exact_match(tiny):
  """A row scores a hit exactly when greedy decoding writes the answer."""
  tok = pe.ByteTokenizer()
  cfg = hb.HoloKVEvalConfig.tiny(passkey_lengths=(448,), passkey_depths=(0.5,),
                                 passkey_trials=2)
  rows, spans, keys, where = hb.passkey_rows(tok, cfg, np.random.default_rng(0))
  # Make row 0's answer what the model greedily writes, so it must score a hit.
  a, b = spans[0]
  prompt = rows[0, :a + 1]
  out = decoding.generate(tiny, jnp.asarray(prompt[None]), b - a)
  rows[0, a + 1:b + 1] = np.asarray(out)[0, a + 1:]
  spec = CacheSpec("full")
  res = hb.passkey(tiny, rows, spans, where, lambda n: spec, 2, cfg.chunk)
  assert res["by_length"]["448"]["0.5"] == 0.5  # row 0 hits; row 1's random key does not


def test_distillation_lowers_the_loss(tiny):
  cfg = hb.HoloKVEvalConfig.tiny(lora_steps=30, lora_lr=3e-3, lora_seq=64, lora_batch=4)
  tokens = np.asarray(list(b"def f(x):\n    return x + 1\n" * 200), np.int32)
  student, log = hb.distill(tiny, CacheSpec("holokv", k=4), tokens, cfg, pe.Progress())
  assert log["lora_params"] == lora_count(student) == 2 * 4 * ((64 + 64) + (64 + 32) + (64 + 64))
  assert np.mean(log["loss"][-5:]) < 0.8 * np.mean(log["loss"][:3])
  # The teacher is untouched; the student's base weights are the teacher's.
  np.testing.assert_array_equal(student.layers[0].q_proj.base_module.kernel[...],
                                tiny.layers[0].q_proj.kernel[...])


def test_lora_bad_target(tiny):
  with pytest.raises(ValueError, match=r"layers\[0\]\.input_norm .*cannot add LoRA"):
    add_lora(nnx.clone(tiny), 4, ("input_norm",), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="rank=0"):
    add_lora(nnx.clone(tiny), 0, ("q_proj",), rngs=nnx.Rngs(0))


def test_tiny_run_record(tmp_path):
  (tmp_path / "doc.md").write_text("Held-out prose for the test. " * 40)
  cfg = hb.HoloKVEvalConfig.tiny(variants=("holokv-k4-faithful+lora",),
                                 passkey_lengths=(448,), demo_variant="holokv-k4-faithful+lora",
                                 text_dir=str(tmp_path))
  out = hb.run(cfg)
  r = out.results
  json.dumps(r)
  assert set(r["perplexity"]) == {"holokv-k4-faithful+lora"}
  assert r["bytes_per_token"]["holokv-k4-faithful+lora"]["formula"] == 2 * (2 * 2 * 16 * 4) / 4
  assert "holokv-k4-faithful" in r["lora"] and r["split"]["held_out_text"]["files"] == 1
  assert r["demo"]["key"] not in str(r["split"]["train"])
  assert "holokv-k4/xla" in r["decode"]["b2/256"]
  assert "passkey@448" in out.table and "demo" in out.table
  assert out.files["holokv.png"][:8] == b"\x89PNG\r\n\x1a\n"


def test_variant_specs():
  cfg = hb.HoloKVEvalConfig()
  assert hb.spec_of("window", cfg, 8192).window == 2048  # the bytes of k = window_ratio
  s = hb.spec_of("holokv-k8-faithful-c", cfg, 8192)
  assert (s.kind, s.k, s.read, s.center, s.sinks) == ("holokv", 8, "faithful", True, 4)
  assert hb.spec_of("int4", cfg, 8192).group == 32


def test_keys_are_not_in_the_training_text():
  tok = pe.ByteTokenizer()
  text, info = train_tokens(tok, 200_000)
  rows, _, keys, _ = hb.passkey_rows(tok, hb.HoloKVEvalConfig.tiny(),
                                     np.random.default_rng(0))
  corpus = bytes(text.astype(np.uint8)).decode("utf-8", "replace")
  assert keys and not any(f"pass key is {k}" in corpus for k in keys)
  assert info["files"] > 0 and "tests skipped" in info["source"]


@pytest.mark.parametrize("kw, match", [
    (dict(variants=("holokv-k3-joint",)), "k=3"),
    (dict(variants=("int4+lora",)), "holokv caches only"),
    (dict(variants=("holokv-k4-mixed",)), "variants="),
    (dict(ppl_contexts=(100,)), "multiples of chunk"),
    (dict(lora_rank=0), "lora_rank"),
])
def test_bad_config(kw, match):
  with pytest.raises(ValueError, match=match):
    hb.HoloKVEvalConfig(**kw)
