"""Memory you can touch: one full train step of a 13B Llama on one GPU, per optimizer.

For each optimizer of ``optimizers`` (registry names, ``name[@implementation][:tree_layout]``
as in ``holojax bench optimizer_step``), a fresh process builds ``model`` (float32
parameters, ``dtype`` compute, rematerialised blocks scanned over the layers) and
its optimizer state on
the device, then runs ``steps`` full train steps (forward, backward, update,
apply; parameters and state donated: ``holojax.train.step``) on ``batch`` x
``seq`` random tokens. One process per attempt, so each peak is its own and an
out-of-memory attempt cannot poison the next. Rows (``results["rows"]``)::

  {"optimizer", "params", "status", "phase", "peak_bytes", "step_ms",
   "state_bytes", "need_bytes", "error"}

``status`` is ``"ok"``, ``"oom"`` (the device ran out of memory, during
``phase`` ``"init"``, ``"compile"`` or ``"step"``) or ``"error"`` (a timeout
names the phase it stopped in); ``peak_bytes`` the device's
``peak_bytes_in_use`` (None where the backend keeps no statistics, e.g. CPU);
``init_s`` and ``compile_s`` the seconds to build model and state and to
compile the step; ``step_ms`` the median of the ``steps`` steps after the
first (which warms up);
``state_bytes`` the optimizer state by ``jax.eval_shape`` (nothing allocated);
``need_bytes`` the floor every step must hold at once: parameters, gradients
and state (``8 N + state`` for N float32 parameters). AdamW's state is 8 N, so
it needs 16 bytes per parameter (208 GB at 13B, more than an H200's 141 GB);
TurboAdam's is under 1 byte per parameter (about 117 GB in all). Use
TurboAdam's default per-tensor layout here: the whole-tree layout
(``:flat``) gathers the gradients into one buffer, 4 more bytes per
parameter (52 GB at 13B), and its temporaries span the whole tree. With
``scan_layers`` (the default) the step compiles one block and TurboAdam
updates the stacked tensors one layer after another (``scanned``), which
bounds its temporaries; the per-layer model (``--no-scan-layers``) has
360 tensors at 13B, compiled one by one (minutes on a GPU). ``--analyze``
predicts a step's memory from XLA's analysis of the compiled program,
without running it (on CPU that is the CPU's buffer assignment, not a GPU's).

  holojax bench big_step                                  # the H200 run (13B)
  holojax bench big_step --optimizers turbo_adam_v adamw --timeout-s 900
  holojax bench big_step --tiny --no-save                 # CPU smoke run
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time

import jax
import numpy as np
from flax import nnx

from holojax.models.llama import LLAMA_PRESETS, Llama
from holojax.optim import registry
from holojax.optim.accounting import tree_bytes
from holojax.train.bench.common import (Progress, Result, child_main, device_memory,
                                        fmt_bytes, in_child, memory_analysis,
                                        parse_optimizer_spec, pipe_table, require_positive)
from holojax.train.bench.optim.optimizer_step import make_optimizer
from holojax.train.step import init_state, make_train_step


@dataclasses.dataclass(frozen=True)
class BigStepConfig:
  """What ``run`` measures (module docstring).

  Attributes:
    model: a Llama preset (``holojax.models.LLAMA_PRESETS``), random weights.
    optimizers: ``name[@implementation][:tree_layout]`` each, tried in order.
    dtype: compute dtype (parameters stay float32).
    remat: recompute each block's activations in the backward pass.
    scan_layers: stack the blocks and run them under ``nnx.scan`` (one block to
      compile; TurboAdam then updates the stacked tensors layer by layer,
      ``scanned``); see above.
    batch: sequences per step.
    seq: tokens per sequence.
    steps: train steps per attempt, after compiling the step on its own (the
      first warms up; the median of the rest is reported).
    timeout_s: seconds an attempt may take before it is stopped (status "error").
    analyze: run nothing; compile each optimizer's step from shapes alone
      (nothing allocated, any backend) and record XLA's memory analysis of it
      under ``results["analysis"]``: ``{"optimizer", "backend", "compile_s",
      "argument_bytes", "output_bytes", "temp_bytes", "alias_bytes", "bytes"}``.
      A prediction of that backend's buffer assignment, not a measured peak.
  """

  model: str = "llama-13b"
  optimizers: tuple[str, ...] = ("turbo_adam", "adamw")
  dtype: str = "bfloat16"
  remat: bool = True
  scan_layers: bool = True
  batch: int = 1
  seq: int = 256
  steps: int = 3
  timeout_s: int = 1200
  analyze: bool = False

  def __post_init__(self):
    if self.model not in LLAMA_PRESETS:
      raise ValueError(f"model={self.model!r}: choose a Llama preset {sorted(LLAMA_PRESETS)}")
    bad = [s for s in self.optimizers if parse_optimizer_spec(s)[0] not in registry.names()]
    if bad or not self.optimizers:
      raise ValueError(f"optimizers {bad or self.optimizers!r}: choose from {registry.names()}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype={self.dtype!r} must be 'float32' or 'bfloat16'")
    require_positive(self, "batch", "seq", "steps", "timeout_s")
    if self.seq > LLAMA_PRESETS[self.model].max_seq_len:
      raise ValueError(f"seq={self.seq} exceeds {self.model}'s context of "
                       f"{LLAMA_PRESETS[self.model].max_seq_len} tokens")


TINY = BigStepConfig(model="llama-tiny", optimizers=("adamw", "turbo_adam"), dtype="float32",
                     seq=32, steps=2, timeout_s=300)


# The attempt preallocates nearly all device memory as one region (XLA's default is
# 75%), unless the caller chose a fraction: on the H200 the 13B TurboAdam step held
# 61.6 GiB and asked for one 77.4 GiB block of temporaries, which failed at 0.97
# (135.6 GiB), at 0.995 growing the pool, and at 0.99 preallocated (138.4 GiB,
# record big_step--nvidia-h200--20261203-064554). This process never allocates there.
CHILD_ENV = {"XLA_PYTHON_CLIENT_MEM_FRACTION":
             os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.99"),
             "XLA_PYTHON_CLIENT_PREALLOCATE": "true"}


def _loss(model, ids):
  return model(ids, labels=ids).loss


def model_config(cfg: BigStepConfig):
  return dataclasses.replace(LLAMA_PRESETS[cfg.model], dtype=cfg.dtype, param_dtype="float32",
                             remat=cfg.remat, scan_layers=cfg.scan_layers)


def optimizer(cfg: BigStepConfig, spec: str):
  """``spec``'s transformation; with ``scan_layers``, an optimizer that takes
  ``scanned`` (TurboAdam, leaf layout) updates the stacked blocks layer by layer."""
  name, _, tree_layout = parse_optimizer_spec(spec)
  if cfg.scan_layers and tree_layout != "flat" and "scanned" in (registry.accepts(name) or ()):
    return make_optimizer(spec, scanned=lambda params: {k: k == "blocks" for k in params})
  return make_optimizer(spec)


def need(cfg: BigStepConfig, spec: str) -> tuple[int, int, int]:
  """``(parameters, state bytes, need bytes)`` from shapes alone (nothing allocated)."""
  model = nnx.eval_shape(lambda: Llama(model_config(cfg), rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param).to_pure_dict()
  n = sum(x.size for x in jax.tree.leaves(params))
  state = jax.eval_shape(optimizer(cfg, spec).init, params)
  return n, tree_bytes(state), 8 * n + tree_bytes(state)


def is_oom(err: BaseException) -> bool:
  """Whether ``err`` is XLA's out-of-device-memory error."""
  text = str(err)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def attempt(cfg: BigStepConfig, spec: str) -> dict:
  """One optimizer's build + ``steps`` train steps in this process (see module docstring)."""
  row = {"optimizer": spec, "status": "ok", "phase": "init", "peak_bytes": None,
         "step_ms": None, "error": None}
  t0 = time.perf_counter()

  def phase(name: str):  # stderr, so that a timed-out attempt says where it was
    row["phase"] = name
    print(f"{time.perf_counter() - t0:.1f} s: {name}", file=sys.stderr, flush=True)

  try:
    tx = optimizer(cfg, spec)
    phase("init")
    graphdef, state = init_state(lambda: Llama(model_config(cfg), rngs=nnx.Rngs(0)), tx)
    row["init_s"] = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    vocab = LLAMA_PRESETS[cfg.model].vocab_size
    batches = [jax.numpy.asarray(rng.integers(0, vocab, (cfg.batch, cfg.seq)), jax.numpy.int32)
               for _ in range(cfg.steps)]
    phase("compile")
    t1 = time.perf_counter()
    step = make_train_step(graphdef, tx, _loss).lower(state, batches[0]).compile()
    row["compile_s"] = time.perf_counter() - t1
    phase("step")
    times = []
    for ids in batches:
      t1 = time.perf_counter()
      state, metrics = step(state, ids)
      row["loss"] = float(jax.block_until_ready(metrics["train/loss"]))
      times.append(time.perf_counter() - t1)
      print(f"{time.perf_counter() - t0:.1f} s: step {len(times)} done", file=sys.stderr,
            flush=True)
    row["step_ms"] = 1e3 * statistics.median(times[1:] or times)  # the first one warms up
  except Exception as err:  # noqa: BLE001 - reported in the row, never swallowed silently
    row["status"] = "oom" if is_oom(err) else "error"
    row["error"] = str(err).strip().splitlines()[0][:300]
  mem = device_memory()
  row["peak_bytes"], row["device_bytes"] = mem["peak_bytes_in_use"], mem.get("bytes_limit")
  return row


def analysis(cfg: BigStepConfig, spec: str) -> dict:
  """XLA's memory analysis of ``spec``'s train step, compiled from shapes alone."""
  tx = optimizer(cfg, spec)
  graphdef, state = nnx.eval_shape(
      lambda: init_state(lambda: Llama(model_config(cfg), rngs=nnx.Rngs(0)), tx))
  ids = jax.ShapeDtypeStruct((cfg.batch, cfg.seq), jax.numpy.int32)
  t0 = time.perf_counter()
  mem = memory_analysis(make_train_step(graphdef, tx, _loss), state, ids)
  return {"optimizer": spec, "backend": jax.default_backend(),
          "compile_s": time.perf_counter() - t0, **(mem or {})}


def run(cfg: BigStepConfig, progress: Progress = Progress()) -> Result:
  """Every optimizer's attempt (module docstring), each in its own process; with
  ``analyze``, each one's compiled memory analysis instead."""
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # before any device use here
  results = {"model": cfg.model, "device_bytes": None, "rows": []}
  if cfg.analyze:
    results["analysis"] = []
    for spec in cfg.optimizers:
      results["analysis"].append(analysis(cfg, spec))
      progress.say(f"{spec}: {results['analysis'][-1]}")
    return Result(results, table(cfg, results))
  for spec in cfg.optimizers:
    n, state_bytes, need_bytes = need(cfg, spec)
    progress.say(f"{spec}: {n / 1e9:.2f}B parameters, state {state_bytes / 2**30:.1f} GiB, "
                 f"needs at least {need_bytes / 2**30:.1f} GiB")
    child = in_child("holojax.train.bench.optim.big_step", cfg, [spec], cfg.timeout_s,
                     env=CHILD_ENV)
    results["device_bytes"] = results["device_bytes"] or child.get("device_bytes")
    row = {"optimizer": spec, **child, "params": n, "state_bytes": state_bytes,
           "need_bytes": need_bytes}
    progress.say(f"{spec}: {row['status']}" + (f" ({row['error']})" if row.get("error") else ""))
    results["rows"].append(row)
    progress.partial(results)
  return Result(results, table(cfg, results))


def table(cfg: BigStepConfig, r: dict) -> str:
  rows = []
  for x in r["rows"]:
    status = x["status"] + (f" ({x['phase']})" if x["status"] != "ok" and x.get("phase") else "")
    ms = "n/a" if x.get("step_ms") is None else f"{x['step_ms']:.0f}"
    rows.append([x["optimizer"], f"{x['params'] / 1e9:.2f}B", fmt_bytes(x["state_bytes"]),
                 fmt_bytes(x["need_bytes"]), status, fmt_bytes(x.get("peak_bytes")), ms])
  head = (f"{cfg.model}: one train step, batch {cfg.batch} x {cfg.seq} tokens, float32 "
          f"parameters, {cfg.dtype} compute, remat {cfg.remat}, scan {cfg.scan_layers}")
  if "analysis" in r:
    return "\n".join([f"{head}; XLA's memory analysis of the compiled step", *pipe_table(
        ["optimizer", "backend", "compile s", "arguments GiB", "temporaries GiB", "peak GiB"],
        [[x["optimizer"], x["backend"], f"{x['compile_s']:.1f}",
          *(fmt_bytes(x.get(k)) for k in ("argument_bytes", "temp_bytes", "bytes"))]
         for x in r["analysis"]])])
  return "\n".join([
      f"{head}; device memory {fmt_bytes(r['device_bytes'])} GiB",
      *pipe_table(["optimizer", "params", "state GiB", "needs GiB", "status", "peak GiB",
                   "step ms"], rows)])


if __name__ == "__main__":
  sys.exit(child_main(BigStepConfig, attempt, sys.argv[1:]))
