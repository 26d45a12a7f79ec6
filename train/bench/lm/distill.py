"""Knowledge distillation from a pretrained teacher: the text, the loss, the loop.

A student (the teacher with a compressed cache and LoRA adapters, or with
its layers swapped for HOLO / low-rank ones) learns to match the teacher's
next-token distribution on text that no evaluation reads:

  KL(p_T || p_S) = mean over tokens of sum_v p_T(v) (log p_T(v) - log p_S(v))

Only the student's variables selected by ``wrt`` (an ``nnx`` filter) train,
with AdamW under a warm-up + cosine schedule; everything else stays the
teacher's.

Example:
  >>> from holojax.models.llama import LLAMA_PRESETS, Llama
  >>> t = Llama(LLAMA_PRESETS["llama-tiny"], rngs=nnx.Rngs(0))
  >>> s = Llama(LLAMA_PRESETS["llama-tiny"], rngs=nnx.Rngs(1))
  >>> loss = lambda s, ids: (kl_to_teacher(t(ids), s(ids)),) * 2
  >>> toks = np.arange(400, dtype=np.int32) % 256
  >>> s, log = distill_loop(s, loss, nnx.Param, toks, steps=3, batch=2, seq=16, lr=1e-3)
  >>> len(log["kl"]), log["kl"][-1] < log["kl"][0]
  (3, True)
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from holojax.data.text import default_corpus_path
from holojax.train.bench.common import Progress


def train_tokens(tok, n: int, root=None) -> tuple[np.ndarray, dict]:
  """The first ``n`` tokens of the standard library's ``.py`` files (sorted; test
  folders and site-packages skipped), and where they came from. Evaluations read
  documentation (``pretrained.held_out_tokens``), never these."""
  root = root or default_corpus_path()
  ids, files = [], 0
  for path in sorted(root.rglob("*.py")):
    if "test" in path.parts or "site-packages" in path.parts:
      continue
    ids.extend(tok.encode(path.read_text(encoding="utf-8", errors="ignore") + "\n\n"))
    files += 1
    if len(ids) >= n:
      break
  if len(ids) < n:
    raise ValueError(f"{root} has {len(ids)} tokens of .py source, fewer than {n}")
  return np.asarray(ids[:n], np.int32), {"source": f"{root} (*.py, tests skipped)",
                                         "files": files, "tokens": n}


def kl_to_teacher(t_logits, s_logits) -> jax.Array:
  """Mean over positions of KL(softmax(t) || softmax(s)) (teacher gets no gradient)."""
  lp_t = jax.nn.log_softmax(jax.lax.stop_gradient(t_logits).astype(jnp.float32), -1)
  lp_s = jax.nn.log_softmax(s_logits.astype(jnp.float32), -1)
  return jnp.mean(jnp.sum(jnp.exp(lp_t) * (lp_t - lp_s), -1))


def distill_loop(student, loss_fn, wrt, tokens: np.ndarray, *, steps: int, batch: int,
                 seq: int, lr: float, seed: int = 0, progress: Progress = Progress(),
                 tag: str = "distill"):
  """Trains ``student``'s ``wrt`` variables (in place) on random windows of ``tokens``.

  Args:
    loss_fn: ``(student, ids_bt) -> (loss, kl)``, traced inside one jit.
    wrt: an ``nnx`` filter of what trains (``nnx.LoRAParam``, a path filter, ...).
    steps / batch / seq: steps, windows per step, tokens per window.
    lr: peak AdamW learning rate (linear warm-up over 10% of the steps, cosine
      to lr / 10, no weight decay).

  Returns:
    ``(student, {"loss": [...], "kl": [...], "trained_params", "seconds"})``.
  """
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(steps // 10, 1), max(steps, 2),
                                             lr / 10)
  opt = nnx.Optimizer(student, optax.adamw(sched, weight_decay=0.0), wrt=wrt)

  @nnx.jit
  def step(student, opt, ids):
    (loss, kl), grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt),
                                           has_aux=True)(student, ids)
    opt.update(student, grads)
    return loss, kl

  rng = np.random.default_rng(seed + 1)
  starts = rng.integers(0, len(tokens) - seq, size=(steps, batch))
  log = {"loss": [], "kl": []}
  t0 = time.perf_counter()
  for i in range(steps):
    ids = np.stack([tokens[s:s + seq] for s in starts[i]])
    loss, kl = step(student, opt, jnp.asarray(ids))
    log["loss"].append(loss)
    log["kl"].append(kl)
    if (i + 1) % max(steps // 5, 1) == 0:
      progress.say(f"  {tag} step {i + 1}/{steps}: loss {float(loss):.4f}")
  log = {k: [float(x) for x in v] for k, v in log.items()}
  log.update(trained_params=sum(x.size for x in jax.tree.leaves(nnx.state(student, wrt))),
             seconds=time.perf_counter() - t0)
  return student, log
