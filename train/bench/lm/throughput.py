"""Training throughput of the baseline transformer: tokens/s and MFU.

Times the real jitted train step of ``holojax train`` (forward, backward,
optimizer update, donated state) on real corpus batches, after warm-up, for
each optimizer and attention implementation asked for, all in one run, so
each optimizer's tokens/s is compared with the first's (issue 12's target:
every compressed optimizer within 3% of AdamW's). Model-FLOPs utilisation is

  MFU = flops_per_token * tokens_per_s / peak,

with flops_per_token = 6 N_matmul + 12 L T D (forward + backward), against
both the datasheet bf16 peak (when known) and a bf16 matmul rate measured
in the same run.

  holojax bench gpt_throughput                       # gpt2-124m, GPU
  holojax bench gpt_throughput --batch-size 32 --attention cudnn
  holojax bench gpt_throughput --attention cudnn --optimizers adamw turbo_adam:flat holo_adam:flat
  holojax bench gpt_throughput --tiny --no-save      # CPU smoke run
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp

from holojax.train import loop
from holojax.train.bench.common import (Progress, Result, check_optimizer_specs,
                                        device_memory, median_time, optimizer_of,
                                        require_positive)
from holojax.train.config import TrainConfig

# Dense bf16 datasheet peaks (FLOP/s), by device_kind prefix.
DATASHEET_BF16 = {"NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA L40S": 362e12}


@dataclasses.dataclass(frozen=True)
class ThroughputConfig:
  """The training run timed; gpt2-124m at 16 x 1024 takes about a minute on an H100.

  Attributes:
    model: model preset (``holojax models``).
    optimizers: optimizer specs ``name[@implementation][:tree_layout]`` (as in
      ``holojax bench optimizer_step``; ``turbo_adam:flat`` is TurboAdam's
      flat state layout); the first is the baseline of the ``x first``
      column.
    batch_size, seq_len: sequences per step and tokens per sequence.
    steps: timed steps, after ``warmup`` untimed ones.
    warmup: untimed steps (compilation included).
    attention: attention implementations to time (none: cudnn,xla on GPU, xla
      elsewhere).
    matmul_size: n of the n x n bf16 matmul whose measured rate is the MFU peak.
    corpus_max_bytes: read at most this much of the corpus (none: all).
  """

  model: str = "gpt2-124m"
  optimizers: tuple[str, ...] = ("adamw",)
  batch_size: int = 16
  seq_len: int = 1024
  steps: int = 20
  warmup: int = 3
  attention: tuple[str, ...] | None = None
  matmul_size: int = 8192
  corpus_max_bytes: int | None = None

  def __post_init__(self):
    require_positive(self, "batch_size", "seq_len", "steps", "warmup", "matmul_size")
    check_optimizer_specs(self.optimizers)


TINY = ThroughputConfig(model="tiny", batch_size=8, seq_len=64, steps=3, warmup=1,
                        matmul_size=1024, corpus_max_bytes=1_000_000)


def matmul_rate(n: int = 8192, repeats: int = 10) -> float:
  """Measured bf16 matmul FLOP/s on random data (median of ``repeats``)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  return 2 * n**3 / median_time(jax.jit(lambda a, b: a @ b), a, b, repeats=repeats)


def time_training(cfg: TrainConfig, *, warmup: int, steps: int, **model_overrides) -> dict:
  """The loop's setup and step (``loop.setup``), timed over ``steps`` real batches."""
  from holojax import data as hdata
  spec = loop.model_spec(cfg, **model_overrides)
  corpus = hdata.load_corpus(cfg.corpus, max_bytes=cfg.corpus_max_bytes)
  ds = hdata.PackedBatches(corpus.train, seq_len=cfg.seq_len, batch_size=cfg.batch_size)
  run = loop.setup(cfg, spec)
  batches = [jax.device_put(ds.batch(k), run.batch_sharding) for k in range(warmup + steps)]
  state = run.state
  for b in batches[:warmup]:
    state, metrics = run.train_step(state, b)
  jax.block_until_ready((state, metrics))
  t = time.perf_counter()
  for b in batches[warmup:]:
    state, metrics = run.train_step(state, b)
  jax.block_until_ready((state, metrics))
  dt = time.perf_counter() - t
  peak = device_memory()["peak_bytes_in_use"]
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in run.mesh.devices.flat]
  return {"step_ms": 1e3 * dt / steps,
          "tokens_per_s": steps * cfg.batch_size * cfg.seq_len / dt,
          "last_loss": float(metrics["train/loss"]),
          "flops_per_token": spec.config.flops_per_token(cfg.seq_len),
          "num_params": spec.config.num_params(),
          "peak_memory_gib": peak / 2**30 if peak is not None else None,
          "peak_bytes_per_device": None if None in peaks else max(peaks),
          "param_bytes_per_device": bytes_on(state["model"], run.mesh.devices.flat[0]),
          "state_bytes_per_device": bytes_on(state["opt"], run.mesh.devices.flat[0])}


def bytes_on(tree, device) -> int:
  """Bytes of ``tree``'s arrays held on ``device`` (its shards of sharded arrays)."""
  return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
             if s.device == device)


def run(cfg: ThroughputConfig, progress: Progress = Progress()) -> Result:
  gpu = jax.devices()[0].platform == "gpu"
  impls = cfg.attention or (("cudnn", "xla") if gpu else ("xla",))
  kind = getattr(jax.devices()[0], "device_kind", "cpu")
  peak_sheet = next((v for k, v in DATASHEET_BF16.items() if kind.startswith(k)), None)
  peak_meas = matmul_rate(cfg.matmul_size)
  rows = []
  for impl in impls:
    for spec in cfg.optimizers:
      name, opt_kwargs = optimizer_of(spec)
      tc = TrainConfig(model=cfg.model, optimizer=name, opt_kwargs=opt_kwargs,
                       batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                       steps=cfg.warmup + cfg.steps, progress=False,
                       corpus_max_bytes=cfg.corpus_max_bytes)
      head = {"attention": impl, "optimizer": spec}
      try:
        r = time_training(tc, warmup=cfg.warmup, steps=cfg.steps, attention=impl)
      except Exception as e:  # e.g. cuDNN unavailable for this shape/dtype
        rows.append({**head, "error": f"{type(e).__name__}: {str(e)[:200]}"})
        continue
      achieved = r["flops_per_token"] * r["tokens_per_s"]
      r.update({**head, "achieved_tflops": achieved / 1e12,
                "mfu_vs_measured_matmul": achieved / peak_meas,
                "mfu_vs_datasheet": achieved / peak_sheet if peak_sheet else None})
      base = next((b for b in rows if b["attention"] == impl and "error" not in b), r)
      r["tokens_per_s_vs_first"] = r["tokens_per_s"] / base["tokens_per_s"]
      rows.append(r)
      progress.say(f"{impl} / {spec}: {r['tokens_per_s']:,.0f} tokens/s "
                   f"({r['tokens_per_s_vs_first']:.3f} x {base['optimizer']})")
  lines = [f"{cfg.model}, batch {cfg.batch_size} x {cfg.seq_len} tokens, "
           f"{cfg.steps} timed steps after {cfg.warmup} warm-up; bf16 matmul measured "
           f"{peak_meas / 1e12:.0f} TFLOP/s" +
           (f", datasheet {peak_sheet / 1e12:.0f}" if peak_sheet else ""),
           f"{'attention':<10}{'optimizer':<24}{'step ms':>9}{'tokens/s':>12}{'x first':>8}"
           f"{'TFLOP/s':>9}{'MFU(meas)':>10}{'MFU(sheet)':>11}{'peak GiB':>9}"]
  for r in rows:
    who = f"{r['attention']:<10}{r['optimizer']:<24}"
    if "error" in r:
      lines.append(f"{who} failed: {r['error']}")
      continue
    sheet = f"{r['mfu_vs_datasheet']:.1%}" if r["mfu_vs_datasheet"] else "n/a"
    lines.append(f"{who}{r['step_ms']:>9.1f}{r['tokens_per_s']:>12,.0f}"
                 f"{r['tokens_per_s_vs_first']:>8.3f}"
                 f"{r['achieved_tflops']:>9.1f}{r['mfu_vs_measured_matmul']:>10.1%}{sheet:>11}"
                 f"{r['peak_memory_gib'] or float('nan'):>9.1f}")
  return Result({"matmul_tflops": peak_meas / 1e12,
                 "datasheet_tflops": peak_sheet and peak_sheet / 1e12, "rows": rows},
                "\n".join(lines))
