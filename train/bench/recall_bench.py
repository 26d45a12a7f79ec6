"""Recall benchmarks for the Holo-Transformer (issue #5): MQAR and passkey.

Phasor memory (``HoloForCausalLM``, content mode, default memory backend)
against softmax attention (``GPT``, RoPE, cuDNN on GPU) of the same width
and depth, trained the same way: AdamW (b = 0.9, 0.98, weight decay 0.1 on
matrices, clip 1.0), peak lr 2e-3 (``--lr a,b`` sweeps and keeps the best
per model), linear warm-up over 5% of the steps then cosine to 10% of the
peak, the same steps, batches and data (one deterministic stream shared by
all models). 16384 tokens per step: batch = 16384 // T examples.

(1) MQAR on the Zoology grid (T, pairs) in {(64, 4), (128, 8), (256, 16),
    (512, 64)}, vocab 8192, 2 layers, widths 64..512. Zoology style: one
    model per (architecture, width) trained on a mix of the grid, step i
    draws its batch from grid point i mod 4 (so 4 compiled shapes), then is
    evaluated on held-out examples of each grid point (test seeds disjoint
    from the training seeds). Reported: accuracy at the query positions,

      acc = #{queries q : argmax logits[t_q] = value(q)} / #queries,

    parameter counts, and whether the phasor model reaches >= 99% wherever
    attention does.
(2) Passkey retrieval (bytes, vocab 256): both architectures at width 128
    trained at T = 1024 with needles at uniformly random depths, next-byte
    loss on every position (``--passkey-loss all``: the repeated filler
    teaches copying) or on the answer only (``answer``, the default: with
    ``all`` neither model found a single key, even at 1k, after 4000 steps
    on the H100); evaluated at
    T = 1k, 2k, 4k, 8k, 16k and depths 0.1, 0.5, 0.9 by exact match of the
    5-digit key (and per-digit accuracy). Beyond 1k the attention model
    extrapolates RoPE past its training length.

Shapes: ``heads = max(1, width // head_width)`` for both models (head_width
64 by default). Attention heads are width / heads = 64 wide; the phasor
memory is hd_dim = 2 width wide (the seed's choice), so each phasor head
holds 2 width / heads = 128 complex components: the per-head capacity that
sets its cross-talk ~ sqrt(pairs / 128). The phasor model ties its
embeddings like GPT does; its attention block has 10 d^2 weights against
4 d^2 (v, o at d x 2d; k, k_prev, q at d x 2d), so it has more parameters
at equal width (both counts are reported).

Time: MQAR gets 72% of ``--max-minutes`` (8 by default), passkey the
rest; each width gets an equal slice of what is left. The first
architecture of a width measures its step time after compiling (24 steps)
and plans how many steps fit in 40% of the slice (at most ``--steps``); the
other trains for the same number of steps. Training stops early (and still
evaluates and records) when the part's time is spent. The steps therefore
depend on the machine: the record and the table give them. Progress goes to
stdout as it happens; ``--out`` gets the partial record after each model.
Batches are made on the host ahead of time by spawned worker processes and
kept, so only the first model of a part can wait for data.

Why lr 2e-3 (H100, records ``recall--nvidia-h100-*``): at 6e-3 and ~1000
steps per model, attention stayed at <= 25% on every grid point and the
phasor models of width >= 256 did not train; at 2e-3 and ~9-10k steps,
attention reached >= 99.9% at widths 64 and 128 (not at 256 in that run)
and the phasor 100% at 64x4 from width 64 up. Defaults reproduce that run
(``--widths 64,128,256`` there; 512 is the default too, at the cost of time).

  holojax bench recall                          # GPU, about 8 minutes
  holojax bench recall --parts mqar --widths 64,128 --steps 4000
  holojax bench recall --tiny                   # CPU smoke, < 1 minute
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import functools
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Callable

import jax
import numpy as np
from flax import nnx

from holojax.data.synthetic import LMExamples, mqar, passkey, shifted_correct
from holojax.models.holo_transformer import HoloForCausalLM, causal_lm_loss
from holojax.optim.accounting import num_params
from holojax.train.bench.common import (adamw, build_lm, check_finite,
                                        fit_steps, lm_config, train_steps,
                                        warmup_cosine)
from holojax.train.step import (host_lr, init_state, make_eval_step,
                                make_train_step, model_of, schedule_values)

ARCHS = ("phasor", "attention")
# Seed ranges: training streams and test sets never share a seed.
_MQAR_TRAIN, _MQAR_TEST = 0, 10**12
_PASSKEY_TRAIN, _PASSKEY_TEST = 2 * 10**12, 3 * 10**12


@dataclasses.dataclass(frozen=True)
class RecallConfig:
  """One recall run. The defaults are the GPU run: ~6 minutes on an H100.

  MQAR: 2 models x 4 widths, each at most ``steps`` steps (cycling the
  grid) of ``batch_tokens`` tokens, i.e. batch_tokens // T examples at
  sequence length T; passkey: 2 models at ``passkey_width``.
  ``max_minutes`` caps the wall clock of the whole run (compiles included).
  """

  parts: tuple[str, ...] = ("mqar", "passkey")
  archs: tuple[str, ...] = ARCHS
  num_layers: int = 2
  head_width: int = 64
  lrs: tuple[float, ...] = (2e-3,)
  weight_decay: float = 0.1
  warmup_frac: float = 0.05
  dtype: str = "bfloat16"
  seed: int = 0
  max_minutes: float = 8.0
  mqar_share: float = 0.72        # of the budget, when both parts run
  log_every: int = 250
  # MQAR
  grid: tuple[tuple[int, int], ...] = ((64, 4), (128, 8), (256, 16),
                                       (512, 64))
  vocab_size: int = 8192
  widths: tuple[int, ...] = (64, 128, 256, 512)
  steps: int = 10000
  batch_tokens: int = 16384
  test_examples: int = 512
  eval_tokens: int = 65536
  # Passkey
  passkey_width: int = 128
  passkey_train_len: int = 1024
  passkey_steps: int = 6000
  passkey_batch: int = 32
  passkey_loss: str = "answer"
  passkey_lens: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384)
  passkey_depths: tuple[float, ...] = (0.1, 0.5, 0.9)
  passkey_test_examples: int = 16  # per (length, depth)
  passkey_eval_tokens: int = 65536  # per eval batch: 4 x 16k at 16k

  def __post_init__(self):
    for p in self.parts:
      if p not in ("mqar", "passkey"):
        raise ValueError(f"part {p!r} must be 'mqar' or 'passkey'")
    for a in self.archs:
      if a not in ARCHS:
        raise ValueError(f"arch {a!r} must be one of {ARCHS}")
    for w in (*self.widths, self.passkey_width):
      if w < 1 or w % max(1, w // self.head_width) or (
          w // max(1, w // self.head_width)) % 2:
        raise ValueError(f"width={w} must split into an even head size with "
                         f"head_width={self.head_width}")
    for t, n in self.grid:
      if t < 4 * n or n > self.vocab_size // 2 - 1:
        raise ValueError(f"grid point T={t}, pairs={n} does not fit "
                         f"vocab_size={self.vocab_size} (need T >= 4 pairs)")
    if self.passkey_loss not in ("all", "answer"):
      raise ValueError(f"passkey_loss={self.passkey_loss!r} must be 'all' or "
                       "'answer'")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype={self.dtype!r} must be float32 or bfloat16")
    if not self.lrs or min(self.lrs) <= 0 or self.max_minutes <= 0:
      raise ValueError("lrs and max_minutes must be positive")


TINY = dict(grid=((32, 4), (64, 8)), vocab_size=128, widths=(32,), steps=60,
            batch_tokens=768, test_examples=64, eval_tokens=4096, lrs=(3e-3,),
            passkey_width=32, passkey_train_len=128, passkey_steps=20,
            passkey_batch=4, passkey_lens=(128, 256), passkey_depths=(0.1, 0.9),
            passkey_test_examples=4, passkey_eval_tokens=1024, max_minutes=1.0,
            log_every=20, dtype="float32")


# ----------------------------------------------------------------------------
# models


def num_heads(width: int, head_width: int) -> int:
  """Heads for both architectures: width // head_width, at least 1."""
  return max(1, width // head_width)


def model_config(arch: str, width: int, *, vocab_size: int, num_layers: int,
                 head_width: int, max_seq_len: int, dtype: str):
  """The phasor (memory width 2 width, tied embeddings) or attention LM config.

  Example:
    >>> c = model_config("phasor", 64, vocab_size=128, num_layers=2,
    ...                  head_width=64, max_seq_len=64, dtype="float32")
    >>> c.hd_dim, c.num_heads
    (128, 1)
  """
  return lm_config(arch, vocab_size=vocab_size, width=width, layers=num_layers,
                   heads=num_heads(width, head_width), max_seq_len=max_seq_len,
                   dtype=dtype, hd_dim=2 * width, mode="content",
                   tie_embeddings=True)


def logits_of(model: nnx.Module, ids_bt: jax.Array) -> jax.Array:
  """float32[B, T, V] logits from either model."""
  if isinstance(model, HoloForCausalLM):
    return model.logits_only(ids_bt)
  return model(ids_bt)


# ----------------------------------------------------------------------------
# optimisation


def labels_loss(model: nnx.Module, ex: LMExamples) -> jax.Array:
  """Next-token loss where ``ex.labels`` has a target."""
  return causal_lm_loss(logits_of(model, ex.input_ids), ex.labels)


def all_loss(model: nnx.Module, ex: LMExamples) -> jax.Array:
  """Next-token loss on every position (the ids as labels)."""
  return causal_lm_loss(logits_of(model, ex.input_ids), ex.input_ids)


def correct(model: nnx.Module, ex: LMExamples):
  """Per example (correct_b, count_b): argmax logits[t] == labels[t + 1],
  counted where labels[t + 1] != -100."""
  return shifted_correct(logits_of(model, ex.input_ids), ex.labels)


class BatchStream:
  """Deterministic batches by step index, made ahead by workers, kept.

  Every model of a part reads the same stream, so they see the same data and
  only the first one can wait for the host; making starts at construction,
  so the batches build up while the first model compiles. ``make`` must be
  picklable (a top-level function or a partial of one): with 4 or more
  workers they are spawned processes (numpy holds the GIL for most of
  ``mqar``), else threads.
  """

  def __init__(self, make: Callable[[int], LMExamples], *, ahead: int = 512,
               workers: int | None = None, processes: bool | None = None):
    workers = workers or max(1, min(12, (os.cpu_count() or 2) - 2))
    processes = workers >= 4 if processes is None else processes
    self._pool = (ProcessPoolExecutor(workers, mp_context=mp.get_context(
        "spawn")) if processes else ThreadPoolExecutor(workers))
    self._make, self._ahead, self._futs, self._next = make, ahead, {}, 0
    self._submit(ahead)

  def _submit(self, upto: int):
    for j in range(self._next, upto):
      self._futs[j] = self._pool.submit(self._make, j)
    self._next = max(self._next, upto)

  def __getitem__(self, i: int) -> LMExamples:
    self._submit(i + self._ahead)
    return self._futs[i].result()

  def close(self):
    self._pool.shutdown(wait=False, cancel_futures=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class Clock:
  """Wall-clock budget of the run, and timestamped progress lines."""

  def __init__(self, minutes: float):
    self.t0 = time.perf_counter()
    self.deadline = self.t0 + 60.0 * minutes

  def now(self) -> float:
    return time.perf_counter() - self.t0

  def left(self) -> float:
    return self.deadline - time.perf_counter()

  def log(self, msg: str):
    print(f"[recall {self.now():7.1f}s] {msg}", flush=True)


def train_model(train_step, state, stream: BatchStream, *, steps: int,
                peak_lr: float, warmup_frac: float, num_shapes: int,
                clock: Clock, plan_s: float | None, stop_at: float,
                log_every: int, tag: str) -> tuple:
  """Trains for ``steps`` steps (fewer if ``plan_s`` or ``stop_at`` say so).

  With ``plan_s``, after one compiling pass over the ``num_shapes`` shapes
  and >= 24 timed steps, the total becomes the number of steps that fit in
  ``plan_s`` seconds from the start (warm-up, ``warmup_frac`` of the total,
  and the cosine follow it). Training stops at ``stop_at`` (perf_counter
  seconds), the end of the part's budget, whatever the plan.
  Returns (state, info) with steps_done, losses [(step, loss)], step_ms.
  """
  start = time.perf_counter()
  total, losses, step_ms = steps, [], None
  plan_at = num_shapes * (1 + max(2, -(-24 // num_shapes)))

  def on_loss(i, loss):
    check_finite(tag, i, loss)
    losses.append((i, loss))
    clock.log(f"{tag}: step {i:>5}/{total} loss {loss:.4f}")

  def run(state, begin, end):
    sched = warmup_cosine(peak_lr, max(1, int(warmup_frac * total)), total)
    lrs = schedule_values(sched, end)
    return train_steps(train_step, state, stream.__getitem__, lrs.__getitem__,
                       range(begin, min(end, total)), losses=[], stop_at=stop_at,
                       log_at=lambda i: i % log_every == 0 or i == total - 1,
                       on_loss=on_loss)

  state, done = run(state, 0, num_shapes)
  if done == num_shapes:
    jax.block_until_ready(state)
    t_compiled = time.perf_counter()
    clock.log(f"{tag}: compiled {num_shapes} shape(s) in {t_compiled - start:.1f}s")
    state, done = run(state, num_shapes, plan_at)
    if done == plan_at:
      jax.block_until_ready(state)
      now = time.perf_counter()
      step_s = (now - t_compiled) / (plan_at - num_shapes)
      step_ms = 1e3 * step_s
      if plan_s is not None:
        total = fit_steps(start + plan_s - now, step_s, done=plan_at, most=steps)
        clock.log(f"{tag}: {step_ms:.2f} ms/step -> {total} steps")
      state, done = run(state, plan_at, total)
  stopped = done < total
  if stopped:
    clock.log(f"{tag}: time budget spent, stopping at step {done}/{total}")
  jax.block_until_ready(state)
  info = {"steps_done": done, "planned_steps": total, "stopped_early": stopped,
          "train_s": time.perf_counter() - start, "step_ms": step_ms,
          "final_loss": losses[-1][1] if losses else None, "losses": losses}
  return state, info


def evaluate(eval_step, state, ex: LMExamples, batch: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """Per-example (correct, counted) targets over ``ex`` in batches."""
  n = ex.input_ids.shape[0]
  b = max(d for d in range(1, min(batch, n) + 1) if n % d == 0)
  hits, count = [], []
  for s in range(0, n, b):
    c, k = eval_step(state, LMExamples(ex.input_ids[s:s + b], ex.labels[s:s + b]))
    hits.append(np.asarray(c))
    count.append(np.asarray(k))
  return np.concatenate(hits), np.concatenate(count)


# ----------------------------------------------------------------------------
# the two parts


def _grid_key(t: int, n: int) -> str:
  return f"{t}x{n}"


def mqar_batch(i: int, *, grid: tuple[tuple[int, int], ...],
               batch_tokens: int, vocab_size: int, seed: int) -> LMExamples:
  """Training batch i: batch_tokens // T examples of grid point i mod G.

  Example:
    >>> ex = mqar_batch(1, grid=((32, 4), (64, 8)), batch_tokens=256,
    ...                 vocab_size=64, seed=0)
    >>> ex.input_ids.shape
    (4, 64)
  """
  t, n = grid[i % len(grid)]
  return mqar(max(1, batch_tokens // t), seq_len=t, num_pairs=n,
              vocab_size=vocab_size, seed=_MQAR_TRAIN + 10**9 * seed + i)


def passkey_batch(num_examples: int, seq_len: int, seed: int) -> LMExamples:
  """Passkey examples with needle depths drawn uniformly from [0, 1]."""
  rng = np.random.default_rng(seed)
  rows = [passkey(1, seq_len=seq_len, depth=float(d),
                  seed=int(rng.integers(2**62)))
          for d in rng.random(num_examples)]
  return LMExamples(np.concatenate([r.input_ids for r in rows]),
                    np.concatenate([r.labels for r in rows]))


def passkey_train_batch(i: int, *, batch: int, seq_len: int, seed: int
                        ) -> LMExamples:
  """Training batch i of the passkey stream."""
  return passkey_batch(batch, seq_len, _PASSKEY_TRAIN + 10**9 * seed + i)


def _run_group(cfg: RecallConfig, clock: Clock, *, width: int, lr: float,
               vocab_size: int, max_seq_len: int, stream: BatchStream,
               steps: int, num_shapes: int, slice_s: float, loss_on: str,
               evaluate_fn: Callable, record: Callable, part: str,
               compiled: dict, stop_at: float) -> list:
  """Trains every arch at one width: the first plans the steps, the rest
  follow it; ``evaluate_fn(eval_step, state, tag) -> dict``.
  ``compiled`` keeps the jitted steps per (arch, width) across an lr sweep."""
  group_start = time.perf_counter()
  runs, planned = [], None
  for k, arch in enumerate(cfg.archs):
    tag = f"{part} {arch} w={width} lr={lr:g}"
    if time.perf_counter() >= stop_at:
      clock.log(f"{tag}: skipped, the time budget is spent")
      runs.append({"arch": arch, "width": width, "lr": lr,
                   "error": "skipped: time budget spent"})
      record(runs[-1])
      continue
    mcfg = model_config(arch, width, vocab_size=vocab_size,
                        num_layers=cfg.num_layers, head_width=cfg.head_width,
                        max_seq_len=max_seq_len, dtype=cfg.dtype)
    tx = host_lr(adamw, weight_decay=cfg.weight_decay, b2=0.98,
                 matrices_only=True)
    graphdef, state = init_state(lambda: build_lm(mcfg, cfg.seed), tx)
    run = {"arch": arch, "width": width, "lr": lr,
           "num_heads": num_heads(width, cfg.head_width),
           "num_params": num_params(model_of(graphdef, state)),
           "model_config": dataclasses.asdict(mcfg)}
    clock.log(f"{tag}: start, {run['num_params']:,} params, "
              f"{run['num_heads']} heads")
    if (arch, width) not in compiled:
      loss = all_loss if loss_on == "all" else labels_loss
      compiled[arch, width] = (make_train_step(graphdef, tx, loss),
                               make_eval_step(graphdef, correct))
    train_step, eval_step = compiled[arch, width]
    plan_s = None
    if planned is None:  # this arch's share of what is left of the group
      left = slice_s - (time.perf_counter() - group_start)
      plan_s = 0.8 * left / (len(cfg.archs) - k)
    try:
      state, info = train_model(
          train_step, state, stream, steps=planned or steps, peak_lr=lr,
          warmup_frac=cfg.warmup_frac, num_shapes=num_shapes,
          clock=clock, plan_s=plan_s, stop_at=stop_at,
          log_every=cfg.log_every, tag=tag)
      run.update(info)
      planned = planned or info["steps_done"]
      t = time.perf_counter()
      run.update(evaluate_fn(eval_step, state, tag))
      run["eval_s"] = time.perf_counter() - t
    except FloatingPointError as e:  # record it, keep comparing the others
      run["error"] = str(e)
      clock.log(f"{tag}: {e}")
    runs.append(run)
    record(run)
  return runs


def run_mqar(cfg: RecallConfig, clock: Clock, budget_s: float,
             record: Callable) -> dict:
  """Part (1): every (width, lr) group on the mixed grid; see the docstring."""
  end = time.perf_counter() + budget_s
  stream = BatchStream(functools.partial(
      mqar_batch, grid=cfg.grid, batch_tokens=cfg.batch_tokens,
      vocab_size=cfg.vocab_size, seed=cfg.seed))
  tests = {_grid_key(t, n): mqar(cfg.test_examples, seq_len=t, num_pairs=n,
                                 vocab_size=cfg.vocab_size,
                                 seed=_MQAR_TEST + 1000 * cfg.seed + g)
           for g, (t, n) in enumerate(cfg.grid)}

  def evaluate_fn(eval_step, state, tag):
    acc = {}
    for key, ex in tests.items():
      c, k = evaluate(eval_step, state, ex,
                      max(1, cfg.eval_tokens // ex.input_ids.shape[1]))
      acc[key] = float(c.sum() / max(k.sum(), 1))
      clock.log(f"{tag}: eval {key:>7} accuracy {acc[key]:.4f}")
    return {"accuracy": acc,
            "mean_accuracy": float(np.mean(list(acc.values())))}

  groups = [(w, lr) for w in cfg.widths for lr in cfg.lrs]
  runs, compiled = [], {}
  with stream:
    for gi, (w, lr) in enumerate(groups):
      slice_s = (end - time.perf_counter()) / (len(groups) - gi)
      runs += _run_group(cfg, clock, width=w, lr=lr,
                         vocab_size=cfg.vocab_size,
                         max_seq_len=max(t for t, _ in cfg.grid),
                         stream=stream, steps=cfg.steps,
                         num_shapes=len(cfg.grid), slice_s=slice_s,
                         loss_on="labels", evaluate_fn=evaluate_fn,
                         record=record, part="mqar", compiled=compiled,
                         stop_at=end)
  return {"runs": runs, "summary": mqar_summary(runs)}


def best_runs(runs: list[dict]) -> dict[tuple[str, int], dict]:
  """(arch, width) -> the run of the best lr (mean accuracy)."""
  best = {}
  for r in runs:
    if "accuracy" not in r:
      continue
    key = (r["arch"], r["width"])
    if key not in best or r["mean_accuracy"] > best[key]["mean_accuracy"]:
      best[key] = r
  return best


def mqar_summary(runs: list[dict], threshold: float = 0.99) -> dict:
  """Does phasor reach ``threshold`` at every (width, grid point) where
  attention does (best lr of each)?"""
  best = best_runs(runs)
  checked, failures = 0, []
  for (arch, w), att in best.items():
    ph = best.get(("phasor", w))
    if arch != "attention" or ph is None:
      continue
    for key, a in att["accuracy"].items():
      if a >= threshold:
        checked += 1
        if ph["accuracy"].get(key, 0.0) < threshold:
          failures.append({"width": w, "grid": key, "attention": a,
                           "phasor": ph["accuracy"].get(key)})
  return {"threshold": threshold, "points_where_attention_reaches": checked,
          "phasor_misses": failures,
          "phasor_reaches_where_attention_does": checked > 0 and not failures}


def run_passkey(cfg: RecallConfig, clock: Clock, budget_s: float,
                record: Callable) -> dict:
  """Part (2): train at ``passkey_train_len``, evaluate lengths x depths."""
  end = time.perf_counter() + budget_s
  stream = BatchStream(functools.partial(
      passkey_train_batch, batch=cfg.passkey_batch,
      seq_len=cfg.passkey_train_len, seed=cfg.seed))
  tests = {}
  for li, t in enumerate(cfg.passkey_lens):
    parts = [passkey(cfg.passkey_test_examples, seq_len=t, depth=d,
                     seed=_PASSKEY_TEST + 10**6 * cfg.seed + 1000 * li + di)
             for di, d in enumerate(cfg.passkey_depths)]
    tests[t] = LMExamples(np.concatenate([p.input_ids for p in parts]),
                          np.concatenate([p.labels for p in parts]))

  def evaluate_fn(eval_step, state, tag):
    rows = []
    for t, ex in tests.items():
      c, k = evaluate(eval_step, state, ex,
                      max(1, cfg.passkey_eval_tokens // t))
      n = cfg.passkey_test_examples
      for di, d in enumerate(cfg.passkey_depths):
        cd, kd = c[di * n:(di + 1) * n], k[di * n:(di + 1) * n]
        rows.append({"length": t, "depth": d, "examples": n,
                     "exact_match": float(np.mean(cd == kd)),
                     "digit_accuracy": float(cd.sum() / max(kd.sum(), 1))})
      clock.log(f"{tag}: eval T={t:>6} exact " + " ".join(
          f"d{r['depth']:g}={r['exact_match']:.2f}" for r in rows[-len(
              cfg.passkey_depths):]))
    return {"eval": rows}

  runs, compiled = [], {}
  with stream:
    for li, lr in enumerate(cfg.lrs):
      slice_s = (end - time.perf_counter()) / (len(cfg.lrs) - li)
      runs += _run_group(cfg, clock, width=cfg.passkey_width, lr=lr,
                         vocab_size=256, max_seq_len=max(
                             cfg.passkey_train_len, *cfg.passkey_lens),
                         stream=stream, steps=cfg.passkey_steps, num_shapes=1,
                         slice_s=slice_s, loss_on=cfg.passkey_loss,
                         evaluate_fn=evaluate_fn, record=record,
                         part="passkey", compiled=compiled, stop_at=end)
  return {"runs": runs}


# ----------------------------------------------------------------------------
# table and CLI


def format_table(cfg: RecallConfig, results: dict) -> str:
  """MQAR: grid rows x widths (phasor / attention); passkey: length rows."""
  lines = []
  if "mqar" in results:
    best = best_runs(results["mqar"]["runs"])
    runs = list(best.values())
    steps = sorted({r["steps_done"] for r in runs})
    lines += [f"MQAR accuracy at query positions (vocab {cfg.vocab_size}, "
              f"{cfg.num_layers} layers, {cfg.batch_tokens} tokens/step, steps "
              f"{'/'.join(map(str, steps))}, lr {'/'.join(f'{x:g}' for x in cfg.lrs)})",
              "cells: " + " / ".join(cfg.archs)]
    head = f"{'T x pairs':<11}" + "".join(f"{'width ' + str(w):>17}"
                                          for w in cfg.widths)
    lines.append(head)

    def cell(w, fn):
      vals = [best.get((a, w)) for a in cfg.archs]
      return f"{' / '.join('-' if v is None else fn(v) for v in vals):>17}"

    for t, n in cfg.grid:
      key = _grid_key(t, n)
      lines.append(f"{key:<11}" + "".join(
          cell(w, lambda r: f"{r['accuracy'][key]:.3f}") for w in cfg.widths))
    if len(cfg.lrs) > 1:
      lines.append(f"{'best lr':<11}" + "".join(
          cell(w, lambda r: f"{r['lr']:g}") for w in cfg.widths))
    lines.append(f"{'params':<11}" + "".join(
        cell(w, lambda r: f"{r['num_params'] / 1e6:.2f}M") for w in cfg.widths))
    s = results["mqar"]["summary"]
    verdict = ("yes" if s["phasor_reaches_where_attention_does"] else
               "no" if s["points_where_attention_reaches"] else "n/a")
    lines.append(f"phasor >= {s['threshold']:.0%} wherever attention is: "
                 f"{verdict} ({s['points_where_attention_reaches']} points, "
                 f"{len(s['phasor_misses'])} misses)")
  if "passkey" in results:
    runs = [r for r in results["passkey"]["runs"] if "eval" in r]
    if lines:
      lines.append("")
    steps = sorted({r["steps_done"] for r in runs})
    lines += [f"Passkey exact match (width {cfg.passkey_width}, trained at "
              f"T={cfg.passkey_train_len}, {'/'.join(map(str, steps))} steps, "
              f"loss on {cfg.passkey_loss}), depths "
              + " / ".join(f"{d:g}" for d in cfg.passkey_depths),
              f"{'length':<8}" + "".join(f"{_run_name(cfg, r):>20}"
                                          for r in runs)]
    for t in cfg.passkey_lens:
      row = f"{t:<8}"
      for r in runs:
        vals = [e["exact_match"] for e in r["eval"] if e["length"] == t]
        row += f"{' / '.join(f'{v:.2f}' for v in vals):>20}"
      lines.append(row)
  return "\n".join(lines)


def _run_name(cfg: RecallConfig, r: dict) -> str:
  return r["arch"] + (f" lr={r['lr']:g}" if len(cfg.lrs) > 1 else "")


def _ints(s: str) -> tuple[int, ...]:
  return tuple(int(x) for x in s.split(",") if x)


def parse_config(argv: list[str]) -> tuple[RecallConfig, str | None]:
  p = argparse.ArgumentParser(prog="holojax bench recall",
                              description=__doc__.split("\n")[0])
  p.add_argument("--tiny", action="store_true",
                 help="CPU smoke run: small widths, vocab, lengths, steps")
  p.add_argument("--parts", default=None, help="comma list: mqar,passkey")
  p.add_argument("--archs", default=None, help="comma list: phasor,attention")
  p.add_argument("--widths", default=None, help="MQAR widths, e.g. 64,128")
  p.add_argument("--grid", default=None,
                 help="MQAR grid as TxPAIRS list, e.g. 64x4,128x8")
  p.add_argument("--steps", type=int, default=None, help="MQAR max steps")
  p.add_argument("--batch-tokens", type=int, default=None,
                 help="MQAR tokens per step (batch_tokens // T examples)")
  p.add_argument("--lr", default=None,
                 help="peak lr, or a comma list to sweep (best lr reported)")
  p.add_argument("--passkey-steps", type=int, default=None)
  p.add_argument("--passkey-width", type=int, default=None)
  p.add_argument("--passkey-train-len", type=int, default=None)
  p.add_argument("--passkey-lens", default=None, help="e.g. 1024,2048")
  p.add_argument("--passkey-loss", choices=("all", "answer"), default=None)
  p.add_argument("--max-minutes", type=float, default=None,
                 help="wall-clock budget of the whole run")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                 help="compute dtype (default bf16 on GPU, f32 elsewhere)")
  p.add_argument("--seed", type=int, default=None)
  p.add_argument("--out", default=None,
                 help="write the (partial, then final) JSON record here "
                 "(default: $OUT/recall_partial.json when $OUT is set)")
  a = p.parse_args(argv)
  kw = dict(TINY) if a.tiny else {}
  if jax.default_backend() != "gpu":
    kw["dtype"] = "float32"
  flags = {"parts": a.parts and tuple(a.parts.split(",")),
           "archs": a.archs and tuple(a.archs.split(",")),
           "widths": a.widths and _ints(a.widths),
           "grid": a.grid and tuple(tuple(int(v) for v in g.split("x"))
                                    for g in a.grid.split(",")),
           "steps": a.steps, "batch_tokens": a.batch_tokens,
           "lrs": a.lr and tuple(float(x) for x in a.lr.split(",")),
           "passkey_steps": a.passkey_steps, "passkey_width": a.passkey_width,
           "passkey_train_len": a.passkey_train_len,
           "passkey_lens": a.passkey_lens and _ints(a.passkey_lens),
           "passkey_loss": a.passkey_loss, "max_minutes": a.max_minutes,
           "dtype": a.dtype, "seed": a.seed}
  kw.update({k: v for k, v in flags.items() if v is not None})
  out = a.out or (os.environ.get("OUT") and
                  os.path.join(os.environ["OUT"], "recall_partial.json"))
  return RecallConfig(**kw), out


def run(argv: list[str]) -> dict:
  """Harness entry point: dict(config=..., results=..., table=str)."""
  cfg, out = parse_config(argv)
  clock = Clock(cfg.max_minutes)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  config = dataclasses.asdict(cfg)
  results: dict = {}
  clock.log(f"backend {jax.default_backend()}, budget {cfg.max_minutes} min, "
            f"parts {','.join(cfg.parts)}")

  def save(part):
    def record(model_run):
      results.setdefault(part, {"runs": []})
      if not any(r is model_run for r in results[part]["runs"]):
        results[part]["runs"].append(model_run)
      if out:
        with open(out, "w") as fh:
          json.dump({"config": config, "results": results, "partial": True},
                    fh, indent=1)
    return record

  for i, part in enumerate(cfg.parts):
    share = 1.0  # the last part gets whatever is left
    if i < len(cfg.parts) - 1:
      share = cfg.mqar_share if part == "mqar" else 1.0 - cfg.mqar_share
    budget = max(clock.left(), 0.0) * share
    fn = run_mqar if part == "mqar" else run_passkey
    results[part] = fn(cfg, clock, budget, save(part))
  table = format_table(cfg, results)
  if out:
    with open(out, "w") as fh:
      json.dump({"config": config, "results": results, "table": table}, fh,
                indent=1)
  clock.log("done")
  return {"config": config, "results": results, "table": table}


def main(argv=None) -> dict:
  import sys
  rec = run(sys.argv[1:] if argv is None else list(argv))
  print(rec["table"], flush=True)
  return rec


if __name__ == "__main__":
  main()
