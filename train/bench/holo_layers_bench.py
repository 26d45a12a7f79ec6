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

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from holojax.nn import HoloLinear, LowRankLinear, equal_param_rank
from holojax.optim.accounting import num_params
from holojax.train.bench.timing import median_time


def _fwd_bwd_ms(layer, x, repeats: int) -> float:
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

  @jax.jit
  def step(params, x):
    def loss(params, x):
      return jnp.sum(nnx.merge(graphdef, params, rest)(x).astype(jnp.float32) ** 2)
    return jax.grad(loss, argnums=(0, 1))(params, x)

  return 1e3 * median_time(step, params, x, repeats=repeats)


def run(argv: list[str]) -> dict:
  p = argparse.ArgumentParser(prog="holojax bench holo_layers")
  p.add_argument("--tokens", type=int, default=16384)
  p.add_argument("--repeats", type=int, default=50)
  p.add_argument("--tiny", action="store_true")
  a = p.parse_args(argv)
  shapes = [(768, 3072), (4096, 4096)]
  harmonics = [32, 64, 256]
  if a.tiny:
    a.tokens, a.repeats, shapes, harmonics = 64, 3, [(64, 128)], [8]
  rows = []
  for d_in, d_out in shapes:
    x = jax.random.normal(jax.random.key(0), (a.tokens, d_in), jnp.float32)
    dense = nnx.Linear(d_in, d_out, rngs=nnx.Rngs(0))
    base = _fwd_bwd_ms(dense, x, a.repeats)
    rows.append({"shape": f"{d_in}->{d_out}", "layer": "nnx.Linear", "params": d_in * d_out + d_out,
                 "ms": base, "vs_dense": 1.0})
    for h in harmonics:
      holo = HoloLinear(d_in, d_out, h, use_bias=True, rngs=nnx.Rngs(0))
      rank = equal_param_rank(d_in, d_out, h)
      low = LowRankLinear(d_in, d_out, rank, rngs=nnx.Rngs(0))
      for name, layer in ((f"HoloLinear H={h}", holo), (f"LowRank r={rank}", low)):
        n = num_params(layer)
        ms = _fwd_bwd_ms(layer, x, a.repeats)
        rows.append({"shape": f"{d_in}->{d_out}", "layer": name, "params": n, "ms": ms,
                     "vs_dense": ms / base})
  lines = [f"forward+backward, {a.tokens} tokens, float32, median of {a.repeats}",
           f"{'shape':<11}{'layer':<20}{'params':>12}{'ms':>9}{'x dense':>9}"]
  for r in rows:
    lines.append(f"{r['shape']:<11}{r['layer']:<20}{r['params']:>12,}{r['ms']:>9.3f}"
                 f"{r['vs_dense']:>9.2f}")
  return {"config": vars(a), "results": {"rows": rows}, "table": "\n".join(lines)}
