"""Training throughput of the baseline transformer: tokens/s and MFU.

Times the real jitted train step of ``holojax train`` (forward, backward,
optimizer update, donated state) on real corpus batches, after warm-up, for
each attention implementation asked for. Model-FLOPs utilisation is

  MFU = flops_per_token * tokens_per_s / peak,

with flops_per_token = 6 N_matmul + 12 L T D (forward + backward), against
both the datasheet bf16 peak (when known) and a bf16 matmul rate measured
in the same run.

  holojax bench gpt_throughput                       # gpt2-124m, GPU
  holojax bench gpt_throughput --tiny --no-save      # CPU smoke run
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from flax import nnx

from holojax.train.bench.timing import median_time

# Dense bf16 datasheet peaks (FLOP/s), by device_kind prefix.
DATASHEET_BF16 = {"NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA L40S": 362e12}


def matmul_rate(n: int = 8192, repeats: int = 10) -> float:
  """Measured bf16 matmul FLOP/s on random data (median of ``repeats``)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  return 2 * n**3 / median_time(jax.jit(lambda a, b: a @ b), a, b,
                                repeats=repeats)


def time_training(cfg, *, warmup: int, steps: int, **model_overrides) -> dict:
  from holojax import data as hdata
  from holojax.train import loop, sharding, step
  spec = loop.model_spec(cfg, **model_overrides)
  corpus = hdata.load_corpus(cfg.corpus, max_bytes=cfg.corpus_max_bytes)
  ds = hdata.PackedBatches(corpus.train, seq_len=cfg.seq_len, batch_size=cfg.batch_size)
  mesh = sharding.make_mesh(cfg.mesh_data, cfg.mesh_fsdp)
  batch_sh = sharding.batch_sharding(mesh)
  batches = [jax.device_put(ds.batch(k), batch_sh) for k in range(warmup + steps)]
  tx = loop.make_optimizer(cfg)
  graphdef, state = step.init_state(lambda: spec.build(spec.config, rngs=nnx.Rngs(cfg.seed)),
                                    tx, mesh)
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  train_step = step.make_train_step(graphdef, tx, loop.loss_fn, mesh=mesh,
                                    state_sharding=state_sh)
  for b in batches[:warmup]:
    state, metrics = train_step(state, b)
  jax.block_until_ready((state, metrics))
  t = time.perf_counter()
  for b in batches[warmup:]:
    state, metrics = train_step(state, b)
  jax.block_until_ready((state, metrics))
  dt = time.perf_counter() - t
  loss = float(metrics["train/loss"])
  tokens_per_s = steps * cfg.batch_size * cfg.seq_len / dt
  stats = jax.devices()[0].memory_stats() or {}
  return {"step_ms": 1e3 * dt / steps, "tokens_per_s": tokens_per_s, "last_loss": loss,
          "flops_per_token": spec.config.flops_per_token(cfg.seq_len),
          "num_params": spec.config.num_params(),
          "peak_memory_gib": (stats["peak_bytes_in_use"] / 2**30
                              if "peak_bytes_in_use" in stats else None)}


def run(argv: list[str]) -> dict:
  from holojax.train.config import TrainConfig
  p = argparse.ArgumentParser(prog="holojax bench gpt_throughput")
  p.add_argument("--model", default="gpt2-124m")
  p.add_argument("--optimizer", default="adamw")
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--seq-len", type=int, default=1024)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--attention", default=None,
                 help="comma list of implementations (default: cudnn,xla on GPU, xla on CPU)")
  p.add_argument("--tiny", action="store_true", help="tiny model, short run (CPU check)")
  a = p.parse_args(argv)
  gpu = jax.devices()[0].platform == "gpu"
  if a.tiny:
    a.model, a.batch_size, a.seq_len, a.steps, a.warmup = "tiny", 8, 64, 3, 1
  impls = (a.attention.split(",") if a.attention else (["cudnn", "xla"] if gpu else ["xla"]))
  kind = getattr(jax.devices()[0], "device_kind", "cpu")
  peak_sheet = next((v for k, v in DATASHEET_BF16.items() if kind.startswith(k)), None)
  peak_meas = matmul_rate(1024 if a.tiny else 8192)
  rows = []
  for impl in impls:
    cfg = TrainConfig(model=a.model, optimizer=a.optimizer, batch_size=a.batch_size,
                      seq_len=a.seq_len, steps=a.warmup + a.steps, progress=False,
                      corpus_max_bytes=None if not a.tiny else 1_000_000)
    try:
      r = time_training(cfg, warmup=a.warmup, steps=a.steps, attention=impl)
    except Exception as e:  # e.g. cuDNN unavailable for this shape/dtype
      rows.append({"attention": impl, "error": f"{type(e).__name__}: {str(e)[:200]}"})
      continue
    achieved = r["flops_per_token"] * r["tokens_per_s"]
    r.update({"attention": impl, "achieved_tflops": achieved / 1e12,
              "mfu_vs_measured_matmul": achieved / peak_meas,
              "mfu_vs_datasheet": achieved / peak_sheet if peak_sheet else None})
    rows.append(r)
  lines = [f"{a.model} / {a.optimizer}, batch {a.batch_size} x {a.seq_len} tokens, "
           f"{a.steps} timed steps after {a.warmup} warm-up; bf16 matmul measured "
           f"{peak_meas / 1e12:.0f} TFLOP/s" +
           (f", datasheet {peak_sheet / 1e12:.0f}" if peak_sheet else ""),
           f"{'attention':<10}{'step ms':>9}{'tokens/s':>12}{'TFLOP/s':>9}{'MFU(meas)':>10}"
           f"{'MFU(sheet)':>11}{'peak GiB':>9}"]
  for r in rows:
    if "error" in r:
      lines.append(f"{r['attention']:<10} failed: {r['error']}")
      continue
    sheet = f"{r['mfu_vs_datasheet']:.1%}" if r["mfu_vs_datasheet"] else "n/a"
    lines.append(f"{r['attention']:<10}{r['step_ms']:>9.1f}{r['tokens_per_s']:>12,.0f}"
                 f"{r['achieved_tflops']:>9.1f}{r['mfu_vs_measured_matmul']:>10.1%}{sheet:>11}"
                 f"{r['peak_memory_gib'] or float('nan'):>9.1f}")
  config = {k: v for k, v in vars(a).items()}
  return {"config": config, "results": {"matmul_tflops": peak_meas / 1e12,
                                        "datasheet_tflops": peak_sheet and peak_sheet / 1e12,
                                        "rows": rows}, "table": "\n".join(lines)}
