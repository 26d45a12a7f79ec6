"""HoloAdam benchmark: state bits/param per preset, a projected table, step time.

(a) bits/param of the optimizer state on the GPT-2 124M tree
    (``jax.eval_shape`` of ``init``: exact bytes, no memory) for each preset,
    the faithful mode, a variant that also sketches the embeddings, and
    ``optax.adamw`` / ``optax.adafactor``;
(b) PROJECTED state memory for Llama-family 1B / 7B / 70B shapes: the state
    bytes are computed exactly with ``jax.eval_shape(opt.init, ...)`` on
    abstract parameter trees of those shapes (nothing is allocated and
    nothing is trained), so they are what the state *would* occupy, not a
    measured device footprint;
(c) step time of ``holo_adam`` (each preset) vs ``optax.adamw`` on the same
    tree in the same run (random params and gradients, jitted init, warm-up,
    median of ``--iters``, ``block_until_ready``).

Run::

  python -m holojax.train.bench.holo_adam_bench --out holo_adam.json
  python -m holojax.train.bench.holo_adam_bench --tiny   # CPU smoke
"""

from __future__ import annotations

import argparse
import json

import jax
import optax

from holojax.optim import HOLO_ADAM_PRESETS, holo_adam, state_bits_per_param, tree_bytes
from holojax.optim import tree_size
from holojax.train.bench.timing import random_params_and_grads, time_optimizers
from holojax.train.bench.turbo_adam_bench import abstract_params, gpt2_shapes

# name -> (vocab_size, hidden_size, num_hidden_layers, intermediate_size, kv_dim, tied):
# public Llama-family shapes.
LLAMA_SIZES = {
    "1B (Llama-3.2-1B shapes)": (128256, 2048, 16, 8192, 512, True),
    "7B (Llama-2-7B shapes)": (32000, 4096, 32, 11008, 4096, False),
    "70B (Llama-2-70B shapes)": (32000, 8192, 80, 28672, 1024, False),
}


def llama_shapes(vocab, d, layers, mlp, kv, tied) -> dict:
  """Parameter shapes of a Llama-family decoder (RMSNorm, SwiGLU, GQA)."""
  tree = {"embed": (vocab, d), "norm": (d,)}
  if not tied:
    tree["lm_head"] = (d, vocab)
  for i in range(layers):
    tree[f"l{i}"] = {"q": (d, d), "k": (d, kv), "v": (d, kv), "o": (d, d),
                     "gate": (d, mlp), "up": (d, mlp), "down": (mlp, d),
                     "norm1": (d,), "norm2": (d,)}
  return tree


def configs() -> dict:
  out = {"optax.adamw": optax.adamw(1e-3), "optax.adafactor": optax.adafactor(1e-3)}
  for name, preset in HOLO_ADAM_PRESETS.items():
    out[f"holo {name} {preset}"] = holo_adam(1e-3, **preset)
  out["holo balanced faithful"] = holo_adam(1e-3, faithful=True)
  out["holo balanced, embeddings sketched"] = holo_adam(
      1e-3, compress=lambda p: jax.tree.map(lambda x: x.ndim >= 2 and x.size >= 8192, p))
  return out


def bits_table(shapes) -> dict:
  params = abstract_params(shapes)
  return {name: state_bits_per_param(jax.eval_shape(opt.init, params), params)
          for name, opt in configs().items()}


def projected_table() -> dict:
  """GB of optimizer state per model size (see module docstring: projected)."""
  out = {}
  for size, dims in LLAMA_SIZES.items():
    params = abstract_params(llama_shapes(*dims))
    row = {"n_params": tree_size(params)}
    for name, opt in configs().items():
      if name == "optax.adafactor" or "faithful" in name:
        continue
      row[name] = tree_bytes(jax.eval_shape(opt.init, params)) / 1e9
    out[size] = row
  return out


def step_times(shapes, iters: int) -> dict:
  params, grads = random_params_and_grads(shapes)
  impls = {"optax.adamw": optax.adamw(1e-3)}
  for name, preset in HOLO_ADAM_PRESETS.items():
    impls[f"holo {name}"] = holo_adam(1e-3, **preset)
  return time_optimizers(impls, grads, params, repeats=iters)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tiny", action="store_true", help="tiny step-time tree, few iterations (CPU)")
  ap.add_argument("--out", default=None, help="write the results JSON here")
  ap.add_argument("--iters", type=int, default=None)
  args = ap.parse_args(argv)
  step_shapes = (gpt2_shapes(vocab=512, d=128, layers=2, mlp=512, ctx=64) if args.tiny
                 else gpt2_shapes())
  iters = args.iters or (3 if args.tiny else 30)
  result = {"device": str(jax.devices()[0]), "jax": jax.__version__,
            "bits_per_param_gpt2_124m": bits_table(gpt2_shapes()),  # always 124M: no memory
            "projected_state_GB": projected_table(),
            "step_tree_params": tree_size(abstract_params(step_shapes)),
            "step": step_times(step_shapes, iters)}
  print(f"device {result['device']}, jax {result['jax']}")
  print(f"\n{'optimizer state, GPT-2 124M tree':<48}{'bits/param':>11}{'vs adamw':>10}")
  adamw_bits = result["bits_per_param_gpt2_124m"]["optax.adamw"]
  for k, v in result["bits_per_param_gpt2_124m"].items():
    print(f"{k:<48}{v:>11.3f}{1 - v / adamw_bits:>9.1%}")
  print("\nPROJECTED optimizer-state GB (jax.eval_shape of init on Llama-family shapes;"
        " not measured on a device)")
  rows = result["projected_state_GB"]
  cols = [c for c in next(iter(rows.values())) if c != "n_params"]
  for size, row in rows.items():
    print(f"{size} ({row['n_params'] / 1e9:.2f}B params)")
    for c in cols:
      print(f"  {c:<46}{row[c]:>9.2f} GB  ({1 - row[c] / row['optax.adamw']:.1%} less than adamw)")
  print(f"\nstep time, {result['step_tree_params']:,}-param tree, median of {iters}")
  for k, v in result["step"].items():
    ms = "failed" if v["ms"] is None else f"{v['ms']:.3f} ms"
    print(f"  {k:<24}{ms:>14}  {'x%.2f adamw' % v['x_adamw'] if 'x_adamw' in v else v.get('error', '')}")
  if args.out:
    with open(args.out, "w") as fh:
      json.dump(result, fh, indent=2)
  return result


if __name__ == "__main__":
  main()
