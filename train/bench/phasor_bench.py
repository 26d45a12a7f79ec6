"""Phasor memory benchmarks: positional orthogonality and speed / memory.

(a) Orthogonality of position codes P_t = e^{i t omega} (d complex dims):
    random uniform frequencies omega ~ U(-pi, pi) vs RoPE omega_j =
    base^(-j/d). The similarity of two positions depends on the lag only,
    sim(L) = (1/d) sum_j cos(L omega_j). Reported:
      mean_abs_sim   mean |sim(t - t')| over all pairs t != t' < T
      neighbour_sim  sim(1)
      max_abs_sim    max_{L>=1} |sim(L)|
      crosstalk_ratio = 1 / mean_abs_sim (self-similarity over cross-talk;
                        random codes give ~sqrt(pi d))
(b) Speed at bf16 storage: the causal phasor memory (Pallas kernel and
    associative_scan reference), forward and forward+backward, against
    ``jax.nn.dot_product_attention(implementation="cudnn", is_causal=True)``
    on the same [B, T, H, D] shapes; peak memory (the compiled program's
    temp + argument + output bytes, and the device's peak_bytes_in_use);
    an HBM copy bandwidth measured in the same run and each phasor case's
    achieved fraction of it (``min_bytes``, the bytes any implementation
    must move, / time / bandwidth). The phasor inputs are the layer's:
    bf16 values and content phases plus float32[H, D] positional
    frequencies added inside the memory (``--phase-dtype float32`` for
    float32 phases).
    Cases that run out of memory are recorded as "oom" and skipped.

Usage (GPU):  python -m holojax.train.bench.phasor_bench --tune --out $OUT/phasor.json
CPU smoke:    python -m holojax.train.bench.phasor_bench --tiny --out /tmp/p.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

from holojax.kernels.phasor import PhasorBlocks, phasor_memory
from holojax.nn.phasor import generate_random_phasors, rope_frequencies
from holojax.train.bench.timing import copy_bandwidth, median_time


# ----------------------------------------------------------------------------
# (a) orthogonality


def lag_similarity(freq_d: np.ndarray, max_lag: int) -> np.ndarray:
  """sim(L) = mean_j cos(L omega_j) for L = 0..max_lag (float64)."""
  lags = np.arange(max_lag + 1, dtype=np.float64)[:, None]
  return np.cos(lags * np.asarray(freq_d, np.float64)[None, :]).mean(-1)


def orthogonality_metrics(freq_d: np.ndarray, num_pos: int) -> dict:
  """Cross-talk metrics of position codes over positions 0..num_pos-1."""
  sim = lag_similarity(freq_d, num_pos - 1)[1:]
  weights = np.arange(num_pos - 1, 0, -1, dtype=np.float64)  # pairs per lag
  mean_abs = float(np.sum(weights * np.abs(sim)) / np.sum(weights))
  return {"mean_abs_sim": mean_abs, "neighbour_sim": float(sim[0]),
          "max_abs_sim": float(np.max(np.abs(sim))),
          "crosstalk_ratio": 1.0 / mean_abs}


def run_orthogonality(dims, positions, seed=0) -> list[dict]:
  rows = []
  for d in dims:
    rand = np.asarray(generate_random_phasors(jax.random.key(seed), 1, d)[0])
    rope = np.asarray(rope_frequencies(d))
    for t in positions:
      for name, f in (("random_uniform", rand), ("rope", rope)):
        rows.append({"codes": name, "d": d, "positions": t,
                     **orthogonality_metrics(f, t)})
  return rows


# ----------------------------------------------------------------------------
# (b) speed and memory


def _compiled_bytes(f, *args) -> int | None:
  try:
    ma = f.lower(*args).compile().memory_analysis()
    return int(ma.temp_size_in_bytes + ma.argument_size_in_bytes
               + ma.output_size_in_bytes)
  except Exception:  # noqa: BLE001 (not every backend reports it)
    return None


def _peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def _is_oom(err: Exception) -> bool:
  msg = str(err).lower()
  return any(s in msg for s in ("resource_exhausted", "out of memory",
                                "oom", "allocat"))


@dataclasses.dataclass(frozen=True)
class SpeedConfig:
  """Shapes and options of the speed part.

  The phasor inputs are what ``PhasorAttention`` passes: bf16 values, content
  phases in ``phase_dtype`` and positional frequencies float32[H, D] added
  inside the memory. ``tune`` times the kernel's tile configurations at the
  first length (forward+backward) and keeps the fastest.
  """

  batch: int = 4
  heads: int = 16
  head_dim: int = 128
  seq_lens: tuple[int, ...] = (2048, 4096, 8192, 16384, 32768, 65536,
                               131072)
  repeats: int = 10
  copy_bytes: int = 1 << 30
  interpret: bool = False  # Pallas interpreter (CPU smoke runs)
  attention: str | None = "cudnn"
  phase_dtype: str = "bfloat16"
  tune: bool = False
  tune_len: int = 16384  # tiles are tuned here (or at the first length)


TUNE_BLOCKS = tuple(
    PhasorBlocks(block_t=16, chunks=c, block_d=64, num_warps=w)
    for c in (16, 32) for w in (2, 4)) + tuple(  # whole-sequence programs:
    PhasorBlocks(block_t=bt, chunks=0, block_d=bd, num_warps=4, num_stages=s)
    for bt in (32, 64) for bd in (16, 32) for s in (1, 3)) + (
        PhasorBlocks(fast_trig=False),)


def _phasor_fns(impl: str, interpret: bool, blocks: PhasorBlocks | None):
  if impl == "pallas" and interpret:
    impl = "interpret"

  def fwd(v, k, q, f):
    return phasor_memory(v, k, q, freq_hd=f, implementation=impl,
                         blocks=blocks)

  def loss(v, k, q, f, g):
    return jnp.sum((fwd(v, k, q, f) * g).astype(jnp.float32))

  grad = jax.grad(loss, argnums=(0, 1, 2, 3))
  return jax.jit(fwd), jax.jit(grad)


def _attn_fns(implementation):
  def fwd(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                        implementation=implementation)

  def loss(q, k, v, g):
    return jnp.sum((fwd(q, k, v) * g).astype(jnp.float32))

  grad = jax.grad(loss, argnums=(0, 1, 2))
  return jax.jit(fwd), jax.jit(lambda q, k, v, g: grad(q, k, v, g))


def min_bytes(n: int, kind: str, *, value_bytes: int = 2,
              phase_bytes: int = 2) -> int:
  """Bytes any implementation must move for n = B T H D elements.

  fwd: read v, k, q; write y. fwd+bwd adds the backward: read g, v, k, q;
  write dv, dk, dq (the frequencies and chunk carries are negligible).
  The kernel itself moves more (it reads v, k and g, q once more for the
  chunk totals: 30 vs 22 bytes with bf16), so 1.0 is out of its reach.
  """
  fwd = n * (2 * value_bytes + 2 * phase_bytes)
  if kind == "fwd":
    return fwd
  return fwd + n * (2 * value_bytes + 2 * phase_bytes) + n * (
      value_bytes + 2 * phase_bytes)


def _inputs(cfg: SpeedConfig, t: int):
  shape = (cfg.batch, t, cfg.heads, cfg.head_dim)
  ks = jax.random.split(jax.random.key(t), 5)
  pdt = jnp.dtype(cfg.phase_dtype)
  v = jax.random.normal(ks[0], shape, jnp.bfloat16)
  k = jax.random.uniform(ks[1], shape, jnp.float32, -math.pi, math.pi)
  q = jax.random.uniform(ks[2], shape, jnp.float32, -math.pi, math.pi)
  f = jax.random.uniform(ks[3], shape[2:], jnp.float32, -0.05, 0.05)
  g = jax.random.normal(ks[4], shape, jnp.bfloat16)
  return v, k.astype(pdt), q.astype(pdt), f, g


def check_against_xla(cfg: SpeedConfig, t: int, blocks) -> dict:
  """Max |pallas - xla| of y and of each gradient, relative to max |xla|."""
  v, k, q, f, g = _inputs(cfg, t)
  out = {"seq_len": t}
  fp, gp = _phasor_fns("pallas", cfg.interpret, blocks)
  fx, gx = _phasor_fns("xla", False, None)
  pairs = [("y", fp(v, k, q, f), fx(v, k, q, f))]
  pairs += list(zip(("dv", "dk", "dq", "df"), gp(v, k, q, f, g),
                    gx(v, k, q, f, g)))
  for name, a, b in pairs:
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    out[f"{name}_rel_err"] = float(jnp.max(jnp.abs(a - b))
                                   / jnp.max(jnp.abs(b)))
  return out


def tune_blocks(cfg: SpeedConfig, t: int) -> tuple[PhasorBlocks, list]:
  """Fastest PhasorBlocks for fwd+bwd at length t (and every timing)."""
  v, k, q, f, g = _inputs(cfg, t)
  rows = []
  for blocks in TUNE_BLOCKS:
    try:
      _, fb = _phasor_fns("pallas", cfg.interpret, blocks)
      ms = 1e3 * median_time(fb, v, k, q, f, g, repeats=cfg.repeats)
    except Exception as e:  # noqa: BLE001 (a tile that fails to compile)
      ms = None
      print(f"  {blocks}: {repr(e)[:120]}", flush=True)
    rows.append({**dataclasses.asdict(blocks), "fwd_bwd_ms": ms})
    print(f"  tune {blocks}: {ms}", flush=True)
  best = min((r for r in rows if r["fwd_bwd_ms"] is not None),
             key=lambda r: r["fwd_bwd_ms"])
  best = {k: v for k, v in best.items() if k != "fwd_bwd_ms"}
  return PhasorBlocks(**best), rows


def run_speed(cfg: SpeedConfig) -> dict:
  bw = copy_bandwidth(cfg.copy_bytes, cfg.repeats)
  print(f"copy bandwidth {bw / 1e9:.1f} GB/s", flush=True)
  blocks, tuning = PhasorBlocks(), []
  t_tune = cfg.tune_len if cfg.tune_len in cfg.seq_lens else cfg.seq_lens[0]
  if cfg.tune:
    blocks, tuning = tune_blocks(cfg, t_tune)
    print(f"best tiles {blocks}", flush=True)
  check = check_against_xla(cfg, t_tune, blocks)
  print(f"check {check}", flush=True)
  pbytes = jnp.dtype(cfg.phase_dtype).itemsize
  rows = []
  for t in cfg.seq_lens:
    v, k, q, f, g = _inputs(cfg, t)
    n = v.size
    cases = [(f"phasor_{i}", i, kind) for i in ("pallas", "xla")
             for kind in ("fwd", "fwd+bwd")]
    if cfg.attention is not None or cfg.interpret:
      cases += [("attention", cfg.attention, kind)
                for kind in ("fwd", "fwd+bwd")]
    for name, impl, kind in cases:
      row = {"case": name, "implementation": impl or "xla", "kind": kind,
             "seq_len": t, "batch": cfg.batch, "heads": cfg.heads,
             "head_dim": cfg.head_dim}
      try:
        if name == "attention":
          fwd, fb = _attn_fns(impl)
          qa, ka = q.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
          args = (qa, ka, v) if kind == "fwd" else (qa, ka, v, g)
        else:
          fwd, fb = _phasor_fns(impl, cfg.interpret, blocks)
          args = (v, k, q, f) if kind == "fwd" else (v, k, q, f, g)
        fn = fwd if kind == "fwd" else fb
        row["ms"] = 1e3 * median_time(fn, *args, repeats=cfg.repeats)
        row["compiled_bytes"] = _compiled_bytes(fn, *args)
        row["device_peak_bytes"] = _peak_bytes()
        if name.startswith("phasor"):
          by = min_bytes(n, kind, phase_bytes=pbytes)
          row["min_bytes"] = by
          row["bw_fraction"] = by / (row["ms"] * 1e-3) / bw
      except Exception as e:  # noqa: BLE001
        row["status"] = "oom" if _is_oom(e) else "error"
        row["error"] = repr(e)[:300]
      rows.append(row)
      print(_fmt_row(row), flush=True)
  return {"copy_bandwidth_Bps": bw, "blocks": dataclasses.asdict(blocks),
          "tuning": tuning, "check": check, "rows": rows,
          "speedup_vs_attention": _speedups(rows)}


def _speedups(rows: list[dict]) -> list[dict]:
  """attention ms / phasor ms per (length, kind, implementation)."""
  ms = {(r["case"], r["kind"], r["seq_len"]): r.get("ms") for r in rows}
  out = []
  for (case, kind, t), m in ms.items():
    att = ms.get(("attention", kind, t))
    if case.startswith("phasor") and m and att:
      out.append({"case": case, "kind": kind, "seq_len": t,
                  "speedup": att / m})
  return out


def _fmt_row(r: dict) -> str:
  if "ms" not in r:
    return (f"{r['case']:>14} {r['kind']:>8} T={r['seq_len']:>7} "
            f"{r.get('status')}")
  mem = r.get("compiled_bytes")
  mem = "-" if mem is None else f"{mem / 2**20:.1f} MiB"
  frac = r.get("bw_fraction")
  frac = "" if frac is None else f"  bw_frac={frac:.2f}"
  return (f"{r['case']:>14} {r['kind']:>8} T={r['seq_len']:>7} "
          f"{r['ms']:10.3f} ms  mem={mem:>12}{frac}")


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--tiny", action="store_true",
                 help="CPU-sized smoke run (Pallas in interpret mode)")
  p.add_argument("--out", default=None, help="write the JSON record here")
  p.add_argument("--seq-lens", default=None,
                 help="comma-separated T list (default 2k..128k)")
  p.add_argument("--repeats", type=int, default=None)
  p.add_argument("--skip-speed", action="store_true")
  p.add_argument("--tune", action="store_true",
                 help="time the kernel's tile configurations first")
  p.add_argument("--phase-dtype", default=None,
                 choices=("bfloat16", "float32"))
  args = p.parse_args(argv)
  if args.tiny:
    cfg = SpeedConfig(batch=1, heads=2, head_dim=16, seq_lens=(64, 128),
                      repeats=2, copy_bytes=1 << 22, interpret=True,
                      attention=None if jax.default_backend() != "gpu"
                      else "cudnn")
    ortho = run_orthogonality((64,), (256,))
  else:
    cfg = SpeedConfig()
    ortho = run_orthogonality((64, 128), (1024, 4096, 16384))
  if args.seq_lens:
    cfg = dataclasses.replace(
        cfg, seq_lens=tuple(int(s) for s in args.seq_lens.split(",")))
  if args.repeats:
    cfg = dataclasses.replace(cfg, repeats=args.repeats)
  if args.tune:
    cfg = dataclasses.replace(cfg, tune=True)
  if args.phase_dtype:
    cfg = dataclasses.replace(cfg, phase_dtype=args.phase_dtype)
  print(f"{'codes':>15} {'d':>4} {'T':>6} {'mean|sim|':>10} "
        f"{'sim(1)':>8} {'max|sim|':>9} {'ratio':>7}")
  for r in ortho:
    print(f"{r['codes']:>15} {r['d']:>4} {r['positions']:>6} "
          f"{r['mean_abs_sim']:10.4f} {r['neighbour_sim']:8.4f} "
          f"{r['max_abs_sim']:9.4f} {r['crosstalk_ratio']:7.2f}")
  record = {
      "benchmark": "phasor_bench",
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
      "device": str(jax.devices()[0]),
      "device_kind": jax.devices()[0].device_kind,
      "backend": jax.default_backend(),
      "versions": {"jax": jax.__version__, "python": platform.python_version()},
      "argv": list(sys.argv if argv is None else argv),
      "config": dataclasses.asdict(cfg),
      "orthogonality": ortho,
  }
  if not args.skip_speed:
    print(f"\n{'case':>14} {'kind':>8} {'T':>9} {'time':>13}")
    record["speed"] = run_speed(cfg)
    for r in record["speed"]["speedup_vs_attention"]:
      print(f"{r['case']:>14} {r['kind']:>8} T={r['seq_len']:>7} "
            f"{r['speedup']:7.2f}x faster than attention")
  if args.out:
    with open(args.out, "w") as fh:
      json.dump(record, fh, indent=1)
  return record


if __name__ == "__main__":
  main()
