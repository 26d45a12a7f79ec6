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

  holojax bench holo_adam                   # the 124M tree
  holojax bench holo_adam --tiny --no-save   # CPU smoke run
"""

from __future__ import annotations

import dataclasses

import jax
import optax

from holojax.optim import HOLO_ADAM_PRESETS, holo_adam, tree_bytes, tree_size
from holojax.train.bench.common import (Progress, Result, TreeConfig, abstract_params,
                                        gpt2_shapes, random_params_and_grads, state_bits,
                                        step_time_lines, time_optimizers)


@dataclasses.dataclass(frozen=True)
class HoloAdamConfig(TreeConfig):
  """The step-time tree (GPT-2 124M by default; the bits table always uses it).

  Attributes:
    presets: the ``HOLO_ADAM_PRESETS`` whose step is timed.
  """

  iters: int = 30
  presets: tuple[str, ...] = tuple(HOLO_ADAM_PRESETS)

  def __post_init__(self):
    super().__post_init__()
    if set(self.presets) - set(HOLO_ADAM_PRESETS):
      raise ValueError(f"presets={self.presets}: choose from {tuple(HOLO_ADAM_PRESETS)}")


TINY = HoloAdamConfig(vocab_size=512, width=64, layers=1, mlp=256, context=64, iters=2,
                      presets=("balanced",))

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


def step_times(shapes, iters: int, presets=tuple(HOLO_ADAM_PRESETS), *, say) -> dict:
  params, grads = random_params_and_grads(shapes)
  impls = {"optax.adamw": optax.adamw(1e-3)}
  for name in presets:
    impls[f"holo {name}"] = holo_adam(1e-3, **HOLO_ADAM_PRESETS[name])
  return time_optimizers(impls, grads, params, repeats=iters, say=say)


def run(cfg: HoloAdamConfig, progress: Progress = Progress()) -> Result:
  shapes = cfg.shapes()
  res = {"device": str(jax.devices()[0]), "jax": jax.__version__,
         "bits_per_param_gpt2_124m": state_bits(configs(), gpt2_shapes()),  # 124M: no memory
         "projected_state_GB": projected_table(),
         "step_tree_params": tree_size(abstract_params(shapes)),
         "step": step_times(shapes, cfg.iters, cfg.presets, say=progress.say)}
  bits = res["bits_per_param_gpt2_124m"]
  lines = [f"device {res['device']}, jax {res['jax']}", "",
           f"{'optimizer state, GPT-2 124M tree':<48}{'bits/param':>11}{'vs adamw':>10}",
           *(f"{k:<48}{v:>11.3f}{1 - v / bits['optax.adamw']:>9.1%}" for k, v in bits.items()),
           "", "PROJECTED optimizer-state GB (jax.eval_shape of init on Llama-family shapes;"
           " not measured on a device)"]
  for size, row in res["projected_state_GB"].items():
    lines.append(f"{size} ({row['n_params'] / 1e9:.2f}B params)")
    lines += [f"  {c:<46}{gb:>9.2f} GB  ({1 - gb / row['optax.adamw']:.1%} less than adamw)"
              for c, gb in row.items() if c != "n_params"]
  lines += ["", f"step time, {res['step_tree_params']:,}-param tree, median of {cfg.iters}",
            *step_time_lines(res["step"])]
  return Result(res, "\n".join(lines))
