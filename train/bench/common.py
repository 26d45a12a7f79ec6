"""What the benchmarks share: the contract, timing, memory, parameter trees,
the phasor/attention LM pair, and training to a time budget.

A benchmark is a module with a frozen config dataclass (its fields are its
flags, described in its ``Attributes:`` docstring), a ``TINY`` instance (a
CPU run of well under a minute) and ``run(config, progress) -> Result``; it
reports through ``progress`` and never prints: the harness prints the table
and writes the record.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import math
import os
import re
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from holojax.models.gpt import GPT, GPTConfig
from holojax.models.holo_transformer import HoloConfig, HoloForCausalLM
from holojax.optim.accounting import state_bits_per_param
from holojax.train.step import with_learning_rate

LM_ARCHS = ("phasor", "attention")


class Progress(NamedTuple):
  """How a running benchmark reports: ``say(line)`` a progress line,
  ``partial(results)`` the results so far (kept where a killed run leaves them)."""
  say: Callable[[str], None] = lambda line: None
  partial: Callable[[dict], None] = lambda results: None


@dataclasses.dataclass(frozen=True)
class Result:
  """What ``run`` returns: the record's numbers, its table, and files (name ->
  bytes, e.g. a plot) the harness writes beside the record."""

  results: dict
  table: str
  files: dict[str, bytes] = dataclasses.field(default_factory=dict)


def require_positive(config, *names: str):
  """Raises ``ValueError`` naming the first field of ``names`` below 1."""
  for name in names:
    if getattr(config, name) < 1:
      raise ValueError(f"{name}={getattr(config, name)} must be >= 1")


def pipe_table(head: list[str], rows: list[list[str]]) -> list[str]:
  """Markdown pipe-table lines: the header, its rule, one line per row (a short row
  is a note that spans the rest)."""
  return [" | ".join(head), "-|-".join("-" * len(h) for h in head), *(" | ".join(r) for r in rows)]


def fmt_bytes(b, unit: str = "GiB") -> str:
  """``b`` bytes in ``unit`` (``MiB`` or ``GiB``); ``n/a`` for None."""
  if b is None:
    return "n/a"
  return f"{b / 2**20:,.0f}" if unit == "MiB" else f"{b / 2**30:.1f}"


# ----------------------------------------------------------------------------
# Timing and memory


def median_time(f, *args, repeats: int = 20, warmup: int = 1) -> float:
  """Median seconds of ``f(*args)`` (blocked until ready) after ``warmup`` calls."""
  for _ in range(warmup):
    jax.block_until_ready(f(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def kernel_profile(f, steps: int = 5, top: int = 12) -> dict | None:
  """Device time per kernel over ``steps`` calls of ``f`` (a ``jax.profiler``
  trace), per call: ``{"kernel_ms", "kernels", "top": [{"name", "ms", "calls"}]}``
  (:func:`kernel_table`); None where the trace holds no device kernels (CPU).

  ``kernel_ms`` is the time the device spends in kernels, without the host's
  launch gaps that a blocking timer such as :func:`median_time` includes.
  """
  tmp = tempfile.mkdtemp(prefix="holojax-trace-")
  try:
    with jax.profiler.trace(tmp):
      for _ in range(steps):
        out = f()
      jax.block_until_ready(out)
    files = glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)
    if not files:
      return None
    return kernel_table(jax.profiler.ProfileData.from_file(files[0]).planes, steps, top)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def kernel_table(planes, steps: int, top: int = 12) -> dict | None:
  """Kernel events of a trace's GPU planes (their ``Stream`` lines) summed by
  name, per step; None if there are none."""
  total, calls = collections.Counter(), collections.Counter()
  for plane in planes:
    if not plane.name.startswith("/device:GPU"):
      continue
    for line in plane.lines:
      if line.name.startswith("Stream"):
        for ev in line.events:
          total[ev.name] += ev.duration_ns
          calls[ev.name] += 1
  if not total:
    return None
  per = lambda ns: ns / steps / 1e6
  return {"kernel_ms": per(sum(total.values())), "kernels": sum(calls.values()) / steps,
          "top": [{"name": name[:120], "ms": per(ns), "calls": calls[name] / steps}
                  for name, ns in total.most_common(top)]}


def copy_bandwidth(num_bytes: int, repeats: int = 20) -> float:
  """Measured device copy bandwidth in bytes/s (bytes read + bytes written).

  The buffer is donated and threaded through the calls, so each timed call
  reads and writes ``num_bytes`` in place; a fresh output per call (the
  earlier version) also timed the allocator and, on a CPU, first-touch page
  faults, and read several times low.
  """
  x = [jax.random.normal(jax.random.key(0), (num_bytes // 4,), jnp.float32)]
  f = jax.jit(lambda a: a * 1.0000001, donate_argnums=0)

  def run():
    x[0] = f(x[0])
    return x[0]

  return 2 * x[0].nbytes / median_time(run, repeats=repeats, warmup=2)


def in_child(module: str, config, args: list, timeout_s: float, env: dict | None = None
             ) -> dict:
  """``fn(config, *args)`` of ``module`` run in a fresh process (its own device
  memory and peak statistics): ``python -m module JSON``, where the module's
  ``__main__`` is :func:`child_main` and its result the last stdout line.

  A child that fails, prints no result or outlives ``timeout_s`` gives
  ``{"status": "oom" | "error", "error": ...}`` ("oom" when its stderr names
  XLA's out-of-memory error; a timeout quotes the child's last stderr line,
  so a child that reports its phases there says where it stopped). ``env``:
  variables set for the child only, over this process's environment.
  """
  arg = {"config": dataclasses.asdict(config), "args": list(args)}
  cmd = [sys.executable, "-m", module, json.dumps(arg)]
  try:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                         env={**os.environ, **(env or {})})
  except subprocess.TimeoutExpired as e:
    err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or ""
    last = (err.strip().splitlines() or ["no output"])[-1][:200]
    return {"status": "error", "error": f"timed out after {timeout_s} s (last said: {last})"}
  lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
  if out.returncode or not lines:
    tail = (out.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return {"status": "oom" if "RESOURCE_EXHAUSTED" in out.stderr else "error",
            "error": f"exit {out.returncode}: {tail}"}
  return json.loads(lines[-1])


def child_main(config_cls, fn, argv: list[str]) -> int:
  """The ``__main__`` of a module run by :func:`in_child`: prints ``fn(config, *args)``
  as one JSON line."""
  arg = json.loads(argv[0])
  conf = {k: tuple(v) if isinstance(v, list) else v for k, v in arg["config"].items()}
  print(json.dumps(fn(config_cls(**conf), *arg["args"])), flush=True)
  return 0


def memory_analysis(jitted, *args) -> dict | None:
  """XLA's memory analysis of ``jitted`` compiled for ``args`` (arrays or
  ``jax.ShapeDtypeStruct``s: nothing is allocated): ``{"argument_bytes",
  "output_bytes", "temp_bytes", "alias_bytes", "bytes"}``, ``bytes`` being
  what one call holds at its peak (arguments + outputs + temporaries - donated
  aliases); the executable comes from jit's cache once the function has run.
  None where the backend gives no analysis."""
  m = jitted.lower(*args).compile().memory_analysis()
  if m is None:
    return None
  out = {"argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
         "temp_bytes": m.temp_size_in_bytes, "alias_bytes": m.alias_size_in_bytes}
  out["bytes"] = (out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                  - out["alias_bytes"])
  return out


def compiled_bytes(jitted, *args) -> int | None:
  """``memory_analysis(jitted, *args)["bytes"]``: the peak of one call (None where
  the backend gives no analysis)."""
  m = memory_analysis(jitted, *args)
  return None if m is None else m["bytes"]


def device_memory() -> dict:
  """``bytes_in_use``, ``peak_bytes_in_use`` and ``bytes_limit`` of the first
  device (None where the backend does not report them)."""
  stats = jax.devices()[0].memory_stats() or {}
  return {k: stats.get(k) for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")}


# ----------------------------------------------------------------------------
# Optimizer steps on parameter trees


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


@dataclasses.dataclass(frozen=True)
class TreeConfig:
  """The GPT-2-shaped parameter tree an optimizer step is timed on (GPT-2 124M's
  shapes by default).

  Attributes:
    vocab_size: rows of the token embedding.
    width: model width (embedding columns, attention projections).
    layers: transformer blocks.
    mlp: hidden width of each block's MLP.
    context: rows of the position embedding.
    iters: timed steps per optimizer (their median is reported).
  """

  vocab_size: int = 50304
  width: int = 768
  layers: int = 12
  mlp: int = 3072
  context: int = 1024
  iters: int = 50

  def __post_init__(self):
    require_positive(self, "vocab_size", "width", "layers", "mlp", "context", "iters")

  def shapes(self) -> dict:
    return gpt2_shapes(self.vocab_size, self.width, self.layers, self.mlp, self.context)


def abstract_params(shapes, dtype=jnp.float32):
  """ShapeDtypeStructs for a pytree whose leaves are shape tuples."""
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, dtype), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def state_bits(opts: dict, shapes) -> dict:
  """Name -> bits/param of each optimizer's state on the tree ``shapes``
  (``jax.eval_shape`` of ``init``: exact bytes, nothing allocated)."""
  params = abstract_params(shapes)
  return {name: state_bits_per_param(jax.eval_shape(opt.init, params), params)
          for name, opt in opts.items()}


def random_params_and_grads(shapes, seed: int = 0):
  """Random f32 params (std 0.02) and grads (1e-3, per-column scales over ~3 decades).

  ``shapes`` is a pytree whose leaves are shape tuples. Random data, never
  constants: constants hide indexing bugs and make block statistics degenerate.
  """
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
  keys = jax.random.split(jax.random.key(seed), 2 * len(leaves))
  params = [0.02 * jax.random.normal(k, s) for k, s in zip(keys[::2], leaves)]
  col_scale = lambda k, s: jnp.exp(jax.random.normal(jax.random.fold_in(k, 1), s[-1:])).reshape(
      (1,) * (len(s) - 1) + s[-1:])  # noqa: E731
  grads = [1e-3 * jax.random.normal(k, s) * col_scale(k, s) for k, s in zip(keys[1::2], leaves)]
  return jax.tree.unflatten(treedef, params), jax.tree.unflatten(treedef, grads)


def optimizer_step_ms(opt, grads, params, *, repeats: int = 20, warmup: int = 3) -> float:
  """Median ms of one jitted ``opt.update`` (state donated and threaded through calls)."""
  step = jax.jit(opt.update, donate_argnums=1)
  state = [jax.jit(opt.init)(params)]

  def run(g, p):
    u, state[0] = step(g, state[0], p)
    return u

  return 1e3 * median_time(run, grads, params, repeats=repeats, warmup=warmup)


def time_optimizers(impls: dict, grads, params, *, repeats: int, extra=None,
                    say=Progress().say) -> dict:
  """Step time of each optimizer in ``impls`` (name -> transformation), in one run.

  Per name: ``ms`` (median step), ``wall_s_incl_compile``, ``x_adamw`` (ratio to
  the ``optax.adamw`` entry, if any) and ``extra(name)`` fields; a failure is
  recorded as ``error`` and the others still run.
  """
  out = {}
  for name, opt in impls.items():
    t0 = time.perf_counter()
    try:
      out[name] = {"ms": optimizer_step_ms(opt, grads, params, repeats=repeats),
                   **(extra(name) if extra else {})}
    except Exception as e:  # report, keep going (e.g. a kernel that fails to lower)
      out[name] = {"ms": None, "error": f"{type(e).__name__}: {e}"[:300]}
    out[name]["wall_s_incl_compile"] = time.perf_counter() - t0
    say(f"timed {name}: {out[name]}")
  base = out.get("optax.adamw", {}).get("ms")
  for v in out.values():
    if v["ms"] is not None and base:
      v["x_adamw"] = v["ms"] / base
  return out


def step_time_lines(step: dict) -> list[str]:
  """Table rows of ``time_optimizers``' result: ms, x adamw, backend or error."""
  lines = [f"  {'optimizer':<30}{'ms':>10}{'x adamw':>9}  backend"]
  for name, v in step.items():
    if name == "floor":
      continue
    ms = "failed" if v["ms"] is None else f"{v['ms']:.3f}"
    ratio = f"{v['x_adamw']:.2f}" if "x_adamw" in v else "-"
    lines.append(f"  {name:<30}{ms:>10}{ratio:>9}  {v.get('backend', v.get('error', ''))}")
  return lines


# ----------------------------------------------------------------------------
# The phasor / attention LM pair


def parse_optimizer_spec(spec: str) -> tuple[str, str, str]:
  """``name[@implementation][:tree_layout]`` -> (name, implementation, tree_layout), each
  "" where absent.

  Example:
    >>> parse_optimizer_spec("turbo_adam@mosaic:flat"), parse_optimizer_spec("adamw")
    (('turbo_adam', 'mosaic', 'flat'), ('adamw', '', ''))
  """
  head, _, tree_layout = spec.partition(":")
  name, _, impl = head.partition("@")
  return name, impl, tree_layout


def check_optimizer_specs(specs) -> None:
  """Raises ``ValueError`` (listing the choices) unless ``specs`` is a
  non-empty sequence of registered ``name[@implementation][:tree_layout]``."""
  from holojax.optim import registry  # noqa: PLC0415
  from holojax.optim.layout import TREE_LAYOUTS  # noqa: PLC0415
  parsed = [parse_optimizer_spec(o) for o in specs]
  unknown = [o for o, (n, _, t) in zip(specs, parsed)
             if n not in registry.names() or t not in ("",) + TREE_LAYOUTS]
  if unknown or not specs:
    raise ValueError(f"optimizers {unknown or specs!r}: choose from {registry.names()} "
                     f"(optionally name@implementation:tree_layout, tree_layout in "
                     f"{TREE_LAYOUTS})")


def optimizer_of(spec: str) -> tuple[str, dict]:
  """(registry name, keyword arguments) of ``name[@implementation][:tree_layout]``.

  Example:
    >>> optimizer_of("turbo_adam:flat")
    ('turbo_adam', {'tree_layout': 'flat'})
  """
  name, impl, tree_layout = parse_optimizer_spec(spec)
  kw = {"implementation": impl} if impl else {}
  if tree_layout:
    kw["tree_layout"] = tree_layout
  return name, kw


def lm_config(arch: str, *, vocab_size: int, width: int, layers: int, heads: int,
              max_seq_len: int, dtype: str, hd_dim: int | None = None, **phasor):
  """A phasor LM (``HoloConfig``, memory width ``hd_dim``, ``phasor`` extra
  fields) or a RoPE attention LM (``GPTConfig``) of equal width, depth, heads
  and MLP (4 width): the two sides of the phasor benchmarks.

  Example:
    >>> lm_config("attention", vocab_size=256, width=64, layers=2, heads=1,
    ...           max_seq_len=128, dtype="float32").intermediate_size
    256
  """
  if arch == "phasor":
    return HoloConfig(vocab_size=vocab_size, hidden_size=width, hd_dim=hd_dim,
                      num_hidden_layers=layers, num_heads=heads, intermediate_size=4 * width,
                      max_seq_len=max_seq_len, dtype=dtype, **phasor)
  if arch == "attention":
    return GPTConfig(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers,
                     num_heads=heads, intermediate_size=4 * width, max_seq_len=max_seq_len,
                     dtype=dtype)
  raise ValueError(f"arch {arch!r} must be one of {LM_ARCHS}")


SWITCHES = ("seed", "gate", "convK", "winW", "rope", "hdR")


def variant_fields(spec: str, hd_dim: int) -> dict:
  """``HoloConfig`` fields of a phasor variant spec: ``+``-joined switches
  ``seed`` (nothing), ``gate`` (write_gate), ``convK`` (conv=K), ``winW``
  (window=W), ``rope`` (window_rope: RoPE in that window; needs ``winW``) and
  ``hdR`` (hd_dim = R x the base ``hd_dim``).

  Raises:
    ValueError: an unknown or repeated switch (the message lists the switches).

  Example:
    >>> variant_fields("conv4+win64", 256)
    {'write_gate': False, 'conv': 4, 'window': 64, 'window_rope': False, 'hd_dim': 256}
  """
  out = {"write_gate": False, "conv": 0, "window": 0, "window_rope": False, "hd_dim": hd_dim}
  seen = set()
  for tok in spec.split("+"):
    m = re.fullmatch(r"(seed|gate|rope)|(conv|win)(\d+)|hd(\d+(?:\.\d+)?)", tok)
    key = m and (m.group(1) or m.group(2) or "hd")
    if not m or key in seen or (key == "seed" and spec != "seed"):
      raise ValueError(f"variants: bad spec {spec!r}: join distinct switches of {SWITCHES} "
                       "with '+' (seed alone), e.g. 'conv4+gate+win64'")
    seen.add(key)
    if key == "gate":
      out["write_gate"] = True
    elif key == "rope":
      out["window_rope"] = True
    elif key == "conv":
      out["conv"] = int(m.group(3))
    elif key == "win":
      out["window"] = int(m.group(3))
    elif key == "hd":
      out["hd_dim"] = int(round(float(m.group(4)) * hd_dim))
  if out["window_rope"] and not out["window"]:
    raise ValueError(f"variants: bad spec {spec!r}: 'rope' turns the window's keys, so it needs "
                     "a 'winW' switch too")
  return out


def arm_name(spec: str) -> str:
  """The record's ``arch`` of a phasor variant: ``phasor`` or ``phasor:SPEC``.

  Example:
    >>> arm_name("seed"), arm_name("conv4+win64")
    ('phasor', 'phasor:conv4+win64')
  """
  return "phasor" if spec == "seed" else f"phasor:{spec}"


def build_lm(config, seed: int) -> nnx.Module:
  """The model of an ``lm_config``."""
  cls = HoloForCausalLM if isinstance(config, HoloConfig) else GPT
  return cls(config, rngs=nnx.Rngs(seed))


# ----------------------------------------------------------------------------
# Training to a time budget


def adamw(learning_rate, *, weight_decay: float, b2: float,
          matrices_only: bool = False) -> optax.GradientTransformation:
  """Global-norm clipping at 1, then AdamW (b1 = 0.9) with decoupled weight
  decay on every parameter or, with ``matrices_only``, on those of 2+ dims."""
  mask = (lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)) if matrices_only else None
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(learning_rate, b1=0.9, b2=b2, weight_decay=weight_decay,
                                 mask=mask))


def warmup_cosine(peak: float, warmup: int, total: int) -> optax.Schedule:
  """Linear warm-up from 0 to ``peak`` over ``warmup`` steps, then cosine to
  peak / 10 at ``total`` (``optax.warmup_cosine_decay_schedule``).

  Example:
    >>> s = warmup_cosine(1.0, 10, 100)
    >>> [round(float(s(i)), 3) for i in (0, 5, 10, 55, 100)]
    [0.0, 0.5, 1.0, 0.55, 0.1]
  """
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total, warmup + 1),
                                            0.1 * peak)


def fit_steps(seconds: float, step_s: float, *, done: int, most: int) -> int:
  """The step total when ``done`` steps are run and ``seconds`` are left at
  ``step_s`` seconds a step: done + floor(seconds / step_s), within [done, most].

  Example:
    >>> fit_steps(10.0, 0.5, done=30, most=1000), fit_steps(-1.0, 0.5, done=30, most=1000)
    (50, 30)
  """
  return max(done, min(most, done + int(seconds / step_s)))


def train_steps(step, state, batch_at: Callable[[int], Any], lr_at: Callable[[int], float],
                steps: range, *, losses: list, stop_at: float | None = None,
                log_at: Callable[[int], bool] | None = None,
                on_loss: Callable[[int, float], None] | None = None) -> tuple[Any, int]:
  """Runs ``step`` (a ``make_train_step``) over ``steps`` with learning rate
  ``lr_at(i)`` and batch ``batch_at(i)``.

  Appends each step's loss (a device scalar) to ``losses``. The loss of every
  step i with ``log_at(i)`` goes to ``on_loss(i, loss)`` one step later, so
  reading it never waits for the step just queued. Stops before a step once
  ``time.perf_counter() >= stop_at``. Returns (state, index after the last
  step run).
  """
  pending, done = None, steps.start
  for i in steps:
    if stop_at is not None and time.perf_counter() >= stop_at:
      break
    state, metrics = step(with_learning_rate(state, lr_at(i)), batch_at(i))
    losses.append(metrics["train/loss"])
    done = i + 1
    if pending is not None:
      on_loss(pending[0], float(pending[1]))
      pending = None
    if on_loss is not None and log_at(i):
      pending = (i, metrics["train/loss"])
  if pending is not None:
    on_loss(pending[0], float(pending[1]))
  return state, done


def check_finite(tag: str, i: int, loss: float):
  """Raises ``FloatingPointError`` naming ``tag`` and step ``i`` if ``loss`` is NaN/Inf."""
  if not math.isfinite(loss):
    raise FloatingPointError(f"{tag}: loss {loss} at step {i}")
