"""TurboAdam's two row-block passes alone: XLA against the Mosaic GPU kernels by launch shape.

The flat layout's main group runs as pass A (v step, update, reference code,
alpha's sums) and pass B (CoState signs, block magnitudes) over ``[NB, 128]``
row blocks (``kernels/turbo_adam/rowblock_reference.py``). In
``holojax bench optimizer_step --profile`` the Mosaic pass A alone took 5.7 of
the step's 12.2 ms on the H200, about as much kernel time as XLA's whole
TurboAdam step (5.8 ms); the kernel launches one program of one warpgroup per
streaming multiprocessor.
This bench times each pass on random state of ``params`` elements: XLA, and the
Mosaic kernels at each ``programs_per_sm`` x ``stages`` (pipeline slots per
program; one slot of pass A is ~83 KB of shared memory, so 2 programs fit on
an SM only at 1 slot), each against the floor

  floor = (bytes the pass reads + bytes it writes) / copy bandwidth,

with the copy bandwidth measured in the same run, and checks each kernel's
outputs against XLA's (the fraction of code bytes that differ: a value within
an ulp of a rounding threshold may go either way).

Off Hopper the kernels run in the Pallas interpreter instead (one row: the
launch shape does not exist there), so the tiny run checks the bench on CPU.

  holojax bench turbo_rows                       # H200: the 124M-element buffer
  holojax bench turbo_rows --programs-per-sm 1 2 4 --stages 1 2
  holojax bench turbo_rows --tiny --no-save      # CPU smoke run
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from holojax.kernels import backend, quant
from holojax.kernels.turbo_adam import rowblock_mosaic as mos
from holojax.kernels.turbo_adam import rowblock_reference as rows
from holojax.train.bench.common import Progress, Result, copy_bandwidth, median_time

BLOCK = 128


@dataclasses.dataclass(frozen=True)
class TurboRowsConfig:
  """What the passes run on and which launch shapes are timed.

  Attributes:
    params: elements of the buffer (rounded up to whole 128-element blocks);
      the default is the GPT-2 124M tree's.
    v_bits, ref_bits: v code width and reference code width.
    programs_per_sm: Mosaic programs launched per streaming multiprocessor.
    stages: pipeline slots per Mosaic program (those that do not fit in
      shared memory are recorded as skipped).
    repeats: timed calls per row (median).
    seed: state and draws seed.
  """

  params: int = 124_475_904
  v_bits: int = 4
  ref_bits: int = 2
  programs_per_sm: tuple[int, ...] = (1, 2)
  stages: tuple[int, ...] = (2, 1)
  repeats: int = 20
  seed: int = 0

  def __post_init__(self):
    for name in ("params", "repeats"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an int >= 1")
    if self.v_bits not in (2, 4, 8) or self.ref_bits not in (1, 2):
      raise ValueError(f"v_bits={self.v_bits!r} must be 2, 4 or 8 and ref_bits="
                       f"{self.ref_bits!r} 1 or 2 (the kernels' layouts)")
    for name in ("programs_per_sm", "stages"):
      value = tuple(getattr(self, name))
      if not value or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise ValueError(f"{name}={value!r} must be ints >= 1, at least one")
      object.__setattr__(self, name, value)


TINY = TurboRowsConfig(params=40 * BLOCK, repeats=2)


def random_state(nb: int, v_bits: int, ref_bits: int, seed: int = 0):
  """``(g, old, scalars, seed)`` of a step on ``nb`` blocks: gradients spread
  over blocks by e^2N(0,1), v near g^2, a random reference code, signs,
  magnitudes and alphas (also the row kernels' test inputs,
  tests/kernels/turbo_adam/test_rowblock.py)."""
  ks = jax.random.split(jax.random.key(seed), 8)
  g = jax.random.normal(ks[0], (nb, BLOCK)) * jnp.exp(2 * jax.random.normal(ks[1], (nb, 1)))
  v = jnp.square(g) * jnp.exp(jax.random.normal(ks[2], (nb, BLOCK)))
  codes, lo, hi = quant.encode_log(v, quant.hash_uniform(jnp.uint32(1), v.shape), bits=v_bits)
  ref_codes, levels = rows.encode_reference(jax.random.normal(ks[3], (nb, BLOCK)), ref_bits)
  old = rows.OldState(quant.pack_bits(codes, v_bits), jnp.stack([lo, hi], -1), ref_codes,
                      levels, quant.pack_signs(jax.random.normal(ks[4], (nb, BLOCK))),
                      jnp.abs(jax.random.normal(ks[5], (nb,))).astype(jnp.float16),
                      jax.random.normal(ks[6], (nb,)))
  return g, old, rows.step_scalars(0.9, 0.999, 1e-8, 7), jnp.uint32(seed + 3)


def moved_bytes(inputs, outputs) -> int:
  """Bytes a pass must read and write: every array in and out (scalars too)."""
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves((inputs, outputs)))


def code_mismatch(want, got) -> float:
  """Fraction of the uint8 bytes of ``got`` that differ from ``want``."""
  pairs = [(a, b) for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got))
           if a.dtype == jnp.uint8]
  n = sum(a.size for a, _ in pairs)
  return float(sum(int(jnp.sum(a != b)) for a, b in pairs) / max(n, 1))


def _kernel_shapes(cfg: TurboRowsConfig) -> list[dict]:
  """The Mosaic launch shapes on a Hopper GPU; one interpreted row elsewhere."""
  try:
    backend.require_hopper()
  except backend.Unsupported:
    return [{"implementation": "interpret", "programs_per_sm": None, "stages": None}]
  return [{"implementation": "mosaic", "programs_per_sm": p, "stages": s}
          for p in cfg.programs_per_sm for s in cfg.stages]


def run(cfg: TurboRowsConfig, progress: Progress = Progress()) -> Result:
  nb = -(-cfg.params // BLOCK)
  bits = dict(v_bits=cfg.v_bits, ref_bits=cfg.ref_bits)
  g, old, scalars, seed = random_state(nb, cfg.v_bits, cfg.ref_bits, cfg.seed)
  alpha = old.alpha + 0.01
  xla_a = jax.jit(functools.partial(rows.pass_a_rows, **bits))
  xla_b = jax.jit(functools.partial(rows.pass_b_rows, **bits))
  want_a = xla_a(g, old, scalars, seed)
  want_b = xla_b(g, old, scalars, want_a, alpha)
  bytes_a = moved_bytes((g, old, scalars, seed), want_a)
  bytes_b = moved_bytes((g, old.codes, old.ref, old.signs, old.levels, old.bounds, want_a.codes,
                         want_a.ref, want_a.bounds, want_a.levels, alpha), want_b)
  bw = copy_bandwidth(4 * nb * BLOCK, cfg.repeats)
  progress.say(f"{nb:,} blocks of {BLOCK}; copy bandwidth {bw / 1e9:.1f} GB/s")
  floor_ms = {"a": 1e3 * bytes_a / bw, "b": 1e3 * bytes_b / bw}

  def row(pas, impl, f, args, want, shape=None):
    shape = shape or {"programs_per_sm": None, "stages": None}
    out = {"pass": pas, "implementation": impl, **shape, "floor_ms": floor_ms[pas]}
    try:
      got = f(*args)
      out["ms"] = 1e3 * median_time(f, *args, repeats=cfg.repeats)
    except (ValueError, backend.Unsupported) as e:  # a launch shape that does not fit
      out.update(ms=None, status=f"skipped: {e}")
      return out
    out.update(status="ok", bandwidth_fraction=out["floor_ms"] / out["ms"],
               code_mismatch=code_mismatch(want, got))
    launch = "" if shape["stages"] is None else (
        f" ({shape['programs_per_sm']} programs/SM, {shape['stages']} stages)")
    progress.say(f"pass {pas} {impl}{launch}: {out['ms']:.3f} ms "
                 f"({out['bandwidth_fraction']:.2f} of the copy bandwidth)")
    return out

  results = [row("a", "xla", xla_a, (g, old, scalars, seed), want_a),
             row("b", "xla", xla_b, (g, old, scalars, want_a, alpha), want_b)]
  shapes = _kernel_shapes(cfg)
  sms = (getattr(jax.devices()[0], "core_count", 0) or 132  # an H100 / H200's, if unsaid
         ) if shapes[0]["implementation"] == "mosaic" else None
  for shape in shapes:
    kw = dict(interpret=shape["implementation"] == "interpret", stages=shape["stages"],
              sms=None if shape["programs_per_sm"] is None else shape["programs_per_sm"] * sms)
    fa = jax.jit(functools.partial(mos.pass_a_mosaic, **bits, **kw))
    fb = jax.jit(functools.partial(mos.pass_b_mosaic, **bits, **kw))
    results.append(row("a", shape["implementation"], fa, (g, old, scalars, seed), want_a, shape))
    results.append(row("b", shape["implementation"], fb, (g, old, scalars, want_a, alpha),
                       want_b, shape))

  lines = [f"{nb:,} blocks x {BLOCK} ({cfg.v_bits}-bit v, {cfg.ref_bits}-bit reference), "
           f"copy bandwidth {bw / 1e9:.1f} GB/s (read + write)"
           + (f", {sms} SMs" if sms else ", kernels interpreted (no Hopper GPU)"),
           "| pass | implementation | programs/SM | stages | ms | floor ms | of bandwidth "
           "| code bytes differing |", "|---|---|---|---|---|---|---|---|"]
  for r in results:
    fmt = lambda k, f: "" if r.get(k) is None else format(r[k], f)
    lines.append(f"| {r['pass']} | {r['implementation']} | {fmt('programs_per_sm', 'd')} | "
                 f"{fmt('stages', 'd')} | {fmt('ms', '.3f') or r['status']} | "
                 f"{r['floor_ms']:.3f} | {fmt('bandwidth_fraction', '.2f')} | "
                 f"{fmt('code_mismatch', '.1e')} |")
  return Result({"blocks": nb, "copy_bandwidth_GBps": bw / 1e9, "sms": sms, "rows": results},
                "\n".join(lines))
