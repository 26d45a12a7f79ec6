"""One optimizer step, every optimizer: compile time, step time and the memory floor.

For each parameter tree (``trees``: GPT-2 124M's shapes, a ~1B Llama-shaped
tree, or ``leaves-N``: N equal leaves of ``leaves_total`` parameters), each
optimizer of ``optimizers`` (``name[@implementation][:tree_layout]``, registry
names: ``turbo_adam@triton`` runs TurboAdam's fused v kernel, ``turbo_adam:flat``
its flat tree layout, ``turbo_adam@triton:flat`` both) is jitted as update +
apply with parameters and state donated, as a train step runs it, and
measured in one run against ``optax.adamw``:

* ``compile_s``: lowering + XLA compile of that step (``jit(...).lower().compile()``);
* ``step_ms``: the median of ``repeats`` steps after a warm-up;
* ``floor_ms``: the bytes a step must move (read p, g and the state, write p
  and the state: ``4 N + 4 N + 4 N + 2 S`` for N float32 parameters and S
  state bytes) over the copy bandwidth measured in the same run;
* ``state_bits_per_param``.

The ``leaves-10`` / ``leaves-200`` pair has the same total size, so its compile
times show how a program grows with the number of tensors (issue 12's target:
not at all; TurboAdam's ``:flat`` rows). Rows go to ``results["rows"]`` as
``{"optimizer", "implementation", "tree_layout", "tree", "params", "compile_s",
"step_ms", "floor_ms", "state_bits_per_param"}``; a failure is a row with
``error``.

  holojax bench optimizer_step                                 # the GPU run
  holojax bench optimizer_step --trees leaves-10,leaves-200    # compile scaling
  holojax bench optimizer_step --optimizers adamw,turbo_adam,turbo_adam:flat
  holojax bench optimizer_step --trees gpt2-124m --profile      # where the time goes (GPU)
  holojax bench optimizer_step --tiny --no-save                # CPU smoke run
"""

from __future__ import annotations

import dataclasses
import re
import time

import jax
import optax

from holojax.optim import registry
from holojax.optim.accounting import state_bits_per_param, tree_bytes
from holojax.train.bench.common import (Progress, Result, check_optimizer_specs,
                                        copy_bandwidth, gpt2_shapes, kernel_profile,
                                        median_time, optimizer_of, parse_optimizer_spec,
                                        random_params_and_grads, require_positive)

OPTIMIZERS = ("adamw", "turbo_adam", "turbo_adam:flat", "turbo_adam@triton",
              "turbo_adam@triton:flat", "turbo_adam_v", "turbo_adam_v:flat", "holo_adam",
              "adafactor", "lion")
_TREE = re.compile(r"^(gpt2-124m|llama-1b|leaves-(\d+))$")


def llama_shapes(vocab=128256, d=2048, layers=16, mlp=8192, heads=32, kv_heads=8) -> dict:
  """A Llama-3.2-1B-shaped tree (tied embeddings): 1.24B parameters."""
  k = d // heads
  tree = {"embed": (vocab, d), "norm": (d,)}
  for i in range(layers):
    tree[f"layer{i}"] = {"q": (d, d), "k": (d, kv_heads * k), "v": (d, kv_heads * k),
                         "o": (d, d), "gate": (d, mlp), "up": (d, mlp), "down": (mlp, d),
                         "norm1": (d,), "norm2": (d,)}
  return tree


def tree_shapes(name: str, leaves_total: int) -> dict:
  """The shapes of tree ``name`` (``gpt2-124m``, ``llama-1b``, ``leaves-N``)."""
  m = _TREE.match(name)
  if m.group(1) == "gpt2-124m":
    return gpt2_shapes()
  if m.group(1) == "llama-1b":
    return llama_shapes()
  n = int(m.group(2))
  rows = max(leaves_total // (n * 1024), 1)
  return {f"w{i:04d}": (rows, 1024) for i in range(n)}


@dataclasses.dataclass(frozen=True)
class OptimizerStepConfig:
  """What ``run`` measures (module docstring).

  Attributes:
    trees: ``gpt2-124m``, ``llama-1b`` or ``leaves-N`` (N equal leaves).
    optimizers: registry names, optionally ``@implementation`` (TurboAdam's
      fused v step: ``xla``, ``triton``, ``interpret``) and ``:tree_layout``
      (TurboAdam's ``leaf`` or ``flat``), in that order.
    leaves_total: parameters of each ``leaves-N`` tree.
    repeats: timed steps (their median is reported).
    bandwidth_bytes: buffer size of the copy-bandwidth measurement.
    profile: also trace a few steps and record each row's device time in
      kernels and its costliest kernels (``row["profile"]``; GPU only, None
      on CPU): where a step's time goes.
  """

  trees: tuple[str, ...] = ("leaves-10", "leaves-200", "gpt2-124m", "llama-1b")
  optimizers: tuple[str, ...] = OPTIMIZERS
  leaves_total: int = 1 << 24
  repeats: int = 20
  bandwidth_bytes: int = 1 << 30
  profile: bool = False

  def __post_init__(self):
    bad = [t for t in self.trees if not _TREE.match(t)]
    if bad or not self.trees:
      raise ValueError(f"trees {bad or self.trees!r}: each must be gpt2-124m, llama-1b or "
                       f"leaves-<N>")
    check_optimizer_specs(self.optimizers)
    require_positive(self, "leaves_total", "repeats", "bandwidth_bytes")


TINY = OptimizerStepConfig(trees=("leaves-2", "leaves-8"),
                           optimizers=("adamw", "turbo_adam", "turbo_adam:flat"),
                           leaves_total=1 << 14, repeats=2, bandwidth_bytes=1 << 20)


def labels(spec: str) -> dict:
  """The row's ``optimizer``, ``implementation`` and ``tree_layout`` of ``spec``."""
  name, impl, tree_layout = parse_optimizer_spec(spec)
  return {"optimizer": name, "implementation": impl or "default",
          "tree_layout": tree_layout or "default"}


def make_optimizer(spec: str, **kw) -> optax.GradientTransformation:
  """The transformation of ``name[@implementation][:tree_layout]`` (``kw``: more of
  its keyword arguments)."""
  name, spec_kw = optimizer_of(spec)
  return registry.get(name, 1e-3, 0.0, **spec_kw, **kw)


def compiled_step(opt, params, grads):
  """(compile seconds, compiled update + apply with params and state donated, state)."""

  def step(p, s, g):
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = jax.jit(opt.init)(params)
  t0 = time.perf_counter()
  fn = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
  return time.perf_counter() - t0, fn, state


def measure(spec: str, shapes, tree: str, bandwidth: float, repeats: int,
            profile: bool = False) -> dict:
  """One row of the module docstring (with ``profile``, its ``profile`` too)."""
  opt = make_optimizer(spec)
  params, grads = random_params_and_grads(shapes)
  n = sum(x.size for x in jax.tree.leaves(params))
  compile_s, fn, state = compiled_step(opt, params, grads)
  carry = [params, state]

  def run():
    carry[0], carry[1] = fn(carry[0], carry[1], grads)
    return carry[0]

  step_s = median_time(run, repeats=repeats, warmup=2)
  s_bytes = tree_bytes(carry[1])
  row = {**labels(spec), "tree": tree, "params": n,
         "compile_s": compile_s, "step_ms": 1e3 * step_s,
         "floor_ms": 1e3 * (12 * n + 2 * s_bytes) / bandwidth,
         "state_bits_per_param": state_bits_per_param(carry[1], carry[0])}
  if profile:
    row["profile"] = kernel_profile(run)
  return row


def run(cfg: OptimizerStepConfig, progress: Progress = Progress()) -> Result:
  """Every (tree, optimizer) pair; partial results after each."""
  bandwidth = copy_bandwidth(cfg.bandwidth_bytes)
  results = {"copy_bandwidth_bytes_per_s": bandwidth, "rows": []}
  for tree in cfg.trees:
    shapes = tree_shapes(tree, cfg.leaves_total)
    for spec in cfg.optimizers:
      try:
        row = measure(spec, shapes, tree, bandwidth, cfg.repeats, cfg.profile)
      except Exception as e:  # record it, keep going (e.g. a kernel that cannot lower here)
        row = {**labels(spec), "tree": tree, "error": f"{type(e).__name__}: {e}"[:300]}
      results["rows"].append(row)
      progress.say(f"{tree} {spec}: {row}")
      progress.partial(results)
      jax.clear_caches()
  return Result(results, table(results))


def layout(row: dict) -> str:
  return row.get("tree_layout", "default")  # records before the flat layout have none


def table(r: dict) -> str:
  """One row per (tree, optimizer): compile s, step ms, x adamw, floor ms, bits."""
  head = ["tree", "optimizer", "impl", "layout", "params", "compile s", "step ms", "x adamw",
          "floor ms", "bits/param"]
  base = {x["tree"]: x["step_ms"] for x in r["rows"]
          if x["optimizer"] == "adamw" and "step_ms" in x}
  rows = []
  for x in r["rows"]:
    if "error" in x:
      rows.append([x["tree"], x["optimizer"], x["implementation"], layout(x), "-", "failed",
                   "-", "-", "-", x["error"][:40]])
      continue
    ratio = f"{x['step_ms'] / base[x['tree']]:.2f}" if x["tree"] in base else "-"
    rows.append([x["tree"], x["optimizer"], x["implementation"], layout(x),
                 f"{x['params'] / 1e6:.1f}M",
                 f"{x['compile_s']:.1f}", f"{x['step_ms']:.3f}", ratio, f"{x['floor_ms']:.3f}",
                 f"{x['state_bits_per_param']:.2f}"])
  widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
  fmt = lambda row: " | ".join(v.rjust(w) for v, w in zip(row, widths))
  profiles = [f"{x['tree']} {x['optimizer']}@{x['implementation']}:{layout(x)}: "
              f"{x['profile']['kernel_ms']:.3f} ms in {x['profile']['kernels']:.0f} kernels; "
              + ", ".join(f"{k['name'][:40]} {k['ms']:.3f}" for k in x["profile"]["top"][:6])
              for x in r["rows"] if x.get("profile")]
  return "\n".join([f"copy bandwidth {r['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s "
                    f"(read + write); floor = (12 N + 2 state bytes) / bandwidth",
                    fmt(head), "-|-".join("-" * w for w in widths), *map(fmt, rows),
                    *(["device time per step (costliest kernels, ms):"] + profiles
                      if profiles else [])])


