"""``holojax demo``: train the small model with several optimizers and compare.

Each optimizer trains the same model on the same batches (same seed, same
schedule shape, its own peak learning rate); the runs go in parallel
processes, one per CPU core. Prints a table (final validation loss,
tokens/s, optimizer-state bits per parameter) and writes ``loss_curves.png``
and ``results.json`` to the output directory.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

# Peak learning rates tuned by a short sweep on the small model (see README).
# Later modules add their optimizers here.
DEMO_OPTIMIZERS: dict[str, float] = {"adamw": 3e-3, "adafactor": 3e-3, "lion": 3e-4,
                                     "turbo_adam": 3e-3, "turbo_adam_v": 3e-3,
                                     "holo_adam": 3e-3}
DEMO_STEPS = 150


def _run_one(name: str, lr: float, model: str, steps: int, corpus, progress: bool, position: int):
  from holojax.models import registry as models
  from holojax.train.config import TrainConfig
  from holojax.train.loop import train
  seq_len = min(128, models.get(model).config.max_seq_len)
  cfg = TrainConfig(model=model, optimizer=name, learning_rate=lr, steps=steps, seq_len=seq_len,
                    eval_every=max(steps // 5, 1), log_every=max(steps // 30, 1),
                    warmup_steps=min(20, steps // 5), corpus=corpus, progress=progress)
  r = train(cfg, bar_position=position)  # one bar line per worker
  return {"optimizer": name, "learning_rate": lr, "final_eval_loss": r.final_eval_loss,
          "tokens_per_s": r.tokens_per_s, "state_bits_per_param": r.state_bits_per_param,
          "train_losses": r.train_losses, "eval_losses": r.eval_losses,
          "num_params": r.num_params}


def format_table(rows: list[dict]) -> str:
  head = f"{'optimizer':<14}{'val loss':>10}{'tokens/s':>11}{'state bits/param':>18}"
  lines = [head, "-" * len(head)]
  for r in sorted(rows, key=lambda r: r["final_eval_loss"]):
    lines.append(f"{r['optimizer']:<14}{r['final_eval_loss']:>10.4f}{r['tokens_per_s']:>11,.0f}"
                 f"{r['state_bits_per_param']:>18.2f}")
  return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in rows:
    steps, losses = zip(*r["train_losses"])
    label = r.get("label", r["optimizer"])
    (line,) = ax.plot(steps, losses, alpha=0.6, label=f"{label} (train)")
    steps, losses = zip(*r["eval_losses"])
    ax.plot(steps, losses, "o--", color=line.get_color(), label=f"{label} (val)")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats/byte)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run_demo(optimizers=None, *, model: str = "small", steps: int | None = None,
             out_dir: str = "holojax_demo", corpus=None, progress: bool = True,
             workers: int | None = None) -> list[dict]:
  """Trains ``model`` once per optimizer; returns one summary dict per optimizer."""
  from holojax.optim import registry
  names = optimizers or [n for n in DEMO_OPTIMIZERS if n in registry.names()]
  unknown = [n for n in names if n not in registry.names()]
  if unknown:
    raise ValueError(f"unknown optimizer(s) {unknown}; choose from {registry.names()}")
  steps = steps or DEMO_STEPS
  workers = workers or min(len(names), os.cpu_count() or 1)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  print(f"holojax demo: {model} model, {steps} steps per optimizer, {len(names)} optimizers, "
        f"{workers} worker process(es)", flush=True)
  ctx = mp.get_context("spawn")  # JAX does not survive fork
  with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
    futures = [pool.submit(_run_one, n, DEMO_OPTIMIZERS.get(n, 1e-3), model, steps, corpus,
                           progress, i % workers) for i, n in enumerate(names)]
    rows = [f.result() for f in futures]
  wall = time.perf_counter() - t0
  table = format_table(rows)
  print("\n" + table + f"\n\n(wall time {wall:.0f} s; tokens/s is per process while "
        f"{workers} ran side by side)")
  (out / "results.json").write_text(json.dumps({"model": model, "steps": steps, "wall_s": wall,
                                                "rows": rows}, indent=1))
  plot(rows, out / "loss_curves.png", f"holojax demo: {model} model, {steps} steps")
  print(f"wrote {out / 'loss_curves.png'} and {out / 'results.json'}")
  return rows


def run(argv: list[str]) -> dict:
  """``holojax bench demo``: the demo as a benchmark record."""
  import argparse
  p = argparse.ArgumentParser(prog="holojax bench demo")
  p.add_argument("--optimizers", nargs="+", default=None)
  p.add_argument("--model", default="small")
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--out", default="holojax_demo")
  a = p.parse_args(argv)
  rows = run_demo(a.optimizers, model=a.model, steps=a.steps, out_dir=a.out, progress=False)
  summary = [{k: r[k] for k in ("optimizer", "learning_rate", "final_eval_loss", "tokens_per_s",
                                "state_bits_per_param")} for r in rows]
  return {"config": {"model": a.model, "steps": a.steps or DEMO_STEPS,
                     "optimizers": [r["optimizer"] for r in rows]},
          "results": {"rows": summary}, "table": format_table(rows)}
