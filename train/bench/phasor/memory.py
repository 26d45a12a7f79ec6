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

  holojax bench phasor --tune           # GPU: tune the tiles, then every length
  holojax bench phasor --tiny --no-save # CPU smoke run (Pallas in interpret mode)
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import platform

import jax
import jax.numpy as jnp
import numpy as np

from holojax.kernels.phasor import PhasorBlocks, phasor_memory
from holojax.nn.phasor import generate_random_phasors, rope_frequencies
from holojax.train.bench.common import (Progress, Result, copy_bandwidth, device_memory,
                                        median_time)
from holojax.train.flags import config_argv


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


def _is_oom(err: Exception) -> bool:
  msg = str(err).lower()
  return any(s in msg for s in ("resource_exhausted", "out of memory",
                                "oom", "allocat"))


KERNELS = ("mosaic", "triton")  # the compiled Pallas backends of phasor_memory


@dataclasses.dataclass(frozen=True)
class PhasorConfig:
  """Both parts; the speed part at the defaults takes minutes on an H100.

  The phasor inputs are what ``PhasorAttention`` passes: bf16 values, content
  phases in ``phase_dtype`` and positional frequencies float32[H, D] added
  inside the memory.

  Attributes:
    ortho_dims: code dimensions d of part (a).
    ortho_positions: numbers of positions T of part (a).
    skip_speed: run part (a) only.
    batch, heads, head_dim: the [B, T, H, D] shape of part (b).
    seq_lens: lengths T of part (b).
    repeats: timed calls per case (their median is reported).
    copy_bytes: size of the copy whose bandwidth is the reference.
    interpret: run the Pallas kernel in interpret mode (CPU smoke runs).
    kernels: the compiled phasor backends timed side by side with "xla"
      (``interpret`` times the "interpret" backend instead).
    attention: ``jax.nn.dot_product_attention`` implementation to compare with
      (none: no attention cases, unless ``interpret``, then JAX's default).
    phase_dtype: dtype of the content phases.
    tune: time the kernel's tile configurations (fwd+bwd) first, keep the fastest.
    tune_len: the length the tiles are tuned at (or the first length).
  """

  ortho_dims: tuple[int, ...] = (64, 128)
  ortho_positions: tuple[int, ...] = (1024, 4096, 16384)
  skip_speed: bool = False
  batch: int = 4
  heads: int = 16
  head_dim: int = 128
  seq_lens: tuple[int, ...] = (2048, 4096, 8192, 16384, 32768, 65536,
                               131072)
  repeats: int = 10
  copy_bytes: int = 1 << 30
  interpret: bool = False  # Pallas interpreter (CPU smoke runs)
  kernels: tuple[str, ...] = KERNELS
  attention: str | None = "cudnn"
  phase_dtype: str = "bfloat16"
  tune: bool = False
  tune_len: int = 16384  # tiles are tuned here (or at the first length)

  def __post_init__(self):
    if self.phase_dtype not in ("bfloat16", "float32"):
      raise ValueError(f"phase_dtype={self.phase_dtype!r} must be bfloat16 or float32")
    if not self.seq_lens or min(self.seq_lens) < 1 or self.repeats < 1:
      raise ValueError("seq_lens and repeats must be positive")
    if not self.kernels or set(self.kernels) - set(KERNELS):
      raise ValueError(f"kernels={self.kernels!r}: choose from {KERNELS}")


TINY = PhasorConfig(ortho_dims=(64,), ortho_positions=(256,), batch=1, heads=2, head_dim=16,
                    seq_lens=(64, 128), repeats=2, copy_bytes=1 << 22, interpret=True,
                    attention=None)


TUNE_BLOCKS = tuple(
    PhasorBlocks(block_t=16, chunks=c, block_d=64, num_warps=w)
    for c in (16, 32) for w in (2, 4)) + tuple(  # whole-sequence programs:
    PhasorBlocks(block_t=bt, chunks=0, block_d=bd, num_warps=4, num_stages=s)
    for bt in (32, 64) for bd in (16, 32) for s in (1, 3)) + (
        PhasorBlocks(fast_trig=False),)


def _fwd_and_grad(fwd, n: int):
  """jit(fwd) and jit(d/dx of sum(fwd(*x) * g)) over its ``n`` inputs x."""
  def loss(*args):
    return jnp.sum((fwd(*args[:-1]) * args[-1]).astype(jnp.float32))
  return jax.jit(fwd), jax.jit(jax.grad(loss, argnums=tuple(range(n))))


def _kernels(cfg) -> tuple[str, ...]:
  """The kernel backends the run times (``interpret``: the interpreter only)."""
  return ("interpret",) if cfg.interpret else tuple(cfg.kernels)


def _phasor_fns(impl: str, interpret: bool, blocks: PhasorBlocks | None):
  if impl in ("pallas", "triton") and interpret:
    impl = "interpret"

  def fwd(v, k, q, f):
    return phasor_memory(v, k, q, freq_hd=f, implementation=impl,
                         blocks=blocks)
  return _fwd_and_grad(fwd, 4)


def _attn_fns(implementation):
  return _fwd_and_grad(lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, is_causal=True, implementation=implementation), 3)


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


def _inputs(cfg: PhasorConfig, t: int):
  shape = (cfg.batch, t, cfg.heads, cfg.head_dim)
  ks = jax.random.split(jax.random.key(t), 5)
  pdt = jnp.dtype(cfg.phase_dtype)
  v = jax.random.normal(ks[0], shape, jnp.bfloat16)
  k = jax.random.uniform(ks[1], shape, jnp.float32, -math.pi, math.pi)
  q = jax.random.uniform(ks[2], shape, jnp.float32, -math.pi, math.pi)
  f = jax.random.uniform(ks[3], shape[2:], jnp.float32, -0.05, 0.05)
  g = jax.random.normal(ks[4], shape, jnp.bfloat16)
  return v, k.astype(pdt), q.astype(pdt), f, g


def check_against_xla(cfg: PhasorConfig, t: int, blocks, kernel: str = "pallas") -> dict:
  """Max |kernel - xla| of y and of each gradient, relative to max |xla|."""
  v, k, q, f, g = _inputs(cfg, t)
  out = {"seq_len": t, "kernel": kernel}
  fp, gp = _phasor_fns(kernel, cfg.interpret, blocks)
  fx, gx = _phasor_fns("xla", False, None)
  pairs = [("y", fp(v, k, q, f), fx(v, k, q, f))]
  pairs += list(zip(("dv", "dk", "dq", "df"), gp(v, k, q, f, g),
                    gx(v, k, q, f, g)))
  for name, a, b in pairs:
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    out[f"{name}_rel_err"] = float(jnp.max(jnp.abs(a - b))
                                   / jnp.max(jnp.abs(b)))
  return out


def tune_blocks(cfg: PhasorConfig, t: int, say) -> tuple[PhasorBlocks, list]:
  """Fastest PhasorBlocks for fwd+bwd at length t (and every timing)."""
  v, k, q, f, g = _inputs(cfg, t)
  rows = []
  for blocks in TUNE_BLOCKS:
    try:
      _, fb = _phasor_fns("triton", cfg.interpret, blocks)
      ms = 1e3 * median_time(fb, v, k, q, f, g, repeats=cfg.repeats)
    except Exception as e:  # noqa: BLE001 (a tile that fails to compile)
      ms = None
      say(f"  {blocks}: {repr(e)[:120]}")
    rows.append({**dataclasses.asdict(blocks), "fwd_bwd_ms": ms})
    say(f"  tune {blocks}: {ms}")
  best = min((r for r in rows if r["fwd_bwd_ms"] is not None),
             key=lambda r: r["fwd_bwd_ms"])
  best = {k: v for k, v in best.items() if k != "fwd_bwd_ms"}
  return PhasorBlocks(**best), rows


def run_speed(cfg: PhasorConfig, say) -> dict:
  bw = copy_bandwidth(cfg.copy_bytes, cfg.repeats)
  say(f"copy bandwidth {bw / 1e9:.1f} GB/s")
  blocks, tuning = PhasorBlocks(), []
  t_tune = cfg.tune_len if cfg.tune_len in cfg.seq_lens else cfg.seq_lens[0]
  if cfg.tune:
    blocks, tuning = tune_blocks(cfg, t_tune, say)
    say(f"best tiles {blocks}")
  tiles = lambda kern: blocks if kern != "mosaic" else None  # tuning is Triton's tiles
  check = []
  for kern in _kernels(cfg):
    try:
      check.append(check_against_xla(cfg, t_tune, tiles(kern), kern))
    except Exception as e:  # noqa: BLE001 (reported, and its timings will say so too)
      check.append({"seq_len": t_tune, "kernel": kern, "error": repr(e)[:300]})
    say(f"check {check[-1]}")
  pbytes = jnp.dtype(cfg.phase_dtype).itemsize
  rows = []
  for t in cfg.seq_lens:
    v, k, q, f, g = _inputs(cfg, t)
    n = v.size
    cases = [(f"phasor_{i}", i, kind) for i in (*_kernels(cfg), "xla")
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
          fwd, fb = _phasor_fns(impl, cfg.interpret, tiles(impl))
          args = (v, k, q, f) if kind == "fwd" else (v, k, q, f, g)
        fn = fwd if kind == "fwd" else fb
        row["ms"] = 1e3 * median_time(fn, *args, repeats=cfg.repeats)
        row["compiled_bytes"] = _compiled_bytes(fn, *args)
        row["device_peak_bytes"] = device_memory()["peak_bytes_in_use"]
        if name.startswith("phasor"):
          by = min_bytes(n, kind, phase_bytes=pbytes)
          row["min_bytes"] = by
          row["bw_fraction"] = by / (row["ms"] * 1e-3) / bw
      except Exception as e:  # noqa: BLE001
        row["status"] = "oom" if _is_oom(e) else "error"
        row["error"] = repr(e)[:300]
      rows.append(row)
      say(_fmt_row(row))
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


def run(cfg: PhasorConfig, progress: Progress = Progress()) -> Result:
  dev = jax.devices()[0]
  ortho = run_orthogonality(cfg.ortho_dims, cfg.ortho_positions)
  res = {"benchmark": "phasor_bench",
         "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
         "device": str(dev), "device_kind": dev.device_kind, "backend": jax.default_backend(),
         "versions": {"jax": jax.__version__, "python": platform.python_version()},
         "argv": config_argv(cfg), "config": dataclasses.asdict(cfg), "orthogonality": ortho}
  lines = [f"{'codes':>15} {'d':>4} {'T':>6} {'mean|sim|':>10} "
           f"{'sim(1)':>8} {'max|sim|':>9} {'ratio':>7}"]
  lines += [f"{r['codes']:>15} {r['d']:>4} {r['positions']:>6} {r['mean_abs_sim']:10.4f} "
            f"{r['neighbour_sim']:8.4f} {r['max_abs_sim']:9.4f} {r['crosstalk_ratio']:7.2f}"
            for r in ortho]
  if not cfg.skip_speed:
    res["speed"] = sp = run_speed(cfg, progress.say)
    lines += ["", f"copy bandwidth {sp['copy_bandwidth_Bps'] / 1e9:.1f} GB/s; Triton tiles "
              f"{PhasorBlocks(**sp['blocks'])}", *(f"check {c}" for c in sp["check"]),
              f"{'case':>14} {'kind':>8} {'T':>9} {'time':>13}",
              *map(_fmt_row, sp["rows"])]
    lines += [f"{r['case']:>14} {r['kind']:>8} T={r['seq_len']:>7} "
              f"{r['speedup']:7.2f}x faster than attention" for r in sp["speedup_vs_attention"]]
  return Result(res, "\n".join(lines))
