"""Orbax checkpoints of a training run: model and optimizer state plus metadata.

A checkpoint at step ``s`` holds the state *after* ``s`` optimizer steps,
the data position (batches consumed), the model config and the run config.
State is restored against an abstract target that carries the *current*
mesh's shardings, so a checkpoint saved on one mesh restores on another.

Integrity. Only finite state is saved (:func:`all_finite`, one device-side
reduction). Each checkpoint's metadata carries a checksum of every array
(:func:`checksum`: two sums of the raw 32-bit words, mod 2^32, computed on
the device), checked after restore; a checkpoint that fails to load or to
verify raises :class:`CorruptCheckpointError`, and :func:`restore_latest`
falls back to the newest one that verifies.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


class ConfigMismatchError(ValueError):
  """The checkpoint was written for a different model."""


class CorruptCheckpointError(ValueError):
  """A checkpoint could not be read or does not match its checksum."""


def manager(directory: str, *, keep: int, save_every: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                         create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


@jax.jit
def _all_finite(leaves) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def all_finite(state) -> jax.Array:
  """bool[]: every floating-point array of ``state`` is free of NaN/Inf (on device).

  One compiled program for the whole tree: sharded arrays are reduced where they
  live, with one set of collectives instead of one eager reduction per leaf.
  """
  leaves = [x for x in jax.tree.leaves(state)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return jnp.asarray(True)
  return _all_finite(leaves)


def _words(x: jax.Array) -> jax.Array:
  """The array's bytes as uint32 words (smaller dtypes widened element-wise)."""
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):  # HoloAdam's traces: (re, im) pairs
    x = jnp.stack([x.real, x.imag], axis=-1)
  size = x.dtype.itemsize
  if size == 8:
    x = jax.lax.bitcast_convert_type(x, jnp.uint32)
  elif size == 4:
    x = jax.lax.bitcast_convert_type(x, jnp.uint32)
  elif size == 2:
    x = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  else:
    x = jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
  return x.reshape(-1)


@jax.jit
def _leaf_sums(leaves):
  """Per array: (sum w_i, sum (i + 1) w_i) over its words w, mod 2^32."""
  out = []
  for x in leaves:
    w = _words(x)
    i = jnp.arange(1, w.size + 1, dtype=jnp.uint32)
    out.append(jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * i, dtype=jnp.uint32)]))
  return out


def checksum(state) -> list[list[int]]:
  """Per array leaf, two position-weighted sums of its raw words (mod 2^32).

  Any single flipped bit changes the first sum; a swap of two words changes
  the second. Computed on the device (sharded arrays stay where they are);
  only 8 bytes per array reach the host.

  Example:
    >>> a = {"w": jnp.arange(4.0)}
    >>> b = {"w": a["w"].at[1].set(1.5)}
    >>> checksum(a) == checksum({"w": jnp.arange(4.0)}), checksum(a) == checksum(b)
    (True, False)
  """
  leaves = [x for x in jax.tree.leaves(state) if hasattr(x, "dtype")]
  return [[int(v) for v in np.asarray(s)] for s in jax.device_get(_leaf_sums(leaves))]


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict[str, Any],
         *, force: bool = False) -> bool:
  """Saves ``state`` (a pytree of arrays) and JSON ``meta`` with its checksum at ``step``.

  Raises:
    FloatingPointError: ``state`` holds a NaN/Inf (nothing is written).
  """
  if not bool(all_finite(state)):
    raise FloatingPointError(f"state at step {step} holds non-finite values; not saved")
  meta = {**meta, "checksum": checksum(state)}
  return mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)), force=force)


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The JSON metadata of the checkpoint at ``step``.

  Raises:
    CorruptCheckpointError: the metadata cannot be read.
  """
  try:
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:  # orbax raises many types for damaged files
    raise CorruptCheckpointError(
        f"checkpoint {step} in {mngr.directory} has unreadable metadata "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def check_model_config(meta: dict, model_config: dict, where: str) -> None:
  """Raises ConfigMismatchError naming the fields that differ."""
  saved = meta.get("model_config", {})
  if saved != model_config:
    diff = sorted(k for k in set(saved) | set(model_config) if saved.get(k) != model_config.get(k))
    details = ", ".join(f"{k}: checkpoint={saved.get(k)!r} vs run={model_config.get(k)!r}"
                        for k in diff)
    raise ConfigMismatchError(
        f"{where} was written for a different model ({details}); use another --ckpt-dir "
        "or the same model settings")


def check_run_config(meta: dict, run_config: dict, keys: tuple[str, ...], where: str) -> None:
  """Raises ConfigMismatchError naming the ``keys`` of the run config that differ
  (as ``--flag``); checkpoints written without a run config pass."""
  saved = meta.get("train_config")
  if saved is None:
    return
  norm = lambda v: json.loads(json.dumps(v))  # noqa: E731 (tuples vs lists)
  diff = [k for k in keys if norm(saved.get(k)) != norm(run_config.get(k))]
  if diff:
    details = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} there, {run_config.get(k)!r} now"
                        for k in diff)
    raise ConfigMismatchError(
        f"{where} belongs to another run ({details}); resume with the same settings "
        "or use another --ckpt-dir")


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, *, model_config: dict,
            run_config: dict | None = None, run_keys: tuple[str, ...] = ()):
  """Restores and verifies the state at ``step`` onto ``abstract_state``'s shardings.

  Raises:
    ConfigMismatchError: the checkpoint's model config differs from
      ``model_config``, or its run config from ``run_config`` in one of
      ``run_keys`` (the message names the differing fields).
    CorruptCheckpointError: the checkpoint cannot be read, holds non-finite
      values, or does not match its checksum.
  """
  where = f"checkpoint {step} in {mngr.directory}"
  meta = read_meta(mngr, step)
  check_model_config(meta, model_config, where)
  if run_config is not None:
    check_run_config(meta, run_config, run_keys, where)
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state)
  try:
    state = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))["state"]
  except Exception as e:
    raise CorruptCheckpointError(f"{where} cannot be read ({type(e).__name__})") from e
  want = meta.get("checksum")
  if want is not None and checksum(state) != want:
    raise CorruptCheckpointError(f"{where} does not match its checksum (damaged on disk)")
  if not bool(all_finite(state)):
    raise CorruptCheckpointError(f"{where} holds non-finite values")
  return state, meta


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, *, model_config: dict,
                   run_config: dict | None = None, run_keys: tuple[str, ...] = ()):
  """The newest checkpoint that restores and verifies, falling back past damaged ones.

  Each damaged checkpoint skipped gives a warning naming it. Configs are
  checked as in :func:`restore`.

  Returns:
    ``(state, meta)``.

  Raises:
    ConfigMismatchError: the newest readable checkpoint is for another model.
    CorruptCheckpointError: no checkpoint in the directory verifies (one line
      naming the directory).
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  for step in steps:
    try:
      return restore(mngr, step, abstract_state, model_config=model_config,
                     run_config=run_config, run_keys=run_keys)
    except CorruptCheckpointError as e:
      warnings.warn(f"{e}; trying the one before it", RuntimeWarning, stacklevel=2)
  raise CorruptCheckpointError(
      f"no checkpoint in {mngr.directory} could be restored and verified "
      f"(tried steps {steps})")
