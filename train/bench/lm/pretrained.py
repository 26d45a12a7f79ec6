"""Evaluations of a pretrained model per KV cache kind: perplexity, passkey, speed.

For each cache kind (``full``, ``int8``, ``int4``, ``window``; see
``holojax.models.kv_cache``):

* **Perplexity** per token, exp(mean NLL), on held-out text at contexts
  512 / 2k / 8k: the token stream is cut into windows of L tokens, each read
  through the cache in chunks of ``ppl_chunk`` tokens (a chunk sees the
  cache as its kind stores it, and itself in full precision), every position
  scored. The text is documentation, not code: the ``.md`` / ``.rst`` /
  ``.txt`` files and ``METADATA`` descriptions under the running Python's
  site-packages (``text_dir`` overrides), in sorted order, licences and
  package bookkeeping skipped. Our own training corpus is the standard
  library's ``.py`` source, which this never reads.
* **Passkey retrieval** (Mohtashami & Jaggi 2023): the task line, the filler
  "The grass is green. The sky is blue. The sun is yellow. Here we go. There
  and back again." repeated to the target length, "The pass key is KEY.
  Remember it. KEY is the pass key." at a relative depth, then "What is the
  pass key? The pass key is"; greedy decoding, exact match of the 5-digit key,
  by length (1k-8k tokens) and depth (0.1-0.9).
* **Speed**: prefill tokens/s (a ``speed_prompt``-token prompt) and decode
  tokens/s (``speed_new_tokens`` greedy steps, one jitted scan) at batch 1
  and 16, median of ``repeats`` after a warm-up, with the cache's bytes
  (``tree_bytes``) and bytes per token. ``hf_reference`` adds transformers'
  decode speed for the same model (bf16 on the same device).

``PretrainedEvalConfig()`` is the GPU run (SmolLM2-135M-Instruct in bf16,
minutes on an H200); ``TINY`` runs the same code on
the random ``llama-tiny`` model with byte tokens on a CPU in well under a
minute (its numbers say nothing about quality).

  >>> out = run(TINY)      # doctest: +SKIP
  >>> out["results"]["passkey"]["full"]["accuracy"]
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import statistics
import sysconfig
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from holojax.models import decoding
from holojax.models.kv_cache import KINDS, CacheSpec
from holojax.optim.accounting import tree_bytes
from holojax.train.bench.common import Progress, Result

FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back "
          "again.")
TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
        "memorize them. I will quiz you about the important information there.")
QUESTION = "What is the pass key? The pass key is"
_SKIP = re.compile(r"LICEN[CS]E|COPYING|NOTICE|AUTHORS|RECORD|top_level|entry_points|requires|"
                   r"SOURCES|dependency_links|installer|REQUESTED|WHEEL|vocab|merges", re.I)


@dataclasses.dataclass(frozen=True)
class PretrainedEvalConfig:
  """What ``run`` measures (module docstring).

  Attributes:
    model: a pretrained name (``load_pretrained``) or ``llama-tiny`` (random
      weights, byte tokens: a smoke test).
    path: the GGUF file or a folder holding it (none: found by ``find_gguf``
      in the cache directory or the installed package).
    dtype: compute dtype, float32 or bfloat16.
    caches: KV-cache kinds to compare: full, int8, int4, window.
    group: tokens per key-scale group of the int8 and int4 caches.
    sinks: first tokens the window cache always keeps.
    window: latest tokens the window cache keeps.
    text_dir: folder of held-out text for perplexity (none: the documentation
      files under the running Python's site-packages).
    ppl_contexts: perplexity context lengths (multiples of ``ppl_chunk``).
    ppl_windows: windows of each context length scored.
    ppl_chunk: tokens per forward pass through the cache.
    passkey_lengths: passkey prompt lengths in tokens.
    passkey_depths: relative depths of the key in the prompt, in [0, 1].
    passkey_trials: keys per (length, depth), decoded as one batch.
    passkey_new_tokens: greedy tokens decoded per passkey answer.
    speed_batches: batch sizes of the speed part.
    speed_prompt: prompt tokens of the prefill timing.
    speed_new_tokens: greedy steps of the decode timing.
    repeats: timed calls per case (their median is reported).
    hf_reference: also time transformers' decode of the same model (needs
      torch and transformers).
    seed: passkey keys, speed prompts and the random model's initialisation.
  """

  model: str = "smollm2-135m-instruct"
  path: str | None = None
  dtype: str = "bfloat16"
  caches: tuple[str, ...] = KINDS
  group: int = 32
  sinks: int = 4
  window: int = 1024
  text_dir: str | None = None
  ppl_contexts: tuple[int, ...] = (512, 2048, 8192)
  ppl_windows: int = 4
  ppl_chunk: int = 256
  passkey_lengths: tuple[int, ...] = (1024, 2048, 4096, 8192)
  passkey_depths: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
  passkey_trials: int = 2
  passkey_new_tokens: int = 8
  speed_batches: tuple[int, ...] = (1, 16)
  speed_prompt: int = 1024
  speed_new_tokens: int = 128
  repeats: int = 3
  hf_reference: bool = False
  seed: int = 0

  def __post_init__(self):
    bad = [c for c in self.caches if c not in KINDS]
    if bad or not self.caches:
      raise ValueError(f"caches={self.caches!r} must be a non-empty tuple of {KINDS}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype={self.dtype!r} must be 'float32' or 'bfloat16'")
    for name in ("ppl_windows", "ppl_chunk", "passkey_trials", "passkey_new_tokens",
                 "speed_prompt", "speed_new_tokens", "repeats", "group", "window"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
    if any(c % self.ppl_chunk for c in self.ppl_contexts):
      raise ValueError(f"ppl_contexts={self.ppl_contexts} must be multiples of "
                       f"ppl_chunk={self.ppl_chunk}")
    if any(not 0 <= d <= 1 for d in self.passkey_depths):
      raise ValueError(f"passkey_depths={self.passkey_depths} must lie in [0, 1]")
    if any(b < 1 for b in self.speed_batches):
      raise ValueError(f"speed_batches={self.speed_batches} must be >= 1")

  @classmethod
  def tiny(cls, **kw) -> "PretrainedEvalConfig":
    """The CPU smoke test: llama-tiny, short contexts, tiny batches."""
    base = dict(model="llama-tiny", dtype="float32", group=8, sinks=2, window=48,
                ppl_contexts=(128,), ppl_windows=2, ppl_chunk=32, passkey_lengths=(448,),
                passkey_depths=(0.1, 0.9), passkey_trials=1, speed_batches=(2,),
                speed_prompt=32, speed_new_tokens=8, repeats=1)
    return cls(**{**base, **kw})

  def spec(self, kind: str) -> CacheSpec:
    return CacheSpec(kind, group=self.group, sinks=self.sinks, window=self.window)


TINY = PretrainedEvalConfig.tiny()


class ByteTokenizer:
  """UTF-8 bytes as ids (for the random byte-vocabulary test model)."""

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids) -> str:
    return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")


def load(cfg: PretrainedEvalConfig):
  """(model, tokenizer) for ``cfg.model``."""
  if cfg.model == "llama-tiny":
    from holojax.models.llama import LLAMA_PRESETS, Llama  # noqa: PLC0415
    mcfg = dataclasses.replace(LLAMA_PRESETS["llama-tiny"], dtype=cfg.dtype, max_seq_len=512)
    return Llama(mcfg, rngs=nnx.Rngs(cfg.seed)), ByteTokenizer()
  from holojax.models.pretrained import load_pretrained  # noqa: PLC0415
  return load_pretrained(cfg.model, path=cfg.path, dtype=cfg.dtype)


def held_out_files(root=None):
  """Documentation files under ``root`` (default: site-packages), in a fixed order
  (folders walked sorted), lazily."""
  root = pathlib.Path(root) if root else pathlib.Path(sysconfig.get_paths()["purelib"])
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
      if (name.endswith((".md", ".rst", ".txt")) or name == "METADATA") and not _SKIP.search(name):
        yield pathlib.Path(folder) / name


def held_out_tokens(tok, n: int, root=None) -> tuple[np.ndarray, dict]:
  """The first ``n`` tokens of the held-out text, and where they came from."""
  ids, files, seen = [], 0, set()
  for p in held_out_files(root):
    text = p.read_text(encoding="utf-8", errors="ignore")
    if len(text) < 500 or hash(text) in seen:  # skip stubs and duplicates
      continue
    seen.add(hash(text))
    ids.extend(tok.encode(text + "\n\n"))
    files += 1
    if len(ids) >= n:
      break
  if len(ids) < n:
    raise ValueError(f"held-out text under {root or 'site-packages'} has {len(ids)} tokens, "
                     f"fewer than the {n} needed; pass text_dir")
  where = root or "site-packages (.md/.rst/.txt docs, METADATA)"
  return np.asarray(ids[:n], np.int32), {"source": str(where), "files": files, "tokens": n}


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def token_scores(graphdef, state, ids_bl, spec, chunk):
  """Every token's log-probability given the ones before it, and whether it was the
  argmax, read through the cache in chunks of ``chunk`` tokens: (logp float32[B, L-1],
  hit bool[B, L-1]) for tokens 1..L-1 (no [B, L, V] array is kept)."""
  model = nnx.merge(graphdef, state)
  b, length = ids_bl.shape
  cache = model.init_cache(b, length, spec)
  ids_cbt = ids_bl.reshape(b, length // chunk, chunk).transpose(1, 0, 2)

  def body(carry, ids_bt):
    cache, prev_logp_bv, prev_arg_b = carry
    logits_btv, cache = model.extend(ids_bt, cache)
    logp_btv = jax.nn.log_softmax(logits_btv, axis=-1)
    arg_bt = jnp.argmax(logits_btv, axis=-1)
    # position t of this chunk predicts token t + 1; the chunk's first token is
    # predicted by the previous chunk's last position
    first = jnp.take_along_axis(prev_logp_bv, ids_bt[:, :1], axis=-1)
    inner = jnp.take_along_axis(logp_btv[:, :-1], ids_bt[:, 1:, None], axis=-1)[..., 0]
    hits = jnp.concatenate([(prev_arg_b == ids_bt[:, 0])[:, None], arg_bt[:, :-1] == ids_bt[:, 1:]],
                           axis=1)
    return ((cache, logp_btv[:, -1], arg_bt[:, -1]),
            (jnp.concatenate([first, inner], axis=1), hits))

  init = (cache, jnp.zeros((b, model.config.vocab_size), jnp.float32), jnp.zeros((b,), jnp.int32))
  _, (logp_cbt, hit_cbt) = jax.lax.scan(body, init, ids_cbt)
  order = lambda x_cbt: x_cbt.transpose(1, 0, 2).reshape(b, length)[:, 1:]  # token 0 unscored
  return order(logp_cbt), order(hit_cbt)


def mean_nll(model, ids: np.ndarray, spec: CacheSpec, context: int, windows: int,
             chunk: int) -> float:
  """Mean next-token NLL (nats) over ``windows`` consecutive windows of ``context`` tokens."""
  need = windows * context
  ids_bl = jnp.asarray(ids[:need].reshape(windows, context))
  graphdef, state = nnx.split(model)
  logp_bl, _ = token_scores(graphdef, state, ids_bl, spec, chunk)
  return -float(np.mean(np.asarray(logp_bl)))


def perplexity(model, ids: np.ndarray, spec: CacheSpec, context: int, windows: int,
               chunk: int) -> float:
  """exp(mean NLL) over ``windows`` consecutive windows of ``context`` tokens."""
  return float(np.exp(mean_nll(model, ids, spec, context, windows, chunk)))


def passkey_prompt(tok, length: int, depth: float, key: str) -> list[int]:
  """Token ids of a passkey prompt of exactly ``length`` tokens with the key at ``depth``."""
  head = tok.encode(TASK)
  filler = tok.encode(" " + FILLER)
  needle = tok.encode(f" The pass key is {key}. Remember it. {key} is the pass key.")
  tail = tok.encode("\n" + QUESTION)
  room = length - len(head) - len(needle) - len(tail)
  if room < len(filler):
    raise ValueError(f"passkey length {length} is too short for the template")
  body = (filler * (room // len(filler) + 1))[:room]
  cut = int(round(depth * room / len(filler))) * len(filler)
  cut = min(cut, room)
  return head + body[:cut] + needle + body[cut:] + tail


def passkey(model, tok, spec: CacheSpec, length: int, depths, trials: int, new_tokens: int,
            rng: np.random.Generator) -> dict:
  """Exact-match accuracy by depth at one length (greedy; one batch of ``trials`` keys per
  depth, so a windowed prefill's [B, H, T, T] scores stay small at 8k)."""
  by_depth, example = {}, None
  for d in depths:
    keys = [f"{k:05d}" for k in rng.integers(10_000, 100_000, size=trials)]
    prompts = [passkey_prompt(tok, length - new_tokens, d, k) for k in keys]
    out = decoding.generate(model, jnp.asarray(prompts, jnp.int32), new_tokens, cache=spec)
    answers = [tok.decode(row) for row in np.asarray(out)[:, -new_tokens:]]
    found = [re.search(r"\d{5}", a) for a in answers]
    by_depth[str(d)] = float(np.mean([f is not None and f.group() == k
                                      for f, k in zip(found, keys)]))
    example = answers[0] if example is None else example
  return {"by_depth": by_depth, "accuracy": float(np.mean(list(by_depth.values()))),
          "example": example}


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def speed(model, spec: CacheSpec, batch: int, prompt: int, new_tokens: int, repeats: int,
          seed: int) -> dict:
  """Prefill and decode tokens/s at one batch size, with the cache's bytes."""
  cfg = model.config
  ids = jax.random.randint(jax.random.key(seed), (batch, prompt), 0, cfg.vocab_size, jnp.int32)
  max_len = prompt + new_tokens
  pre = lambda: decoding.prefill(model, ids, max_len=max_len, cache=spec)
  jax.block_until_ready(pre())  # compile
  prefill_s = _median_time(pre, repeats)
  logits, cache = pre()
  cache_bytes = tree_bytes(cache)
  jax.block_until_ready(decoding.decode(model, cache, logits, new_tokens))  # compile
  times = []
  for _ in range(repeats):
    logits, cache = jax.block_until_ready(pre())
    t0 = time.perf_counter()
    jax.block_until_ready(decoding.decode(model, cache, logits, new_tokens))
    times.append(time.perf_counter() - t0)
  decode_s = statistics.median(times)
  per_token = cfg.num_hidden_layers * spec.bytes_per_token(
      cfg.num_kv_heads, cfg.head_dim, jnp.dtype(cfg.dtype))
  return {"prefill_tokens_per_s": batch * prompt / prefill_s,
          "decode_tokens_per_s": batch * new_tokens / decode_s,
          "decode_ms_per_step": 1e3 * decode_s / new_tokens,
          "cache_bytes": cache_bytes, "bytes_per_token": per_token}


def hf_decode_speed(cfg: PretrainedEvalConfig) -> dict:
  """transformers' greedy decode tokens/s for the same GGUF (bf16), per batch."""
  try:
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415
  except ImportError as e:
    return {"skipped": f"transformers/torch not importable: {e}"}
  from holojax.models.pretrained import find_gguf  # noqa: PLC0415
  path = find_gguf(cfg.model, cfg.path)
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  dt = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(path.parent), gguf_file=path.name, dtype=dt).to(dev).eval()
  out = {"device": dev, "transformers": transformers.__version__, "torch": torch.__version__}
  for b in cfg.speed_batches:
    ids = torch.randint(0, model.config.vocab_size, (b, cfg.speed_prompt), device=dev)

    def gen(n):
      with torch.no_grad():
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       pad_token_id=0)
      if dev == "cuda":
        torch.cuda.synchronize()

    gen(2)  # warm-up
    t = {}
    for n in (1, cfg.speed_new_tokens + 1):
      times = []
      for _ in range(cfg.repeats):
        t0 = time.perf_counter()
        gen(n)
        times.append(time.perf_counter() - t0)
      t[n] = statistics.median(times)
    decode_s = t[cfg.speed_new_tokens + 1] - t[1]
    out[str(b)] = {"decode_tokens_per_s": b * cfg.speed_new_tokens / decode_s}
  return out


def run(cfg: PretrainedEvalConfig, progress: Progress = Progress()) -> Result:
  """Every evaluation of the module docstring, one cache kind after another
  (partial results reported after each); prints nothing."""
  model, tok = load(cfg)
  rng = np.random.default_rng(cfg.seed)
  need = max(cfg.ppl_contexts, default=0) * cfg.ppl_windows
  text_ids, text_info = held_out_tokens(tok, need, cfg.text_dir) if need else (None, {})
  results = {"model": cfg.model, "dtype": cfg.dtype, "held_out_text": text_info,
             "perplexity": {}, "passkey": {}, "speed": {}}
  for kind in cfg.caches:
    spec = cfg.spec(kind)
    results["perplexity"][kind] = {
        str(c): perplexity(model, text_ids, spec, c, cfg.ppl_windows, cfg.ppl_chunk)
        for c in cfg.ppl_contexts}
    by_len = {str(n): passkey(model, tok, spec, n, cfg.passkey_depths, cfg.passkey_trials,
                              cfg.passkey_new_tokens, rng) for n in cfg.passkey_lengths}
    results["passkey"][kind] = {"by_length": by_len, "accuracy": float(np.mean(
        [v["accuracy"] for v in by_len.values()]))}
    results["speed"][kind] = {str(b): speed(model, spec, b, cfg.speed_prompt,
                                            cfg.speed_new_tokens, cfg.repeats, cfg.seed)
                              for b in cfg.speed_batches}
    progress.say(f"cache {kind}: done")
    progress.partial(results)
  if cfg.hf_reference:
    results["hf_reference"] = hf_decode_speed(cfg)
  return Result(results, table(cfg, results))


def table(cfg: PretrainedEvalConfig, r: dict) -> str:
  """A text table: one row per cache kind."""
  ctx = [str(c) for c in cfg.ppl_contexts]
  bs = [str(b) for b in cfg.speed_batches]
  head = (["cache", "bytes/token"] + [f"ppl@{c}" for c in ctx] + ["passkey"]
          + [f"decode tok/s b{b}" for b in bs] + [f"prefill tok/s b{b}" for b in bs])
  rows = []
  for kind in cfg.caches:
    s = r["speed"][kind]
    rows.append([kind, f"{s[bs[0]]['bytes_per_token']:.0f}"]
                + [f"{r['perplexity'][kind][c]:.3f}" for c in ctx]
                + [f"{r['passkey'][kind]['accuracy']:.2f}"]
                + [f"{s[b]['decode_tokens_per_s']:.0f}" for b in bs]
                + [f"{s[b]['prefill_tokens_per_s']:.0f}" for b in bs])
  widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
  fmt = lambda row: " | ".join(x.rjust(w) for x, w in zip(row, widths))
  lines = [f"{cfg.model} ({cfg.dtype}); held-out text: {r['held_out_text'].get('source', '-')}, "
           f"{r['held_out_text'].get('tokens', 0)} tokens; window = {cfg.sinks} sinks + "
           f"{cfg.window}; int8/int4 key groups of {cfg.group}", fmt(head),
           "-|-".join("-" * w for w in widths), *map(fmt, rows)]
  lengths = ", ".join(str(n) for n in cfg.passkey_lengths)
  lines.append(f"passkey: exact match over lengths {lengths} x depths "
               f"{', '.join(map(str, cfg.passkey_depths))} x {cfg.passkey_trials} keys")
  hf = r.get("hf_reference")
  if hf:
    lines.append("transformers decode tok/s: " + (hf.get("skipped") or ", ".join(
        f"b{b} {hf[b]['decode_tokens_per_s']:.0f}" for b in bs if b in hf)))
  return "\n".join(lines)
