"""Seed 001 spiral demo and the HOLO compression table, measured honestly.

Three 2-64-64-1 classifiers on two noisy spirals, full-batch BCE, Adam 0.01:

* ``relu``: dense ``nnx.Linear`` layers with bias, ReLU (the seed's baseline);
* ``holo``: ``HoloLinear`` (H = 16, no bias), ``sin`` (the seed's HoloNet)
  with the variance-preserving amplitude init (``A = sqrt(2 / H)``);
* ``holo_seed_init`` (results only, not plotted): the same net with the
  seed's ``A = 1 / H`` init, which trains far worse in 500 steps;
* ``lowrank``: ``LowRankLinear`` with, per layer, the rank whose parameter
  count matches the holo layer (``equal_param_rank``), ``sin``: the holo
  net with its fixed basis made learnable.

Run ``python -m holojax.train.spiral --out-png spiral.png`` (seconds on CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from holojax.data.spirals import make_spirals
from holojax.nn.holo import (
  HoloLinear, LowRankLinear, SineActivation, equal_param_rank,
  holo_basis_count, holo_param_count, lowrank_param_count)
from holojax.optim.accounting import num_params
from holojax.train.flags import HelpFormatter, add_config_flags, config_from_args, plain
from holojax.train.step import init_state, model_of, train_step

__all__ = ["relu_mlp", "holo_mlp", "lowrank_mlp", "fit", "run_spiral",
           "holo_param_table", "format_param_table", "SpiralConfig", "main"]

# The seed README's "Holo Params (32H)" column, kept only to compare.
SEED_CLAIMS_32H = {(784, 256): 8_192, (512, 2048): 49_152,
                   (4096, 4096): 262_144}


def _widths(hidden: int) -> list[tuple[int, int]]:
  return [(2, hidden), (hidden, hidden), (hidden, 1)]


def relu_mlp(hidden: int = 64, *, rngs: nnx.Rngs) -> nnx.Sequential:
  """Dense 2-h-h-1 with bias and ReLU (logits out)."""
  l1, l2, l3 = (nnx.Linear(i, o, rngs=rngs) for i, o in _widths(hidden))
  return nnx.Sequential(l1, nnx.relu, l2, nnx.relu, l3)


def holo_mlp(hidden: int = 64, harmonics: int = 16, *, init="variance",
             rngs: nnx.Rngs) -> nnx.Sequential:
  """HoloLinear 2-h-h-1 with sine activations, no bias (logits out)."""
  l1, l2, l3 = (HoloLinear(i, o, harmonics, basis_seed=s, init=init,
                           rngs=rngs)
                for s, (i, o) in enumerate(_widths(hidden)))
  return nnx.Sequential(l1, SineActivation(), l2, SineActivation(), l3)


def lowrank_mlp(hidden: int = 64, harmonics: int = 16, *,
                rngs: nnx.Rngs) -> nnx.Sequential:
  """LowRankLinear 2-h-h-1, sine, ranks matching ``holo_mlp``'s counts."""
  l1, l2, l3 = (LowRankLinear(i, o, equal_param_rank(i, o, harmonics),
                              rngs=rngs) for i, o in _widths(hidden))
  return nnx.Sequential(l1, SineActivation(), l2, SineActivation(), l3)


def bce_loss(model, batch) -> jax.Array:
  """Mean binary cross-entropy of ``model(x)[:, 0]`` as logits; batch = (x_n2, y_n)."""
  x_n2, y_n = batch
  return optax.sigmoid_binary_cross_entropy(model(x_n2)[:, 0], y_n).mean()


def fit(build, x_n2, y_n, *, steps: int, lr: float) -> tuple[nnx.Module, np.ndarray]:
  """Full-batch Adam on BCE-with-logits for the model ``build()``.

  The whole loop is one ``jax.lax.scan`` of the train step under ``jax.jit``.

  Returns:
    the trained model and the loss of every step, float32 [steps].
  """
  tx = optax.adam(lr)
  graphdef, state = init_state(build, tx)
  step = train_step(graphdef, tx, bce_loss)

  @jax.jit
  def run(state):
    def body(state, _):
      state, metrics = step(state, (x_n2, y_n))
      return state, metrics["train/loss"]
    return jax.lax.scan(body, state, None, length=steps)

  state, loss_s = run(state)
  return model_of(graphdef, state), np.asarray(loss_s)


def _accuracy(model, x_n2, y_n) -> float:
  logit_n = np.asarray(model(jnp.asarray(x_n2))[:, 0])
  return float(np.mean((logit_n > 0) == (y_n > 0.5)))


def _plot(models: dict, results: dict, x_n2, y_n, out_png: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  lo, hi = x_n2.min(0) - 0.1, x_n2.max(0) + 0.1
  gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200),
                       np.linspace(lo[1], hi[1], 200))
  grid_g2 = np.stack([gx.ravel(), gy.ravel()], -1).astype(np.float32)
  fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4.6),
                           squeeze=False)
  for ax, (name, model) in zip(axes[0], models.items()):
    p_g = np.asarray(jax.nn.sigmoid(model(jnp.asarray(grid_g2))[:, 0]))
    ax.contourf(gx, gy, p_g.reshape(gx.shape), levels=20, cmap="RdBu",
                alpha=0.8)
    ax.scatter(x_n2[:, 0], x_n2[:, 1], c=y_n, cmap="RdBu_r", s=4,
               edgecolors="none")
    r = results[name]
    ax.set_title(f"{name}: {r['params']} params, acc {r['acc']:.3f}")
    ax.set_aspect("equal")
  fig.tight_layout()
  fig.savefig(out_png, dpi=90)
  plt.close(fig)


def run_spiral(steps: int = 500, seed: int = 0, out_png: str | None = None,
               *, n: int = 1000, lr: float = 0.01, hidden: int = 64,
               harmonics: int = 16, with_seed_init: bool = True,
               nets: tuple[str, ...] = ("relu", "holo", "lowrank")) -> dict:
  """Train the three spiral classifiers; optionally plot their boundaries.

  Args:
    steps: full-batch Adam steps per model.
    seed: data and init seed.
    out_png: if given, write the three decision boundaries side by side.
    n: points per spiral.
    lr: Adam learning rate.
    hidden: hidden width.
    harmonics: H of the holo net (and the rank budget of the low-rank one).
    with_seed_init: also train the holo net with the seed's ``A = 1 / H``.
    nets: which of ``"relu"``, ``"holo"``, ``"lowrank"`` to train.

  Returns:
    ``{"relu"|"holo"|"lowrank"|"holo_seed_init": {"acc", "params", "final_loss",
    "fit_s", ...}, "steps", "seed", "n_points"}``; ``params`` counts learned
    parameters only; ``holo`` also has ``basis`` (fixed numbers stored).

  Example:
    >>> r = run_spiral(steps=5, n=50, with_seed_init=False)
    >>> sorted(r["holo"])
    ['acc', 'basis', 'final_loss', 'fit_s', 'params']
  """
  x_n2, y_n = make_spirals(n, seed=seed)
  builders = {"relu": lambda r: relu_mlp(hidden, rngs=r),
              "holo": lambda r: holo_mlp(hidden, harmonics, rngs=r),
              "lowrank": lambda r: lowrank_mlp(hidden, harmonics, rngs=r)}
  unknown = set(nets) - set(builders)
  if unknown:
    raise ValueError(f"nets has unknown names {sorted(unknown)}")
  builders = {k: v for k, v in builders.items() if k in nets}
  if with_seed_init:
    builders["holo_seed_init"] = lambda r: holo_mlp(hidden, harmonics,
                                                    init="seed", rngs=r)
  models, results = {}, {}
  for name, build in builders.items():
    t0 = time.perf_counter()
    model, loss_s = fit(lambda: build(nnx.Rngs(seed)), jnp.asarray(x_n2),
                        jnp.asarray(y_n), steps=steps, lr=lr)
    results[name] = {"acc": _accuracy(model, x_n2, y_n),
                     "params": num_params(model),
                     "final_loss": float(loss_s[-1]),
                     "fit_s": round(time.perf_counter() - t0, 3)}
    models[name] = model
  basis = sum(holo_basis_count(i, harmonics) for i, _ in _widths(hidden))
  for name in ("holo", "holo_seed_init"):
    if name in results:
      results[name]["basis"] = basis
  results.update(steps=steps, seed=seed, n_points=2 * n)
  if out_png:
    _plot({k: models[k] for k in builders if k != "holo_seed_init"}, results,
          x_n2, y_n, out_png)
  return results


def holo_param_table(shapes=((784, 256), (512, 2048), (4096, 4096)),
                     harmonics=(16, 32, 64, 256)) -> list[dict]:
  """The seed's compression table, recomputed.

  Per row: ``dense = in * out``; ``holo = 2 * out * H`` learned;
  ``basis = H * in`` fixed numbers (stored or regenerated from a seed);
  ``ratio = dense / holo``; ``ratio_with_basis = dense / (holo + basis)``;
  ``lowrank_rank`` = the rank of a ``LowRankLinear`` with at most ``holo``
  parameters, and ``lowrank_params`` its count; ``seed_claim`` is the seed
  README's number (32H rows only, else None).

  Example:
    >>> row = holo_param_table(((784, 256),), (32,))[0]
    >>> row["holo"], row["ratio"]
    (16384, 12.25)
  """
  rows = []
  for d_in, d_out in shapes:
    for h in harmonics:
      holo = holo_param_count(d_in, d_out, h)
      basis = holo_basis_count(d_in, h)
      rank = equal_param_rank(d_in, d_out, h)
      rows.append({
        "in": d_in, "out": d_out, "H": h, "dense": d_in * d_out,
        "holo": holo, "basis": basis,
        "ratio": round(d_in * d_out / holo, 2),
        "ratio_with_basis": round(d_in * d_out / (holo + basis), 2),
        "lowrank_rank": rank,
        "lowrank_params": lowrank_param_count(d_in, d_out, rank),
        "seed_claim": SEED_CLAIMS_32H.get((d_in, d_out)) if h == 32 else None,
      })
  return rows


def format_param_table(rows: list[dict]) -> str:
  """Markdown table of ``holo_param_table`` rows."""
  cols = list(rows[0])
  lines = ["| " + " | ".join(cols) + " |",
           "|" + "---|" * len(cols)]
  for row in rows:
    lines.append("| " + " | ".join(
      "" if row[c] is None else f"{row[c]:,}" if isinstance(row[c], int)
      else str(row[c]) for c in cols) + " |")
  return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class SpiralConfig:
  """``holojax spiral``: the three nets on one seed, seconds on a CPU.

  Attributes:
    steps: full-batch Adam steps per net.
    seed: data and init seed.
    n: points per spiral.
    lr: Adam learning rate.
    harmonics: H of the holo net (and the rank budget of the low-rank one).
    out_png: write the decision boundaries here.
    nets: which of relu, holo, lowrank to train.
    seed_init: also train the holo net with the seed's 1/H amplitude init.
    table: also print the parameter table.
  """

  steps: int = 500
  seed: int = 0
  n: int = 1000
  lr: float = 0.01
  harmonics: int = 16
  out_png: str | None = None
  nets: tuple[str, ...] = ("relu", "holo", "lowrank")
  seed_init: bool = True
  table: bool = False


def main(argv: list[str] | None = None) -> dict:
  """CLI: ``holojax spiral [--steps N] [--seed S] [--out-png P] [--table] ...``."""
  p = argparse.ArgumentParser(prog="holojax spiral", description=plain(__doc__),
                              formatter_class=HelpFormatter)
  add_config_flags(p, SpiralConfig)
  c = config_from_args(SpiralConfig(), p.parse_args(argv))
  res = run_spiral(c.steps, c.seed, c.out_png, n=c.n, lr=c.lr, harmonics=c.harmonics,
                   with_seed_init=c.seed_init, nets=c.nets)
  print(json.dumps(res, indent=2))
  if c.table:
    print(format_param_table(holo_param_table()))
  return res


if __name__ == "__main__":
  main()
