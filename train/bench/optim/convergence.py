"""Optimizers (and models) at equal steps, data and schedule: loss gap to AdamW.

  holojax bench convergence --models gpt2-124m --steps 300 --optimizers adamw turbo_adam
  holojax bench convergence --models small holo-small hybrid-small lowrank-small \
      --optimizers adamw --seq-len 128                 # models at equal steps
  holojax bench convergence --models small --steps 2000 --lr-scales 0.5 1 2 \
      --lr-for adamw=3e-3 turbo_adam=3e-3              # each optimizer at its best rate
  holojax bench convergence --tiny                     # CPU smoke run

With several ``--lr-scales`` every optimizer trains at each scale times its
base rate; the table marks each one's best rate and the gap to AdamW is taken
between best rates (never at one shared rate). Writes the best runs' loss
curves to ``convergence_<models>_<n>opt.png`` next to the record.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os

from holojax.train.bench.common import Progress, Result
from holojax.train.config import TrainConfig
from holojax.train.demo import plot_png
from holojax.train.loop import train


@dataclasses.dataclass(frozen=True)
class ConvergenceConfig:
  """Every (model, optimizer) pair trains on the same batches with the same
  cosine schedule; ``gpt2-124m`` takes minutes on an H100.

  Attributes:
    models: model presets (``holojax models``).
    optimizers: optimizer names (``holojax optimizers``).
    lr: peak learning rate of every optimizer.
    lr_for: per-optimizer base peak learning rates, as NAME=LR.
    lr_scales: the sweep: each optimizer trains at every scale times its base
      rate, and is compared at its best.
    steps: optimizer steps per run.
    batch_size, seq_len: sequences per step and bytes per sequence.
    warmup: linear warm-up steps.
    corpus_max_bytes: read at most this much of the corpus (none: all).
    seed: initialisation and data seed of every run (repeat with others to
      see run-to-run spread).
    workers: runs trained at once, each in its own process (small models
      leave a GPU mostly idle; the runs stay independent and deterministic).
  """

  models: tuple[str, ...] = ("gpt2-124m",)
  optimizers: tuple[str, ...] = ("adamw", "turbo_adam_v", "turbo_adam")
  lr: float = 6e-4
  lr_for: tuple[str, ...] = ()
  lr_scales: tuple[float, ...] = (1.0,)
  steps: int = 300
  batch_size: int = 16
  seq_len: int = 1024
  warmup: int = 30
  corpus_max_bytes: int | None = None
  seed: int = 0
  workers: int = 1

  def __post_init__(self):
    bad = [s for s in self.lr_for if "=" not in s]
    if bad:
      raise ValueError(f"lr_for={bad} must be NAME=LR")
    if not self.models or not self.optimizers:
      raise ValueError("models and optimizers must not be empty")
    if not self.lr_scales or any(not x > 0 for x in self.lr_scales):
      raise ValueError(f"lr_scales={self.lr_scales} must be positive numbers")
    if self.workers < 1:
      raise ValueError(f"workers={self.workers} must be >= 1")


TINY = ConvergenceConfig(models=("tiny",), optimizers=("adamw",), steps=6,
                         lr_scales=(0.5, 1.0), batch_size=8, seq_len=32, warmup=2,
                         corpus_max_bytes=1_000_000)


def _best(rows: list[dict]) -> dict[tuple[str, str], dict]:
  """(model, optimizer) -> its row of lowest final validation loss."""
  best = {}
  for r in rows:
    k = (r["model"], r["optimizer"])
    if "error" not in r and (k not in best or r["final_eval_loss"] < best[k]["final_eval_loss"]):
      best[k] = r
  return best


def _train_row(tc: TrainConfig) -> dict:
  """One run as a table row (an ``error`` row if it fails: the others go on)."""
  row = {"model": tc.model, "optimizer": tc.optimizer, "learning_rate": tc.learning_rate}
  try:
    r = train(tc)
  except Exception as e:
    return dict(row, error=f"{type(e).__name__}: {str(e)[:300]}")
  return dict(row, num_params=r.num_params, final_eval_loss=r.final_eval_loss,
              tokens_per_s=r.tokens_per_s, state_bits_per_param=r.state_bits_per_param,
              train_losses=r.train_losses, eval_losses=r.eval_losses)


def _rows(configs: list[TrainConfig], workers: int, progress: Progress) -> list[dict]:
  """Trains ``configs`` in order, or ``workers`` at a time in spawned processes
  that share the accelerator (no preallocation)."""
  say = lambda i, tc: progress.say(  # noqa: E731
      f"[{i + 1}/{len(configs)}] {tc.model} / {tc.optimizer} at lr {tc.learning_rate:.2g}"
      + (": training" if workers == 1 else ": done"))
  rows = []
  if workers == 1:
    for i, tc in enumerate(configs):
      say(i, tc)
      rows.append(_train_row(tc))
      progress.partial({"rows": rows})
    return rows
  os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # inherited by the workers
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
    futures = [pool.submit(_train_row, tc) for tc in configs]
    progress.say(f"training {len(configs)} runs of {configs[0].steps} steps, "
                 f"{workers} at a time")
    for i, (tc, f) in enumerate(zip(configs, futures)):
      rows.append(f.result())
      say(i, tc)
      progress.partial({"rows": rows})
  return rows


def run(cfg: ConvergenceConfig, progress: Progress = Progress()) -> Result:
  lrs = {k: float(v) for k, v in (s.split("=", 1) for s in cfg.lr_for)}
  configs = [TrainConfig(model=model, optimizer=name, learning_rate=x * lrs.get(name, cfg.lr),
                         steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                         warmup_steps=cfg.warmup, eval_every=max(cfg.steps // 5, 1),
                         eval_batches=8, log_every=max(cfg.steps // 50, 1), progress=False,
                         corpus_max_bytes=cfg.corpus_max_bytes, seed=cfg.seed)
             for model in cfg.models for name in cfg.optimizers for x in cfg.lr_scales]
  rows = _rows(configs, cfg.workers, progress)
  best = _best(rows)
  for r in rows:
    base = best.get((r["model"], "adamw"))
    r["best_lr"] = best.get((r["model"], r["optimizer"])) is r
    r["gap_vs_adamw"] = (r["final_eval_loss"] / base["final_eval_loss"] - 1
                         if base and "error" not in r else None)
  sweep = len(cfg.lr_scales) > 1
  lines = [f"{cfg.steps} steps of {cfg.batch_size} x {cfg.seq_len} bytes, cosine schedule, "
           f"{cfg.warmup} warm-up steps" +
           (f"; learning rates x{', x'.join(f'{x:g}' for x in cfg.lr_scales)} of each base, "
            "* = best, gap to AdamW's best" if sweep else ""),
           f"{'model':<15}{'optimizer':<24}{'params':>11}{'lr':>9}{'val loss':>10}"
           f"{'vs adamw':>10}{'tokens/s':>11}{'bits/param':>11}"]
  for r in rows:
    if "error" in r:
      lines.append(f"{r['model']:<15}{r['optimizer']:<24} lr {r['learning_rate']:.2g} "
                   f"failed: {r['error']}")
      continue
    gap = "n/a" if r["gap_vs_adamw"] is None else f"{r['gap_vs_adamw']:+.2%}"
    lr = f"{r['learning_rate']:.2g}" + ("*" if sweep and r["best_lr"] else " ")
    lines.append(f"{r['model']:<15}{r['optimizer']:<24}{r['num_params']:>11,}"
                 f"{lr:>9}{r['final_eval_loss']:>10.4f}{gap:>10}"
                 f"{r['tokens_per_s']:>11,.0f}{r['state_bits_per_param']:>11.2f}")
  files = {}
  if best:
    tag = ("_".join(cfg.models) if len(cfg.models) <= 2 else f"{len(cfg.models)}models") + \
        f"_{len(cfg.optimizers)}opt"
    shown = [dict(r, label=(r["optimizer"] if len(cfg.models) == 1
                            else f"{r['model']}/{r['optimizer']}") + f" lr {r['learning_rate']:.2g}")
             for r in best.values()]
    files[f"convergence_{tag}.png"] = plot_png(
        shown, f"{', '.join(cfg.models)}: {cfg.steps} steps, "
        + ("each at its best rate" if sweep else "equal data and schedule"))
  return Result({"rows": rows}, "\n".join(lines), files)
