"""TurboAdam benchmark: state bits/param and step time on a GPT-2 124M tree.

(a) bits/param of the optimizer state (``jax.eval_shape``, no memory) for
    v-only / m-only / both at 2, 4, 8 bits, next to ``optax.adamw`` and
    ``optax.adafactor``;
(b) step time of ``turbo_adam`` (xla and pallas) vs ``optax.adamw`` in the
    same run (warm-up, median of many, ``block_until_ready``), plus the floor:
    bytes each step must move / f32 copy bandwidth measured in this run.

  holojax bench turbo_adam                   # the 124M tree
  holojax bench turbo_adam --pallas           # and the Pallas kernel (GPU)
  holojax bench turbo_adam --tiny --no-save   # CPU smoke run
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from holojax.kernels import turbo_adam as kernels
from holojax.optim import tree_size, turbo_adam
from holojax.train.bench.common import (Progress, Result, TreeConfig, abstract_params,
                                        copy_bandwidth, gpt2_shapes, random_params_and_grads,
                                        state_bits, step_time_lines, time_optimizers)


@dataclasses.dataclass(frozen=True)
class TurboAdamConfig(TreeConfig):
  """The step-time tree (GPT-2 124M by default; the bits table always uses it).

  Attributes:
    pallas: also time the Pallas kernel and check it against XLA (GPU; its
      compile takes minutes on 124M).
  """

  pallas: bool = False


TINY = TurboAdamConfig(vocab_size=512, width=64, layers=1, mlp=256, context=64, iters=3)


def configs():
  """Name -> optimizer for the bits table."""
  out = {"optax.adamw": optax.adamw(1e-3), "optax.adafactor": optax.adafactor(1e-3)}
  for bits in (2, 4, 8):
    out[f"turbo v-only {bits}b"] = turbo_adam(1e-3, v_bits=bits, compress_m=False)
    out[f"turbo m+v {bits}b"] = turbo_adam(1e-3, v_bits=bits)
  out["turbo m-only"] = turbo_adam(1e-3, compress_v=False)
  out["turbo m+v 4b m_ref_bits=1"] = turbo_adam(1e-3, m_ref_bits=1)
  out["turbo m+v 4b faithful"] = turbo_adam(1e-3, faithful=True)
  return out


def step_times(shapes, iters: int, pallas: bool = False, *, say) -> dict:
  params, grads = random_params_and_grads(shapes)
  n = tree_size(params)
  impls = {"optax.adamw": optax.adamw(1e-3),
           "turbo xla": turbo_adam(1e-3, implementation="xla"),
           "turbo v-only xla": turbo_adam(1e-3, compress_m=False, implementation="xla")}
  if pallas and jax.default_backend() == "gpu":
    impls["turbo pallas"] = turbo_adam(1e-3, implementation="pallas")
    impls["turbo v-only pallas"] = turbo_adam(1e-3, compress_m=False, implementation="pallas")
  backend = lambda name: kernels.select_implementation(
      bits=4, block_size=128, implementation="pallas" if "pallas" in name else "xla")
  out = time_optimizers(impls, grads, params, repeats=iters, say=say, extra=lambda name: {
      "backend": backend(name) if "turbo" in name else "xla"})
  bw = copy_bandwidth(4 * n, iters)
  # Bytes a step must move: read g (4), write update (4), read+write state.
  adamw_state = 4 * 2 * 2
  turbo_state = 2 * (4.25 + 3.375) / 8
  out["floor"] = {"copy_bandwidth_GBps": bw / 1e9,
                  "adamw_floor_ms": 1e3 * n * (8 + adamw_state) / bw,
                  "turbo_floor_ms": 1e3 * n * (8 + turbo_state) / bw,
                  "n_params": n}
  return out


def pallas_matches_xla(shapes) -> dict:
  """One update of the pallas and xla paths on the same random inputs."""
  if jax.default_backend() != "gpu":
    return {}
  params, grads = random_params_and_grads(shapes)
  out = {}
  for name, kw in {"m+v": {}, "v-only": {"compress_m": False}}.items():
    ups = []
    for impl in ("xla", "pallas"):
      opt = turbo_adam(1e-3, implementation=impl, **kw)
      u, _ = jax.jit(opt.update)(grads, jax.jit(opt.init)(params), params)
      ups.append(jnp.concatenate([x.ravel() for x in jax.tree.leaves(u)]))
    out[name] = float(jnp.linalg.norm(ups[1] - ups[0]) / jnp.linalg.norm(ups[0]))
  return out


def run(cfg: TurboAdamConfig, progress: Progress = Progress()) -> Result:
  shapes = cfg.shapes()
  res = {"device": str(jax.devices()[0]), "jax": jax.__version__,
         "n_params": tree_size(abstract_params(shapes)),
         "bits_per_param": state_bits(configs(), gpt2_shapes()),  # 124M tree: no memory
         "step": step_times(shapes, cfg.iters, pallas=cfg.pallas, say=progress.say),
         "pallas_vs_xla_rel_err": pallas_matches_xla(shapes) if cfg.pallas else {}}
  f = res["step"]["floor"]
  lines = [f"device {res['device']}, jax {res['jax']}, step tree {res['n_params']:,} params",
           f"{'optimizer state (GPT-2 124M)':<32}{'bits/param':>12}",
           *(f"{k:<32}{v:>12.3f}" for k, v in res["bits_per_param"].items()),
           "step time", *step_time_lines(res["step"]),
           f"f32 copy {f['copy_bandwidth_GBps']:.1f} GB/s; floor adamw {f['adamw_floor_ms']:.3f}"
           f" ms, turbo {f['turbo_floor_ms']:.3f} ms"]
  if res["pallas_vs_xla_rel_err"]:
    lines.append("pallas vs xla update, relative error: " + ", ".join(
        f"{k} {v:.2e}" for k, v in res["pallas_vs_xla_rel_err"].items()))
  return Result(res, "\n".join(lines))
