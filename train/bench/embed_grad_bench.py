"""Token-embedding gradient: scatter-add against ``holojax.nn.Embed``'s
one-hot matmul, on real text and on uniform random ids.

The gradient of a gather (``jnp.take``, ``nnx.Embed``) is a scatter-add; on a
GPU its atomic adds serialize on repeated ids, and byte text repeats a few
ids (space, 'e', newline) very often. This times the model's whole
forward+backward (``jax.value_and_grad`` of the training loss) for each
combination of

  gradient: "scatter" (``Embed(dense_grad=False)``, = ``nnx.Embed``) or
            "onehot" (the default ``Embed``);
  ids:      "text" (a corpus batch) or "uniform" (ids uniform over the
            vocabulary, the scatter's best case),

and reports each against the scatter on uniform ids, in the same run.

  holojax bench embed_grad                               # gpt2-124m, 16 x 1024
  holojax bench embed_grad --model phasor-small --batch-size 8 --seq-len 4096
  holojax bench embed_grad --tiny                        # CPU check
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from holojax import data as hdata
from holojax.models import registry
from holojax.nn.embed import Embed
from holojax.train.bench.timing import median_time
from holojax.train.loop import loss_fn


def set_dense_grad(model: nnx.Module, dense: bool) -> int:
  """Sets ``dense_grad`` on every ``Embed`` of ``model``; returns how many."""
  embeds = [m for _, m in model.iter_modules() if isinstance(m, Embed)]
  for m in embeds:
    m.dense_grad = dense
  return len(embeds)


def run(argv: list[str]) -> dict:
  p = argparse.ArgumentParser(prog="holojax bench embed_grad",
                              description=__doc__.split("\n")[0])
  p.add_argument("--model", default="gpt2-124m")
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--seq-len", type=int, default=1024)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--tiny", action="store_true", help="tiny model (CPU check)")
  a = p.parse_args(argv)
  if a.tiny:
    a.model, a.batch_size, a.seq_len, a.repeats, a.dtype = "tiny", 2, 64, 2, "float32"
  spec = registry.get(a.model, dtype=a.dtype)
  corpus = hdata.load_corpus(max_bytes=1_000_000 if a.tiny else None)
  text = jnp.asarray(hdata.PackedBatches(
      corpus.train, seq_len=a.seq_len, batch_size=a.batch_size).batch(0))
  uniform = jax.random.randint(jax.random.key(0), text.shape, 0,
                               spec.config.vocab_size, jnp.int32)
  model = spec.build(spec.config, rngs=nnx.Rngs(0))
  rows = []
  for grad in ("scatter", "onehot"):
    if not set_dense_grad(model, grad == "onehot"):
      raise ValueError(f"model {a.model!r} has no holojax.nn.Embed")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    f = jax.jit(jax.value_and_grad(
        lambda p, b: loss_fn(nnx.merge(graphdef, p, rest), b)))
    for ids_name, ids in (("text", text), ("uniform", uniform)):
      ms = 1e3 * median_time(f, params, ids, repeats=a.repeats)
      rows.append({"gradient": grad, "ids": ids_name, "fwd_bwd_ms": ms})
      print(f"{grad:>8} {ids_name:>8} {ms:9.2f} ms", flush=True)
  base = next(r["fwd_bwd_ms"] for r in rows
              if (r["gradient"], r["ids"]) == ("scatter", "uniform"))
  lines = [f"{a.model}, batch {a.batch_size} x {a.seq_len}, {a.dtype}: "
           "forward+backward of the training loss",
           "| gradient | ids | ms | x scatter on uniform ids |", "|---|---|---|---|"]
  for r in rows:
    r["x_scatter_uniform"] = r["fwd_bwd_ms"] / base
    lines.append(f"| {r['gradient']} | {r['ids']} | {r['fwd_bwd_ms']:.2f} | "
                 f"{r['x_scatter_uniform']:.2f} |")
  return {"config": vars(a), "results": {"rows": rows}, "table": "\n".join(lines)}
