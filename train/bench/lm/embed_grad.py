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

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from holojax import data as hdata
from holojax.models import registry
from holojax.nn.embed import Embed
from holojax.train.bench.common import Progress, Result, median_time, require_positive
from holojax.train.loop import loss_fn


@dataclasses.dataclass(frozen=True)
class EmbedGradConfig:
  """The model and batch timed; seconds on a GPU.

  Attributes:
    model: model preset with a ``holojax.nn.Embed`` (``holojax models``).
    batch_size, seq_len: sequences per batch and tokens per sequence.
    dtype: compute dtype.
    repeats: timed calls per combination (their median is reported).
    corpus_max_bytes: read at most this much of the corpus (none: all).
  """

  model: str = "gpt2-124m"
  batch_size: int = 16
  seq_len: int = 1024
  dtype: str = "bfloat16"
  repeats: int = 10
  corpus_max_bytes: int | None = None

  def __post_init__(self):
    require_positive(self, "batch_size", "seq_len", "repeats")


TINY = EmbedGradConfig(model="tiny", batch_size=2, seq_len=64, dtype="float32", repeats=2,
                       corpus_max_bytes=1_000_000)


def set_dense_grad(model: nnx.Module, dense: bool) -> int:
  """Sets ``dense_grad`` on every ``Embed`` of ``model``; returns how many."""
  embeds = [m for _, m in model.iter_modules() if isinstance(m, Embed)]
  for m in embeds:
    m.dense_grad = dense
  return len(embeds)


def run(cfg: EmbedGradConfig, progress: Progress = Progress()) -> Result:
  spec = registry.get(cfg.model, dtype=cfg.dtype)
  corpus = hdata.load_corpus(max_bytes=cfg.corpus_max_bytes)
  text = jnp.asarray(hdata.PackedBatches(
      corpus.train, seq_len=cfg.seq_len, batch_size=cfg.batch_size).batch(0))
  uniform = jax.random.randint(jax.random.key(0), text.shape, 0,
                               spec.config.vocab_size, jnp.int32)
  model = spec.build(spec.config, rngs=nnx.Rngs(0))
  rows = []
  for grad in ("scatter", "onehot"):
    if not set_dense_grad(model, grad == "onehot"):
      raise ValueError(f"model {cfg.model!r} has no holojax.nn.Embed")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    f = jax.jit(jax.value_and_grad(
        lambda p, b: loss_fn(nnx.merge(graphdef, p, rest), b)))
    for ids_name, ids in (("text", text), ("uniform", uniform)):
      ms = 1e3 * median_time(f, params, ids, repeats=cfg.repeats)
      rows.append({"gradient": grad, "ids": ids_name, "fwd_bwd_ms": ms})
      progress.say(f"{grad:>8} {ids_name:>8} {ms:9.2f} ms")
  base = next(r["fwd_bwd_ms"] for r in rows
              if (r["gradient"], r["ids"]) == ("scatter", "uniform"))
  lines = [f"{cfg.model}, batch {cfg.batch_size} x {cfg.seq_len}, {cfg.dtype}: "
           "forward+backward of the training loss",
           "| gradient | ids | ms | x scatter on uniform ids |", "|---|---|---|---|"]
  for r in rows:
    r["x_scatter_uniform"] = r["fwd_bwd_ms"] / base
    lines.append(f"| {r['gradient']} | {r['ids']} | {r['fwd_bwd_ms']:.2f} | "
                 f"{r['x_scatter_uniform']:.2f} |")
  return Result({"rows": rows}, "\n".join(lines))
