"""TurboAdam benchmark: state bits/param and step time on a GPT-2 124M tree.

(a) bits/param of the optimizer state (``jax.eval_shape``, no memory) for
    v-only / m-only / both at 2, 4, 8 bits, next to ``optax.adamw`` and
    ``optax.adafactor``;
(b) step time of ``turbo_adam`` (xla and pallas) vs ``optax.adamw`` in the
    same run (warm-up, median of many, ``block_until_ready``), plus the floor:
    bytes each step must move / f32 copy bandwidth measured in this run.

Run::

  python -m holojax.train.bench.turbo_adam_bench --out turbo_adam.json
  python -m holojax.train.bench.turbo_adam_bench --tiny --out /tmp/t.json  # CPU smoke
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import optax

from holojax.kernels import turbo_adam as kernels
from holojax.optim import state_bits_per_param, tree_size, turbo_adam
from holojax.train.bench.timing import copy_bandwidth, random_params_and_grads, time_optimizers


def gpt2_shapes(vocab=50304, d=768, layers=12, mlp=3072, ctx=1024) -> dict:
  """GPT-2 124M parameter shapes (tied embeddings, LayerNorm scales/biases)."""
  tree = {"wte": (vocab, d), "wpe": (ctx, d), "ln_f": {"scale": (d,), "bias": (d,)}}
  for i in range(layers):
    tree[f"h{i}"] = {
        "ln_1": {"scale": (d,), "bias": (d,)}, "ln_2": {"scale": (d,), "bias": (d,)},
        "attn": {"c_attn": {"kernel": (d, 3 * d), "bias": (3 * d,)},
                 "c_proj": {"kernel": (d, d), "bias": (d,)}},
        "mlp": {"c_fc": {"kernel": (d, mlp), "bias": (mlp,)},
                "c_proj": {"kernel": (mlp, d), "bias": (d,)}}}
  return tree


def abstract_params(shapes, dtype=jnp.float32):
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, dtype), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


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


def bits_table(shapes) -> dict:
  params = abstract_params(shapes)
  return {name: state_bits_per_param(jax.eval_shape(opt.init, params), params)
          for name, opt in configs().items()}


def step_times(shapes, iters: int, pallas: bool = False) -> dict:
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
  out = time_optimizers(impls, grads, params, repeats=iters, extra=lambda name: {
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


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tiny", action="store_true", help="tiny tree, few iterations (CPU smoke)")
  ap.add_argument("--out", default=None, help="write the results JSON here")
  ap.add_argument("--iters", type=int, default=None)
  ap.add_argument("--pallas", action="store_true",
                  help="also time the Pallas kernel (GPU; its compile takes minutes on 124M)")
  args = ap.parse_args(argv)
  shapes = (gpt2_shapes(vocab=512, d=64, layers=2, mlp=256, ctx=64) if args.tiny
            else gpt2_shapes())
  iters = args.iters or (3 if args.tiny else 50)
  result = {"device": str(jax.devices()[0]), "jax": jax.__version__,
            "n_params": tree_size(abstract_params(shapes)),
            "bits_per_param": bits_table(gpt2_shapes()),  # always the 124M tree: no memory
            "step": step_times(shapes, iters, pallas=args.pallas),
            "pallas_vs_xla_rel_err": pallas_matches_xla(shapes) if args.pallas else {}}
  print(f"device {result['device']}, jax {result['jax']}, step tree {result['n_params']:,} params")
  print(f"{'optimizer state (GPT-2 124M)':<32}{'bits/param':>12}")
  for k, v in result["bits_per_param"].items():
    print(f"{k:<32}{v:>12.3f}")
  print(f"{'step':<32}{'ms':>12}  backend")
  for k, v in result["step"].items():
    if k == "floor":
      continue
    ms = "failed" if v["ms"] is None else f"{v['ms']:.3f}"
    print(f"{k:<32}{ms:>12}  {v.get('backend', v.get('error', ''))}")
  f = result["step"]["floor"]
  print(f"f32 copy {f['copy_bandwidth_GBps']:.1f} GB/s; floor adamw {f['adamw_floor_ms']:.3f} ms,"
        f" turbo {f['turbo_floor_ms']:.3f} ms")
  if result["pallas_vs_xla_rel_err"]:
    print("pallas vs xla update, relative error:", {k: f"{v:.2e}" for k, v in
                                                     result["pallas_vs_xla_rel_err"].items()})
  if args.out:
    with open(args.out, "w") as fh:
      json.dump(result, fh, indent=2)
  return result


if __name__ == "__main__":
  main()
