"""Optimizers (and models) at equal steps, data and schedule: loss gap to AdamW.

  holojax bench convergence --models gpt2-124m --steps 300 --optimizers adamw turbo_adam
  holojax bench convergence --models small holo-small hybrid-small lowrank-small \
      --optimizers adamw --seq-len 128                 # models at equal steps
  holojax bench convergence --tiny                     # CPU smoke run

Writes the loss curves to ``convergence_<models>_<n>opt.png`` next to the record.
"""

from __future__ import annotations

import dataclasses

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
    lr_for: per-optimizer peak learning rates, as NAME=LR.
    steps: optimizer steps per run.
    batch_size, seq_len: sequences per step and bytes per sequence.
    warmup: linear warm-up steps.
    corpus_max_bytes: read at most this much of the corpus (none: all).
  """

  models: tuple[str, ...] = ("gpt2-124m",)
  optimizers: tuple[str, ...] = ("adamw", "turbo_adam_v", "turbo_adam")
  lr: float = 6e-4
  lr_for: tuple[str, ...] = ()
  steps: int = 300
  batch_size: int = 16
  seq_len: int = 1024
  warmup: int = 30
  corpus_max_bytes: int | None = None

  def __post_init__(self):
    bad = [s for s in self.lr_for if "=" not in s]
    if bad:
      raise ValueError(f"lr_for={bad} must be NAME=LR")
    if not self.models or not self.optimizers:
      raise ValueError("models and optimizers must not be empty")


TINY = ConvergenceConfig(models=("tiny",), optimizers=("adamw", "lion"), steps=6,
                         batch_size=8, seq_len=32, warmup=2, corpus_max_bytes=1_000_000)


def run(cfg: ConvergenceConfig, progress: Progress = Progress()) -> Result:
  lrs = {k: float(v) for k, v in (s.split("=", 1) for s in cfg.lr_for)}
  rows = []
  for model, name in ((m, o) for m in cfg.models for o in cfg.optimizers):
    tc = TrainConfig(model=model, optimizer=name, learning_rate=lrs.get(name, cfg.lr),
                     steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                     warmup_steps=cfg.warmup, eval_every=max(cfg.steps // 5, 1),
                     eval_batches=8, log_every=max(cfg.steps // 50, 1), progress=False,
                     corpus_max_bytes=cfg.corpus_max_bytes)
    progress.say(f"{model} / {name}: training {cfg.steps} steps")
    try:
      r = train(tc)
    except Exception as e:  # record the failure, keep comparing the others
      rows.append({"model": model, "optimizer": name,
                   "error": f"{type(e).__name__}: {str(e)[:300]}"})
      continue
    rows.append({"model": model, "optimizer": name, "learning_rate": tc.learning_rate,
                 "num_params": r.num_params,
                 "final_eval_loss": r.final_eval_loss, "tokens_per_s": r.tokens_per_s,
                 "state_bits_per_param": r.state_bits_per_param,
                 "train_losses": r.train_losses, "eval_losses": r.eval_losses})
  ok = [r for r in rows if "error" not in r]
  lines = [f"{cfg.steps} steps of {cfg.batch_size} x {cfg.seq_len} bytes, cosine schedule, "
           f"{cfg.warmup} warm-up steps",
           f"{'model':<15}{'optimizer':<14}{'params':>11}{'lr':>8}{'val loss':>10}"
           f"{'vs adamw':>10}{'tokens/s':>11}{'bits/param':>11}"]
  for r in rows:
    if "error" in r:
      lines.append(f"{r['model']:<15}{r['optimizer']:<14} failed: {r['error']}")
      continue
    base = next((b["final_eval_loss"] for b in ok
                 if b["model"] == r["model"] and b["optimizer"] == "adamw"), None)
    r["gap_vs_adamw"] = (r["final_eval_loss"] / base - 1) if base else None
    gap = f"{r['gap_vs_adamw']:+.2%}" if base else "n/a"
    lines.append(f"{r['model']:<15}{r['optimizer']:<14}{r['num_params']:>11,}"
                 f"{r['learning_rate']:>8.0e}{r['final_eval_loss']:>10.4f}{gap:>10}"
                 f"{r['tokens_per_s']:>11,.0f}{r['state_bits_per_param']:>11.2f}")
  files = {}
  if ok:
    tag = ("_".join(cfg.models) if len(cfg.models) <= 2 else f"{len(cfg.models)}models") + \
        f"_{len(cfg.optimizers)}opt"
    for r in ok:
      r["label"] = r["optimizer"] if len(cfg.models) == 1 else f"{r['model']}/{r['optimizer']}"
    files[f"convergence_{tag}.png"] = plot_png(
        ok, f"{', '.join(cfg.models)}: {cfg.steps} steps, equal data and schedule")
  return Result({"rows": rows}, "\n".join(lines), files)
