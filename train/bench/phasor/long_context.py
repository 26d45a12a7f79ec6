"""Long context (issue #5): phasor LM vs a RoPE transformer, and 1M-token decoding.

Part ``lm``: phasor ``HoloForCausalLM``s (one per ``variants`` spec: the
seed's decay-free memory and the switches toward the anchors, alone and
combined; :func:`variant_fields`) and the baseline ``GPT`` (RoPE,
cuDNN flash attention on GPU) of the same width and depth, its MLP widened to
at least the largest variant's parameter count (``match_params``), train on the same
batches of the default byte corpus (the stdlib source) at sequence length
``train_len`` (4096), bf16 compute, for the same number of steps N; then both
are evaluated on the same held-out bytes cut into windows of each
``eval_lens`` (4096 and 16384):

  val@L = mean over windows w of length L, over t < L, of
          -log p(x_{w,t+1} | x_{w,<=t})                     (nats/byte)

Every byte of the eval span is a target exactly once at every L, so the
numbers at 4096 and 16384 differ only in how much context each byte sees.
The transformer was trained at 4096 positions only: past that its RoPE
angles were never seen, and it may degrade; that is what is reported.

N comes from the budget: the first ``calib_steps`` steps of each model
(inside the learning-rate warm-up, which does not depend on N) are timed,
then N = min(steps, calib_steps + floor(budget left / sum of their step times)).
The learning rate is fed per step from the host (linear warm-up, cosine to
10% at N), so choosing N late costs no recompilation.

Part ``decode``: the phasor model's recurrent decoding (``init_cache`` /
``step``; per layer the complex sum S_t, the previous input and t) runs
greedily on its own output (``argmax`` of each step's logits, starting from a
newline byte) in a jitted ``lax.scan`` of ``decode_chunk`` steps, called
until ``decode_tokens`` (2^20) of context. At each milestone (1k, 4k, 16k,
64k, 256k, 1M) it records the time per token of the segment since the last
milestone, the cache bytes (from the cache pytree), the device's
``bytes_in_use`` / ``peak_bytes_in_use`` where the backend reports them, and,
computed and not measured, the KV cache a softmax transformer of the same
width and depth would hold at that context:

  kv_bytes(T) = 2 (K and V) * layers * T * width * batch * 2 (bf16 bytes).

The host waits for every chunk (one sync per ``decode_chunk`` steps), so a
time budget can stop the decode between chunks; a stop is recorded. The
memory checks: the cache pytree's bytes are the same at every milestone and
its position counter equals the context; ``bytes_in_use`` should stay flat
(``peak_bytes_in_use`` counts from process start, so after part ``lm`` it is
the training peak).

  holojax bench long_context                  # GPU: both parts, every variant
  holojax bench long_context --variants seed win64   # the seed and one switch
  holojax bench long_context --parts decode --decode-tokens 65536
  holojax bench long_context --tiny --no-save # CPU smoke run, < 1 min
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from holojax import data as hdata
from holojax.models.gpt import GPTConfig
from holojax.models.holo_transformer import HoloConfig, HoloForCausalLM, decode_steps
from holojax.optim.accounting import num_params, tree_bytes
from holojax.train.bench.common import (Progress, Result, adamw, arm_name, build_lm,
                                        device_memory, fit_steps, lm_config, require_positive,
                                        train_steps, variant_fields, warmup_cosine)
from holojax.train.loop import loss_fn
from holojax.train.step import (host_lr, init_state, make_eval_step, make_train_step, model_of,
                                schedule_values)

PARTS = ("lm", "decode")


@dataclasses.dataclass(frozen=True)
class LongContextConfig:
  """What the benchmark trains, evaluates and decodes. The defaults (GPU) took
  90 s for both parts on one H100 (record ``long_context--nvidia-h100-*``);
  ``TINY`` runs on a 2-core CPU in about 20 s.

  Attributes:
    parts: which parts run: lm, decode.
    width, layers, head_dim: both models' width, depth and head width.
    hd_ratio: phasor memory width hd_dim = hd_ratio * width. 1 keeps the two
      models' parameter counts within ~10% at equal width and depth (the phasor
      has 5 width x hd_dim projections per layer, attention has 4 width^2); the
      seed's "capacity" choice is 2.
    dtype: compute dtype.
    train_len: training sequence length.
    eval_lens: evaluation lengths (each divides the longest).
    batch_size: sequences per step.
    steps: steps at most.
    max_minutes: training budget, both models, compiles included (none: no limit).
    warmup: learning-rate warm-up steps.
    calib_steps: steps per model timed to fit the steps to the budget (2 of
      them compile).
    learning_rate, weight_decay: AdamW's peak learning rate and weight decay.
    eval_tokens: held-out bytes evaluated at every length.
    eval_batch_tokens: bytes per eval batch.
    corpus_max_bytes: read at most this much of the corpus (none: all).
    seed: data and init seed.
    decode_tokens: context the decode reaches.
    decode_chunk: recurrent steps per jitted scan.
    decode_batch: sequences decoded side by side.
    decode_max_minutes: decode budget (none: no limit).
    decode_mode: prefill (a parallel prefill per context) or stream (one
      continuous decode).
    variants: the phasor models trained side by side with the transformer, each
      a spec of '+'-joined switches (:func:`variant_fields`): 'seed' (none: the
      seed's decay-free memory), 'gate' (learned write gate), 'convK' (causal
      convolution of width K), 'winW' (exact attention over the last W tokens in
      every layer), 'rope' (RoPE by offset in that window), 'hdR' (memory width
      R x hd_ratio x width). The decode part
      runs the variant with the lowest val at the first eval length.
    match_params: widen the transformer's MLP (rounded up to a multiple of
      64) until it has at least as many parameters as the largest phasor
      variant (a window and a wider memory add projections), so the
      comparison is at equal parameters, never in attention's disfavour;
      False: equal width, depth and MLP.
  """

  parts: tuple[str, ...] = ("lm", "decode")
  width: int = 256
  layers: int = 4
  head_dim: int = 64
  hd_ratio: float = 1.0
  dtype: str = "bfloat16"
  train_len: int = 4096
  eval_lens: tuple[int, ...] = (4096, 16384)
  batch_size: int = 8
  steps: int = 3000
  max_minutes: float | None = 10.0
  warmup: int = 50
  calib_steps: int = 10
  learning_rate: float = 2e-3
  weight_decay: float = 0.01
  eval_tokens: int = 262_144
  eval_batch_tokens: int = 65_536
  corpus_max_bytes: int | None = None
  seed: int = 0
  decode_tokens: int = 2**20
  decode_chunk: int = 1024
  decode_batch: int = 1
  decode_max_minutes: float | None = 3.0
  decode_mode: str = "prefill"
  variants: tuple[str, ...] = ("seed", "gate", "conv4", "win64", "hd2", "conv4+gate+win64")
  match_params: bool = True

  def __post_init__(self):
    if not self.parts or set(self.parts) - set(PARTS):
      raise ValueError(f"parts={self.parts}: choose from {PARTS}")
    require_positive(self, "width", "layers", "head_dim", "train_len", "batch_size", "steps",
                     "calib_steps", "eval_tokens", "eval_batch_tokens", "decode_tokens",
                     "decode_chunk", "decode_batch")
    if self.width % self.head_dim:
      raise ValueError(f"width={self.width} must be a multiple of head_dim={self.head_dim}")
    if not self.variants or len(set(self.variants)) != len(self.variants):
      raise ValueError(f"variants={self.variants!r} must be distinct and at least one")
    for spec in self.variants:
      hd = variant_fields(spec, self.hd_dim)["hd_dim"]
      if hd % self.heads:
        raise ValueError(f"variants: {spec!r} gives hd_dim={hd}, which must be a multiple "
                         f"of heads={self.heads}")
    if not 3 <= self.calib_steps <= min(self.warmup, self.steps):
      raise ValueError(f"calib_steps={self.calib_steps} must be >= 3 (2 compile steps, then "
                       f"timed ones), <= warmup={self.warmup} and <= steps={self.steps} "
                       "(calibration runs inside the warm-up)")
    lmax = max(self.eval_lens)
    if self.eval_batch_tokens % lmax or self.eval_tokens % self.eval_batch_tokens:
      raise ValueError(f"eval_batch_tokens={self.eval_batch_tokens} must be a multiple of "
                       f"the longest eval length {lmax}, and eval_tokens={self.eval_tokens} "
                       "a multiple of eval_batch_tokens")
    if any(lmax % n for n in self.eval_lens):
      raise ValueError(f"eval_lens={self.eval_lens} must divide the longest one")
    if self.decode_mode not in ("prefill", "stream"):
      raise ValueError(f"decode_mode={self.decode_mode!r} must be 'prefill' or 'stream'")
    if self.decode_tokens % self.decode_chunk:
      raise ValueError(f"decode_tokens={self.decode_tokens} must be a multiple of "
                       f"decode_chunk={self.decode_chunk}")

  @property
  def heads(self) -> int:
    return self.width // self.head_dim

  @property
  def hd_dim(self) -> int:
    return int(round(self.hd_ratio * self.width))


TINY = LongContextConfig(
    width=32, layers=2, head_dim=16, dtype="float32", train_len=64, eval_lens=(64, 256),
    batch_size=8, steps=24, max_minutes=None, warmup=8, calib_steps=4, learning_rate=3e-3,
    eval_tokens=8192, eval_batch_tokens=2048, corpus_max_bytes=1_000_000,
    decode_tokens=2**12, decode_chunk=256, decode_max_minutes=None,
    variants=("seed", "conv4+gate+win16"))


def model_configs(cfg: LongContextConfig) -> tuple[list[HoloConfig], GPTConfig]:
  """The phasor configs (one per variant) and the transformer's: equal width,
  depth and heads; with ``match_params`` the transformer's MLP is widened to
  the largest variant's parameter count (by formula, rounded up to a
  multiple of 64), else it is 4 x width like the phasors'.

  All accept ``max(eval_lens)`` tokens, so they can be evaluated past the
  training length.

  Example:
    >>> (h, w), g = model_configs(TINY)
    >>> (h.hidden_size, h.num_hidden_layers) == (g.hidden_size, g.num_hidden_layers)
    True
    >>> g.num_params() >= max(phasor_params(h), phasor_params(w)) > phasor_params(h)
    True
  """
  max_len = max(cfg.train_len, *cfg.eval_lens)
  kw = dict(vocab_size=hdata.VOCAB_SIZE, width=cfg.width, layers=cfg.layers, heads=cfg.heads,
            dtype=cfg.dtype)
  phasors = [lm_config("phasor", max_seq_len=max(max_len, cfg.decode_tokens),
                       **variant_fields(spec, cfg.hd_dim), **kw) for spec in cfg.variants]
  gpt = lm_config("attention", max_seq_len=max_len, **kw)
  if cfg.match_params:
    want = max(phasor_params(c) for c in phasors)
    per_unit = 2 * gpt.hidden_size * gpt.num_hidden_layers  # params per MLP width unit
    extra = -(-max(want - gpt.num_params(), 0) // per_unit)
    gpt = dataclasses.replace(gpt, intermediate_size=-(-(gpt.intermediate_size + extra) // 64) * 64)
  return phasors, gpt


def phasor_params(config: HoloConfig) -> int:
  """Parameters of a phasor LM (counted on an abstract model: no memory used)."""
  return num_params(nnx.eval_shape(lambda: build_lm(config, 0)))


def kv_cache_bytes(layers: int, width: int, context: int, *, batch: int = 1,
                   bytes_per_value: int = 2) -> int:
  """KV-cache bytes of a softmax transformer (computed, not measured).

  kv = 2 (K and V) * layers * context * width * batch * bytes_per_value
  (all heads cached, no grouped-query sharing; bf16 = 2 bytes).

  Example:
    >>> kv_cache_bytes(4, 256, 2**20) / 2**30   # GiB at 1M tokens
    4.0
  """
  return 2 * layers * context * width * batch * bytes_per_value


def decode_milestones(total: int, first: int) -> list[int]:
  """Contexts first * 4^k up to ``total``, and ``total`` itself.

  Example:
    >>> decode_milestones(2**20, 1024)
    [1024, 4096, 16384, 65536, 262144, 1048576]
  """
  out, m = [], first
  while m < total:
    out.append(m)
    m *= 4
  return out + [total]


def eval_sets(val: np.ndarray, lens, *, n_tokens: int, batch_tokens: int
              ) -> dict[int, list[np.ndarray]]:
  """The same held-out bytes at each length: ``{L: [int32[batch_tokens / L, L + 1]]}``.

  Windows j of length L cover val[j L : (j + 1) L + 1], so at every L the
  targets are exactly val[1 : n + 1], n = n_tokens (cut to what ``val``
  holds, in whole batches).
  """
  n_tokens = min(n_tokens, (len(val) - 1) // batch_tokens * batch_tokens)
  if n_tokens < batch_tokens:
    raise ValueError(f"the validation split ({len(val)} bytes) is shorter than one eval "
                     f"batch of {batch_tokens} bytes")
  out = {}
  for n in lens:
    out[n] = hdata.eval_batches(val, seq_len=n, batch_size=batch_tokens // n,
                                num_batches=n_tokens // batch_tokens)
    assert sum(b[:, 1:].size for b in out[n]) == n_tokens
  return out


# ----------------------------------------------------------------------------
# Part lm.


def _build(arch: str, mcfg, tx, seed: int) -> dict:
  """One training arm: model and optimizer state, its train and eval steps."""
  graphdef, state = init_state(lambda: build_lm(mcfg, seed), tx)
  return {"arch": arch, "config": dataclasses.asdict(mcfg), "graphdef": graphdef,
          "state": state, "train_step": make_train_step(graphdef, tx, loss_fn),
          "eval_step": make_eval_step(graphdef, loss_fn), "losses": [],
          "num_params": num_params(model_of(graphdef, state))}


def _train(arm: dict, data, start: int, stop: int, lrs, say=None) -> float:
  """Steps [start, stop) of ``arm`` in place at learning rates ``lrs[i]``
  (computed by the caller: ``schedule_values`` compiles for each new length,
  which must not fall inside a timed window); returns the wall seconds
  (blocked)."""
  t0 = time.perf_counter()
  every = max((stop - start) // 8, 1)

  def on_loss(s, loss):
    say(f"  {arm['arch']:>8} step {s + 1}/{len(lrs)}  loss {loss:.4f}")

  arm["state"], _ = train_steps(
      arm["train_step"], arm["state"], lambda s: jnp.asarray(data.batch(s)), lrs.__getitem__,
      range(start, stop), losses=arm["losses"], on_loss=say and on_loss,
      log_at=lambda s: (s + 1 - start) % every == 0)
  jax.block_until_ready(arm["state"])
  return time.perf_counter() - t0


def run_lm(cfg: LongContextConfig, corpus, say) -> tuple[dict, nnx.Module]:
  """Part ``lm``: returns (results, the trained phasor model)."""
  holo_cfgs, gpt_cfg = model_configs(cfg)
  data = hdata.PackedBatches(corpus.train, seq_len=cfg.train_len, batch_size=cfg.batch_size,
                             seed=cfg.seed)
  tx = host_lr(adamw, weight_decay=cfg.weight_decay, b2=0.95)
  t_start = time.perf_counter()
  arms = [_build(arm_name(spec), c, tx, cfg.seed) for spec, c in zip(cfg.variants, holo_cfgs)]
  arms.append(_build("gpt_rope", gpt_cfg, tx, cfg.seed))
  c = cfg.calib_steps
  lrs = schedule_values(warmup_cosine(cfg.learning_rate, cfg.warmup, c), c)  # all in warm-up
  for arm in arms:
    say(f"{arm['arch']}: {arm['num_params']:,} params; compiling and calibrating")
    first = _train(arm, data, 0, 2, lrs)  # includes the compile
    arm["calib_step_s"] = _train(arm, data, 2, c, lrs) / (c - 2)
    arm["compile_s"] = first
    say(f"{arm['arch']}: first steps (compile) {first:.1f} s, "
        f"{1e3 * arm['calib_step_s']:.1f} ms/step")
  steps = cfg.steps
  if cfg.max_minutes is not None:
    left = 60 * cfg.max_minutes - (time.perf_counter() - t_start)
    per_step = 1.05 * sum(a["calib_step_s"] for a in arms)
    steps = fit_steps(left, per_step, done=cfg.calib_steps, most=steps)
  say(f"training both for {steps} steps of {cfg.batch_size} x {cfg.train_len} bytes")
  lrs = schedule_values(warmup_cosine(cfg.learning_rate, cfg.warmup, steps), steps)
  for arm in arms:
    dt = _train(arm, data, cfg.calib_steps, steps, lrs, say)
    n = steps - cfg.calib_steps
    arm["tokens_per_s"] = n * cfg.batch_size * cfg.train_len / dt if n else None
    arm["train_s"] = dt
  say(f"training took {time.perf_counter() - t_start:.1f} s; evaluating")
  sets = eval_sets(corpus.val, cfg.eval_lens, n_tokens=cfg.eval_tokens,
                   batch_tokens=cfg.eval_batch_tokens)
  rows = []
  for arm in arms:
    losses = [float(x) for x in jax.device_get(arm["losses"])]
    val = {}
    for n, batches in sets.items():
      ls = [arm["eval_step"](arm["state"], jnp.asarray(b)) for b in batches]
      val[str(n)] = float(np.mean(jax.device_get(ls)))
      say(f"{arm['arch']}: val@{n} = {val[str(n)]:.4f} nats/byte")
    keep = sorted(set(range(0, len(losses), max(len(losses) // 50, 1))) | {len(losses) - 1})
    rows.append({"arch": arm["arch"], "num_params": arm["num_params"], "steps": steps,
                 "tokens": steps * cfg.batch_size * cfg.train_len,
                 "compile_s": arm["compile_s"], "calib_step_s": arm["calib_step_s"],
                 "train_s": arm["train_s"], "tokens_per_s": arm["tokens_per_s"],
                 "final_train_loss": losses[-1], "finite": bool(np.all(np.isfinite(losses))),
                 "val": val, "train_curve": [[i + 1, losses[i]] for i in keep],
                 "model_config": arm["config"]})
  n_eval = sum(b[:, 1:].size for b in sets[cfg.eval_lens[0]])
  first = str(cfg.eval_lens[0])
  best = min(range(len(cfg.variants)), key=lambda i: rows[i]["val"][first])
  model = model_of(arms[best]["graphdef"], arms[best]["state"])
  results = {"steps": steps, "tokens_per_model": steps * cfg.batch_size * cfg.train_len,
             "eval_tokens": n_eval, "best_variant": cfg.variants[best], "wall_s": time.perf_counter() - t_start, "rows": rows}
  return results, model


# ----------------------------------------------------------------------------
# Part decode.


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(3,))
def decode_chunk(graphdef, n: int, state, carry):
  """``n`` greedy recurrent steps (``decode_steps``) with the carry = (cache,
  logits float32[B, V]) donated. Returns the new carry and the fed tokens
  int32[n, B]."""
  return decode_steps(nnx.merge(graphdef, state), *carry, n)


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                            if jnp.issubdtype(x.dtype, jnp.floating)]))


def _decode_row(cfg: LongContextConfig, carry, context: int, steps: int, dt: float) -> dict:
  """One decode record: time per step / token over ``steps`` steps, state, memory."""
  cache, b = carry[0], cfg.decode_batch
  return {"context": context, "us_per_step": 1e6 * dt / steps,
          "us_per_token": 1e6 * dt / (steps * b), "state_bytes": tree_bytes(cache),
          "pos": int(cache[0].pos), "all_finite": bool(_all_finite(carry)), **device_memory(),
          "kv_bytes_computed": kv_cache_bytes(cfg.layers, cfg.width, context, batch=b)}


def _decode_msg(row: dict) -> str:
  return (f"{row['us_per_token']:8.1f} us/token  state {row['state_bytes']:,} B  "
          f"in use {row['bytes_in_use']}  (attention KV would be "
          f"{row['kv_bytes_computed']:,} B)")


@functools.partial(jax.jit, static_argnums=(0,))
def _prefill(graphdef, state, ids_bt):
  logits_bv, cache = nnx.merge(graphdef, state).prefill(ids_bt)
  return cache, logits_bv


def prompt_ids(n: int, batch: int, source: np.ndarray | None, seed: int) -> np.ndarray:
  """int32[batch, n]: ``source`` bytes tiled to length n, or seeded random bytes."""
  if source is None or len(source) == 0:
    return np.random.default_rng(seed).integers(0, 256, (batch, n), dtype=np.int32)
  reps = -(-n * batch // len(source))
  return np.tile(np.asarray(source, np.int32), reps)[:n * batch].reshape(batch, n)


def run_decode_prefill(cfg: LongContextConfig, model: HoloForCausalLM, say,
                       source: np.ndarray | None = None) -> dict:
  """Part ``decode``, prefill mode: at each context L of ``decode_milestones``,
  read an L-token prompt with the parallel ``prefill`` (the phasor kernel), then
  time ``decode_chunk`` greedy recurrent steps from that state (after one untimed
  chunk). The state after L tokens is real; only the way there is parallel."""
  graphdef, state = nnx.split(model)
  b, n = cfg.decode_batch, cfg.decode_chunk
  rows, t_begin, stopped = [], time.perf_counter(), None
  budget = None if cfg.decode_max_minutes is None else 60 * cfg.decode_max_minutes
  for m in decode_milestones(cfg.decode_tokens, n):
    ids = jnp.asarray(prompt_ids(m, b, source, cfg.seed))
    jax.block_until_ready(_prefill(graphdef, state, ids))  # compile + warm
    t0 = time.perf_counter()
    carry = jax.block_until_ready(_prefill(graphdef, state, ids))
    prefill_s = time.perf_counter() - t0
    del ids  # device memory below is the decode's own, not the prompt's
    carry, _ = decode_chunk(graphdef, n, state, carry)  # untimed (compiles once)
    jax.block_until_ready(carry)
    t0 = time.perf_counter()
    carry, toks_nb = decode_chunk(graphdef, n, state, carry)
    jax.block_until_ready(carry)
    dt = time.perf_counter() - t0
    row = {"prefill_ms": 1e3 * prefill_s, "prefill_tokens_per_s": m * b / prefill_s,
           **_decode_row(cfg, carry, m, n, dt)}
    rows.append(row)
    say(f"decode: context {m:>9,}  prefill {row['prefill_ms']:8.1f} ms  "
        + _decode_msg(row))
    del carry
    if budget is not None and time.perf_counter() - t_begin > budget:
      stopped = f"decode_max_minutes={cfg.decode_max_minutes} reached after context {m}"
      say(f"decode: stopped, {stopped}")
      break
  return {"mode": "prefill", "batch": b, "chunk": n, "stopped": stopped,
          "wall_s": time.perf_counter() - t_begin, "tokens": rows[-1]["context"],
          "tokens_fed": "prompt: held-out corpus bytes tiled (random bytes without a "
                        "corpus); then greedy argmax of the model's own logits",
          "sample_end": hdata.decode(np.asarray(toks_nb)[-160:, 0]), "rows": rows}


def run_decode(cfg: LongContextConfig, model: HoloForCausalLM, say,
               source: np.ndarray | None = None) -> dict:
  """Part ``decode``: time and memory per token up to ``decode_tokens`` of context."""
  if cfg.decode_mode == "prefill":
    return run_decode_prefill(cfg, model, say, source)
  return run_decode_stream(cfg, model, say)


def run_decode_stream(cfg: LongContextConfig, model: HoloForCausalLM, say) -> dict:
  """Decode mode ``stream``: one continuous greedy decode through every context."""
  graphdef, state = nnx.split(model)
  b, n = cfg.decode_batch, cfg.decode_chunk

  def fresh():
    """Empty cache and logits whose argmax is a newline byte."""
    cache = model.init_cache(b)
    logits_v = jax.nn.one_hot(ord("\n"), model.config.vocab_size, dtype=jnp.float32)
    return cache, jnp.tile(logits_v, (b, 1))

  t0 = time.perf_counter()
  jax.block_until_ready(decode_chunk(graphdef, n, state, fresh()))  # compile + warm-up
  carry = fresh()
  jax.block_until_ready(_all_finite(carry))
  compile_s = time.perf_counter() - t0
  mem_start = device_memory()
  say(f"decode: compiled a {n}-step scan in {compile_s:.1f} s; memory {mem_start}")
  rows, done, seg_start, first_toks = [], 0, 0, None
  t_seg = t_begin = time.perf_counter()
  budget = None if cfg.decode_max_minutes is None else 60 * cfg.decode_max_minutes
  stopped = None
  for m in decode_milestones(cfg.decode_tokens, n):
    while done < m:
      carry, toks_nb = decode_chunk(graphdef, n, state, carry)
      jax.block_until_ready(carry)
      done += n
      if first_toks is None:
        first_toks = np.asarray(toks_nb)[:, 0]  # host slice: no compile in the timing
      if budget is not None and done < m and time.perf_counter() - t_begin > budget:
        stopped = f"decode_max_minutes={cfg.decode_max_minutes} reached at {done} tokens"
        break
    dt = time.perf_counter() - t_seg
    row = _decode_row(cfg, carry, done, done - seg_start, dt)
    rows.append(row)
    say(f"decode: context {done:>9,}  " + _decode_msg(row))
    seg_start, t_seg = done, time.perf_counter()
    if stopped:
      say(f"decode: stopped, {stopped}")
      break
  last_toks = np.asarray(toks_nb)[:, 0]
  return {"mode": "stream", "batch": b, "chunk": n, "compile_s": compile_s,
          "memory_at_start": mem_start,
          "wall_s": time.perf_counter() - t_begin, "tokens": done, "stopped": stopped,
          "tokens_fed": "greedy argmax of the model's own logits, from a newline byte",
          "sample_start": hdata.decode(first_toks[:160]),
          "sample_end": hdata.decode(last_toks[-160:]), "rows": rows}


# ----------------------------------------------------------------------------
# Table, CLI.


def format_table(cfg: LongContextConfig, results: dict) -> str:
  lines = []
  if "lm" in results:
    lm = results["lm"]
    ls = [str(n) for n in cfg.eval_lens]
    lines += [f"LM: {lm['steps']} steps x {cfg.batch_size} x {cfg.train_len} bytes each "
              f"({lm['tokens_per_model']:,} tokens), {cfg.dtype}; val nats/byte on the same "
              f"{lm['eval_tokens']:,} held-out bytes at each length",
              "| arch | params | " + " | ".join(f"val@{n}" for n in ls) + " |",
              "|---|---|" + "---|" * len(ls)]
    for r in lm["rows"]:
      lines.append(f"| {r['arch']} | {r['num_params']:,} | "
                   + " | ".join(f"{r['val'][n]:.4f}" for n in ls) + " |")
    lines.append("")
  if "decode" in results:
    d = results["decode"]
    how = ("prompt read by the parallel prefill, then" if d["mode"] == "prefill"
           else "one continuous decode,")
    lines += [f"Decode: {arm_name(d['variant'])}, batch {d['batch']}, {how} greedy recurrent steps timed "
              f"over a scan of {d['chunk']}"
              + (f"; STOPPED: {d['stopped']}" if d["stopped"] else ""),
              "| context | prefill ms | us/token | state bytes | device bytes in use | "
              "attn KV bytes (computed, not measured) |", "|---|---|---|---|---|---|"]
    for r in d["rows"]:
      in_use = "n/a" if r["bytes_in_use"] is None else f"{r['bytes_in_use']:,}"
      pre = f"{r['prefill_ms']:.1f}" if "prefill_ms" in r else "-"
      lines.append(f"| {r['context']:,} | {pre} | {r['us_per_token']:.1f} | "
                   f"{r['state_bytes']:,} | {in_use} | {r['kv_bytes_computed']:,} |")
  return "\n".join(lines)


def run(cfg: LongContextConfig, progress: Progress = Progress()) -> Result:
  say = progress.say
  say(f"device {jax.devices()[0]}, config {dataclasses.asdict(cfg)}")
  results, model, source = {}, None, None
  if "lm" in cfg.parts:
    corpus = hdata.load_corpus(max_bytes=cfg.corpus_max_bytes)
    say(f"corpus {corpus.source}: {len(corpus.train):,} train / {len(corpus.val):,} val bytes")
    results["lm"], model = run_lm(cfg, corpus, say)
    source = np.asarray(corpus.val[:1 << 20])
    del corpus
    gc.collect()  # the transformer's arrays go before the decode measures memory
    progress.partial(results)
  if "decode" in cfg.parts:
    weights = "trained in part lm" if model is not None else "random init"
    variant = results["lm"]["best_variant"] if model is not None else cfg.variants[0]
    if model is None:
      model = build_lm(model_configs(cfg)[0][0], cfg.seed)
    say(f"decoding variant {variant!r} ({weights})")
    results["decode"] = {"weights": weights, "variant": variant,
                         **run_decode(cfg, model, say, source)}
  return Result(results, format_table(cfg, results))
