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

import dataclasses
import json
import math
import os
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


def train(cfg: TrainConfig, *, bar_position: int = 0,
          stop_after: int | None = None) -> TrainResult:
  """Runs (or resumes) a training run and returns its losses and final state.

  ``bar_position`` is the progress bar's line (for runs side by side).
  ``stop_after`` ends the run after that step as if it had been killed there
  (after that step's checkpoint, if one is due): for tests and for
  splitting a run into jobs; resume with ``resume=True``.
  """
  spec = model_spec(cfg)
  model_desc = model_registry.describe(spec.config)
  corpus = hdata.load_corpus(cfg.corpus, max_bytes=cfg.corpus_max_bytes)
  train_data = hdata.PackedBatches(corpus.train, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                                   seed=cfg.seed)
  val_batches = hdata.eval_batches(corpus.val, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                                   num_batches=cfg.eval_batches)

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
    if cfg.resume and latest is not None:
      state, meta = ckpt.restore(mngr, latest, state, model_config=model_desc)
      start = int(meta["data_position"])
    elif latest is not None and not cfg.resume:
      raise ValueError(f"{cfg.ckpt_dir} already holds checkpoints (latest step {latest}); "
                       "pass --resume to continue or choose an empty --ckpt-dir")

  metrics_path = cfg.metrics_path or (os.path.join(cfg.ckpt_dir, "metrics.jsonl")
                                      if cfg.ckpt_dir else None)
  log_file = open(metrics_path, "a") if metrics_path else None
  meta = lambda step: {"step": step, "data_position": step, "model": cfg.model,
                       "model_config": model_desc, "train_config": cfg.to_json()}

  def log(record):
    if log_file is not None:
      log_file.write(json.dumps(record) + "\n")
      log_file.flush()

  train_losses, eval_losses, rates = [], [], []
  tokens_per_step = cfg.batch_size * cfg.seq_len
  bar = _progress(cfg, start, bar_position)
  pending = None  # (step, device metrics): read one step late
  t_last, step_last = time.perf_counter(), start
  done = start  # optimizer steps completed

  def drain(pending):
    """Host copy of a step's metrics; raises if they are not finite."""
    step, m = pending
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    _check_finite(step, m)
    return m

  try:
    for step in range(start + 1, cfg.steps + 1):
      batch = jax.device_put(train_data.batch(step - 1), batch_sh)
      state, metrics = train_step(state, batch)
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
        if pending is not None:
          drain(pending)  # never checkpoint a non-finite state
          pending = None
        try:
          ckpt.save(mngr, step, state, meta(step), force=last)
        except FloatingPointError as e:  # never save non-finite state
          raise NonFiniteLossError(f"{e}; the last good checkpoint is kept") from e
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

  final_eval = eval_losses[-1][1] if eval_losses else _evaluate(eval_step, state, val_batches)
  return TrainResult(config=cfg, steps=done, train_losses=train_losses,
                     eval_losses=eval_losses, final_eval_loss=final_eval,
                     tokens_per_s=float(np.median(rates)) if rates else float("nan"),
                     state_bits_per_param=bits, num_params=num_params, state=state,
                     graphdef=graphdef)


def _progress(cfg: TrainConfig, start: int, position: int):
  if not cfg.progress:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=cfg.steps, initial=start, desc=f"{cfg.model}/{cfg.optimizer}",
              unit="step", dynamic_ncols=True, position=position)


def params_of(result: TrainResult):
  """The trained model's parameters (an ``nnx.State``)."""
  return _split(result.graphdef, result.state)[0]
