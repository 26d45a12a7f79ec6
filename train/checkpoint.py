"""Orbax checkpoints of a training run: model and optimizer state plus metadata.

A checkpoint at step ``s`` holds the state *after* ``s`` optimizer steps,
the data position (batches consumed), the model config and the run config.
State is restored against an abstract target that carries the *current*
mesh's shardings, so a checkpoint saved on one mesh restores on another.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class ConfigMismatchError(ValueError):
  """The checkpoint was written for a different model."""


def manager(directory: str, *, keep: int, save_every: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                         create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict[str, Any],
         *, force: bool = False) -> bool:
  """Saves ``state`` (a pytree of arrays) and JSON ``meta`` at ``step``."""
  return mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)), force=force)


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, *, model_config: dict):
  """Restores the state at ``step`` onto ``abstract_state``'s shardings.

  Raises:
    ConfigMismatchError: the checkpoint's model config differs from
      ``model_config`` (the message names the differing fields).
  """
  meta = read_meta(mngr, step)
  saved = meta.get("model_config", {})
  if saved != model_config:
    diff = sorted(k for k in set(saved) | set(model_config) if saved.get(k) != model_config.get(k))
    details = ", ".join(f"{k}: checkpoint={saved.get(k)!r} vs run={model_config.get(k)!r}"
                        for k in diff)
    raise ConfigMismatchError(
        f"checkpoint at step {step} in {mngr.directory} was written for a different model "
        f"({details}); use another --ckpt-dir or the same model settings")
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state)
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return restored["state"], meta
