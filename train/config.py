"""The training configuration: one frozen dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
from typing import Any

SCHEDULES = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """What to train, how, and where to write it.

  The defaults train the ``small`` transformer with AdamW on the standard
  library's source for 300 steps of 16 x 128 bytes: about a minute on two
  CPU cores, reaching roughly 2 nats/byte of validation loss.

  Attributes:
    model: model preset (see ``holojax models``).
    dtype: compute dtype (none: the model preset's).
    optimizer: optimizer name (see ``holojax optimizers``).
    opt_kwargs: extra keyword arguments for the optimizer factory.
    learning_rate: peak learning rate.
    weight_decay: decoupled weight decay.
    schedule: learning rate after ``warmup_steps`` of linear warm-up:
      ``cosine`` decays to 10% of the peak, ``linear`` to 0, ``constant`` stays.
    warmup_steps: linear warm-up steps.
    clip_norm: clip gradients to this global norm (none: no clipping).
    steps: total optimizer steps; one batch per step.
    batch_size: sequences per step.
    seq_len: tokens per sequence.
    eval_every: steps between validation passes (and after the last step).
    eval_batches: validation batches per pass.
    seed: data order and initialisation seed.
    ckpt_dir: checkpoint directory (orbax; none: no checkpoints);
      metrics.jsonl goes there too.
    ckpt_every: steps between checkpoints (and one after the last step).
    keep: how many of the latest checkpoints to keep.
    resume: continue from the newest checkpoint in ``ckpt_dir`` that verifies
      (damaged ones are skipped with a warning); an error when there is
      none, or when it was written with other run settings (model,
      optimizer and its arguments, schedule, steps, batch, seed, corpus).
    mesh_data: data-parallel mesh size (0: every device left after
      ``mesh_fsdp``). Batches are split over both mesh axes.
    mesh_fsdp: FSDP mesh size: parameters and optimizer state are sharded
      over this many devices.
    corpus: text file or directory (none: the Python standard library's source).
    corpus_max_bytes: read at most this much of the corpus (none: all).
    metrics_path: JSON-lines metrics file (none: ``ckpt_dir/metrics.jsonl``
      when checkpointing, else no file).
    log_every: steps between metrics lines.
    progress: show a progress bar.
  """
  model: str = "small"
  dtype: str | None = None
  optimizer: str = "adamw"
  opt_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  learning_rate: float = dataclasses.field(default=3e-3, metadata={"aliases": ("--lr",)})
  weight_decay: float = 0.01
  schedule: str = "cosine"
  warmup_steps: int = 20
  clip_norm: float | None = 1.0
  steps: int = 300
  batch_size: int = 16
  seq_len: int = 128
  eval_every: int = 100
  eval_batches: int = 8
  seed: int = 0
  ckpt_dir: str | None = None
  ckpt_every: int = 100
  keep: int = 3
  resume: bool = False
  mesh_data: int = 0
  mesh_fsdp: int = 1
  corpus: str | None = None
  corpus_max_bytes: int | None = None
  metrics_path: str | None = None
  log_every: int = 10
  progress: bool = True

  def __post_init__(self):
    positive = ("steps", "batch_size", "seq_len", "eval_every", "eval_batches", "ckpt_every",
                "keep", "mesh_fsdp", "log_every")
    for name in positive:
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.mesh_data < 0:
      raise ValueError(f"mesh_data must be >= 0 (0 = all remaining devices), got {self.mesh_data}")
    if self.warmup_steps < 0:
      raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
    if self.weight_decay < 0:
      raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
    if self.clip_norm is not None and not self.clip_norm > 0:
      raise ValueError(f"clip_norm must be > 0 or None, got {self.clip_norm}")
    if self.resume and self.ckpt_dir is None:
      raise ValueError("resume=True needs ckpt_dir")

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)
