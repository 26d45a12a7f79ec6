"""Optimizers (and models) at equal steps, data and schedule: loss gap to AdamW.

  holojax bench convergence --models gpt2-124m --steps 300 --optimizers adamw turbo_adam
  holojax bench convergence --models small holo-small hybrid-small lowrank-small \
      --optimizers adamw --seq-len 128                 # models at equal steps
  holojax bench convergence --tiny                     # CPU smoke run

Writes the loss curves to ``convergence_<model>.png`` next to the record
(and under ``$OUT`` on the GPU machine).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from holojax.train.demo import plot


def run(argv: list[str]) -> dict:
  from holojax.train.config import TrainConfig
  from holojax.train.loop import train
  p = argparse.ArgumentParser(prog="holojax bench convergence")
  p.add_argument("--models", nargs="+", default=["gpt2-124m"])
  p.add_argument("--optimizers", nargs="+", default=["adamw", "turbo_adam_v", "turbo_adam"])
  p.add_argument("--lr", type=float, default=6e-4, help="peak learning rate for every optimizer")
  p.add_argument("--lr-for", nargs="*", default=[], metavar="NAME=LR",
                 help="per-optimizer peak learning rate overrides")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--seq-len", type=int, default=1024)
  p.add_argument("--warmup", type=int, default=30)
  p.add_argument("--tiny", action="store_true")
  a = p.parse_args(argv)
  if a.tiny:
    a.steps, a.batch_size, a.seq_len, a.warmup = 6, 8, 32, 2
    if a.models == ["gpt2-124m"]:
      a.models = ["tiny"]
  lrs = {k: float(v) for k, v in (s.split("=", 1) for s in a.lr_for)}
  rows = []
  for model, name in ((m, o) for m in a.models for o in a.optimizers):
    cfg = TrainConfig(model=model, optimizer=name, learning_rate=lrs.get(name, a.lr),
                      steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len,
                      warmup_steps=a.warmup, eval_every=max(a.steps // 5, 1), eval_batches=8,
                      log_every=max(a.steps // 50, 1), progress=False,
                      corpus_max_bytes=1_000_000 if a.tiny else None)
    try:
      r = train(cfg)
    except Exception as e:  # record the failure, keep comparing the others
      rows.append({"model": model, "optimizer": name,
                   "error": f"{type(e).__name__}: {str(e)[:300]}"})
      continue
    rows.append({"model": model, "optimizer": name, "learning_rate": cfg.learning_rate,
                 "num_params": r.num_params,
                 "final_eval_loss": r.final_eval_loss, "tokens_per_s": r.tokens_per_s,
                 "state_bits_per_param": r.state_bits_per_param,
                 "train_losses": r.train_losses, "eval_losses": r.eval_losses})
  ok = [r for r in rows if "error" not in r]
  lines = [f"{a.steps} steps of {a.batch_size} x {a.seq_len} bytes, cosine schedule, "
           f"{a.warmup} warm-up steps",
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
  if ok:
    out_dir = Path(os.environ.get("OUT") or Path(__file__).parent / "records")
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = ("_".join(a.models) if len(a.models) <= 2 else f"{len(a.models)}models") + \
        f"_{len(a.optimizers)}opt"
    for r in ok:
      r["label"] = r["optimizer"] if len(a.models) == 1 else f"{r['model']}/{r['optimizer']}"
    plot(ok, out_dir / f"convergence_{tag}.png",
         f"{', '.join(a.models)}: {a.steps} steps, equal data and schedule")
  return {"config": vars(a), "results": {"rows": rows}, "table": "\n".join(lines)}
