"""`holojax bench finetune`: the tiny run end to end, its splits, and its config's errors."""

import json

import numpy as np
import pytest

from holojax.models.lm import causal_lm_loss
from holojax.train.bench.lm import finetune as ft
from holojax.train.bench.lm.pretrained import ByteTokenizer


@pytest.fixture(scope="module")
def tiny():
  return ft.run(ft.TINY)


def test_tiny_run_reports_every_optimizer_at_its_best_rate(tiny):
  r = tiny.results
  json.dumps(r)
  assert list(r["optimizers"]) == list(ft.TINY.optimizers)
  for name, o in r["optimizers"].items():
    assert o["best_lr"] in ft.TINY.lr_grid
    ok = [s for s in o["sweep"] if not s["diverged"]]
    assert o["best_lr"] == min(ok, key=lambda s: s["val_loss"])["lr"]
    f = o["final"]
    assert len(f["train_losses"]) == ft.TINY.steps and np.isfinite(f["test_loss"])
    assert f["state_bytes"] > 0 and f["step_ms"] > 0 and f["step_bytes"] > f["state_bytes"]
  assert r["optimizers"]["adamw"]["final"]["state_bits_per_param"] == pytest.approx(64, abs=0.1)
  assert r["optimizers"]["turbo_adam"]["final"]["state_bits_per_param"] < 32
  assert np.isfinite(r["before_test_loss"])
  (png,) = tiny.files.values()
  assert png[:4] == b"\x89PNG"
  assert "held-out loss" in tiny.table


def test_splits_share_no_module_and_mask_all_but_answers():
  data = ft.splits(ByteTokenizer(), ft.TINY)
  m = data.modules
  assert m["train"] and m["val"] and m["test"]
  assert not (m["train"] & m["val"]) and not (m["train"] & m["test"]) and not (m["val"] & m["test"])
  for enc in (data.train, data.val, data.test):
    assert ((enc.labels_bt == -100) | (enc.labels_bt == enc.ids_bt)).all()
  # The loss counts answer tokens only: random logits, the mean CE over the labelled positions.
  rng = np.random.default_rng(0)
  ids, labels = data.test.ids_bt[:2], data.test.labels_bt[:2]
  logits = rng.normal(size=(*ids.shape, 256)).astype(np.float32)
  lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  mask = labels[:, 1:] != -100
  ce = -np.take_along_axis(lp[:, :-1], np.where(mask, labels[:, 1:], 0)[..., None], -1)[..., 0]
  assert float(causal_lm_loss(logits, labels)) == pytest.approx(ce[mask].mean(), rel=1e-5)


@pytest.mark.parametrize("kw,match", [
    (dict(optimizers=("sgd",)), "optimizers"),
    (dict(lr_grid=()), "lr_grid"),
    (dict(lr_grid=(0.0,)), "lr_grid"),
    (dict(task="summary"), "task"),
    (dict(held_out=1.0), "held_out"),
    (dict(steps=0), "steps"),
    (dict(tree_layout="stacked"), "tree_layout"),
])
def test_bad_config_names_the_field(kw, match):
  with pytest.raises(ValueError, match=match):
    ft.FinetuneConfig.tiny(**kw)


def test_optimizers_get_the_configured_tree_layout():
  import jax.numpy as jnp  # noqa: PLC0415
  params = {"w": jnp.zeros((64, 256)), "b": jnp.zeros((256,))}
  flat = ft._tx("holo_adam", 1e-3, 0, "flat").init(params)
  leaf = ft._tx("holo_adam", 1e-3, 0, "leaf").init(params)
  holo_state = lambda s: s[1].inner_state[0]  # chain(clip, apply_if_finite(chain(holo, ...)))
  assert isinstance(holo_state(flat).mu, tuple) and isinstance(holo_state(leaf).mu, dict)
  ft._tx("adamw", 1e-3, 0, "flat").init(params)  # optimizers without the argument ignore it
