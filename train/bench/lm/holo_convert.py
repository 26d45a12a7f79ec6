"""The seed's Phi-3 experiment done on SmolLM2-135M: swap its linear layers for HOLO
layers, with and without the pretrained weights, then distil.

Variants (``holojax.models.convert``; ``H`` harmonics, ``+distill`` adds
distillation):

* ``original``: the pretrained model.
* ``holo-fresh-all-hH``: the seed's HOLO-PHI.py swap, every projection a fresh
  ``HoloLinear`` (nothing transferred, one seed for every layer).
* ``holo-all-hH``: every projection projected onto its fixed basis by least
  squares (``HoloLinear.from_dense``).
* ``holo-mlp-hH``: the seed's hybrid, only gate/up/down converted.
* ``lowrank-all-hH``: the truncated SVD at the rank of equal parameters, the
  honest baseline (``lowrank-mlp-hH`` likewise).
* ``-cal`` after the kind (``holo-cal-all-hH``, ``lowrank-cal-mlp-hH``): each
  layer fitted to its outputs on calibration inputs (the teacher reading
  ``calib_batches`` x ``distill_batch`` x ``distill_seq`` tokens of the
  distillation text) instead of to its weights.

For each: learned parameters and stored bytes (parameters plus the fixed
bases), the change against the original, the relative fit error of every
converted layer (of its weights, and of its outputs on the calibration inputs), held-out perplexity (site-packages documentation,
``pretrained.held_out_tokens``, ``ppl_windows`` windows of ``ppl_context``
tokens) and greedy answers to ``prompts`` in the chat template.
Distillation trains only the converted layers' parameters (the HOLO bases stay
fixed, embeddings and norms stay the teacher's) to match the original's
next-token distribution, KL(p_T || p_S), on standard-library source
(``distill.train_tokens``; no evaluation reads it), ``distill_steps`` steps of
``distill_batch`` x ``distill_seq`` tokens. The seed's table (Phi-3-mini,
3.82B -> 0.33B parameters) is checked by formula (``convert.swapped_params``).

``HoloConvertConfig()`` is the GPU run; ``TINY`` runs the same code on the
random ``llama-tiny`` model on a CPU in seconds (its numbers say nothing).
"""

from __future__ import annotations

import dataclasses
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from holojax.models import decoding
from holojax.models.convert import ConvertSpec, convert, input_grams, param_count, \
    stored_bytes, swapped_params, trainable
from holojax.models.kv_cache import CacheSpec
from holojax.models.tokenizer import chatml
from holojax.train.bench.common import Progress, Result, device_memory, require_positive
from holojax.train.bench.lm import pretrained
from holojax.train.bench.lm.distill import distill_loop, kl_to_teacher, train_tokens

_VARIANT = re.compile(
    r"^(original|(holo-fresh|holo|lowrank)(-cal)?-(all|mlp|attn)-h(\d+))(\+distill)?$")
PROMPTS = ("What is the capital of France?",
           "Write one sentence about the ocean.",
           "What does a Python list do?")
# Phi-3-mini-4k: hidden 3072, 32 layers, intermediate 8192, vocabulary 32064, untied head.
PHI3_SHAPES = {"qkv_proj": (3072, 9216), "o_proj": (3072, 3072), "gate_up_proj": (3072, 16384),
               "down_proj": (8192, 3072)}
PHI3_KEPT = 2 * 32064 * 3072 + (2 * 32 + 1) * 3072  # embeddings, head, norms


def spec_of(variant: str, seed: int) -> ConvertSpec | None:
  """The ``ConvertSpec`` of a variant name (None for ``original``)."""
  m = _VARIANT.match(variant)
  if m.group(1) == "original":
    return None
  return ConvertSpec(m.group(2), targets=m.group(4), harmonics=int(m.group(5)), seed=seed,
                     calibrated=bool(m.group(3)))


@dataclasses.dataclass(frozen=True)
class HoloConvertConfig:
  """What ``run`` measures (module docstring).

  Attributes:
    model: a pretrained name or ``llama-tiny`` (random, byte tokens: a smoke test).
    path: the GGUF file or its folder (none: ``find_gguf``).
    dtype: compute and parameter dtype (float32 or bfloat16).
    variants: ``original`` or ``{holo-fresh|holo|lowrank}[-cal]-{all|mlp|attn}-h{H}``,
      each optionally ``+distill``.
    text_dir: held-out text folder (none: site-packages documentation).
    ppl_context: tokens per perplexity window.
    ppl_windows: windows scored.
    ppl_chunk: tokens per forward pass through the cache.
    prompts: user messages answered greedily by every variant.
    new_tokens: tokens generated per answer.
    distill_steps: distillation steps per ``+distill`` variant.
    distill_batch: windows per step.
    distill_seq: tokens per window.
    distill_lr: peak AdamW learning rate of distillation.
    calib_batches: batches of ``distill_batch`` x ``distill_seq`` tokens whose
      inputs calibrate ``-cal`` fits and measure every fit's output error.
    seed: bases, initialisations and the order of the training windows.
  """

  model: str = "smollm2-135m-instruct"
  path: str | None = None
  dtype: str = "float32"
  variants: tuple[str, ...] = ("original", "holo-fresh-all-h64", "holo-fresh-all-h64+distill",
                               "holo-all-h64", "holo-cal-all-h64", "holo-cal-all-h64+distill",
                               "lowrank-cal-all-h64", "lowrank-cal-all-h64+distill",
                               "holo-cal-mlp-h64+distill", "lowrank-cal-mlp-h64+distill",
                               "holo-cal-all-h128+distill")
  text_dir: str | None = None
  ppl_context: int = 1024
  ppl_windows: int = 8
  ppl_chunk: int = 256
  prompts: tuple[str, ...] = PROMPTS
  new_tokens: int = 32
  distill_steps: int = 400
  distill_batch: int = 8
  distill_seq: int = 512
  distill_lr: float = 1e-3
  calib_batches: int = 4
  seed: int = 0

  def __post_init__(self):
    bad = [v for v in self.variants if not _VARIANT.match(v)]
    if bad or not self.variants:
      raise ValueError(f"variants {bad or self.variants!r}: each must be 'original' or "
                       f"'{{holo-fresh|holo|lowrank}}[-cal]-{{all|mlp|attn}}-h<H>[+distill]' "
                       f"(-cal: not with holo-fresh)")
    for v in self.variants:  # a spec that cannot exist fails here, not mid-run
      spec_of(v, self.seed)
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype={self.dtype!r} must be 'float32' or 'bfloat16'")
    require_positive(self, "ppl_context", "ppl_windows", "ppl_chunk", "new_tokens",
                     "distill_steps", "distill_batch", "distill_seq", "calib_batches")
    if self.ppl_context % self.ppl_chunk:
      raise ValueError(f"ppl_context={self.ppl_context} must be a multiple of "
                       f"ppl_chunk={self.ppl_chunk}")
    if not self.distill_lr > 0:
      raise ValueError(f"distill_lr={self.distill_lr} must be > 0")

  @classmethod
  def tiny(cls, **kw) -> "HoloConvertConfig":
    base = dict(model="llama-tiny", variants=("original", "holo-fresh-all-h8",
                                              "holo-all-h8+distill", "lowrank-cal-mlp-h8"),
                ppl_context=64, ppl_windows=2, ppl_chunk=32, prompts=("Hi",), new_tokens=4,
                distill_steps=3, distill_batch=2, distill_seq=32)
    return cls(**{**base, **kw})


TINY = HoloConvertConfig.tiny()


def answers(model, tok, prompts, new_tokens: int) -> list[str]:
  """Greedy answers to each prompt in the chat template (one at a time: no padding), up to
  the end of the assistant's turn."""
  out = []
  for p in prompts:
    messages = [{"role": "user", "content": p}]
    ids = (tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
           if hasattr(tok, "apply_chat_template") else
           tok.encode(chatml(messages, add_generation_prompt=True)))
    gen = decoding.generate(model, jnp.asarray([ids], jnp.int32), new_tokens)
    out.append(tok.decode(np.asarray(gen)[0, len(ids):]).split("<|im_end|>")[0])
  return out


def distill(teacher, student, spec: ConvertSpec, tokens, cfg: HoloConvertConfig,
            progress: Progress):
  """Trains the converted layers of ``student`` toward ``teacher``'s logits."""
  return distill_loop(student, lambda s, ids: (kl_to_teacher(teacher(ids), s(ids)),) * 2,
                      trainable(spec), tokens, steps=cfg.distill_steps, batch=cfg.distill_batch,
                      seq=cfg.distill_seq, lr=cfg.distill_lr, seed=cfg.seed, progress=progress,
                      tag=spec.name)


def _fit_summary(fits) -> dict:
  by_kind = {}
  for f in fits:
    by_kind.setdefault(f.layer.split(".")[-1], []).append(f.rel_err)
  return {"mean": float(np.mean([f.rel_err for f in fits])),
          "out_mean": float(np.mean([f.out_err for f in fits])),
          "by_projection": {k: float(np.mean(v)) for k, v in by_kind.items()}}


def run(cfg: HoloConvertConfig, progress: Progress = Progress()) -> Result:
  """Every variant in turn (partial results after each)."""
  teacher, tok = pretrained.load(pretrained.PretrainedEvalConfig(
      model=cfg.model, path=cfg.path, dtype=cfg.dtype, caches=("full",)))
  text_ids, text_info = pretrained.held_out_tokens(tok, cfg.ppl_context * cfg.ppl_windows,
                                                   cfg.text_dir)
  n_calib = cfg.calib_batches * cfg.distill_batch * cfg.distill_seq
  if cfg.model != "llama-tiny":
    train_ids, train_info = train_tokens(tok, 200 * cfg.distill_seq + n_calib)
  else:
    train_ids = np.asarray(tok.encode(" ".join(["x = 1"] * 2000)), np.int32)
    train_info = {"source": "synthetic (tiny run)"}
  calib, train_ids = train_ids[-n_calib:], train_ids[:-n_calib]  # disjoint
  base_params, base_bytes = param_count(teacher), stored_bytes(teacher)
  grams = input_grams(teacher, calib.reshape(cfg.calib_batches, cfg.distill_batch,
                                             cfg.distill_seq))
  phi3 = swapped_params(PHI3_SHAPES, 32, 64, PHI3_KEPT)
  results = {"model": cfg.model, "dtype": cfg.dtype,
             "split": {"distill_train": train_info, "held_out_text": text_info,
                       "calibration": f"{n_calib} tokens of the same source after the "
                                      f"distillation text"},
             "seed_table_check": {"model": "Phi-3-mini (by formula, H=64)",
                                  "params_before": phi3[0], "params_after": phi3[1],
                                  "change": phi3[1] / phi3[0] - 1},
             "rows": {}, "fits": {}, "distill": {}}
  nll_of = lambda m: pretrained.mean_nll(m, text_ids, CacheSpec("full"), cfg.ppl_context,
                                         cfg.ppl_windows, cfg.ppl_chunk)
  converted = {}
  for name in cfg.variants:
    t0 = time.perf_counter()
    base = name.removesuffix("+distill")
    spec = spec_of(base, cfg.seed)
    if spec is None:
      model = teacher
    elif base in converted:
      model = nnx.clone(converted[base])
    else:
      model, fits = convert(nnx.clone(teacher), spec, grams)
      converted[base] = nnx.clone(model)
      results["fits"][base] = {"summary": _fit_summary(fits),
                               "layers": [f._asdict() for f in fits]}
    if name.endswith("+distill"):
      progress.say(f"{name}: distilling")
      model, results["distill"][base] = distill(teacher, model, spec, train_ids, cfg, progress)
    params, nbytes, nll = param_count(model), stored_bytes(model), nll_of(model)
    results["rows"][name] = {
        "params": params, "params_change": params / base_params - 1,
        "stored_bytes": nbytes, "bytes_change": nbytes / base_bytes - 1,
        "fit_err_mean": (results["fits"][base]["summary"]["mean"] if spec else 0.0),
        "out_err_mean": (results["fits"][base]["summary"]["out_mean"] if spec else 0.0),
        "nll": nll, "perplexity": float(np.exp(nll)) if nll < 80 else None,
        "answers": answers(model, tok, cfg.prompts, cfg.new_tokens),
        "device_memory": device_memory(), "seconds": time.perf_counter() - t0}
    progress.say(f"{name}: {params / 1e6:.1f}M params, NLL {nll:.3f} nats/token "
                 f"({time.perf_counter() - t0:.0f} s)")
    progress.partial(results)
    del model
    jax.clear_caches()
  return Result(results, table(cfg, results))


def table(cfg: HoloConvertConfig, r: dict) -> str:
  """One row per variant, then the seed-table check and the first prompt's answers."""
  head = ["variant", "params", "vs original", "stored MB", "weight err", "output err",
          f"NLL@{cfg.ppl_context}", "ppl"]
  ppl = lambda v: "overflow" if v is None else f"{v:.4g}"
  rows = [[n, f"{v['params'] / 1e6:.1f}M", f"{100 * v['params_change']:+.1f}%",
           f"{v['stored_bytes'] / 2 ** 20:.0f}", f"{v['fit_err_mean']:.3f}",
           f"{v['out_err_mean']:.3f}",
           f"{v['nll']:.3f}", ppl(v["perplexity"])] for n, v in r["rows"].items()]
  widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
  fmt = lambda row: " | ".join(x.rjust(w) for x, w in zip(row, widths))
  s = r["seed_table_check"]
  lines = [f"{cfg.model} ({cfg.dtype}); held-out: {r['split']['held_out_text'].get('source')}",
           fmt(head), "-|-".join("-" * w for w in widths), *map(fmt, rows),
           f"seed's table by formula: {s['model']} {s['params_before'] / 1e9:.2f}B -> "
           f"{s['params_after'] / 1e9:.2f}B ({100 * s['change']:+.1f}%)",
           f"answers to {cfg.prompts[0]!r}:"]
  lines += [f"  {n}: {v['answers'][0]!r}" for n, v in r["rows"].items()]
  return "\n".join(lines)
