"""The seed's fine-tuning claim on a real task: every optimizer fine-tunes SmolLM2-135M-Instruct
on instructions built from the standard library, at its own best learning rate.

HoloAdam's README reports it converging where Adafactor "collapses" (final loss
0.09 vs 7.00 on Alpaca, ~62 steps, padding in the loss). Here:

* **Task** (``holojax.data.instruct``): a function's source without its
  docstring -> the docstring (``task="docstring"``; ``"code"`` is the
  reverse), in the model's chat template; loss on the answer tokens only
  (labels -100 elsewhere, padding included).
* **Splits by module**: ``held_out`` of the modules are the test set; of the
  rest, ``val_fraction`` of the modules choose each optimizer's learning rate
  and the remainder trains. No module is on two sides.
* **Learning rate**: each optimizer trains ``sweep_steps`` steps at every rate
  of ``lr_grid``; the rate with the lowest validation loss trains ``steps``
  steps (linear warm-up over 10%, cosine to a tenth), evaluated on the held-out
  modules. Every optimizer sees the same batches in the same order, with
  gradients clipped to global norm 1 and no weight decay.
* **Costs**: optimizer-state bytes and bits per parameter
  (``state_bits_per_param``), mean step time (the steps after the compiling
  one, no host sync between them),
  the train step's device memory by XLA's analysis of its compiled program
  (``step_bytes``: parameters, gradients, optimizer state and temporaries at
  the step's peak, each optimizer's own), and the device's peak memory after
  the optimizer's runs (process-wide, so it only grows from one optimizer to
  the next).

Parameters are float32, compute is ``dtype``. ``FinetuneConfig()`` is the GPU
run; ``TINY`` runs the same code on the random ``llama-tiny`` model with byte
tokens on a CPU (its numbers say nothing about quality).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from holojax.data import instruct
from holojax.optim import registry
from holojax.optim.accounting import state_bits_per_param, tree_bytes
from holojax.train.bench.common import (Progress, Result, compiled_bytes, device_memory,
                                        require_positive, warmup_cosine)
from holojax.train.bench.lm import pretrained
from holojax.train.demo import plot_png
from holojax.train.step import host_lr, init_state, make_eval_step, make_train_step, \
    schedule_values, with_learning_rate

OPTIMIZERS = ("adamw", "adafactor", "lion", "turbo_adam", "turbo_adam_v", "holo_adam",
              "holo_adam_conservative", "holo_adam_max")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """What ``run`` measures (module docstring).

  Attributes:
    model: a pretrained name, or ``llama-tiny`` (random, byte tokens: a smoke test).
    path: the GGUF file or its folder (none: ``find_gguf``).
    dtype: compute dtype (parameters stay float32).
    optimizers: registered optimizer names (``holojax.optim.registry``).
    lr_grid: learning rates of the sweep.
    task: ``docstring`` (code -> its docstring) or ``code`` (the reverse).
    held_out: fraction of the modules held out for the final evaluation.
    val_fraction: fraction of the remaining modules that choose the rate.
    max_len: tokens per example (longer examples are dropped, never cut).
    max_chars: longest example (prompt + answer characters) read from the source.
    batch: examples per step.
    sweep_steps: steps per learning rate of the sweep.
    steps: steps of the final run at the best rate.
    eval_examples: validation / held-out examples scored (the first N).
    seed: the split, the batch order and the optimizers' seeds.
    tree_layout: state layout of the optimizers that take ``tree_layout``
      (``"flat"``: one stacked state per group of tensors, compiles in seconds
      on the model's 272 tensors; ``"leaf"``: a state per tensor).
  """

  model: str = "smollm2-135m-instruct"
  path: str | None = None
  dtype: str = "bfloat16"
  optimizers: tuple[str, ...] = OPTIMIZERS
  lr_grid: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4)
  task: str = "docstring"
  held_out: float = 0.1
  val_fraction: float = 0.1
  max_len: int = 512
  max_chars: int = 1500
  batch: int = 16
  sweep_steps: int = 100
  steps: int = 400
  eval_examples: int = 256
  seed: int = 0
  tree_layout: str = "flat"

  def __post_init__(self):
    bad = [o for o in self.optimizers if o not in registry.names()]
    if bad or not self.optimizers:
      raise ValueError(f"optimizers {bad or self.optimizers!r}: choose from {registry.names()}")
    if not self.lr_grid or any(not lr > 0 for lr in self.lr_grid):
      raise ValueError(f"lr_grid={self.lr_grid!r} must be non-empty and positive")
    if self.task not in instruct.TASKS:
      raise ValueError(f"task={self.task!r} must be one of {instruct.TASKS}")
    for name in ("held_out", "val_fraction"):
      if not 0 < getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must lie in (0, 1)")
    if self.tree_layout not in ("leaf", "flat"):
      raise ValueError(f"tree_layout={self.tree_layout!r} must be 'leaf' or 'flat'")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype={self.dtype!r} must be 'float32' or 'bfloat16'")
    require_positive(self, "max_len", "max_chars", "batch", "sweep_steps", "steps",
                     "eval_examples")

  @classmethod
  def tiny(cls, **kw) -> "FinetuneConfig":
    base = dict(model="llama-tiny", dtype="float32", optimizers=("adamw", "turbo_adam"),
                lr_grid=(1e-3, 3e-3), max_len=512, max_chars=300, batch=4, sweep_steps=2,
                steps=4, eval_examples=8)
    return cls(**{**base, **kw})


TINY = FinetuneConfig.tiny()


@dataclasses.dataclass(frozen=True)
class Splits:
  """Encoded train / validation / held-out examples and what they hold."""

  train: instruct.Encoded
  val: instruct.Encoded
  test: instruct.Encoded
  info: dict
  modules: dict  # split -> set of module names


def splits(tok, cfg: FinetuneConfig, root=None) -> Splits:
  """The three module-disjoint splits of the module docstring, encoded."""
  examples = instruct.stdlib_examples(root, task=cfg.task, max_chars=cfg.max_chars)
  rest, test = instruct.split_by_module(examples, cfg.held_out, seed=cfg.seed)
  train, val = instruct.split_by_module(rest, cfg.val_fraction, seed=cfg.seed + 1)
  enc, info = {}, {"task": cfg.task, "source": str(root or "the standard library")}
  for name, part in (("train", train), ("val", val), ("test", test)):
    e, dropped = instruct.encode(tok, part, cfg.max_len)
    if name != "train":
      e = instruct.Encoded(e.ids_bt[:cfg.eval_examples], e.labels_bt[:cfg.eval_examples])
    enc[name] = e
    info[name] = {"examples": len(part), "modules": len({x.module for x in part}),
                  "dropped_too_long": dropped, "used": int(e.ids_bt.shape[0]),
                  "answer_tokens": instruct.answer_token_count(e)}
  modules = {k: {x.module for x in v} for k, v in (("train", train), ("val", val), ("test", test))}
  return Splits(enc["train"], enc["val"], enc["test"], info, modules)


def _loss(model, batch):
  ids_bt, labels_bt = batch
  return model(ids_bt, labels=labels_bt).loss


def _answer_nll(model, batch):
  """(sum of answer-token NLL, answer tokens) of one batch."""
  ids_bt, labels_bt = batch
  loss = model(ids_bt, labels=labels_bt).loss
  count = jnp.sum(labels_bt[:, 1:] != -100)
  return loss * count, count


def evaluate(eval_step, state, enc: instruct.Encoded, batch: int) -> float:
  """Mean NLL per answer token over every row of ``enc`` (token-weighted)."""
  total, count = 0.0, 0
  n = enc.ids_bt.shape[0]
  for i in range(0, n - n % batch or n, batch):
    s, c = eval_step(state, (jnp.asarray(enc.ids_bt[i:i + batch]),
                             jnp.asarray(enc.labels_bt[i:i + batch])))
    total, count = total + float(s), count + int(c)
  return total / max(count, 1)


def _tx(name: str, learning_rate, seed: int, tree_layout: str = "leaf"):
  takes = registry.accepts(name) or ()
  kw = {k: v for k, v in (("seed", seed), ("tree_layout", tree_layout)) if k in takes}
  return optax.chain(optax.clip_by_global_norm(1.0),
                     registry.get(name, learning_rate, 0.0, **kw))


class Runner(NamedTuple):
  """One optimizer's compiled step (its rate set per step: one compile for the sweep and
  the final run) and the shared evaluation step."""

  name: str
  tx: optax.GradientTransformation
  step: Any
  eval_step: Any


def runner(name: str, graphdef, eval_step, cfg: FinetuneConfig) -> Runner:
  tx = host_lr(functools.partial(_tx, name, seed=cfg.seed, tree_layout=cfg.tree_layout))
  return Runner(name, tx, make_train_step(graphdef, tx, _loss), eval_step)


def train_run(base_state, graphdef, run: Runner, lr: float, steps: int, data: Splits,
              cfg: FinetuneConfig, evals: dict, progress: Progress) -> dict:
  """``steps`` steps of ``run``'s optimizer at peak rate ``lr`` from ``base_state`` (copied);
  the losses, the evaluations and costs."""
  model = nnx.merge(graphdef, jax.tree.map(jnp.copy, base_state))
  params = nnx.state(model, nnx.Param).to_pure_dict()
  _, state = init_state(lambda: model, run.tx)
  lr_t = schedule_values(warmup_cosine(lr, max(steps // 10, 1), steps), steps)
  batches = instruct.batches(data.train, cfg.batch, seed=cfg.seed)
  losses = []  # device scalars: no host sync inside the loop
  t0 = t1 = time.perf_counter()
  for i in range(steps):
    b = next(batches)
    state, metrics = run.step(with_learning_rate(state, lr_t[i]),
                              (jnp.asarray(b.ids_bt), jnp.asarray(b.labels_bt)))
    losses.append(metrics["train/loss"])
    if i == 0:  # the first step compiles: time the others
      jax.block_until_ready(losses[0])
      t1 = time.perf_counter()
  losses = [float(x) for x in jax.device_get(losses)]
  t2 = time.perf_counter()
  step_s = (t2 - t1) / (steps - 1) if steps > 1 else t1 - t0
  step_bytes = compiled_bytes(run.step, with_learning_rate(state, lr_t[-1]),
                              (jnp.asarray(b.ids_bt), jnp.asarray(b.labels_bt)))
  out = {"lr": lr, "train_losses": losses, "diverged": not np.all(np.isfinite(losses)),
         "step_ms": 1e3 * step_s, "step_bytes": step_bytes, "state_bytes": tree_bytes(state["opt"]),
         "state_bits_per_param": state_bits_per_param(state["opt"], params)}
  for split, enc in evals.items():
    out[f"{split}_loss"] = (float("nan") if out["diverged"] else
                            evaluate(run.eval_step, state, enc, cfg.batch))
  progress.say(f"  {run.name} lr {lr:g}: train {losses[-1]:.4f}, "
               + ", ".join(f"{k} {out[f'{k}_loss']:.4f}" for k in evals))
  return out


def run(cfg: FinetuneConfig, progress: Progress = Progress()) -> Result:
  """The sweep and the final run of every optimizer (partial results after each)."""
  if cfg.model == "llama-tiny":
    model, tok = pretrained.load(pretrained.PretrainedEvalConfig(
        model=cfg.model, dtype=cfg.dtype, caches=("full",)))
  else:
    from holojax.models.pretrained import load_pretrained  # noqa: PLC0415
    model, tok = load_pretrained(cfg.model, path=cfg.path, dtype=cfg.dtype, param_dtype="float32")
  data = splits(tok, cfg)
  graphdef, base_state = nnx.split(model)
  results = {"model": cfg.model, "dtype": cfg.dtype, "split": data.info,
             "lr_grid": list(cfg.lr_grid), "optimizers": {}}
  progress.say(f"data: {data.info}")
  eval_step = make_eval_step(graphdef, _answer_nll)
  before = evaluate(eval_step, {"model": base_state}, data.test, cfg.batch)
  results["before_test_loss"] = before
  for name in cfg.optimizers:
    progress.say(f"{name}: sweep")
    run_ = runner(name, graphdef, eval_step, cfg)
    sweep = [train_run(base_state, graphdef, run_, lr, cfg.sweep_steps, data, cfg,
                       {"val": data.val}, progress) for lr in cfg.lr_grid]
    ok = [s for s in sweep if not s["diverged"]]
    best = min(ok, key=lambda s: s["val_loss"])["lr"] if ok else min(cfg.lr_grid)
    final = train_run(base_state, graphdef, run_, best, cfg.steps, data, cfg,
                      {"val": data.val, "test": data.test}, progress)
    final["device_memory"] = device_memory()
    results["optimizers"][name] = {"sweep": [{k: s[k] for k in ("lr", "val_loss", "diverged")}
                                             for s in sweep],
                                   "best_lr": best, "final": final}
    progress.partial(results)
  rows = [{"label": f"{n} (lr {r['best_lr']:g})", "optimizer": n,
           "train_losses": list(enumerate(r["final"]["train_losses"])),
           "eval_losses": [(cfg.steps, r["final"]["test_loss"])]}
          for n, r in results["optimizers"].items()]
  png = plot_png(rows, f"{cfg.model}: fine-tune on stdlib {cfg.task}s, each at its best rate",
                 ylabel="loss (nats per answer token)")
  return Result(results, table(cfg, results), {f"finetune_{cfg.task}.png": png})


def table(cfg: FinetuneConfig, r: dict) -> str:
  """One row per optimizer at its best rate."""
  head = ["optimizer", "best lr", "held-out loss", "val loss", "state bits/param",
          "state MB", "step GiB", "step ms"]
  rows = []
  for n, o in r["optimizers"].items():
    f = o["final"]
    rows.append([n, f"{o['best_lr']:g}", f"{f['test_loss']:.4f}", f"{f['val_loss']:.4f}",
                 f"{f['state_bits_per_param']:.2f}", f"{f['state_bytes'] / 2 ** 20:.1f}",
                 "n/a" if f.get("step_bytes") is None else f"{f['step_bytes'] / 2 ** 30:.2f}",
                 f"{f['step_ms']:.1f}"])
  widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
  fmt = lambda row: " | ".join(x.rjust(w) for x, w in zip(row, widths))
  sp = r["split"]
  return "\n".join([
      f"{cfg.model}: {cfg.task} task, train {sp['train']['used']} / val {sp['val']['used']} / "
      f"held-out {sp['test']['used']} examples ({sp['test']['modules']} held-out modules); "
      f"{cfg.steps} steps of {cfg.batch}; held-out loss before fine-tuning "
      f"{r['before_test_loss']:.4f}", fmt(head), "-|-".join("-" * w for w in widths),
      *map(fmt, rows)])
