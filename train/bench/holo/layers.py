"""HOLO layers: forward+backward time against ``nnx.Linear`` at equal shapes.

For x [N, in] -> [N, out], times ``jax.grad`` of sum(layer(x)**2) with respect
to the input and the trainable parameters, for a dense ``nnx.Linear``, a
``HoloLinear`` at several harmonics, and a ``LowRankLinear`` with the same
number of trainable parameters, in one run (median of repeats, after
warm-up, random inputs).

  holojax bench holo_layers
  holojax bench holo_layers --tiny --no-save     # CPU smoke run
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from holojax.nn import HoloLinear, LowRankLinear, equal_param_rank
from holojax.optim.accounting import num_params
from holojax.train.bench.common import Progress, Result, median_time


@dataclasses.dataclass(frozen=True)
class HoloLayersConfig:
  """Layer shapes and timing; seconds on a GPU.

  Attributes:
    tokens: rows N of the input x [N, in].
    repeats: timed calls per layer (their median is reported).
    shapes: (in, out) layer shapes, as INxOUT.
    harmonics: HoloLinear harmonics H (a LowRankLinear of the same parameter
      count each).
  """

  tokens: int = 16384
  repeats: int = 50
  shapes: tuple[tuple[int, int], ...] = ((768, 3072), (4096, 4096))
  harmonics: tuple[int, ...] = (32, 64, 256)

  def __post_init__(self):
    if self.tokens < 1 or self.repeats < 1 or not self.shapes or not self.harmonics:
      raise ValueError("tokens and repeats must be >= 1, shapes and harmonics not empty")


TINY = HoloLayersConfig(tokens=64, repeats=3, shapes=((64, 128),), harmonics=(8,))


def _fwd_bwd_ms(layer, x, repeats: int) -> float:
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

  @jax.jit
  def step(params, x):
    def loss(params, x):
      return jnp.sum(nnx.merge(graphdef, params, rest)(x).astype(jnp.float32) ** 2)
    return jax.grad(loss, argnums=(0, 1))(params, x)

  return 1e3 * median_time(step, params, x, repeats=repeats)


def run(cfg: HoloLayersConfig, progress: Progress = Progress()) -> Result:
  rows = []
  for d_in, d_out in cfg.shapes:
    x = jax.random.normal(jax.random.key(0), (cfg.tokens, d_in), jnp.float32)
    dense = nnx.Linear(d_in, d_out, rngs=nnx.Rngs(0))
    base = _fwd_bwd_ms(dense, x, cfg.repeats)
    rows.append({"shape": f"{d_in}->{d_out}", "layer": "nnx.Linear", "params": d_in * d_out + d_out,
                 "ms": base, "vs_dense": 1.0})
    for h in cfg.harmonics:
      holo = HoloLinear(d_in, d_out, h, use_bias=True, rngs=nnx.Rngs(0))
      rank = equal_param_rank(d_in, d_out, h)
      low = LowRankLinear(d_in, d_out, rank, rngs=nnx.Rngs(0))
      for name, layer in ((f"HoloLinear H={h}", holo), (f"LowRank r={rank}", low)):
        ms = _fwd_bwd_ms(layer, x, cfg.repeats)
        rows.append({"shape": f"{d_in}->{d_out}", "layer": name, "params": num_params(layer),
                     "ms": ms, "vs_dense": ms / base})
    progress.say(f"timed {d_in}->{d_out}")
  lines = [f"forward+backward, {cfg.tokens} tokens, float32, median of {cfg.repeats}",
           f"{'shape':<11}{'layer':<20}{'params':>12}{'ms':>9}{'x dense':>9}"]
  for r in rows:
    lines.append(f"{r['shape']:<11}{r['layer']:<20}{r['params']:>12,}{r['ms']:>9.3f}"
                 f"{r['vs_dense']:>9.2f}")
  return Result({"rows": rows}, "\n".join(lines))
