"""``holojax demo``: train the small model with several optimizers and compare.

Each optimizer trains the same model on the same batches (same seed, same
schedule shape, its own peak learning rate); the runs go in parallel
processes, one per CPU core. Prints a table (final validation loss,
tokens/s, optimizer-state bits per parameter) and writes ``loss_curves.png``
and ``results.json`` to the output directory.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import io
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


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """The demo: every optimizer of ``DEMO_OPTIMIZERS`` on the ``small`` model,
  150 steps each; a few minutes on a 2-core CPU.

  Attributes:
    optimizers: optimizer names (none: every registered one of the demo list).
    model: model preset.
    steps: steps per optimizer (none: 150).
    out: directory for the table and the plot (``holojax demo``).
    corpus: text file or directory (none: the Python standard library's source).
    progress: show a progress bar per run.
    workers: processes side by side (none: one per optimizer, at most one per
      CPU core; 1 runs in this process).
  """

  optimizers: tuple[str, ...] | None = None
  model: str = "small"
  steps: int | None = None
  out: str = "holojax_demo"
  corpus: str | None = None
  progress: bool = True
  workers: int | None = None

  def __post_init__(self):
    if self.steps is not None and self.steps < 1:
      raise ValueError(f"steps={self.steps} must be >= 1")
    if self.workers is not None and self.workers < 1:
      raise ValueError(f"workers={self.workers} must be >= 1")


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


def train_all(cfg: DemoConfig, say=lambda msg: None) -> list[dict]:
  """Trains ``cfg.model`` once per optimizer; returns one summary dict per optimizer."""
  from holojax.optim import registry
  names = list(cfg.optimizers or [n for n in DEMO_OPTIMIZERS if n in registry.names()])
  unknown = [n for n in names if n not in registry.names()]
  if unknown:
    raise ValueError(f"unknown optimizer(s) {unknown}; choose from {registry.names()}")
  steps = cfg.steps or DEMO_STEPS
  workers = cfg.workers or min(len(names), os.cpu_count() or 1)
  say(f"holojax demo: {cfg.model} model, {steps} steps per optimizer, {len(names)} "
      f"optimizers, {workers} worker process(es); tokens/s is per process while they run "
      "side by side")
  jobs = [(n, DEMO_OPTIMIZERS.get(n, 1e-3), cfg.model, steps, cfg.corpus, cfg.progress,
           i % workers) for i, n in enumerate(names)]
  if workers == 1:
    return [_run_one(*job) for job in jobs]
  ctx = mp.get_context("spawn")  # JAX does not survive fork
  with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
    return [f.result() for f in [pool.submit(_run_one, *job) for job in jobs]]


def format_table(rows: list[dict]) -> str:
  head = f"{'optimizer':<14}{'val loss':>10}{'tokens/s':>11}{'state bits/param':>18}"
  lines = [head, "-" * len(head)]
  for r in sorted(rows, key=lambda r: r["final_eval_loss"]):
    lines.append(f"{r['optimizer']:<14}{r['final_eval_loss']:>10.4f}{r['tokens_per_s']:>11,.0f}"
                 f"{r['state_bits_per_param']:>18.2f}")
  return "\n".join(lines)


def plot_png(rows: list[dict], title: str, ylabel: str = "loss (nats/byte)") -> bytes:
  """Train (lines) and validation (dots) loss curves of ``rows``, as PNG bytes."""
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
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=120)
  plt.close(fig)
  return buf.getvalue()


def run_demo(cfg: DemoConfig) -> list[dict]:
  """``holojax demo``: trains, prints the table, writes the plot and results.json."""
  t0 = time.perf_counter()
  rows = train_all(cfg, say=lambda msg: print(msg, flush=True))
  wall, steps = time.perf_counter() - t0, cfg.steps or DEMO_STEPS
  print("\n" + format_table(rows) + f"\n\n(wall time {wall:.0f} s)")
  out = Path(cfg.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps({"model": cfg.model, "steps": steps,
                                                "wall_s": wall, "rows": rows}, indent=1))
  (out / "loss_curves.png").write_bytes(
      plot_png(rows, f"holojax demo: {cfg.model} model, {steps} steps"))
  print(f"wrote {out / 'loss_curves.png'} and {out / 'results.json'}")
  return rows
