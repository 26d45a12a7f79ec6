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
rest; each (width, lr, warm-up) group gets an equal slice of what is
left. The first architecture of a group measures its step time after
compiling (24 steps) and plans how many steps fit in its share of the
slice (80% of the slice over the architectures, counted after its compile;
at most ``--steps``); the others train for the same number of steps. Training stops early (and still
evaluates and records) when the part's time is spent. The steps therefore
depend on the machine: the record and the table give them. Progress goes to
the harness as it happens, and so do the results after each model.
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
  holojax bench recall --tiny --no-save         # CPU smoke, < 1 minute
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Callable, NamedTuple

import jax
import numpy as np
from flax import nnx

from holojax.data.synthetic import LMExamples, mqar, passkey, shifted_correct
from holojax.models.lm import causal_lm_loss
from holojax.optim.accounting import num_params
from holojax.train.bench.common import (Progress, Result, adamw, build_lm, check_finite,
                                        fit_steps, lm_config, train_steps, variant_fields,
                                        warmup_cosine)
from holojax.train.step import (host_lr, init_state, make_eval_step, make_train_step, model_of,
                                schedule_values)

ARCHS = ("phasor", "attention")
# Seed ranges: training streams and test sets never share a seed.
_MQAR_TRAIN, _MQAR_TEST = 0, 10**12
_PASSKEY_TRAIN, _PASSKEY_TEST = 2 * 10**12, 3 * 10**12


def num_heads(width: int, head_width: int) -> int:
  """Heads for both architectures: width // head_width, at least 1."""
  return max(1, width // head_width)


@dataclasses.dataclass(frozen=True)
class RecallConfig:
  """One recall run. The defaults are the GPU run: ~6 minutes on an H100.

  MQAR: 2 models x 4 widths, each at most ``steps`` steps (cycling the
  grid) of ``batch_tokens`` tokens, i.e. batch_tokens // T examples at
  sequence length T; passkey: 2 models at ``passkey_width``.

  Attributes:
    parts: which parts run: mqar, passkey.
    archs: which models: phasor (the seed's memory), attention, and phasor
      variants named phasor:SPEC with SPEC as in ``long_context --variants``
      (e.g. phasor:conv4+gate+win64; memory width 2 x width unless hdR).
    num_layers: layers of every model.
    head_width: heads = max(1, width // head_width).
    lrs: peak learning rates; a list sweeps them and the best per model is reported.
    weight_decay: AdamW weight decay (matrices only).
    warmup_fracs: warm-up shares of the steps, swept with ``lrs`` (every pair; the
      best per model is reported).
    dtype: compute dtype, float32 or bfloat16 (none: bfloat16 on GPU, float32
      elsewhere).
    seed: data and init seed.
    max_minutes: wall-clock budget of the whole run, compiles included.
    mqar_share: MQAR's share of the budget when both parts run.
    log_every: steps between progress lines.
    grid: MQAR grid points as TxPAIRS.
    vocab_size: MQAR vocabulary.
    widths: MQAR model widths.
    steps: MQAR steps at most.
    batch_tokens: MQAR tokens per step (batch_tokens // T examples).
    test_examples: held-out MQAR examples per grid point.
    eval_tokens: tokens per MQAR eval batch.
    passkey_width: passkey model width.
    passkey_train_len: passkey training length.
    passkey_steps: passkey steps at most.
    passkey_batch: passkey examples per step.
    passkey_loss: where the passkey loss is taken: all, answer.
    passkey_lens: passkey eval lengths.
    passkey_depths: passkey needle depths of the eval.
    passkey_test_examples: passkey eval examples per (length, depth).
    passkey_eval_tokens: tokens per passkey eval batch.
  """

  parts: tuple[str, ...] = ("mqar", "passkey")
  archs: tuple[str, ...] = ARCHS
  num_layers: int = 2
  head_width: int = 64
  lrs: tuple[float, ...] = dataclasses.field(default=(2e-3,), metadata={"aliases": ("--lr",)})
  weight_decay: float = 0.1
  warmup_fracs: tuple[float, ...] = dataclasses.field(default=(0.05,),
                                                      metadata={"aliases": ("--warmup-frac",)})
  dtype: str | None = None
  seed: int = 0
  max_minutes: float = 8.0
  mqar_share: float = 0.72
  log_every: int = 250
  # MQAR
  grid: tuple[tuple[int, int], ...] = ((64, 4), (128, 8), (256, 16), (512, 64))
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
  passkey_test_examples: int = 16
  passkey_eval_tokens: int = 65536

  def __post_init__(self):
    if self.dtype is None:  # a default that depends on the machine
      gpu = jax.default_backend() == "gpu"
      object.__setattr__(self, "dtype", "bfloat16" if gpu else "float32")
    for p in self.parts:
      if p not in ("mqar", "passkey"):
        raise ValueError(f"part {p!r} must be 'mqar' or 'passkey'")
    for a in self.archs:
      if a.startswith("phasor:"):
        variant_fields(a[len("phasor:"):], 2)  # raises on a bad spec
      elif a not in ARCHS:
        raise ValueError(f"arch {a!r} must be one of {ARCHS} or phasor:SPEC")
    for w in (*self.widths, self.passkey_width):
      if w < 1 or w % num_heads(w, self.head_width) or (w // num_heads(w, self.head_width)) % 2:
        raise ValueError(f"width={w} must split into an even head size with "
                         f"head_width={self.head_width}")
    for t, n in self.grid:
      if t < 4 * n or n > self.vocab_size // 2 - 1:
        raise ValueError(f"grid point T={t}, pairs={n} does not fit "
                         f"vocab_size={self.vocab_size} (need T >= 4 pairs)")
    if self.passkey_loss not in ("all", "answer"):
      raise ValueError(f"passkey_loss={self.passkey_loss!r} must be 'all' or 'answer'")
    if self.dtype not in (None, "float32", "bfloat16"):
      raise ValueError(f"dtype={self.dtype!r} must be float32 or bfloat16")
    if not self.lrs or min(self.lrs) <= 0 or self.max_minutes <= 0:
      raise ValueError("lrs and max_minutes must be positive")
    if not self.warmup_fracs or any(not 0 <= w < 1 for w in self.warmup_fracs):
      raise ValueError(f"warmup_fracs={self.warmup_fracs!r}: each must lie in [0, 1)")


TINY = RecallConfig(
    grid=((32, 4), (64, 8)), vocab_size=128, widths=(32,), steps=60, batch_tokens=768,
    test_examples=64, eval_tokens=4096, lrs=(3e-3,), passkey_width=32, passkey_train_len=128,
    passkey_steps=20, passkey_batch=4, passkey_lens=(128, 256), passkey_depths=(0.1, 0.9),
    passkey_test_examples=4, passkey_eval_tokens=1024, max_minutes=1.0, log_every=20,
    dtype="float32")


# ----------------------------------------------------------------------------
# models


def model_config(arch: str, width: int, *, vocab_size: int, num_layers: int, head_width: int,
                 max_seq_len: int, dtype: str):
  """The phasor (memory width 2 width, tied embeddings; ``phasor:SPEC`` with
  the variant's switches) or attention LM config.

  Example:
    >>> c = model_config("phasor:conv4", 64, vocab_size=128, num_layers=2, head_width=64,
    ...                  max_seq_len=64, dtype="float32")
    >>> c.hd_dim, c.num_heads, c.conv
    (128, 1, 4)
  """
  kw = dict(vocab_size=vocab_size, width=width, layers=num_layers,
            heads=num_heads(width, head_width), max_seq_len=max_seq_len, dtype=dtype)
  if arch == "attention":
    return lm_config(arch, **kw)
  spec = arch[len("phasor:"):] if arch.startswith("phasor:") else "seed"
  return lm_config("phasor", mode="content", tie_embeddings=True,
                   **variant_fields(spec, 2 * width), **kw)


def labels_loss(model: nnx.Module, ex: LMExamples) -> jax.Array:
  """Next-token loss where ``ex.labels`` has a target."""
  return causal_lm_loss(model(ex.input_ids), ex.labels)


def all_loss(model: nnx.Module, ex: LMExamples) -> jax.Array:
  """Next-token loss on every position (the ids as labels)."""
  return causal_lm_loss(model(ex.input_ids), ex.input_ids)


def correct(model: nnx.Module, ex: LMExamples):
  """Per example (correct_b, count_b): argmax logits[t] == labels[t + 1],
  counted where labels[t + 1] != -100."""
  return shifted_correct(model(ex.input_ids), ex.labels)


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
    self._pool = (ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
                  if processes else ThreadPoolExecutor(workers))
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


def train_model(train_step, state, stream: BatchStream, *, steps: int, peak_lr: float,
                warmup_frac: float, num_shapes: int, say, plan_s: float | None,
                stop_at: float, log_every: int, tag: str) -> tuple:
  """Trains for ``steps`` steps (fewer if ``plan_s`` or ``stop_at`` say so).

  With ``plan_s``, after one compiling pass over the ``num_shapes`` shapes
  and >= 24 more steps, the total becomes the number of steps that fit in
  ``plan_s`` seconds *after the compile* (warm-up, ``warmup_frac`` of the
  total, and the cosine follow it), at the step time of the second half of
  those steps, with their learning rates computed before the clock starts
  (``schedule_values`` runs eagerly and compiles for each new length: in
  the timing, on the H200, that made the first model of a width look 10-30x
  slower than the next, 48-98 ms against 3-5 ms a step; and compiling three
  models used up the first group's whole slice, so it planned 28 steps). Training stops at ``stop_at`` (perf_counter
  seconds), the end of the part's budget, whatever the plan.
  Returns (state, info) with steps_done, losses [(step, loss)], step_ms.
  """
  start = time.perf_counter()
  total, losses, step_ms = steps, [], None
  plan_at = num_shapes * (1 + max(2, -(-24 // num_shapes)))

  def on_loss(i, loss):
    check_finite(tag, i, loss)
    losses.append((i, loss))
    say(f"{tag}: step {i:>5}/{total} loss {loss:.4f}")

  def lr_values(end):  # the schedule of the current total, on the host
    return schedule_values(warmup_cosine(peak_lr, max(1, int(warmup_frac * total)), total), end)

  def run(state, begin, end, lrs=None):
    lrs = lr_values(end) if lrs is None else lrs
    return train_steps(train_step, state, stream.__getitem__, lrs.__getitem__,
                       range(begin, min(end, total)), losses=[], stop_at=stop_at,
                       log_at=lambda i: i % log_every == 0 or i == total - 1,
                       on_loss=on_loss)

  state, done = run(state, 0, num_shapes)
  if done == num_shapes:
    jax.block_until_ready(state)
    t_compiled = time.perf_counter()
    say(f"{tag}: compiled {num_shapes} shape(s) in {t_compiled - start:.1f}s")
    mid = (num_shapes + plan_at) // 2
    state, done = run(state, num_shapes, mid)
    lrs = lr_values(plan_at)  # outside the timing: eager, it compiles per length
    jax.block_until_ready(state)
    t_mid = time.perf_counter()
    state, done = run(state, mid, plan_at, lrs)
    if done == plan_at:
      jax.block_until_ready(state)
      now = time.perf_counter()
      step_s = (now - t_mid) / (plan_at - mid)
      step_ms = 1e3 * step_s
      if plan_s is not None:
        total = fit_steps(t_compiled + plan_s - now, step_s, done=plan_at, most=steps)
        say(f"{tag}: {step_ms:.2f} ms/step -> {total} steps")
      state, done = run(state, plan_at, total)
  stopped = done < total
  if stopped:
    say(f"{tag}: time budget spent, stopping at step {done}/{total}")
  jax.block_until_ready(state)
  info = {"steps_done": done, "planned_steps": total, "stopped_early": stopped,
          "train_s": time.perf_counter() - start, "step_ms": step_ms,
          "final_loss": losses[-1][1] if losses else None, "losses": losses}
  return state, info


def evaluate(eval_step, state, ex: LMExamples, batch: int) -> tuple[np.ndarray, np.ndarray]:
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


def mqar_batch(i: int, *, grid: tuple[tuple[int, int], ...], batch_tokens: int,
               vocab_size: int, seed: int) -> LMExamples:
  """Training batch i: batch_tokens // T examples of grid point i mod G.

  Example:
    >>> ex = mqar_batch(1, grid=((32, 4), (64, 8)), batch_tokens=256, vocab_size=64, seed=0)
    >>> ex.input_ids.shape
    (4, 64)
  """
  t, n = grid[i % len(grid)]
  return mqar(max(1, batch_tokens // t), seq_len=t, num_pairs=n, vocab_size=vocab_size,
              seed=_MQAR_TRAIN + 10**9 * seed + i)


def passkey_batch(num_examples: int, seq_len: int, seed: int) -> LMExamples:
  """Passkey examples with needle depths drawn uniformly from [0, 1]."""
  rng = np.random.default_rng(seed)
  rows = [passkey(1, seq_len=seq_len, depth=float(d), seed=int(rng.integers(2**62)))
          for d in rng.random(num_examples)]
  return LMExamples(np.concatenate([r.input_ids for r in rows]),
                    np.concatenate([r.labels for r in rows]))


def passkey_train_batch(i: int, *, batch: int, seq_len: int, seed: int) -> LMExamples:
  """Training batch i of the passkey stream."""
  return passkey_batch(batch, seq_len, _PASSKEY_TRAIN + 10**9 * seed + i)


class Part(NamedTuple):
  """One part: the models' vocabulary and length, the batches every model
  trains on, at most ``steps`` of them over ``num_shapes`` shapes, the loss,
  the (width, lr) groups and how a trained model is scored
  (``score(eval_step, state, tag) -> dict``)."""
  name: str
  stream: BatchStream
  groups: list[tuple[int, float]]
  vocab_size: int
  max_seq_len: int
  steps: int
  num_shapes: int
  loss: Callable
  score: Callable


def mqar_part(cfg: RecallConfig, say) -> Part:
  """Part (1): every (width, lr) group on the mixed grid; see the docstring."""
  stream = BatchStream(functools.partial(mqar_batch, grid=cfg.grid,
                                         batch_tokens=cfg.batch_tokens,
                                         vocab_size=cfg.vocab_size, seed=cfg.seed))
  tests = {_grid_key(t, n): mqar(cfg.test_examples, seq_len=t, num_pairs=n,
                                 vocab_size=cfg.vocab_size,
                                 seed=_MQAR_TEST + 1000 * cfg.seed + g)
           for g, (t, n) in enumerate(cfg.grid)}

  def score(eval_step, state, tag):
    acc = {}
    for key, ex in tests.items():
      c, k = evaluate(eval_step, state, ex, max(1, cfg.eval_tokens // ex.input_ids.shape[1]))
      acc[key] = float(c.sum() / max(k.sum(), 1))
      say(f"{tag}: eval {key:>7} accuracy {acc[key]:.4f}")
    return {"accuracy": acc, "mean_accuracy": float(np.mean(list(acc.values())))}

  return Part("mqar", stream, [(w, lr, wf) for w in cfg.widths for lr in cfg.lrs
                               for wf in cfg.warmup_fracs],
              cfg.vocab_size, max(t for t, _ in cfg.grid), cfg.steps, len(cfg.grid),
              labels_loss, score)


def passkey_part(cfg: RecallConfig, say) -> Part:
  """Part (2): train at ``passkey_train_len``, evaluate lengths x depths."""
  stream = BatchStream(functools.partial(passkey_train_batch, batch=cfg.passkey_batch,
                                         seq_len=cfg.passkey_train_len, seed=cfg.seed))
  tests, n = {}, cfg.passkey_test_examples
  for li, t in enumerate(cfg.passkey_lens):
    parts = [passkey(n, seq_len=t, depth=d,
                     seed=_PASSKEY_TEST + 10**6 * cfg.seed + 1000 * li + di)
             for di, d in enumerate(cfg.passkey_depths)]
    tests[t] = LMExamples(np.concatenate([p.input_ids for p in parts]),
                          np.concatenate([p.labels for p in parts]))

  def score(eval_step, state, tag):
    rows = []
    for t, ex in tests.items():
      c, k = evaluate(eval_step, state, ex, max(1, cfg.passkey_eval_tokens // t))
      for di, d in enumerate(cfg.passkey_depths):
        cd, kd = c[di * n:(di + 1) * n], k[di * n:(di + 1) * n]
        rows.append({"length": t, "depth": d, "examples": n,
                     "exact_match": float(np.mean(cd == kd)),
                     "digit_accuracy": float(cd.sum() / max(kd.sum(), 1))})
      say(f"{tag}: eval T={t:>6} exact " + " ".join(
          f"d{r['depth']:g}={r['exact_match']:.2f}" for r in rows[-len(cfg.passkey_depths):]))
    return {"eval": rows}

  return Part("passkey", stream, [(cfg.passkey_width, lr, wf) for lr in cfg.lrs
                                  for wf in cfg.warmup_fracs], 256,
              max(cfg.passkey_train_len, *cfg.passkey_lens), cfg.passkey_steps, 1,
              all_loss if cfg.passkey_loss == "all" else labels_loss, score)


def run_part(cfg: RecallConfig, part: Part, say, budget_s: float, record: Callable) -> list:
  """Every (width, lr, warm-up) group of ``part`` gets an equal slice of what is left of
  ``budget_s``; in a group the first arch plans the steps, the others follow
  it. The jitted steps of each (arch, width) are kept across an lr sweep."""
  end = time.perf_counter() + budget_s
  runs, compiled = [], {}
  with part.stream:
    for gi, (width, lr, wf) in enumerate(part.groups):
      group_start = time.perf_counter()
      slice_s, planned = (end - group_start) / (len(part.groups) - gi), None
      for k, arch in enumerate(cfg.archs):
        tag = f"{part.name} {arch} w={width} lr={lr:g} warmup={wf:g}"
        run = {"arch": arch, "width": width, "lr": lr, "warmup_frac": wf}
        runs.append(run)
        if time.perf_counter() >= end:
          say(f"{tag}: skipped, the time budget is spent")
          run["error"] = "skipped: time budget spent"
          record(run)
          continue
        mcfg = model_config(arch, width, vocab_size=part.vocab_size, num_layers=cfg.num_layers,
                            head_width=cfg.head_width, max_seq_len=part.max_seq_len,
                            dtype=cfg.dtype)
        tx = host_lr(adamw, weight_decay=cfg.weight_decay, b2=0.98, matrices_only=True)
        graphdef, state = init_state(lambda: build_lm(mcfg, cfg.seed), tx)
        run.update(num_heads=num_heads(width, cfg.head_width),
                   num_params=num_params(model_of(graphdef, state)),
                   model_config=dataclasses.asdict(mcfg))
        say(f"{tag}: start, {run['num_params']:,} params, {run['num_heads']} heads")
        if (arch, width) not in compiled:
          compiled[arch, width] = (make_train_step(graphdef, tx, part.loss),
                                   make_eval_step(graphdef, correct))
        train_step, eval_step = compiled[arch, width]
        plan_s = None
        if planned is None:  # this arch's share of what is left of the group
          left = slice_s - (time.perf_counter() - group_start)
          plan_s = 0.8 * left / (len(cfg.archs) - k)
        try:
          state, info = train_model(
              train_step, state, part.stream, steps=planned or part.steps, peak_lr=lr,
              warmup_frac=wf, num_shapes=part.num_shapes, say=say,
              plan_s=plan_s, stop_at=end, log_every=cfg.log_every, tag=tag)
          run.update(info)
          planned = planned or info["steps_done"]
          t = time.perf_counter()
          run.update(part.score(eval_step, state, tag))
          run["eval_s"] = time.perf_counter() - t
        except FloatingPointError as e:  # record it, keep comparing the others
          run["error"] = str(e)
          say(f"{tag}: {e}")
        record(run)
  return runs


def best_runs(runs: list[dict]) -> dict[tuple[str, int], dict]:
  """(arch, width) -> the run of the best (lr, warm-up) (mean accuracy)."""
  best = {}
  for r in runs:
    if "accuracy" not in r:
      continue
    key = (r["arch"], r["width"])
    if key not in best or r["mean_accuracy"] > best[key]["mean_accuracy"]:
      best[key] = r
  return best


def mqar_summary(runs: list[dict], threshold: float = 0.99, phasor: str = "phasor") -> dict:
  """Does the ``phasor`` arch reach ``threshold`` at every (width, grid point)
  where attention does (best lr of each)? ``by_arch`` answers it for every
  phasor arch of the runs."""
  best = best_runs(runs)

  def misses(name):
    checked, failures = 0, []
    for (arch, w), att in best.items():
      ph = best.get((name, w))
      if arch != "attention" or ph is None:
        continue
      for key, a in att["accuracy"].items():
        if a >= threshold:
          checked += 1
          if ph["accuracy"].get(key, 0.0) < threshold:
            failures.append({"width": w, "grid": key, "attention": a,
                             "phasor": ph["accuracy"].get(key)})
    return checked, failures

  checked, failures = misses(phasor)
  names = sorted({a for a, _ in best if a.startswith("phasor")})
  return {"threshold": threshold, "phasor": phasor,
          "points_where_attention_reaches": checked, "phasor_misses": failures,
          "phasor_reaches_where_attention_does": checked > 0 and not failures,
          "by_arch": {n: len(misses(n)[1]) for n in names}}


# ----------------------------------------------------------------------------
# table and entry point


def format_table(cfg: RecallConfig, results: dict) -> str:
  """MQAR: grid rows x widths (phasor / attention); passkey: length rows."""
  lines = []
  if "mqar" in results:
    best = best_runs(results["mqar"]["runs"])
    runs = list(best.values())
    steps = sorted({r["steps_done"] for r in runs})
    lines += [f"MQAR accuracy at query positions (vocab {cfg.vocab_size}, "
              f"{cfg.num_layers} layers, {cfg.batch_tokens} tokens/step, steps "
              f"{'/'.join(map(str, steps))}, lr {'/'.join(f'{x:g}' for x in cfg.lrs)}, "
              f"warm-up {'/'.join(f'{x:g}' for x in cfg.warmup_fracs)})",
              "cells: " + " / ".join(cfg.archs)]
    lines.append(f"{'T x pairs':<11}" + "".join(f"{'width ' + str(w):>17}" for w in cfg.widths))

    def cell(w, fn):
      vals = [best.get((a, w)) for a in cfg.archs]
      return f"{' / '.join('-' if v is None else fn(v) for v in vals):>17}"

    def row(name, fn):
      lines.append(f"{name:<11}" + "".join(cell(w, fn) for w in cfg.widths))

    for t, n in cfg.grid:
      row(_grid_key(t, n), lambda r, key=_grid_key(t, n): f"{r['accuracy'][key]:.3f}")
    if len(cfg.lrs) > 1 or len(cfg.warmup_fracs) > 1:
      row("best lr/wu", lambda r: f"{r['lr']:g}/{r['warmup_frac']:g}")
    row("params", lambda r: f"{r['num_params'] / 1e6:.2f}M")
    s = results["mqar"]["summary"]
    verdict = ("yes" if s["phasor_reaches_where_attention_does"] else
               "no" if s["points_where_attention_reaches"] else "n/a")
    lines.append(f"{s.get('phasor', 'phasor')} >= {s['threshold']:.0%} wherever attention is: "
                 f"{verdict} ({s['points_where_attention_reaches']} points, "
                 f"{len(s['phasor_misses'])} misses)")
    if len(s.get("by_arch", {})) > 1:
      lines.append("misses by phasor arch: " + ", ".join(
          f"{a} {n}" for a, n in s["by_arch"].items()))
  if "passkey" in results:
    runs = [r for r in results["passkey"]["runs"] if "eval" in r]
    if lines:
      lines.append("")
    steps = sorted({r["steps_done"] for r in runs})
    lines += [f"Passkey exact match (width {cfg.passkey_width}, trained at "
              f"T={cfg.passkey_train_len}, {'/'.join(map(str, steps))} steps, loss on "
              f"{cfg.passkey_loss}), depths " + " / ".join(f"{d:g}" for d in cfg.passkey_depths),
              f"{'length':<8}" + "".join(f"{_run_name(cfg, r):>20}" for r in runs)]
    for t in cfg.passkey_lens:
      row = f"{t:<8}"
      for r in runs:
        vals = [e["exact_match"] for e in r["eval"] if e["length"] == t]
        row += f"{' / '.join(f'{v:.2f}' for v in vals):>20}"
      lines.append(row)
  return "\n".join(lines)


def _run_name(cfg: RecallConfig, r: dict) -> str:
  return (r["arch"] + (f" lr={r['lr']:g}" if len(cfg.lrs) > 1 else "")
          + (f" wu={r['warmup_frac']:g}" if len(cfg.warmup_fracs) > 1 else ""))


def run(cfg: RecallConfig, progress: Progress = Progress()) -> Result:
  deadline = time.perf_counter() + 60.0 * cfg.max_minutes
  results: dict = {}
  progress.say(f"backend {jax.default_backend()}, budget {cfg.max_minutes} min, "
               f"parts {','.join(cfg.parts)}, dtype {cfg.dtype}")

  for i, name in enumerate(cfg.parts):
    share = 1.0  # the last part gets whatever is left
    if i < len(cfg.parts) - 1:
      share = cfg.mqar_share if name == "mqar" else 1.0 - cfg.mqar_share
    budget = max(deadline - time.perf_counter(), 0.0) * share
    results[name] = {"runs": []}

    def record(run, name=name):
      if not any(r is run for r in results[name]["runs"]):
        results[name]["runs"].append(run)
      progress.partial(results)

    part = (mqar_part if name == "mqar" else passkey_part)(cfg, progress.say)
    runs = run_part(cfg, part, progress.say, budget, record)
    first_phasor = next((a for a in cfg.archs if a.startswith("phasor")), "phasor")
    results[name] = {"runs": runs, **({"summary": mqar_summary(runs, phasor=first_phasor)}
                                      if name == "mqar" else {})}
  return Result(results, format_table(cfg, results))
