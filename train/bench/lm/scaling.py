"""Multi-device training: data parallel and FSDP on 1, 2, 4 ... devices, every optimizer.

For each model, optimizer, mode and device count, a fresh process times the
real ``holojax train`` step (``loop.setup``: jit over the ``(data, fsdp)``
mesh, state sharded at creation, donated) on corpus batches of
``batch_per_device`` x ``seq_len`` tokens per device (weak scaling: the global
batch grows with the devices). Modes: ``dp`` (mesh ``data=n``: parameters and
optimizer state replicated) and ``fsdp`` (mesh ``fsdp=n``: both sharded over
the devices). Rows (``results["rows"]``)::

  {"model", "optimizer", "mode", "devices", "tokens_per_s", "efficiency",
   "peak_bytes_per_device", "param_bytes_per_device", "state_bytes_per_device",
   "last_loss", "status", "error"}

``efficiency`` = tokens/s / (devices x the same model and optimizer's tokens/s
on one device) (target: >= 0.9 for gpt2-124m data parallel on 2 GPUs); under
FSDP the parameter and state bytes per device should fall as 1/devices. One
process per row, so each peak is its own; device counts above the machine's
are rows with status ``"skipped"``.

  holojax bench scaling                                      # every device count present
  holojax bench scaling --models gpt2-124m --optimizers adamw turbo_adam --devices 1 2
  holojax bench scaling --tiny --no-save                     # 8 CPU devices, seconds
"""

from __future__ import annotations

import dataclasses
import sys

import jax

from holojax.optim import registry
from holojax.train.bench.common import (Progress, Result, child_main, fmt_bytes, in_child,
                                        pipe_table, require_positive)
from holojax.train.bench.lm.throughput import time_training
from holojax.train.config import TrainConfig

MODES = ("dp", "fsdp")


@dataclasses.dataclass(frozen=True)
class ScalingConfig:
  """What ``run`` measures (module docstring).

  Attributes:
    models: model presets (``holojax models``).
    optimizers: registry names.
    modes: ``dp`` and / or ``fsdp``.
    devices: device counts (the first N devices of the machine).
    batch_per_device: sequences per device per step.
    seq_len: tokens per sequence.
    steps: timed steps, after ``warmup`` untimed ones (compilation included).
    warmup: untimed steps.
    corpus_max_bytes: read at most this much of the corpus (none: all).
    timeout_s: seconds one row may take before it is stopped (status "error").
  """

  models: tuple[str, ...] = ("gpt2-124m", "llama-1b")
  optimizers: tuple[str, ...] = ("adamw", "adafactor", "lion", "turbo_adam", "turbo_adam_v",
                                 "holo_adam")
  modes: tuple[str, ...] = MODES
  devices: tuple[int, ...] = (1, 2, 4)
  batch_per_device: int = 8
  seq_len: int = 1024
  steps: int = 10
  warmup: int = 2
  corpus_max_bytes: int | None = 50_000_000
  timeout_s: int = 900

  def __post_init__(self):
    bad = [o for o in self.optimizers if o not in registry.names()]
    if bad or not self.optimizers:
      raise ValueError(f"optimizers {bad or self.optimizers!r}: choose from {registry.names()}")
    if not self.modes or any(m not in MODES for m in self.modes):
      raise ValueError(f"modes={self.modes!r}: choose from {MODES}")
    if not self.devices or any(n < 1 for n in self.devices):
      raise ValueError(f"devices={self.devices!r} must be positive counts")
    if not self.models:
      raise ValueError("models must name at least one preset")
    require_positive(self, "batch_per_device", "seq_len", "steps", "warmup", "timeout_s")


TINY = ScalingConfig(models=("tiny",), optimizers=("adamw",), devices=(1, 2), batch_per_device=2,
                     seq_len=64, steps=2, warmup=1, corpus_max_bytes=200_000, timeout_s=300)


def train_config(cfg: ScalingConfig, model: str, optimizer: str, mode: str, n: int):
  return TrainConfig(model=model, optimizer=optimizer, batch_size=cfg.batch_per_device * n,
                     seq_len=cfg.seq_len, steps=cfg.warmup + cfg.steps, progress=False,
                     corpus_max_bytes=cfg.corpus_max_bytes,
                     mesh_data=n if mode == "dp" else 1, mesh_fsdp=n if mode == "fsdp" else 1)


def cases(cfg: ScalingConfig):
  """``(model, optimizer, mode, devices)`` per row; one device is one row (both modes
  are the same run there), listed as ``dp``."""
  for model in cfg.models:
    for opt in cfg.optimizers:
      for n in sorted(set(cfg.devices)):
        for mode in (("dp",) if n == 1 else cfg.modes):
          yield model, opt, mode, n


def one(cfg: ScalingConfig, model: str, optimizer: str, mode: str, n: int) -> dict:
  """One row, timed in this process."""
  tc = train_config(cfg, model, optimizer, mode, n)
  r = time_training(tc, warmup=cfg.warmup, steps=cfg.steps)
  keep = ("tokens_per_s", "step_ms", "last_loss", "peak_bytes_per_device",
          "param_bytes_per_device", "state_bytes_per_device")
  return {"status": "ok", **{k: r[k] for k in keep}}


def run(cfg: ScalingConfig, progress: Progress = Progress()) -> Result:
  """Every case of :func:`cases`, each in its own process."""
  have = jax.device_count()
  results = {"devices_present": have, "platform": jax.devices()[0].platform, "rows": []}
  single = {}
  for model, opt, mode, n in cases(cfg):
    row = {"model": model, "optimizer": opt, "mode": mode, "devices": n}
    if n > have:
      row.update(status="skipped", error=f"{n} devices asked, {have} present")
    else:
      row.update(in_child("holojax.train.bench.lm.scaling", cfg, [model, opt, mode, n],
                          cfg.timeout_s))
    if row.get("status") == "ok":
      if n == 1:
        single[model, opt] = row["tokens_per_s"]
      base = single.get((model, opt))
      row["efficiency"] = row["tokens_per_s"] / (n * base) if base else None
    progress.say(f"{model} / {opt} / {mode} x{n}: {row.get('status')} "
                 + (f"{row['tokens_per_s']:,.0f} tokens/s" if row.get("status") == "ok"
                    else str(row.get("error"))))
    results["rows"].append(row)
    progress.partial(results)
  return Result(results, table(cfg, results))


def table(cfg: ScalingConfig, r: dict) -> str:
  rows = []
  for x in r["rows"]:
    head = [x["model"], x["optimizer"], x["mode"], str(x["devices"])]
    if x.get("status") != "ok":
      rows.append(head + [f"{x.get('status')}: {x.get('error')}"])
      continue
    eff = "n/a" if x.get("efficiency") is None else f"{x['efficiency']:.2f}"
    rows.append(head + [f"{x['tokens_per_s']:,.0f}", eff] + [
        fmt_bytes(x[k], "MiB") for k in ("peak_bytes_per_device", "param_bytes_per_device",
                                         "state_bytes_per_device")])
  return "\n".join([
      f"weak scaling: {cfg.batch_per_device} x {cfg.seq_len} tokens per device per step, "
      f"{cfg.steps} timed steps; {r['devices_present']} {r['platform']} devices present",
      *pipe_table(["model", "optimizer", "mode", "devices", "tokens/s", "efficiency",
                   "peak MiB/dev", "params MiB/dev", "state MiB/dev"], rows)])


if __name__ == "__main__":
  sys.exit(child_main(ScalingConfig, one, sys.argv[1:]))
