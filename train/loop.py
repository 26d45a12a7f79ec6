"""The training loop, top to bottom.

config -> data -> mesh -> model and optimizer state built under the mesh
(sharded at creation) -> jitted step with donated state -> periodic eval ->
orbax checkpoints -> metrics as JSON lines and a progress bar.

Example::

  from holojax.train import TrainConfig, train
  result = train(TrainConfig(model="tiny", steps=20, progress=False))
  print(result.final_eval_loss)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import optax
from flax import nnx

from holojax import data as hdata
from holojax.models import registry as model_registry
from holojax.models.lm import next_token_loss
from holojax.optim import registry as optim_registry
from holojax.optim.accounting import state_bits_per_param, tree_size
from holojax.train import checkpoint as ckpt
from holojax.train import sharding
from holojax.train.config import TrainConfig
from holojax.train.step import init_state, make_eval_step, make_train_step, model_of


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss or gradient."""


# What a resumed run must share with the run that wrote the checkpoint (else
# it would not continue that run); cadences, mesh and output paths may change.
RESUME_KEYS = ("model", "dtype", "optimizer", "opt_kwargs", "learning_rate", "weight_decay",
               "schedule", "warmup_steps", "clip_norm", "steps", "batch_size", "seq_len", "seed",
               "corpus", "corpus_max_bytes")


@dataclasses.dataclass
class TrainResult:
  """What a finished run returns."""
  config: TrainConfig
  steps: int
  train_losses: list[tuple[int, float]]  # (step, loss) every log_every steps
  eval_losses: list[tuple[int, float]]  # (step, validation loss)
  final_eval_loss: float
  tokens_per_s: float  # median over logged intervals, after the first
  state_bits_per_param: float
  num_params: int
  state: Any = dataclasses.field(repr=False)  # {"model": nnx.State, "opt": optax state}
  graphdef: Any = dataclasses.field(repr=False)
  start: int = 0  # the step it resumed from (0: a fresh run)
  interrupted: str | None = None  # the signal that stopped it early (SIGTERM, SIGINT)


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
  lr, warm, total = cfg.learning_rate, cfg.warmup_steps, cfg.steps
  decay_steps = max(total - warm, 1)
  if cfg.schedule == "constant":
    after = optax.constant_schedule(lr)
  elif cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(lr, decay_steps, alpha=0.1)
  else:
    after = optax.linear_schedule(lr, 0.0, decay_steps)
  if warm == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), after], [warm])


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  tx = optim_registry.get(cfg.optimizer, make_schedule(cfg), cfg.weight_decay, **cfg.opt_kwargs)
  if cfg.clip_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
  return tx


def model_spec(cfg: TrainConfig, **overrides):
  """The model preset of ``cfg`` (config fields replaced by ``overrides``), checked."""
  if cfg.dtype:
    overrides.setdefault("dtype", cfg.dtype)
  spec = model_registry.get(cfg.model, **overrides)
  mcfg = spec.config
  if cfg.seq_len > mcfg.max_seq_len:
    raise ValueError(f"seq_len={cfg.seq_len} is larger than model {cfg.model!r} supports "
                     f"(max_seq_len={mcfg.max_seq_len}); lower --seq-len")
  if mcfg.vocab_size < hdata.VOCAB_SIZE:
    raise ValueError(f"model vocab_size={mcfg.vocab_size} is smaller than the byte "
                     f"tokenizer's {hdata.VOCAB_SIZE}")
  return spec


def loss_fn(model, batch_bt):
  """Mean next-token cross-entropy (nats per byte) of ``model(tokens) -> logits``."""
  return next_token_loss(model(batch_bt[:, :-1]), batch_bt[:, 1:])


class Setup(NamedTuple):
  """A run before its first step: the mesh, how batches are sharded, the model
  and optimizer state (sharded at creation) and the jitted steps."""
  mesh: jax.sharding.Mesh
  batch_sharding: jax.sharding.NamedSharding
  graphdef: nnx.GraphDef
  state: dict  # {"model": nnx.State, "opt": optax state}
  train_step: Callable  # (state, batch_bt) -> (state, metrics), state donated
  eval_step: Callable  # (state, batch_bt) -> loss


def setup(cfg: TrainConfig, spec) -> Setup:
  """Mesh, optimizer, state and steps of ``cfg`` for the model ``spec``."""
  mesh = sharding.make_mesh(cfg.mesh_data, cfg.mesh_fsdp)
  n_dev = mesh.devices.size
  if cfg.batch_size % n_dev:
    raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the {n_dev} devices "
                     f"of the mesh {dict(mesh.shape)}")
  tx = make_optimizer(cfg)
  graphdef, state = init_state(lambda: spec.build(spec.config, rngs=nnx.Rngs(cfg.seed)), tx,
                               mesh)
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  return Setup(mesh, sharding.batch_sharding(mesh), graphdef, state,
               make_train_step(graphdef, tx, loss_fn, mesh=mesh, state_sharding=state_sh),
               make_eval_step(graphdef, loss_fn, mesh=mesh))


def _evaluate(eval_step, state, batches) -> float:
  losses = [eval_step(state, b) for b in batches]
  return float(np.mean(jax.device_get(losses)))


def _split(graphdef, state):
  """(parameters as an nnx.State, optimizer state)."""
  return nnx.state(model_of(graphdef, state), nnx.Param), state["opt"]


def _check_finite(step: int, metrics: dict[str, float]):
  bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
  if bad:
    raise NonFiniteLossError(
        f"non-finite {', '.join(bad)} at step {step} ({bad}); the last good checkpoint is kept. "
        "Try a lower --lr or --clip-norm")


def _stderr(line: str):
  print(line, file=sys.stderr, flush=True)


def _writable_dir(path: str) -> None:
  """Creates ``path`` if needed; raises a ValueError unless files can be written there."""
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    why = "it is a file" if os.path.isfile(path) else (e.strerror or type(e).__name__).lower()
    raise ValueError(f"--ckpt-dir {path} cannot hold checkpoints ({why})") from None


def _truncate_metrics(path: str, step: int) -> None:
  """Drops the metrics rows past ``step`` (a resumed run writes them again)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip()]
  keep = [line for line in rows if json.loads(line).get("step", 0) <= step]
  with open(path, "w") as f:
    f.writelines(keep)


@contextlib.contextmanager
def _stop_signals():
  """Within it, SIGTERM and SIGINT set ``flag["signal"]`` instead of killing the
  process (the loop saves and stops); a second SIGINT interrupts at once.
  Off the main thread (where handlers cannot be set) nothing changes."""
  flag = {"signal": None}
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return

  def handle(signum, frame):
    if flag["signal"] is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    flag["signal"] = signal.Signals(signum).name

  old = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield flag
  finally:
    for s, h in old.items():
      signal.signal(s, h)


def train(cfg: TrainConfig, *, bar_position: int = 0, stop_after: int | None = None,
          say: Callable[[str], None] | None = None) -> TrainResult:
  """Runs (or resumes) a training run and returns its losses and final state.

  ``bar_position`` is the progress bar's line (for runs side by side).
  ``stop_after`` ends the run after that step as if it had been killed there
  (after that step's checkpoint, if one is due): for tests and for
  splitting a run into jobs; resume with ``resume=True``. ``say`` receives
  the run's messages (where its files go, compiling, resuming); by default
  they go to stderr when ``cfg.progress`` is on.

  SIGTERM or SIGINT during the run saves a checkpoint at the current step
  (with ``ckpt_dir``) and returns early with ``interrupted`` set; resuming
  then continues exactly as if the run had not stopped.
  """
  say = say or (_stderr if cfg.progress else (lambda line: None))
  spec = model_spec(cfg)
  model_desc = model_registry.describe(spec.config)
  corpus = hdata.load_corpus(cfg.corpus, max_bytes=cfg.corpus_max_bytes)
  train_data = hdata.PackedBatches(corpus.train, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                                   seed=cfg.seed, split="train")
  val_batches = hdata.eval_batches(corpus.val, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                                   num_batches=cfg.eval_batches)
  if cfg.resume and not os.path.isdir(cfg.ckpt_dir):
    raise ValueError(f"--resume: nothing to resume in {cfg.ckpt_dir} (no such directory); "
                     "run without --resume to start")
  if cfg.ckpt_dir is not None:
    _writable_dir(cfg.ckpt_dir)

  run = setup(cfg, spec)
  batch_sh, graphdef, state = run.batch_sharding, run.graphdef, run.state
  train_step, eval_step = run.train_step, run.eval_step
  params, opt_state = _split(graphdef, state)
  num_params = tree_size(params)
  bits = state_bits_per_param(opt_state, params)
  del params, opt_state
  val_batches = [jax.device_put(b, batch_sh) for b in val_batches]

  mngr = None
  start = 0
  if cfg.ckpt_dir is not None:
    mngr = ckpt.manager(cfg.ckpt_dir, keep=cfg.keep, save_every=cfg.ckpt_every)
    latest = mngr.latest_step()
    if cfg.resume:
      if latest is None:
        raise ValueError(f"--resume: nothing to resume in {cfg.ckpt_dir} (no checkpoints); "
                         "run without --resume to start")
      state, saved = ckpt.restore_latest(mngr, state, model_config=model_desc,
                                         run_config=cfg.to_json(), run_keys=RESUME_KEYS)
      start = int(saved["data_position"])
      say(f"resumed from step {start} of {cfg.steps} (checkpoint in {cfg.ckpt_dir})")
    elif latest is not None:
      raise ValueError(f"{cfg.ckpt_dir} already holds checkpoints (latest step {latest}); "
                       "pass --resume to continue or choose an empty --ckpt-dir")

  metrics_path = cfg.metrics_path or (os.path.join(cfg.ckpt_dir, "metrics.jsonl")
                                      if cfg.ckpt_dir else None)
  if metrics_path and start:
    _truncate_metrics(metrics_path, start)
  log_file = open(metrics_path, "a" if start else "w") if metrics_path else None
  say(f"{cfg.model} ({num_params:,} parameters) with {cfg.optimizer}: steps {start + 1}-"
      f"{cfg.steps} of {cfg.batch_size} x {cfg.seq_len} tokens on {run.mesh.devices.size} "
      f"device(s); " + (f"checkpoints every {cfg.ckpt_every} steps in {cfg.ckpt_dir}"
                        if cfg.ckpt_dir else "no checkpoints (no --ckpt-dir)")
      + (f", metrics in {metrics_path}" if metrics_path else ""))
  meta = lambda step: {"step": step, "data_position": step, "model": cfg.model,
                       "model_config": model_desc, "train_config": cfg.to_json()}

  def log(record):
    if log_file is not None:
      log_file.write(json.dumps(record) + "\n")
      log_file.flush()

  train_losses, eval_losses, rates = [], [], []
  tokens_per_step = cfg.batch_size * cfg.seq_len
  bar = None
  pending = None  # (step, device metrics): read one step late
  t_last, step_last = time.perf_counter(), start
  done = start  # optimizer steps completed
  saved_at = start if start else None  # the step of the newest checkpoint

  def drain(pending):
    """Host copy of a step's metrics; raises if they are not finite."""
    step, m = pending
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    _check_finite(step, m)
    return m

  def save(step: int, force: bool):
    nonlocal pending, saved_at
    if pending is not None:
      drain(pending)  # never checkpoint a non-finite state
      pending = None
    try:
      if ckpt.save(mngr, step, state, meta(step), force=force):
        saved_at = step
    except FloatingPointError as e:  # never save non-finite state
      raise NonFiniteLossError(f"{e}; the last good checkpoint is kept") from e

  try:
    with _stop_signals() as stop:
      for step in range(start + 1, cfg.steps + 1):
        batch = jax.device_put(train_data.batch(step - 1), batch_sh)
        if step == start + 1:
          say("compiling the train step ...")
          t0 = time.perf_counter()
        state, metrics = train_step(state, batch)
        if step == start + 1:
          say(f"compiled in {time.perf_counter() - t0:.1f} s")
          bar = _progress(cfg, start, bar_position)
        done = step
        if pending is not None:
          drain(pending)  # surfaces a NaN one step late without blocking the device
        pending = (step, metrics)
        if bar is not None:
          bar.update(1)
        last = step == cfg.steps
        if step % cfg.log_every == 0 or last:
          m = drain(pending)
          pending = None  # read already
          now = time.perf_counter()
          rate = tokens_per_step * (step - step_last) / (now - t_last)
          if step_last > start:  # the first interval includes compilation
            rates.append(rate)
          t_last, step_last = now, step
          m.update({"step": step, "perf/tokens_per_s": rate,
                    "perf/step_s": tokens_per_step / rate, "opt/state_bits_per_param": bits})
          train_losses.append((step, m["train/loss"]))
          log(m)
          if bar is not None:
            bar.set_postfix(loss=f"{m['train/loss']:.3f}", tok_s=f"{rate:,.0f}")
        if step % cfg.eval_every == 0 or last:
          loss = _evaluate(eval_step, state, val_batches)
          eval_losses.append((step, loss))
          log({"step": step, "eval/loss": loss})
          t_last = time.perf_counter()  # do not count eval time as training time
        if mngr is not None and (step % cfg.ckpt_every == 0 or last):
          save(step, force=last)
        if stop["signal"] is not None:
          if mngr is not None and saved_at != step:
            save(step, force=True)
          if bar is not None:
            bar.close()
            bar = None
          say(f"{stop['signal']} at step {step}: " +
              (f"checkpoint saved in {cfg.ckpt_dir}; continue with --resume"
               if mngr is not None else "stopped (no --ckpt-dir: nothing saved)"))
          break
        if stop_after is not None and step >= stop_after:
          break
  finally:
    if bar is not None:
      bar.close()
    if log_file is not None:
      log_file.close()
    if mngr is not None:
      mngr.wait_until_finished()
      mngr.close()

  if start == cfg.steps:
    say(f"the run in {cfg.ckpt_dir} had already finished (step {start})")
  final_eval = eval_losses[-1][1] if eval_losses else _evaluate(eval_step, state, val_batches)
  return TrainResult(config=cfg, steps=done, train_losses=train_losses,
                     eval_losses=eval_losses, final_eval_loss=final_eval,
                     tokens_per_s=float(np.median(rates)) if rates else float("nan"),
                     state_bits_per_param=bits, num_params=num_params, state=state,
                     graphdef=graphdef, start=start, interrupted=stop["signal"])


def _progress(cfg: TrainConfig, start: int, position: int):
  if not cfg.progress:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=cfg.steps, initial=start, desc=f"{cfg.model}/{cfg.optimizer}",
              unit="step", dynamic_ncols=True, position=position)


def params_of(result: TrainResult):
  """The trained model's parameters (an ``nnx.State``)."""
  return _split(result.graphdef, result.state)[0]
