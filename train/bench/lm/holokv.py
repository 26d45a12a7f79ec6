"""HoloKV on a pretrained model against quantised and windowed caches at equal bytes.

Variants (``variants``): ``full``, ``int8``, ``int4``, ``window`` (4 sinks and
a window of context / ``window_ratio`` tokens, so its bytes match HoloKV at
k = ``window_ratio``), and ``holokv-k{K}-{read}`` for K in 1, 2, 4, 8 and
read ``joint`` or ``faithful`` (:mod:`holojax.models.holokv`), ``-c`` to
centre keys and values on the sinks' mean; a ``+lora`` suffix first
distills LoRA adapters for that cache.

* **Perplexity** at each of ``ppl_contexts`` on held-out documentation
  text (``pretrained.held_out_tokens``), read through the cache in chunks
  of ``chunk`` tokens.
* **Passkey** exact match by length and depth: the prompt of
  ``pretrained.passkey_prompt`` read through the cache the same way, the
  answer " KEY" scored teacher-forced: a hit when every answer token is the
  model's argmax given the true prefix (what greedy decoding would write).
  Prompts are right-padded to the longest length, which a causal model
  never sees, so one compile serves every length.
* **LoRA denoising** (the seed's): rank ``lora_rank`` adapters on q, v and
  o of every layer, trained for ``lora_steps`` steps to match the
  uncompressed model through the compressed cache: KL(teacher || student)
  on the logits plus ``attn_weight`` x the relative squared error of every
  layer's attention output. Training text: the standard library's ``.py``
  source (``holojax.data.text``'s corpus); the evaluations read
  site-packages documentation and synthetic passkey prompts with keys
  drawn after training, so nothing evaluated was seen in training (the
  record says so).
* **Decode attention** of one layer at ``decode_contexts`` (batch
  ``decode_batches``): the full cache through ``jax.nn.dot_product_attention``
  against HoloKV's slot read (``slot_attention``, each backend of
  ``decode_impls``), time and bytes against the measured copy bandwidth.
* **Demo**: the seed's headline done honestly: greedy generation from a
  ``demo_length``-token passkey prompt through ``demo_variant``.

``HoloKVEvalConfig()`` is the GPU run (SmolLM2-135M-Instruct, bf16);
``TINY`` runs the same code on the random ``llama-tiny`` model on a CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from holojax.models import decoding, holokv, kv_cache
from holojax.models.kv_cache import CacheSpec
from holojax.models.llama import _attention_impl
from holojax.models.lora import add_lora, lora_count
from holojax.optim.accounting import tree_bytes
from holojax.train.bench import common
from holojax.train.bench.common import Progress, Result
from holojax.train.bench.lm import pretrained
from holojax.train.bench.lm.distill import distill_loop, kl_to_teacher, train_tokens

_VARIANT = re.compile(r"^(full|int8|int4|window|holokv-k(\d)-(joint|faithful)(-c)?)(\+lora)?$")
DEFAULT_VARIANTS = ("full", "int8", "int4", "window", "holokv-k1-joint",
                    *(f"holokv-k{k}-{r}" for k in (2, 4, 8) for r in ("joint", "faithful")),
                    *(f"holokv-k{k}-joint+lora" for k in (2, 4, 8)), "holokv-k4-faithful+lora")


@dataclasses.dataclass(frozen=True)
class HoloKVEvalConfig:
  """What ``run`` measures (module docstring).

  Attributes:
    model: a pretrained name or ``llama-tiny`` (random weights: a smoke test).
    path: the GGUF file or its folder (none: ``find_gguf``).
    dtype: compute dtype, float32 or bfloat16.
    variants: caches to evaluate (module docstring for the names).
    window_ratio: the window cache keeps context / window_ratio tokens.
    holokv_sinks: leading tokens HoloKV keeps exact (whole groups).
    group: tokens per key-scale group of int8/int4.
    chunk: tokens per forward pass through the cache.
    ppl_contexts: perplexity context lengths (multiples of ``chunk``).
    ppl_windows: windows of each context scored (also the passkey batch).
    passkey_lengths: prompt lengths in tokens (the longest a multiple of chunk).
    passkey_depths: relative depths of the key.
    passkey_trials: keys per (length, depth).
    lora_rank: rank of the q/v/o adapters.
    lora_steps: distillation steps.
    lora_batch: sequences per step.
    lora_seq: tokens per sequence.
    lora_lr: peak learning rate (AdamW, cosine after 10% warm-up).
    attn_weight: weight of the attention-output term.
    decode_contexts: contexts of the one-layer decode timing.
    decode_batches: batches of the decode timing.
    decode_impls: slot_attention backends timed (those that cannot run are noted).
    demo_variant: the cache of the generation demo (none: skip).
    demo_length: its prompt length.
    repeats: timed calls per case (median).
    text_dir: held-out text folder (none: site-packages documentation).
    seed: keys, adapters and batches.
  """

  model: str = "smollm2-135m-instruct"
  path: str | None = None
  dtype: str = "bfloat16"
  variants: tuple[str, ...] = DEFAULT_VARIANTS
  window_ratio: int = 4
  holokv_sinks: int = 4
  group: int = 32
  chunk: int = 256
  ppl_contexts: tuple[int, ...] = (2048, 8192)
  ppl_windows: int = 4
  passkey_lengths: tuple[int, ...] = (1024, 2048, 4096, 8192)
  passkey_depths: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
  passkey_trials: int = 2
  lora_rank: int = 16
  lora_steps: int = 200
  lora_batch: int = 8
  lora_seq: int = 1024
  lora_lr: float = 1e-3
  attn_weight: float = 1.0
  decode_contexts: tuple[int, ...] = (8192, 16384, 32768)
  decode_batches: tuple[int, ...] = (1, 16)
  decode_impls: tuple[str, ...] = ("xla", "triton")
  demo_variant: str | None = "holokv-k4-joint+lora"
  demo_length: int = 4096
  repeats: int = 5
  text_dir: str | None = None
  seed: int = 0

  def __post_init__(self):
    bad = [v for v in self.variants if not _VARIANT.match(v)]
    if bad or not self.variants:
      raise ValueError(f"variants={self.variants!r}: each must be full, int8, int4, window or "
                       f"holokv-k{{1,2,4,8}}-{{joint,faithful}}[-c], optionally +lora")
    for v in self.variants + ((self.demo_variant,) if self.demo_variant else ()):
      m = _VARIANT.match(v or "")
      if m is None:
        raise ValueError(f"demo_variant={v!r} is not a variant name")
      if m.group(2):
        holokv.check_k(int(m.group(2)))
      if m.group(5) and not m.group(2):
        raise ValueError(f"variant {v!r}: +lora applies to holokv caches only")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype={self.dtype!r} must be 'float32' or 'bfloat16'")
    common.require_positive(self, "window_ratio", "group", "chunk", "ppl_windows",
                            "passkey_trials", "lora_rank", "lora_steps", "lora_batch",
                            "lora_seq", "repeats", "demo_length")
    for name in ("ppl_contexts", "passkey_lengths"):
      if not getattr(self, name):
        raise ValueError(f"{name} must not be empty")
    if any(c % self.chunk for c in self.ppl_contexts + (max(self.passkey_lengths),)):
      raise ValueError(f"ppl_contexts={self.ppl_contexts} and the longest of passkey_lengths="
                       f"{self.passkey_lengths} must be multiples of chunk={self.chunk}")
    if any(not 0 <= d <= 1 for d in self.passkey_depths):
      raise ValueError(f"passkey_depths={self.passkey_depths} must lie in [0, 1]")

  @classmethod
  def tiny(cls, **kw) -> "HoloKVEvalConfig":
    base = dict(model="llama-tiny", dtype="float32", group=8, chunk=32,
                variants=("full", "int4", "window", "holokv-k4-joint", "holokv-k4-faithful",
                          "holokv-k4-joint+lora"),
                ppl_contexts=(128,), ppl_windows=2, passkey_lengths=(448, 512),
                passkey_depths=(0.2, 0.8), passkey_trials=1, lora_rank=4, lora_steps=3,
                lora_batch=2, lora_seq=64, decode_contexts=(256,), decode_batches=(2,),
                decode_impls=("xla",), demo_length=448, repeats=1)
    return cls(**{**base, **kw})


TINY = HoloKVEvalConfig.tiny()


def spec_of(name: str, cfg: HoloKVEvalConfig, context: int) -> CacheSpec:
  """The cache of a variant name at a context length (the window scales with it)."""
  m = _VARIANT.match(name)
  kind = m.group(1).split("-")[0]
  if kind == "holokv":
    return CacheSpec("holokv", k=int(m.group(2)), read=m.group(3), sinks=cfg.holokv_sinks,
                     center=bool(m.group(4)))
  if kind == "window":
    return CacheSpec("window", sinks=4, window=max(context // cfg.window_ratio, 1))
  return CacheSpec(kind, group=cfg.group)


# --- scoring through a cache --------------------------------------------------------------

def perplexity(model, text_ids, spec, context: int, windows: int, chunk: int) -> float:
  ids = jnp.asarray(text_ids[:windows * context].reshape(windows, context))
  logp, _ = pretrained.token_scores(*nnx.split(model), ids, spec, chunk)
  return float(np.exp(-np.mean(np.asarray(logp))))


def passkey_rows(tok, cfg: HoloKVEvalConfig, rng: np.random.Generator):
  """(ids int32[N, Lmax], answer spans [(start, end)], keys, (length, depth) per row)."""
  width = max(cfg.passkey_lengths)
  rows, spans, keys, where = [], [], [], []
  for n in cfg.passkey_lengths:
    for d in cfg.passkey_depths:
      for key in (f"{x:05d}" for x in rng.integers(10_000, 100_000, size=cfg.passkey_trials)):
        answer = tok.encode(" " + key)
        prompt = pretrained.passkey_prompt(tok, n - len(answer), d, key)
        ids = prompt + answer
        spans.append((len(prompt) - 1, len(ids) - 1))  # positions predicting the answer
        rows.append(ids + [0] * (width - len(ids)))
        keys.append(key)
        where.append((n, d))
  return np.asarray(rows, np.int32), spans, keys, where


def passkey(model, rows, spans, where, spec_at, batch: int, chunk: int) -> dict:
  """Exact match by length and depth (module docstring); ``spec_at(length)`` is the
  cache for prompts of that length (one compile per distinct spec)."""
  graphdef, state = nnx.split(model)
  ok = np.zeros(len(rows), bool)
  for n in sorted({n for n, _ in where}):
    idx = [i for i, (m, _) in enumerate(where) if m == n]
    for i in range(0, len(idx), batch):
      part = idx[i:i + batch]
      ids = np.zeros((batch, rows.shape[1]), np.int32)
      ids[:len(part)] = rows[part]
      _, hit = pretrained.token_scores(graphdef, state, jnp.asarray(ids), spec_at(n), chunk)
      hit = np.asarray(hit)
      for j, r in enumerate(part):
        a, b = spans[r]
        ok[r] = hit[j, a:b].all()
  by = {}
  for (n, d), o in zip(where, ok):
    by.setdefault(str(n), {}).setdefault(str(d), []).append(bool(o))
  by_length = {n: {d: float(np.mean(v)) for d, v in ds.items()} for n, ds in by.items()}
  return {"by_length": by_length,
          "accuracy_by_length": {n: float(np.mean(list(ds.values())))
                                 for n, ds in by_length.items()},
          "accuracy": float(np.mean(ok))}


# --- LoRA distillation --------------------------------------------------------------------

def forward(model, ids_bt, spec):
  """(logits float32[B, T, V], each layer's attention output) through an empty cache."""
  b, t = ids_bt.shape
  cache = model.init_cache(b, t, spec)
  x = model.embed(ids_bt)
  pos = jnp.arange(t, dtype=jnp.int32)
  attns = []
  for layer, c in zip(model.layers, cache.layers):
    q, k, v = layer.qkv(x, pos)
    a, _ = kv_cache.attend(c, q, k, v, 0, fresh=True,
                           implementation=_attention_impl(model.config))
    attns.append(a)
    x = layer.finish(x, a)
  return model._head(x), attns


def distill_loss(student, teacher, ids_bt, spec, attn_weight: float):
  """KL(teacher || student) per token + attn_weight x mean relative attention error."""
  t_logits, t_attn = jax.lax.stop_gradient(forward(teacher, ids_bt, CacheSpec("full")))
  s_logits, s_attn = forward(student, ids_bt, spec)
  kl = kl_to_teacher(t_logits, s_logits)
  rel = [jnp.mean(jnp.square((a - b).astype(jnp.float32)))
         / (jnp.mean(jnp.square(b.astype(jnp.float32))) + 1e-12) for a, b in zip(s_attn, t_attn)]
  return kl + attn_weight * jnp.mean(jnp.stack(rel)), kl


def distill(teacher, spec, tokens: np.ndarray, cfg: HoloKVEvalConfig, progress: Progress):
  """A copy of ``teacher`` with q/v/o LoRA adapters trained through ``spec``'s cache:
  (student, {"kl": [...], "loss": [...], "lora_params", "seconds"})."""
  student = nnx.clone(teacher)
  add_lora(student, cfg.lora_rank, ("q_proj", "v_proj", "o_proj"), rngs=nnx.Rngs(cfg.seed))
  student, log = distill_loop(
      student, lambda s, ids: distill_loss(s, teacher, ids, spec, cfg.attn_weight),
      nnx.LoRAParam, tokens, steps=cfg.lora_steps, batch=cfg.lora_batch, seq=cfg.lora_seq,
      lr=cfg.lora_lr, seed=cfg.seed, progress=progress, tag="lora")
  log["lora_params"] = lora_count(student)
  return student, log


# --- decode timing ------------------------------------------------------------------------

def decode_timing(cfg: HoloKVEvalConfig, mcfg, progress: Progress) -> dict:
  """One layer's decode attention: full cache vs HoloKV slots, per context and batch."""
  g, d, h = mcfg.num_kv_heads, mcfg.head_dim, mcfg.num_heads
  dt = jnp.dtype(mcfg.dtype)
  item = dt.itemsize
  out = {"copy_bandwidth_bytes_per_s": common.copy_bandwidth(1 << 28)
         if jax.default_backend() == "gpu" else common.copy_bandwidth(1 << 22, repeats=3)}
  bw = out["copy_bandwidth_bytes_per_s"]
  key = jax.random.key(cfg.seed)
  for b in cfg.decode_batches:
    for n in cfg.decode_contexts:
      q = jax.random.normal(key, (b, 1, h, d), dt)
      kv = jax.random.normal(key, (b, n, g, d), dt)
      full = jax.jit(lambda q, kk, vv: jax.nn.dot_product_attention(q, kk, vv))
      ms = 1e3 * common.median_time(full, q, kv, kv, repeats=cfg.repeats)
      row = {"full": {"ms": ms, "bytes": 2 * b * n * g * d * item}}
      row["full"]["of_bandwidth"] = row["full"]["bytes"] / (ms / 1e3) / bw
      for k in (4, 8):
        c_kd = jnp.asarray(holokv.codes(k, d))
        slots = kv[:, : n // k]
        exact = kv[:, None, :k]                        # the open group, [B, 1, k, G, D]
        mask = jnp.ones((1, k), bool)
        for impl in cfg.decode_impls:
          name = f"holokv-k{k}/{impl}"
          fn = jax.jit(functools.partial(holokv.attend_decode, read="joint", c_kd=c_kd,
                                         implementation=impl), static_argnums=())
          try:
            ms = 1e3 * common.median_time(fn, q, slots, slots, exact, exact, mask, n - 1,
                                          repeats=cfg.repeats)
          except ValueError as e:  # the backend cannot run here
            row[name] = {"error": str(e).splitlines()[0]}
            continue
          nbytes = 2 * b * (n // k) * g * d * item
          row[name] = {"ms": ms, "bytes": nbytes, "of_bandwidth": nbytes / (ms / 1e3) / bw,
                       "x_full": row["full"]["ms"] / ms}
      out[f"b{b}/{n}"] = row
      progress.say(f"decode b{b} ctx {n}: " + ", ".join(
          f"{k} {v['ms']:.3f} ms" for k, v in row.items() if "ms" in v))
  return out


# --- the run ------------------------------------------------------------------------------

def run(cfg: HoloKVEvalConfig, progress: Progress = Progress()) -> Result:
  """Every part of the module docstring; partial results after each variant."""
  model, tok = pretrained.load(pretrained.PretrainedEvalConfig(
      model=cfg.model, path=cfg.path, dtype=cfg.dtype, caches=("full",)))
  mcfg = model.config
  rng = np.random.default_rng(cfg.seed)
  text_ids, text_info = pretrained.held_out_tokens(
      tok, max(cfg.ppl_contexts) * cfg.ppl_windows, cfg.text_dir)
  need_lora = any(v.endswith("+lora") for v in cfg.variants + (cfg.demo_variant or "",))
  train_ids, train_info = (train_tokens(tok, 400 * cfg.lora_seq) if need_lora and
                           cfg.model != "llama-tiny" else
                           (np.asarray(tok.encode(" ".join(["x = 1"] * 4000)), np.int32),
                            {"source": "synthetic (tiny run)"}))
  # Keys are drawn after the training text is fixed, from a generator never used in training.
  rows, spans, keys, where = passkey_rows(tok, cfg, rng)
  results = {"model": cfg.model, "dtype": cfg.dtype,
             "split": {"train": train_info, "held_out_text": text_info,
                       "passkey": "synthetic prompts (pretrained.passkey_prompt), keys drawn "
                                  "with numpy seed " + str(cfg.seed) + " after training; "
                                  "none in the training text"},
             "bytes_per_token": {}, "perplexity": {}, "passkey": {}, "lora": {}}
  students = {}
  for name in cfg.variants:
    t0 = time.perf_counter()
    base = name.removesuffix("+lora")
    m = model
    if name.endswith("+lora"):
      progress.say(f"{name}: distilling")
      m, results["lora"][base] = distill(model, spec_of(base, cfg, cfg.lora_seq), train_ids, cfg,
                                         progress)
      students[base] = m
    ctx = max(cfg.ppl_contexts)
    spec = spec_of(base, cfg, ctx)
    per_layer = spec.bytes_per_token(mcfg.num_kv_heads, mcfg.head_dim, jnp.dtype(mcfg.dtype))
    cache = jax.eval_shape(lambda: model.init_cache(1, ctx, spec))
    results["bytes_per_token"][name] = {
        "formula": mcfg.num_hidden_layers * per_layer,
        f"measured_at_{ctx}": tree_bytes(cache) / ctx}
    results["perplexity"][name] = {
        str(c): perplexity(m, text_ids, spec_of(base, cfg, c), c, cfg.ppl_windows, cfg.chunk)
        for c in cfg.ppl_contexts}
    # Every length shares one cache shape; only the window's size follows the length.
    longest = spec_of(base, cfg, max(cfg.passkey_lengths))
    spec_at = (lambda n, base=base: spec_of(base, cfg, n)) if base == "window" else (
        lambda n, s=longest: s)
    results["passkey"][name] = passkey(m, rows, spans, where, spec_at, cfg.ppl_windows,
                                       cfg.chunk)
    results["passkey"][name]["seconds"] = time.perf_counter() - t0
    progress.say(f"{name}: ppl {results['perplexity'][name]}, passkey "
                 f"{results['passkey'][name]['accuracy']:.2f} "
                 f"({time.perf_counter() - t0:.0f} s)")
    progress.partial(results)
  if cfg.demo_variant:
    results["demo"] = demo(students.get(cfg.demo_variant.removesuffix("+lora"), model), tok,
                           cfg, rng)
    progress.say(f"demo: {results['demo']}")
    progress.partial(results)
  if cfg.decode_contexts:
    results["decode"] = decode_timing(cfg, mcfg, progress)
  return Result(results, table(cfg, results), {"holokv.png": plot_png(cfg, results)})


def demo(model, tok, cfg: HoloKVEvalConfig, rng) -> dict:
  """Greedy generation from a fresh passkey prompt through ``demo_variant``."""
  key = f"{rng.integers(10_000, 100_000):05d}"
  prompt = pretrained.passkey_prompt(tok, cfg.demo_length, 0.5, key)
  base = cfg.demo_variant.removesuffix("+lora")
  spec = spec_of(base, cfg, cfg.demo_length + 8)
  out = decoding.generate(model, jnp.asarray([prompt], jnp.int32), 8, cache=spec)
  answer = tok.decode(np.asarray(out)[0, -8:])
  return {"variant": cfg.demo_variant, "key": key, "prompt_tokens": len(prompt),
          "answer": answer, "exact": re.search(r"\d{5}", answer) is not None
          and re.search(r"\d{5}", answer).group() == key}


def plot_png(cfg: HoloKVEvalConfig, r: dict) -> bytes:
  """Perplexity against bytes per token (one panel per context) and passkey exact
  match by (length, depth) for every variant, as PNG bytes."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  names = list(cfg.variants)
  fig, axes = plt.subplots(1, len(cfg.ppl_contexts) + 1, figsize=(5 * len(cfg.ppl_contexts) + 7, 4.8),
                           gridspec_kw={"width_ratios": [1] * len(cfg.ppl_contexts) + [1.6]})
  for ax, c in zip(axes, cfg.ppl_contexts):
    for v in names:
      ax.scatter(r["bytes_per_token"][v]["formula"], r["perplexity"][v][str(c)], s=18)
      ax.annotate(v, (r["bytes_per_token"][v]["formula"], r["perplexity"][v][str(c)]),
                  fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("cache bytes per token (all layers)")
    ax.set_ylabel(f"perplexity @ {c} tokens")
    ax.grid(alpha=0.3)
  ax = axes[-1]
  cols = [(str(n), str(d)) for n in cfg.passkey_lengths for d in cfg.passkey_depths]
  acc = np.array([[r["passkey"][v]["by_length"][n][d] for n, d in cols] for v in names])
  im = ax.imshow(acc, vmin=0, vmax=1, cmap="viridis", aspect="auto")
  ax.set_yticks(range(len(names)), names, fontsize=7)
  ax.set_xticks(range(len(cols)), [f"{n}/{d}" for n, d in cols], rotation=90, fontsize=6)
  ax.set_xlabel("passkey prompt tokens / key depth")
  ax.set_title("passkey exact match")
  fig.colorbar(im, ax=ax)
  fig.suptitle(f"{cfg.model} ({cfg.dtype}): HoloKV against int8 / int4 / window caches")
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  plt.close(fig)
  return buf.getvalue()


def table(cfg: HoloKVEvalConfig, r: dict) -> str:
  """Variants as rows: bytes/token, perplexities, passkey by length."""
  ctx = [str(c) for c in cfg.ppl_contexts]
  lens = [str(n) for n in cfg.passkey_lengths]
  head = (["cache", "bytes/token"] + [f"ppl@{c}" for c in ctx]
          + [f"passkey@{n}" for n in lens] + ["passkey"])
  rows = []
  for v in cfg.variants:
    pk = r["passkey"][v]
    rows.append([v, f"{r['bytes_per_token'][v]['formula']:.0f}"]
                + [f"{r['perplexity'][v][c]:.3f}" for c in ctx]
                + [f"{pk['accuracy_by_length'][n]:.2f}" for n in lens] + [f"{pk['accuracy']:.2f}"])
  widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
  fmt = lambda row: " | ".join(x.rjust(w) for x, w in zip(row, widths))
  lines = [f"{cfg.model} ({cfg.dtype}); window = 4 sinks + context/{cfg.window_ratio}; "
           f"int4/int8 key groups of {cfg.group}", fmt(head), "-|-".join("-" * w for w in widths),
           *map(fmt, rows)]
  if "demo" in r:
    d = r["demo"]
    lines.append(f"demo ({d['variant']}, {d['prompt_tokens']} tokens, key {d['key']}): "
                 f"{d['answer']!r} -> {'recovered' if d['exact'] else 'not recovered'}")
  for name, row in r.get("decode", {}).items():
    if isinstance(row, dict):
      lines.append(f"decode {name}: " + ", ".join(
          f"{k} {v['ms']:.3f} ms ({v['of_bandwidth']:.0%} bw)" if "ms" in v else f"{k} n/a"
          for k, v in row.items()))
  return "\n".join(lines)
